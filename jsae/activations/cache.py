"""Activations cached on disk: written in shards, resumably; read back globally shuffled.

Layout of a cache directory (format "jsae-activation-cache", version 1):

    manifest.json                  what is in the cache and how far writing got
    shards/000000/0.npy            [n_tokens, d_in of hook 0]   activations, in token order
    shards/000000/1.npy            [n_tokens, d_in of hook 1]   (one file per hook)
    shards/000000/token_ids.npy    [n_tokens] int32             the token at each row
    shards/000001/...

`manifest.json` holds `hook_names`, `d_in` per hook, `dtype`, `context_size` (tokens per
context after seqpos_slice), the list of complete shards with their token counts, the token
source's position after the last complete shard (so an interrupted run continues there),
`complete`, and the settings that produced the cache (model, dataset, packing...). Each shard
directory is written to a temporary name and renamed into place, and the manifest is
replaced atomically after it, so a killed writer leaves a valid cache that `resume` extends.
bfloat16 activations are stored as their uint16 bit patterns (`"dtype": "bfloat16"`).
Replacing a cache (`overwrite=True`) writes the new one beside it and swaps it in when
complete; a directory that is not a cache is never written into or deleted.

Reading shuffles across all shards at once: row `i` of an epoch is row `perm(i)` of the
whole cache, where `perm` is a seeded pseudo-random permutation of `[0, n_tokens)` computed
on the fly (a Feistel network with cycle walking: no index array, any cache size), and each
process reads every `process_count`-th permuted row. Rows are gathered from memory-mapped
shard files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jsae.activations.prefetch import Prefetcher
from jsae.config import canonical_dtype
from jsae.errors import ConfigError, FormatError
from jsae.fsutil import atomic_output_dir, atomic_write_bytes, recover_interrupted, replace_dir

FORMAT_NAME = "jsae-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"


def _shard_name(index: int) -> str:
    return f"{index:06d}"


def _storage(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _to_storage(arr: Any, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return np.ascontiguousarray(np.asarray(arr).astype(ml_dtypes.bfloat16).view(np.uint16))
    return np.ascontiguousarray(np.asarray(arr, dtype))


def _from_storage(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return arr.view(ml_dtypes.bfloat16)
    return arr


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a cache directory, with clear errors for what is not one."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        hint = (
            " (it looks like a SAELens Arrow cache)"
            if (path / "dataset_info.json").exists()
            else ""
        )
        raise FormatError(f"{path} is not a jsae activation cache: {MANIFEST} is missing{hint}.")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{file} is not valid JSON ({exc}).") from None
    if manifest.get("format") != FORMAT_NAME:
        raise FormatError(f"{file} is not a {FORMAT_NAME} manifest.")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise FormatError(
            f"{path} was written by a newer jsae (format version {manifest['version']}); "
            "upgrade jsae."
        )
    return manifest


# ------------------------------------------------------------------------------ writing


def _existing_cache(path: Path) -> dict[str, Any] | None:
    """The manifest of the cache at `path`; None when nothing is there (or an empty directory).

    Anything else (a file, a directory holding other things) is refused: the writer never
    writes into, or deletes, a directory that is not an activation cache.
    """
    if not path.exists():
        return None
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory; choose another path.")
    if (path / MANIFEST).exists():
        return read_manifest(path)
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"{path} exists and is not a jsae activation cache (it holds {shown}); choose an "
            "empty or new directory. Overwriting replaces activation caches only, never other "
            "directories."
        )
    return None


def _foreign_entries(path: Path) -> list[str]:
    """Names in a cache directory that a cache writer did not put there."""
    ours = (MANIFEST, SHARDS_DIR)
    return sorted(
        p.name
        for p in path.iterdir()
        if p.name not in ours and not p.name.startswith(f".{MANIFEST}.tmp-")
    )


class CacheWriter:
    """Appends shards to a cache directory; reopening an unfinished cache resumes it.

    `settings` (JSON data: model, hooks, dataset, packing...) identify what is cached; a
    resumed run must pass the same settings, so two different runs never mix in one cache.

    `overwrite=True` replaces an existing activation cache (never any other non-empty
    directory): the new cache is written beside it, in `.<name>.replacement`, and swapped in by
    `finish()`, so until the new cache is complete the old one stays whole and readable. An
    interrupted replacement with the same settings is resumed by the next `overwrite=True` run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        hook_names: Sequence[str],
        d_in: Mapping[str, int],
        dtype: str = "float32",
        context_size: int,
        settings: Mapping[str, Any] | None = None,
        resume: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.target = Path(path)  # where the finished cache lives
        self.path = self.target  # where shards are written now (a sibling while replacing)
        self.hook_names = list(hook_names)
        self.dtype = canonical_dtype(dtype)  # "torch.float32", np.float32 -> "float32"
        fresh = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "hook_names": self.hook_names,
            "d_in": {h: int(d_in[h]) for h in self.hook_names},
            "dtype": self.dtype,
            "context_size": int(context_size),
            "settings": json.loads(json.dumps(dict(settings or {}))),
            "shards": [],
            "n_tokens": 0,
            "source_state": None,
            "complete": False,
        }
        recover_interrupted(self.target.resolve())  # a swap killed between its two renames
        existing = _existing_cache(self.target)
        if existing is not None and overwrite:
            foreign = _foreign_entries(self.target)
            if foreign:
                raise FileExistsError(
                    f"{self.target} holds an activation cache but also {foreign}, which a cache "
                    "does not; move them away before replacing the cache, or choose another "
                    "directory."
                )
            real = self.target.resolve()  # "." or a symlink: stage beside the real directory
            self.path = real.parent / f".{real.name}.replacement"
            staged = _existing_cache(self.path)
            if staged is not None and resume and not self._differences(staged, fresh):
                self.manifest = staged  # an interrupted replacement: continue it
                if self.complete:  # it was finished, but killed while being swapped in
                    replace_dir(self.path, real)
                    self.path = self.target
                return
            if staged is not None:
                shutil.rmtree(self.path)
        elif existing is not None:
            if not resume:
                raise FileExistsError(
                    f"{self.path} already holds an activation cache; pass resume=True to "
                    "extend it or overwrite=True to replace it (jsae cache: --overwrite)."
                )
            diff = self._differences(existing, fresh)
            if diff:
                raise ConfigError(
                    f"{self.path} holds a cache made with different {diff} "
                    f"(cached: {[existing.get(k) for k in diff]}, now: "
                    f"{[fresh[k] for k in diff]}); write to another directory or pass "
                    "overwrite=True (jsae cache: --overwrite) to replace it."
                )
            self.manifest = existing
            return
        (self.path / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self.manifest = fresh
        self._save_manifest()

    @staticmethod
    def _differences(manifest: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
        keys = ("hook_names", "d_in", "dtype", "context_size", "settings")
        return [k for k in keys if manifest.get(k) != fresh[k]]

    # -------------------------------------------------------------- properties

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def source_state(self) -> dict[str, Any] | None:
        """The token source's position after the last complete shard (None when empty)."""
        return self.manifest["source_state"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    # -------------------------------------------------------------- writing

    def _save_manifest(self) -> None:
        atomic_write_bytes(self.path / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def add_shard(
        self,
        activations: Mapping[str, Any],
        token_ids: Any,
        source_state: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one shard (all hooks, same rows) and record it; atomic as a whole."""
        token_ids = np.asarray(token_ids, np.int32).reshape(-1)
        n = len(token_ids)
        arrays = {}
        for i, hook in enumerate(self.hook_names):
            arr = np.asarray(activations[hook])
            expected = (n, self.manifest["d_in"][hook])
            if arr.shape != expected:
                raise ConfigError(
                    f"activations for {hook} have shape {arr.shape}, expected {expected}."
                )
            arrays[f"{i}.npy"] = _to_storage(arr, self.dtype)
        name = _shard_name(self.n_shards)
        with atomic_output_dir(self.path / SHARDS_DIR / name, overwrite=True) as tmp:
            for file, arr in arrays.items():
                np.save(tmp / file, arr)
            np.save(tmp / "token_ids.npy", token_ids)
        self.manifest["shards"].append({"name": name, "n_tokens": n})
        self.manifest["n_tokens"] = self.n_tokens + n
        self.manifest["source_state"] = json.loads(json.dumps(source_state))
        self._save_manifest()

    def finish(self) -> None:
        """Mark the cache complete (and, when replacing a cache, swap the new one in)."""
        self.manifest["complete"] = True
        self._save_manifest()
        if self.path != self.target:
            replace_dir(self.path, self.target.resolve())
            self.path = self.target


# ------------------------------------------------------------------------------ permutation


class FeistelPermutation:
    """A seeded pseudo-random permutation of `[0, n)`, evaluated on index arrays.

    A balanced Feistel network on the smallest even-bit domain holding `n` is a bijection of
    that domain; indices that land outside `[0, n)` are mapped again until they fall inside
    (cycle walking), which keeps it a bijection of `[0, n)`. Memory is O(1) in `n`.
    """

    def __init__(self, n: int, seed: int | Sequence[int], rounds: int = 6) -> None:
        if n <= 0:
            raise ConfigError("cannot permute an empty range.")
        self.n = int(n)
        bits = max(2, int(np.ceil(np.log2(n))))
        bits += bits % 2
        self.half = bits // 2
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng(seed)
        self.keys = rng.integers(0, 2**32, rounds, dtype=np.uint64)

    def _round_fn(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        h = (x * np.uint64(0x9E3779B97F4A7C15) + key) & np.uint64(0xFFFFFFFFFFFFFFFF)
        h ^= h >> np.uint64(29)
        h = (h * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        h ^= h >> np.uint64(32)
        return h & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left = x >> np.uint64(self.half)
        right = x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round_fn(right, key)
        return (left << np.uint64(self.half)) | right

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        x = np.asarray(idx, np.uint64)
        with np.errstate(over="ignore"):
            out = self._encrypt(x)
            outside = out >= self.n
            while outside.any():
                out[outside] = self._encrypt(out[outside])
                outside = out >= self.n
        return out.astype(np.int64)


# ------------------------------------------------------------------------------ reading


class CachedActivations:
    """Batches `[batch_size, d_in]` (or a dict per hook) read back from a cache directory.

    Each epoch visits every cached row once in a seeded random order spanning all shards;
    `batch_size` is this process's batch. Rows whose token id is in `exclude_token_ids` are
    skipped. Endless unless `loop=False`; `state()` / `restore()` resume exactly.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        hook_names: Sequence[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        exclude_token_ids: Sequence[int] | None = None,
        loop: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        allow_incomplete: bool = False,
    ) -> None:
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise FormatError(
                f"{self.path} is an unfinished cache ({self.manifest['n_tokens']} tokens written); "
                "finish it with `jsae cache` (it resumes), or pass allow_incomplete=True."
            )
        if self.manifest["n_tokens"] == 0:
            raise FormatError(f"{self.path} holds no activations.")
        cached = self.manifest["hook_names"]
        self.hook_names = list(hook_names) if hook_names is not None else list(cached)
        unknown = [h for h in self.hook_names if h not in cached]
        if unknown:
            raise ConfigError(
                f"the cache at {self.path} has no activations for {unknown}; it holds {cached}."
            )
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.loop = shuffle, int(seed), loop
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.prefetch = int(prefetch)
        self.dtype = self.manifest["dtype"]
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}.")
        if not 0 <= self.process_index < self.process_count:
            raise ConfigError(
                f"process_index {process_index} is outside [0, process_count={process_count})."
            )
        self._open_shards()
        if self._positions_per_epoch() == 0:
            raise ConfigError(
                f"the cache at {self.path} holds {self.n_tokens} rows, fewer than the "
                f"{self.process_count} processes reading it: process {self.process_index} "
                "gets none. Cache more tokens or read with fewer processes."
            )
        self.exclude = (
            None if not exclude_token_ids else np.asarray(list(exclude_token_ids), np.int32)
        )
        self.epoch = 0
        self.consumed = 0  # permuted positions this process has read in the current epoch
        self._thread: Prefetcher | None = None
        self._state = {"epoch": 0, "consumed": 0}

    def _open_shards(self) -> None:
        self.acts: dict[str, list[np.ndarray]] = {h: [] for h in self.hook_names}
        self.token_ids: list[np.ndarray] = []
        hook_index = {h: i for i, h in enumerate(self.manifest["hook_names"])}
        counts = []
        for shard in self.manifest["shards"]:
            d = self.path / SHARDS_DIR / shard["name"]
            try:
                for h in self.hook_names:
                    arr = np.load(d / f"{hook_index[h]}.npy", mmap_mode="r")
                    self.acts[h].append(arr)
                ids = np.load(d / "token_ids.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FormatError(f"shard {d} is missing or unreadable ({exc}).") from None
            if len(ids) != shard["n_tokens"] or any(
                a[-1].shape != (shard["n_tokens"], self.manifest["d_in"][h])
                for h, a in self.acts.items()
            ):
                raise FormatError(f"shard {d} does not match the manifest; the cache is corrupt.")
            self.token_ids.append(ids)
            counts.append(shard["n_tokens"])
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_tokens = int(self.offsets[-1])

    # -------------------------------------------------------------- index plan

    def _positions_per_epoch(self) -> int:
        """How many permuted positions belong to this process in one epoch."""
        n, p, i = self.n_tokens, self.process_count, self.process_index
        return (n - i + p - 1) // p

    def _rows_for(self, epoch: int, start: int, count: int) -> np.ndarray:
        """Global row indices at this process's permuted positions [start, start + count)."""
        pos = (
            np.arange(start, start + count, dtype=np.int64) * self.process_count
        ) + self.process_index
        if not self.shuffle:
            return pos
        return FeistelPermutation(self.n_tokens, seed=(self.seed, epoch))(pos)

    def _gather(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        shard = np.searchsorted(self.offsets, sorted_rows, side="right") - 1
        local = sorted_rows - self.offsets[shard]
        out = {
            h: np.empty((len(rows), self.manifest["d_in"][h]), _storage(self.dtype))
            for h in self.hook_names
        }
        ids = np.empty(len(rows), np.int32)
        for s in np.unique(shard):
            sel = shard == s
            idx = local[sel]
            dest = order[sel]
            for h in self.hook_names:
                out[h][dest] = self.acts[h][s][idx]
            ids[dest] = self.token_ids[s][idx]
        return {h: _from_storage(a, self.dtype) for h, a in out.items()}, ids

    def _next_batch(self) -> dict[str, np.ndarray]:
        """The next `batch_size` kept rows of the endless sequence of epochs.

        A batch larger than this process's share of the cache spans several epochs (rows then
        repeat within it, each epoch in its own order); only an epoch read from its start
        without keeping a single row means there is nothing to read.
        """
        parts: list[dict[str, np.ndarray]] = []
        have = 0
        epoch_start_have = have if self.consumed == 0 else None  # None: began mid-epoch
        per_epoch = self._positions_per_epoch()
        while have < self.batch_size:
            if self.consumed >= per_epoch:
                if not self.loop:
                    raise StopIteration
                if epoch_start_have == have:
                    raise ConfigError(
                        f"every cached row this process reads is excluded (exclude_token_ids "
                        f"removes all {per_epoch} of them); nothing to read."
                    )
                self.epoch += 1
                self.consumed = 0
                epoch_start_have = have
                continue
            count = min(self.batch_size - have, per_epoch - self.consumed)
            rows = self._rows_for(self.epoch, self.consumed, count)
            self.consumed += count
            acts, ids = self._gather(rows)
            if self.exclude is not None:
                keep = ~np.isin(ids, self.exclude)
                acts = {h: a[keep] for h, a in acts.items()}
            parts.append(acts)
            have += len(next(iter(acts.values())))
        return {h: np.concatenate([p[h] for p in parts]) for h in self.hook_names}

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> CachedActivations:
        return self

    def __next__(self) -> Any:
        if self.prefetch > 0:
            if self._thread is None:
                self._thread = Prefetcher(self._produce, self.prefetch)
            item, state = self._thread.get()
            self._state = state
        else:
            item = self._next_batch()
        return item[self.hook_names[0]] if len(self.hook_names) == 1 else item

    def _produce(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
        while True:
            try:
                batch = self._next_batch()
            except StopIteration:
                return
            yield batch, {"epoch": self.epoch, "consumed": self.consumed}

    def state(self) -> dict[str, int]:
        """Position of the next batch (JSON-serialisable), in the order of `seed`."""
        if self._thread is not None:
            return {**self._state, "seed": self.seed}
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def restore(self, state: Mapping[str, int]) -> None:
        saved_seed = state.get("seed", self.seed)  # states written before the seed was kept
        if self.shuffle and int(saved_seed) != self.seed:
            raise ConfigError(
                f"the saved position is in the cache's shuffled order for seed {saved_seed}, "
                f"but this reader shuffles with seed {self.seed}: going on would repeat some "
                f"rows and skip others. Resume with seed={saved_seed}."
            )
        self.close()
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._state = {"epoch": self.epoch, "consumed": self.consumed}

    def close(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self._thread.close()
            self._thread = None

    def __del__(self) -> None:
        self.close()


# ------------------------------------------------------------------------------ SAELens caches


def import_saelens_cache(
    source: str | Path, path: str | Path, *, shard_tokens: int = 1 << 20, overwrite: bool = False
) -> Path:
    """Convert a SAELens activation cache (an Arrow dataset) into a jsae cache directory.

    SAELens's `CacheActivationsRunner` writes one row per context: a column per hook holding
    `[context_size, d_in]` and optionally `token_ids` `[context_size]`. Rows are copied in
    order (context by context, tokens flattened).
    """
    import datasets

    ds = datasets.load_from_disk(str(source))
    if isinstance(ds, datasets.DatasetDict):
        raise FormatError(f"{source} holds several splits {list(ds)}; point at one of them.")
    hooks = [c for c in ds.column_names if c != "token_ids"]
    shapes = {h: getattr(ds.features[h], "shape", None) for h in hooks}
    if not hooks or any(s is None or len(s) != 2 for s in shapes.values()):
        raise FormatError(
            f"{source} is not a SAELens activation cache: expected columns of [context, d_in] "
            f"arrays (and token_ids), found {ds.features}."
        )
    context = {s[0] for s in shapes.values()}
    if len(context) != 1:
        raise FormatError(f"{source}: hook columns disagree on the context size {shapes}.")
    ctx = context.pop()
    dtype = str(ds.features[hooks[0]].dtype)
    writer = CacheWriter(
        path,
        hook_names=hooks,
        d_in={h: shapes[h][1] for h in hooks},
        dtype=dtype,
        context_size=ctx,
        settings={"imported_from": str(Path(source).resolve())},
        resume=False,
        overwrite=overwrite,
    )
    ds = ds.with_format("numpy")
    rows = max(1, int(shard_tokens) // ctx)
    for start in range(0, len(ds), rows):
        chunk = ds[start : start + rows]
        n = len(chunk[hooks[0]])
        ids = chunk["token_ids"] if "token_ids" in chunk else np.full((n, ctx), -1, np.int32)
        writer.add_shard(
            {h: np.asarray(chunk[h]).reshape(n * ctx, -1) for h in hooks},
            np.asarray(ids).reshape(-1),
        )
    writer.finish()
    return Path(path)


def export_saelens_cache(
    path: str | Path, out: str | Path, *, hook_names: Sequence[str] | None = None
) -> Path:
    """Write a jsae cache as a SAELens activation cache (Arrow, `datasets.save_to_disk`).

    SAELens trains on it with `use_cached_activations=True, cached_activations_path=out`.
    Rows are contexts (`[context_size, d_in]` per hook, `token_ids`); every shard must hold
    whole contexts, which caches written by `jsae cache` do.
    """
    import datasets

    manifest = read_manifest(path)
    names = list(hook_names or manifest["hook_names"])
    ctx, dtype = int(manifest["context_size"]), manifest["dtype"]
    if dtype == "bfloat16":
        raise FormatError("SAELens's Arrow caches have no bfloat16; export a float32 cache.")
    reader = CachedActivations(path, 1, hook_names=names, shuffle=False, prefetch=0)
    features = datasets.Features(
        {
            **{h: datasets.Array2D(shape=(ctx, manifest["d_in"][h]), dtype=dtype) for h in names},
            "token_ids": datasets.Sequence(datasets.Value("int32"), length=ctx),
        }
    )

    def rows():
        for i in range(len(reader.token_ids)):
            ids = np.asarray(reader.token_ids[i])
            if len(ids) % ctx:
                raise FormatError(f"shard {i} of {path} does not hold whole contexts.")
            acts = {
                h: np.asarray(reader.acts[h][i]).reshape(-1, ctx, manifest["d_in"][h])
                for h in names
            }
            for j, seq in enumerate(ids.reshape(-1, ctx)):
                yield {**{h: acts[h][j] for h in names}, "token_ids": seq}

    with tempfile.TemporaryDirectory() as scratch, atomic_output_dir(out) as tmp:
        # a fresh datasets cache: generator fingerprints can never hit another cache's rows
        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=scratch)
        ds.save_to_disk(str(tmp))
    return Path(out)
