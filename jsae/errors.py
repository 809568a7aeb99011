"""Exceptions jsae raises on bad input.

Each subclasses the builtin a caller would expect (``ValueError``, ``FileNotFoundError``), so
``except ValueError`` keeps working, and each message names the problem and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JsaeError(Exception):
    """Base class of every error jsae raises on purpose."""


class ConfigError(JsaeError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class ShapeError(JsaeError, ValueError):
    """An array has a shape (or rank) that contradicts the SAE's config."""


class FormatError(JsaeError, ValueError):
    """A checkpoint on disk is missing pieces, truncated, or not in the expected format."""


class UnsafePickleError(FormatError):
    """A pickle asks for something the restricted .pt reader refuses to build."""


class NonFiniteError(JsaeError, ValueError):
    """An array that must be finite holds NaN or Inf."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run between steps (after checkpointing, when it checkpoints).
    A KeyboardInterrupt, so `except Exception` does not swallow it."""


def choices_hint(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean ...?' for the closest valid names, or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
