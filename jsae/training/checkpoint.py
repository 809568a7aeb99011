"""Checkpoints of a training run: the device state with orbax, the host state beside it.

    <checkpoint_path>/
      training_config.yaml          the run's configuration
      metrics.jsonl                 logged metrics (see jsae.training.monitor)
      state/<step>/                 orbax checkpoint of the TrainState (all processes write)
      host/<step>.p<process>.json   per-process host state: samples seen, activation scale,
                                    the source's position (+ .npz with rows not yet trained on),
                                    the weight gradients' orientation (weight_grad_layout)

orbax writes each step into a temporary directory renamed into place when complete, and the
host files are written atomically before it, so a run killed at any moment leaves only complete
checkpoints (an unfinished one is ignored and cleaned up on the next start).

Several processes (multi-host): every process takes part in each save and restore (orbax writes
each process's shards and commits the step once all are written), so `checkpoint_path` must be a
directory all processes share. Each process keeps its own host file, because each reads its own
part of every batch. The step to resume is process 0's newest, so all processes restore the
same one. A checkpoint resumes with the number of processes that wrote it, or with any number
when it is *portable*: its source's position is global (`position_is_global`, as for the
synthetic and `.npy` sources) and no leftover rows are held, so process 0's host state is
every process's. orbax re-shards the device state onto the new mesh either way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jsae.errors import ConfigError, FormatError
from jsae.fsutil import atomic_write_bytes, recover_interrupted_in

_HOST_FILE = re.compile(r"^(\d+)\.p\d+\.(json|npz)$")  # <step>.p<process>.json / .npz


class Checkpointer:
    """Save and restore `(TrainState, host state, leftover arrays)` by step.

    `read_only`: only restore (resuming into another directory, loading a checkpoint as an
    SAE). Such a reader creates nothing and leaves alone the temporary directory of a step that
    a run training in `directory` is writing at that moment; the writer cleans up after itself.
    """

    def __init__(self, directory: str | Path, *, keep: int | None = None, read_only: bool = False):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).expanduser().absolute()
        if read_only and not (self.directory / "state").is_dir():
            raise ConfigError(f"no checkpoint to resume from in {self.directory}.")
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            self.directory / "state",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=not read_only,
                create=not read_only,  # (orbax's own read_only logs two warnings per open)
            ),
        )

    def _host_file(self, step: int, suffix: str) -> Path:
        return self.directory / "host" / f"{step}.p{jax.process_index()}{suffix}"

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step (process 0's view, shared with every process)."""
        step = self.manager.latest_step()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            chosen = multihost_utils.broadcast_one_to_all(np.int32(-1 if step is None else step))
            step = None if int(chosen) < 0 else int(chosen)
        return step

    def save(
        self,
        step: int,
        state: Any,
        host: dict[str, Any],
        arrays: dict[str, np.ndarray],
        *,
        portable: bool = False,
    ) -> None:
        """Write checkpoint `step` (every process calls this). `portable`: the host state is
        the same on every process and holds no leftover rows, so another number of processes
        may resume from it."""
        if arrays:
            import io

            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(self._host_file(step, ".npz"), buffer.getvalue())
        host = {
            **host,
            "has_arrays": bool(arrays),
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "portable": bool(portable and not arrays),
        }
        atomic_write_bytes(self._host_file(step, ".json"), json.dumps(host).encode())
        self.manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        self._prune_host_files()

    def update_host(self, step: int, **fields: Any) -> None:
        """Set `fields` in this process's host state of checkpoint `step` (atomically)."""
        path = self._host_file(step, ".json")
        host = {**json.loads(path.read_text()), **fields}
        atomic_write_bytes(path, json.dumps(host).encode())

    def _prune_host_files(self) -> None:
        """Delete this process's host files of steps orbax no longer keeps, and what writers
        of host files killed mid-write on this host left behind (hidden temporary files)."""
        kept = set(self.steps())
        host_dir = self.directory / "host"
        recover_interrupted_in(host_dir)
        for file in host_dir.glob(f"*.p{jax.process_index()}.*"):
            match = _HOST_FILE.match(file.name)  # the glob picked this process's files
            if match is None:
                continue  # a hidden temporary file, or not a host file
            step = int(match.group(1))
            if step not in kept and step < max(kept, default=0):
                file.unlink(missing_ok=True)

    def read_host(
        self, step: int, *, source_position: bool = True
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(host state, leftover arrays) of checkpoint `step` for this process.

        With several processes, all of them fail together when one cannot read its state
        (instead of the others waiting forever in the restore that follows). With
        `source_position=False` (reading the SAE, not continuing the run) any process count
        reads process 0's state, whose fields other than the source's position serve all.
        """
        error: Exception | None = None
        try:
            found = self._read_own_host(step, source_position)
        except (ConfigError, FormatError) as exc:
            error = exc
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            failed = multihost_utils.process_allgather(np.int32(error is not None))
            if error is None and failed.any():
                raise FormatError(
                    f"checkpoint {step} in {self.directory}: process(es) "
                    f"{np.flatnonzero(failed).tolist()} could not read their host state "
                    "(their errors say why)."
                )
        if error is not None:
            raise error
        return found

    def _read_own_host(
        self, step: int, source_position: bool = True
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        host_file = self._host_file(step, ".json")
        host = json.loads(host_file.read_text()) if host_file.is_file() else None
        if host is None or host.get("process_count", 1) != jax.process_count():
            # Another number of processes: process 0's state serves all when it is portable
            # (or when the source's position is not wanted).
            first = self.directory / "host" / f"{step}.p0.json"
            shared = json.loads(first.read_text()) if first.is_file() else None
            if shared is not None and (shared.get("portable") or not source_position):
                return shared, {}
            count = (host or shared or {}).get("process_count")
            if count is None or count == jax.process_count():
                written_by = sorted(
                    p.name.split(".")[1] for p in (self.directory / "host").glob(f"{step}.p*.json")
                )
                raise FormatError(
                    f"checkpoint {step} in {self.directory} has no host state for process "
                    f"{jax.process_index()} ({host_file.name}; found {written_by or 'none'}). "
                    "Resume with the number of processes that wrote it, from a checkpoint_path "
                    "all processes share."
                )
            raise ConfigError(
                f"checkpoint {step} in {self.directory} was written by {count} process(es) but "
                f"this run has {jax.process_count()}: each process saved its own position in "
                "its activation source (a source whose position is global, like the synthetic "
                f"and npy sources, resumes under any count), so resume with num_processes={count}."
            )
        arrays: dict[str, np.ndarray] = {}
        if host.get("has_arrays"):
            with np.load(self._host_file(step, ".npz")) as data:
                arrays = {k: data[k] for k in data.files}
        return host, arrays

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The TrainState of checkpoint `step`, placed like `abstract_state` (shardings)."""
        return self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract_state))

    def delete(self, step: int) -> None:
        """Remove checkpoint `step` (its orbax directory; its host files are rewritten or
        pruned with the next save)."""
        self.manager.delete(step)

    def close(self) -> None:
        self.manager.close()


__all__ = ["Checkpointer"]
