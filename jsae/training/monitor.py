"""What a run reports: a JSONL metrics file (always), Weights & Biases (optional), a progress bar.

Metric keys are SAELens's (`losses/*`, `metrics/*`, `sparsity/*`, `details/*`), so dashboards
built for SAELens runs read jsae runs. Every logged row also goes to the JSONL file as
`{"step": n, ...}`; on resume, rows past the checkpoint's step are dropped first, so the file
tells one consistent history.

wandb: without credentials (no WANDB_API_KEY, no `wandb login` netrc entry) and no explicit
WANDB_MODE, the run logs offline (one line says so and how to sync) instead of failing or
prompting; it never blocks on the network in that case.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jsae.errors import ConfigError
from jsae.fsutil import atomic_write_bytes


def wandb_credentials_available() -> bool:
    """Whether wandb could authenticate without prompting (env key, token file or netrc)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = host.split("://", 1)[-1].split("/", 1)[0]
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunLogger:
    """JSONL + wandb sink for metric rows; the progress bar lives in `ProgressBar`."""

    def __init__(
        self,
        config: Any,
        metrics_path: Path,
        *,
        resume_step: int | None = None,
        wandb_id: str | None = None,
    ):
        self.config = config
        self.metrics_path = Path(metrics_path)
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _truncate_after(self.metrics_path, resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._file = self.metrics_path.open("a")
        self.wandb = None
        logging = config.logging
        if logging.log_to_wandb:
            self.wandb = self._start_wandb(resume=resume_step is not None, run_id=wandb_id)

    def _start_wandb(self, *, resume: bool, run_id: str | None) -> Any:
        """A wandb run: `wandb_id` from the config, else the resumed checkpoint's run (so a
        resumed run goes on in the same wandb run), else a new one."""
        import wandb

        logging = self.config.logging
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not wandb_credentials_available():
            mode = "offline"
            where = logging.wandb_dir or os.environ.get("WANDB_DIR") or os.getcwd()
            print(
                "jsae: no wandb credentials (set WANDB_API_KEY or run `wandb login`); logging "
                f"wandb offline under {where}/wandb (upload later with `wandb sync`).",
                file=sys.stderr,
            )
        if logging.wandb_dir:
            Path(logging.wandb_dir).mkdir(parents=True, exist_ok=True)
        try:
            return wandb.init(
                project=logging.wandb_project,
                entity=logging.wandb_entity,
                id=logging.wandb_id or run_id,
                name=self.config.run_name,
                config=self.config.to_dict(flat=True),
                dir=logging.wandb_dir,
                mode=mode,
                resume="allow" if resume or logging.wandb_id or run_id else None,
            )
        except wandb.errors.UsageError as exc:  # e.g. WANDB_MODE=online without an API key
            self._file.close()
            raise ConfigError(
                f"wandb could not start a run (WANDB_MODE={mode}): {exc} Log in (`wandb login` "
                "or WANDB_API_KEY), unset WANDB_MODE to log offline when there are no "
                "credentials, or set log_to_wandb=false."
            ) from None

    def log(self, step: int, row: dict[str, Any]) -> None:
        """Write one row of scalar metrics (numbers or arrays of one element)."""
        clean = {k: _scalar(v) for k, v in row.items()}
        strict = {  # NaN/Inf -> null: the file stays strict JSON (a failed step's row)
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in clean.items()
        }
        self._file.write(json.dumps({"step": step, **strict}) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_histograms(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Histograms (wandb only; the JSONL file keeps scalars)."""
        if self.wandb is not None:
            import wandb

            self.wandb.log(
                {k: wandb.Histogram(np.asarray(v)) for k, v in arrays.items()}, step=step
            )

    def log_artifact(self, directory: Path, name: str) -> None:
        if self.wandb is None:
            return
        import wandb

        # wandb names allow letters, digits, '-', '_' and '.': the default run name has a '+'
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "__"))
        artifact = wandb.Artifact(safe, type="model")
        artifact.add_dir(str(directory))
        self.wandb.log_artifact(artifact)

    def close(self) -> None:
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class ProgressBar:
    """tqdm over tokens: shows tokens/s and the ETA; updated without host synchronisation."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="tok",
                unit_scale=True,
                desc="Training SAE",
                dynamic_ncols=True,
                smoothing=0.1,
            )
        self._last = time.perf_counter()

    def update(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens)

    def describe(self, step: int, losses: dict[str, float]) -> None:
        if self.bar is not None:
            text = " | ".join(f"{k.split('/')[-1]}: {v:.4g}" for k, v in losses.items())
            self.bar.set_description(f"{step}| {text}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scalar(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype == bool:
        return bool(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    return float(arr)


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the rows logged before `step` (rows of an interrupted run's lost steps go)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", -1) < step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a killed run
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


__all__ = ["ProgressBar", "RunLogger", "wandb_credentials_available"]
