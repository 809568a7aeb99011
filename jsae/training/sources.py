"""Activation sources: what feeds the trainer, how it is cut into batches, how it resumes.

A source is any iterable of `[B, d_in]` arrays (numpy or jax); transcoder sources yield
`(x [B, d_in], y [B, d_out])` pairs. Batches of any size are re-cut into the configured batch.

Resuming. A source that also implements `ResumableSource` (`state() -> dict` of JSON-able
values, `restore(state)`) is put back exactly where the checkpoint left it. Any other iterable is
re-iterated from the start on resume and fast-forwarded past the batches already used, which is
right for deterministic iterables (a list, a file reader) and is said so in the log.

Sources the CLI can build by name are registered with `register_source(name, factory)`, the
factory taking the `TrainConfig` and the batch rows this process must produce.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np

from jsae.errors import ConfigError, ShapeError, choices_hint

if TYPE_CHECKING:
    from jsae.training.config import TrainConfig


@runtime_checkable
class ResumableSource(Protocol):
    """An activation source that can report and restore its position.

    A source may also set `position_is_global = True`: its `state()` is a position in the
    global stream, the same on every process (each process slicing its share of every global
    batch). A checkpoint of such a source resumes under any number of processes.
    """

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position: after `restore(state)`, iteration continues from here."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Go back to a position returned by `state()`."""
        ...


SourceFactory = Callable[["TrainConfig", int], Iterable[Any]]
_SOURCES: dict[str, SourceFactory] = {}


def register_source(name: str, factory: SourceFactory, *, overwrite: bool = False) -> None:
    """Make `activation_source: name` build its source with `factory(config, rows_per_batch)`."""
    if name in _SOURCES and not overwrite:
        raise ConfigError(f"activation source {name!r} is already registered.")
    _SOURCES[name] = factory


def source_names() -> list[str]:
    return sorted(_SOURCES)


def make_source(config: TrainConfig, rows: int) -> Iterable[Any]:
    """Build the configured source (`config.data.activation_source`)."""
    name = config.data.activation_source
    if name not in _SOURCES:
        raise ConfigError(
            f"unknown activation_source {name!r}; registered sources: {source_names()}."
            + choices_hint(name, _SOURCES)
        )
    return _SOURCES[name](config, rows)


# ------------------------------------------------------------------------------ built-in sources


# SyntheticConfig's fields and the config keys that set them
_SYNTHETIC_KEYS = {
    "structure": "synthetic_structure",
    "n_features": "synthetic_n_features",
    "mean_active": "synthetic_mean_active",
    "correlation": "synthetic_correlation",
    "n_parents": "synthetic_n_parents",
    "noise_std": "synthetic_noise_std",
}


def _synthetic_factory(config: TrainConfig, rows: int) -> Iterable[Any]:
    import jax

    from jsae.activations.synthetic import SyntheticActivations, SyntheticConfig

    data, sae = config.data, config.sae
    try:
        synthetic = SyntheticConfig(
            d_in=sae.d_in,
            n_features=data.synthetic_n_features or 2 * sae.d_in,
            structure=data.synthetic_structure,
            mean_active=data.synthetic_mean_active,
            correlation=data.synthetic_correlation,
            n_parents=data.synthetic_n_parents,
            noise_std=data.synthetic_noise_std,
            d_out=sae.output_dim if sae.is_transcoder else None,
            seed=config.training.seed,
        )
    except ConfigError as exc:  # name the config keys, not SyntheticConfig's fields
        words = "|".join(_SYNTHETIC_KEYS)
        text = re.sub(rf"\b({words})\b", lambda m: _SYNTHETIC_KEYS[m.group(1)], str(exc))
        raise ConfigError(f"activation_source synthetic: {text}") from None
    n_proc = jax.process_count()
    return SyntheticActivations(
        synthetic, batch_size=rows * n_proc, shard_index=jax.process_index(), num_shards=n_proc
    )


def _npy_factory(config: TrainConfig, rows: int) -> Iterable[Any]:
    import jax

    data = config.data
    if not data.activations_path:
        raise ConfigError("activation_source 'npy' needs activations_path (a directory of .npy).")
    if config.sae.is_transcoder and not data.targets_path:
        raise ConfigError("training a transcoder from .npy files needs targets_path as well.")
    n_proc = jax.process_count()
    return NpyDirectorySource(
        data.activations_path,
        batch_size=rows * n_proc,
        targets_path=data.targets_path,
        shard_index=jax.process_index(),
        num_shards=n_proc,
    )


class NpyDirectorySource:
    """Activations stored as `.npy` files of shape [N, d_in] in one directory (name order).

    Files are memory-mapped and read sequentially, one global batch at a time; with several
    processes each takes its own slice of every global batch. With `targets_path` (transcoders)
    a second directory with the same row counts provides the targets. Resumable: the position
    is the number of global rows already read, so it resumes under any number of processes.
    """

    position_is_global = True

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int,
        targets_path: str | Path | None = None,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        self.files = self._list(path)
        self.target_files = self._list(targets_path) if targets_path else None
        self.batch_size = batch_size
        self.shard_index, self.num_shards = shard_index, num_shards
        self.rows_read = 0
        self._arrays = [np.load(f, mmap_mode="r") for f in self.files]
        self._targets = [np.load(f, mmap_mode="r") for f in self.target_files or []]
        for arrays, files, what in (
            (self._arrays, self.files, "[N, d_in]"),
            (self._targets, self.target_files or [], "[N, d_out]"),
        ):
            for arr, file in zip(arrays, files, strict=True):
                if arr.ndim != 2:
                    raise ShapeError(
                        f"{file} holds an array of shape {arr.shape}; expected {what}."
                    )
                if arr.shape[1] != arrays[0].shape[1]:  # caught here, not at a batch mid-run
                    raise ShapeError(
                        f"{file} is {arr.shape[1]} wide but {files[0].name} is "
                        f"{arrays[0].shape[1]}: every file in {file.parent} must be {what} "
                        "with the same width."
                    )
        if self._targets and [len(a) for a in self._arrays] != [len(t) for t in self._targets]:
            raise ShapeError("activations_path and targets_path files must have equal row counts.")
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])

    @staticmethod
    def _list(path: str | Path | None) -> list[Path]:
        directory = Path(path)  # type: ignore[arg-type]
        if not directory.is_dir():
            raise FileNotFoundError(f"activations directory {directory} does not exist.")
        files = sorted(directory.glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"{directory} holds no .npy files.")
        return files

    @property
    def n_rows(self) -> int:
        return int(self._starts[-1])

    def _rows(self, arrays: list[np.ndarray], start: int, stop: int) -> np.ndarray:
        parts = []
        for i, arr in enumerate(arrays):
            lo, hi = max(start, self._starts[i]), min(stop, self._starts[i + 1])
            if lo < hi:
                parts.append(np.asarray(arr[lo - self._starts[i] : hi - self._starts[i]]))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def __iter__(self) -> Iterator[Any]:
        local = self.batch_size // self.num_shards
        while self.rows_read + self.batch_size <= self.n_rows:
            start = self.rows_read + self.shard_index * local
            self.rows_read += self.batch_size
            x = self._rows(self._arrays, start, start + local)
            if self._targets:
                yield x, self._rows(self._targets, start, start + local)
            else:
                yield x

    def state(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.rows_read = int(state["rows_read"])


def _model_factory(config: TrainConfig, rows: int) -> Iterable[Any]:
    from jsae.activations.pipeline import load_model_for, training_source, transcoder_hooks

    transcoder_hooks(config)  # refused before the model loads
    return training_source(config, load_model_for(config.model))


def _cache_factory(config: TrainConfig, rows: int) -> Iterable[Any]:
    from jsae.activations.pipeline import training_source

    return training_source(config)


register_source("synthetic", _synthetic_factory)
register_source("npy", _npy_factory)
register_source("model", _model_factory)  # a language model's activations (jsae.activations)
register_source("cache", _cache_factory)  # a `jsae cache` directory


# ------------------------------------------------------------------------------ batching


class Feeder:
    """Cuts a source into batches of exactly `rows` rows and tracks the position for resuming.

    `next()` returns `(x, y)` (y is x for SAEs). `position()` describes where the next batch
    starts; `restore(position)` goes back there in a fresh process.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        rows: int,
        transcoder: bool,
        widths: tuple[int, int] | None = None,
    ):
        if not isinstance(source, Iterable):
            called = " (a function: pass what it returns, e.g. batches() not batches)"
            raise ShapeError(
                "activations must be an iterable of [B, d_in] arrays (a list, a generator, "
                f"an array of rows), got {type(source).__name__}"
                + (called if callable(source) else "")
                + "."
            )
        self.source = source
        self.rows = rows
        self.transcoder = transcoder
        self.widths = widths  # (d_in, d_out): every item is checked against them
        self.items_read = 0  # source items consumed
        self._iter: Iterator[Any] | None = None
        self._pending: list[tuple[Any, Any]] = []  # leftover (x, y) row blocks
        self._pending_rows = 0
        self._source_state: dict[str, Any] | None = None  # source.state() after items_read

    # ---------------------------------------------------------------- reading

    def _pull(self) -> tuple[Any, Any]:
        if self._iter is None:
            self._iter = iter(self.source)
        item = next(self._iter)  # StopIteration propagates: the source is exhausted
        x, y = self._split(item)
        self._check_item(x, y, self.items_read + 1)
        self.items_read += 1  # only items that fit count as read: `position()` relies on it
        if isinstance(self.source, ResumableSource):
            self._source_state = self.source.state()
        return x, y

    def _check_item(self, x: Any, y: Any, number: int) -> None:
        """Each item as it arrives (`number` counts from 1): items are concatenated when
        batches are re-cut, where a wrong width would fail inside numpy and a row-count
        mismatch would silently pair the wrong inputs and targets."""
        n = _rows(x)
        checks = [("input", x, self.widths[0] if self.widths else None)]
        if self.transcoder:
            checks.append(("target", y, self.widths[1] if self.widths else None))
            if _rows(y) != n:
                raise ShapeError(
                    f"item {number} of the activation source pairs {n} input rows "
                    f"with {_rows(y)} target rows; a transcoder's (x, y) must have equal rows."
                )
        for what, array, width in checks:
            problem = batch_problem(array, width, what)
            if problem:
                raise ShapeError(
                    f"the activation source's item {number} (counting from 1) has {problem}."
                )

    def _split(self, item: Any) -> tuple[Any, Any]:
        if self.transcoder:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ShapeError(
                    "a transcoder's activation source must yield (x, y) pairs: inputs [B, d_in] "
                    f"and targets [B, d_out]; got {type(item).__name__}."
                )
            return item[0], item[1]
        if isinstance(item, tuple | list):
            if len(item) != 1:
                arrays = all(hasattr(part, "shape") for part in item)
                raise ShapeError(
                    f"an SAE's activation source must yield arrays [B, d_in], got a {len(item)}-"
                    "tuple (pairs are for transcoders)."
                    if arrays and len(item) == 2
                    else f"an SAE's activation source must yield arrays [B, d_in], got a Python "
                    f"{type(item).__name__} of {len(item)} items; make each batch an array "
                    "(np.asarray(batch, np.float32))."
                )
            item = item[0]
        return item, item

    def peek(self) -> tuple[Any, Any]:
        """The first rows of the next batch, without consuming them."""
        if not self._pending:
            x, y = self._pull()
            self._pending, self._pending_rows = [(x, y)], _rows(x)
        return self._pending[0]

    def next(self) -> tuple[Any, Any]:
        """The next batch `(x, y)` of exactly `rows` rows."""
        if not self._pending:
            x, y = self._pull()
            if _rows(x) == self.rows:
                return x, y
            self._pending, self._pending_rows = [(x, y)], _rows(x)
        if len(self._pending) == 1 and self._pending_rows >= self.rows:
            # one item holds the batch (a peeked item, or one large array of rows): slice it,
            # not copy what is left of it every step
            ((x, y),) = self._pending
            rest = self._pending_rows - self.rows
            self._pending = [(x[self.rows :], y[self.rows :])] if rest else []
            self._pending_rows = rest
            return x[: self.rows], y[: self.rows]
        while self._pending_rows < self.rows:
            x, y = self._pull()
            self._pending.append((x, y))
            self._pending_rows += _rows(x)
        xs = np.concatenate([np.asarray(p[0]) for p in self._pending])
        ys = (
            xs if not self.transcoder else np.concatenate([np.asarray(p[1]) for p in self._pending])
        )
        rest = self._pending_rows - self.rows
        self._pending = [(xs[self.rows :], ys[self.rows :])] if rest else []
        self._pending_rows = rest
        return xs[: self.rows], ys[: self.rows]

    # ---------------------------------------------------------------- resuming

    def position_is_global(self) -> bool:
        """Whether `position()` means the same on every process and under any process count:
        the source says its state is a global position and no leftover rows are held."""
        return (
            isinstance(self.source, ResumableSource)
            and bool(getattr(self.source, "position_is_global", False))
            and not self._pending
        )

    def position(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able position, arrays) describing where the next batch starts: leftover rows,
        and the rows a buffering source holds (`state(include_buffer=True)`, as the activation
        store has), without which a resumed run would lose them and train on other batches."""
        state = self._source_state
        if isinstance(self.source, ResumableSource) and takes_buffer(self.source):
            state = self.source.state(include_buffer=True)  # no pull since: same position
        state, arrays = _arrays_out(state, "source")
        info: dict[str, Any] = {"items_read": self.items_read, "source": state}
        if self._pending and not isinstance(self.source, ResumableSource):
            # leftover rows are always the last rows of the items read (of several, when an
            # interrupt came while a batch was being put together); a resume re-reads the
            # source anyway, so it takes them from there (one large array of rows would
            # otherwise be saved, nearly whole, in every checkpoint)
            info["tail_rows"] = self._pending_rows
        elif self._pending:
            arrays["x"] = np.concatenate([np.asarray(p[0]) for p in self._pending])
            if self.transcoder:
                arrays["y"] = np.concatenate([np.asarray(p[1]) for p in self._pending])
        return info, arrays

    def restore(self, info: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
        """Return to a position from `position()`; says how (for the log)."""
        self.items_read = int(info["items_read"])
        tail = 0
        if isinstance(self.source, ResumableSource) and info.get("source") is not None:
            state = _arrays_in(info["source"], arrays)
            self.source.restore(state)
            self._source_state = dict(info["source"])
            self._iter = iter(self.source)
            how = "restored the source's position"
        else:
            self._iter = iter(self.source)
            tail = int(info.get("tail_rows") or 0)  # last rows of the items read, not trained on
            recent: list[tuple[int, Any, Any]] = []  # (number, x, y): the fewest holding them
            recent_rows = 0
            for skipped in range(self.items_read):
                try:
                    item = next(self._iter)
                except StopIteration:
                    raise ConfigError(
                        f"the activation source ended after {skipped} items while skipping the "
                        f"{self.items_read} the checkpoint had already used; resume with the "
                        "same source as the interrupted run."
                    ) from None
                if tail:
                    x, y = self._split(item)
                    recent.append((skipped + 1, x, y))
                    recent_rows += _rows(x)
                    while recent_rows - _rows(recent[0][1]) >= tail:
                        recent_rows -= _rows(recent.pop(0)[1])
            items = "item" if self.items_read == 1 else "items"
            how = f"re-read the source and skipped {self.items_read} {items} already used"
        self._pending, self._pending_rows = [], 0
        if tail:
            for number, x, y in recent:
                self._check_item(x, y, number)
            if recent_rows < tail:
                raise ConfigError(
                    f"the activation source has {recent_rows} rows in the {self.items_read} "
                    f"item(s) the checkpoint had read, but the checkpoint had {tail} of them "
                    "left to train on; resume with the same source as the interrupted run."
                )
            if len(recent) == 1:  # the usual case: a slice, no copy
                ((_, x, y),) = recent
            else:
                x = np.concatenate([np.asarray(part[1]) for part in recent])
                y = x if not self.transcoder else np.concatenate([np.asarray(p[2]) for p in recent])
            self._pending, self._pending_rows = [(x[-tail:], y[-tail:])], tail
        if "x" in arrays:
            x = np.asarray(arrays["x"])
            self._pending = [(x, np.asarray(arrays["y"]) if self.transcoder else x)]
            self._pending_rows = len(x)
        return how


def batch_problem(array: Any, width: int | None, what: str, rows: int | None = None) -> str | None:
    """What makes `array` unfit as an SAE's `what` ("input" or "target") batch of `width`
    columns (and `rows` rows, if given), phrased to follow "has"; None if it fits."""
    shape = getattr(array, "shape", None)
    if (
        shape is None
        or len(shape) != 2
        or (width is not None and shape[1] != width)
        or (rows is not None and shape[0] != rows)
    ):
        name = "d_out" if what == "target" else "d_in"
        if shape is not None and len(shape) > 2 and shape[-1] == width:
            hint = f"; flatten the leading axes into rows first: x.reshape(-1, {width})"
        elif what == "target" and shape is not None and len(shape) == 2:
            hint = "; set d_out to the targets' width (it defaults to d_in)"
        elif rows is not None and shape is not None and len(shape) == 2 and shape[1] == width:
            hint = "; a batch passed to Trainer.step(x) is not re-cut: give it that many rows"
        else:
            hint = "; check that the source reads the hook the SAE is configured for"
        return (
            f"{what} shape {None if shape is None else tuple(shape)} but the SAE has "
            f"{name}={width}"
            + (f" and takes [{rows}, {width}] batches" if rows is not None else "")
            + hint
        )
    dtype = getattr(array, "dtype", np.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"a non-float {what} batch: batches must be floating point, got {dtype}"
    return None


def takes_buffer(source: Any) -> bool:
    """Whether `source.state()` takes `include_buffer` (a source holding rows, like the store)."""
    import inspect

    try:
        return "include_buffer" in inspect.signature(source.state).parameters
    except (TypeError, ValueError):
        return False


_ARRAY = "__array__"  # marks where a position's array was moved into the .npz


def _arrays_out(value: Any, key: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON-able copy of a nested state with its arrays replaced by markers, the arrays)."""
    if isinstance(value, Mapping):
        out, arrays = {}, {}
        for k, v in value.items():
            out[k], found = _arrays_out(v, f"{key}.{k}")
            arrays.update(found)
        return out, arrays
    if isinstance(value, list | tuple):
        pairs = [_arrays_out(v, f"{key}.{i}") for i, v in enumerate(value)]
        return [p[0] for p in pairs], {k: a for p in pairs for k, a in p[1].items()}
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) > 0:
        return {_ARRAY: key}, {key: np.asarray(value)}
    return value, {}


def _arrays_in(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of `_arrays_out`."""
    if isinstance(value, Mapping):
        if set(value) == {_ARRAY}:
            return np.asarray(arrays[value[_ARRAY]])
        return {k: _arrays_in(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays_in(v, arrays) for v in value]
    return value


def _rows(x: Any) -> int:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ShapeError(f"activation batches must be arrays [B, d_in], got {type(x).__name__}.")
    if len(shape) != 2:
        flatten = (
            f"; flatten the leading axes into rows first: x.reshape(-1, {shape[-1]})"
            if len(shape) > 2
            else ""
        )
        raise ShapeError(
            f"activation batches must have shape [B, d_in], got {tuple(shape)}{flatten}."
        )
    return int(shape[0])


__all__ = [
    "Feeder",
    "NpyDirectorySource",
    "ResumableSource",
    "make_source",
    "register_source",
    "source_names",
]
