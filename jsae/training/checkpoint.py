"""Checkpoints of a training run: the device state with orbax, the host state beside it.

    <checkpoint_path>/
      training_config.yaml          the run's configuration
      metrics.jsonl                 logged metrics (see jsae.training.monitor)
      state/<step>/                 orbax checkpoint of the TrainState (all processes write)
      host/<step>.p<process>.json   per-process host state: samples seen, activation scale,
                                    the source's position (+ .npz with rows not yet trained on)

orbax writes each step into a temporary directory renamed into place when complete, and the
host files are written atomically before it, so a run killed at any moment leaves only complete
checkpoints (an unfinished one is ignored and cleaned up on the next start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jsae.errors import FormatError
from jsae.fsutil import atomic_write_bytes


class Checkpointer:
    """Save and restore `(TrainState, host state, leftover arrays)` by step."""

    def __init__(self, directory: str | Path, *, keep: int | None = None):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).expanduser().absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            self.directory / "state",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def _host_file(self, step: int, suffix: str) -> Path:
        return self.directory / "host" / f"{step}.p{jax.process_index()}{suffix}"

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, state: Any, host: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        """Write checkpoint `step` (every process calls this)."""
        if arrays:
            import io

            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(self._host_file(step, ".npz"), buffer.getvalue())
        host = {**host, "has_arrays": bool(arrays)}
        atomic_write_bytes(self._host_file(step, ".json"), json.dumps(host).encode())
        self.manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        self._prune_host_files()

    def _prune_host_files(self) -> None:
        kept = set(self.steps())
        for file in (self.directory / "host").glob(f"*.p{jax.process_index()}.*"):
            step = int(file.name.split(".")[0])
            if step not in kept and step < max(kept, default=0):
                file.unlink(missing_ok=True)

    def read_host(self, step: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(host state, leftover arrays) of checkpoint `step` for this process."""
        host_file = self._host_file(step, ".json")
        if not host_file.is_file():
            raise FormatError(
                f"checkpoint {step} in {self.directory} has no host state for process "
                f"{jax.process_index()} ({host_file.name}); it is incomplete."
            )
        host = json.loads(host_file.read_text())
        arrays: dict[str, np.ndarray] = {}
        if host.get("has_arrays"):
            with np.load(self._host_file(step, ".npz")) as data:
                arrays = {k: data[k] for k in data.files}
        return host, arrays

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The TrainState of checkpoint `step`, placed like `abstract_state` (shardings)."""
        return self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        self.manager.close()


__all__ = ["Checkpointer"]
