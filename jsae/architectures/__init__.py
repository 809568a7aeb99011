"""Architecture registry: the `architecture` string of a config -> its implementation.

Adding an architecture is one file defining an `Architecture` subclass plus one line below
(or `register_architecture(MyArch)` from user code).
"""

from __future__ import annotations

from jsae.architectures.base import Architecture, Params, decoder_norms
from jsae.architectures.batchtopk import BatchTopK, MatryoshkaBatchTopK
from jsae.architectures.gated import Gated
from jsae.architectures.jumprelu import JumpReLU
from jsae.architectures.standard import Standard
from jsae.architectures.topk import TopK
from jsae.architectures.transcoder import (
    JumpReLUSkipTranscoder,
    JumpReLUTranscoder,
    SkipTranscoder,
    Transcoder,
)
from jsae.errors import ConfigError, choices_hint

_REGISTRY: dict[str, type[Architecture]] = {}


def register_architecture(arch: type[Architecture], *, overwrite: bool = False) -> None:
    """Make `arch` available under `arch.name` to configs, loading and training."""
    if not arch.name:
        raise ConfigError(f"{arch.__name__} has no `name`.")
    if arch.name in _REGISTRY and not overwrite:
        raise ConfigError(
            f"architecture {arch.name!r} is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[arch.name] = arch


for _arch in (
    Standard,
    Gated,
    JumpReLU,
    TopK,
    BatchTopK,
    MatryoshkaBatchTopK,
    Transcoder,
    SkipTranscoder,
    JumpReLUTranscoder,
    JumpReLUSkipTranscoder,
):
    register_architecture(_arch)


def architecture_names() -> list[str]:
    """Every registered architecture name."""
    return sorted(_REGISTRY)


def get_architecture(name: str) -> type[Architecture]:
    """The implementation of `name`, or a ConfigError listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown architecture {name!r}; known architectures: {architecture_names()}."
            + choices_hint(str(name), _REGISTRY)
        ) from None


__all__ = [
    "Architecture",
    "Params",
    "architecture_names",
    "decoder_norms",
    "get_architecture",
    "register_architecture",
]
