"""`ActivationStore`: a language model's activations at one or more hooks, as training batches.

    store = ActivationStore(model, TokenSource(dataset, model.tokenizer, context_size=128),
                            hook_names="blocks.4.hook_resid_post", batch_size=4096)
    sae = jsae.train(config, store)                  # batches [4096, d_in], already on device

Per model batch (`store_batch_size_prompts` contexts), one jitted step runs the model up to
the deepest requested hook, cuts positions (`seqpos_slice`), picks a head
(`hook_head_index`) or flattens heads (`attn.hook_z`), drops special tokens, and appends the
rows to an on-device mixing buffer (`jsae.activations.buffer`); full buffers are shuffled on
device and served as batches. Several hooks share one forward and one shuffle, so a batch
holds the same tokens at every hook (`{hook: [B, d_in]}`). Reading and tokenizing the dataset
runs in a background thread, overlapping the device work. Each process reads its own share
of the dataset and yields its own share of each batch (`batch_size / process_count` rows).

`state()` / `restore()` resume the stream: the token source's position, the buffer's RNG
key, and with `include_buffer=True` the buffered rows too, making the resumed stream
identical to the uninterrupted one.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.activations.buffer import BufferLayout, MixingBuffer, write_rows
from jsae.activations.prefetch import Prefetcher
from jsae.activations.tokenization import resolve_exclude_special_tokens
from jsae.config import canonical_dtype, jax_dtype
from jsae.errors import ConfigError, ShapeError
from jsae.models.hooked import check_token_ids


def seqpos_to_slice(seqpos_slice: Any) -> slice:
    """SAELens's `seqpos_slice` tuple (start, stop, step) as a slice; None keeps every position."""
    if seqpos_slice is None:
        return slice(None)
    if isinstance(seqpos_slice, slice):
        return seqpos_slice
    parts = tuple(seqpos_slice)
    if len(parts) > 3:
        raise ConfigError(f"seqpos_slice has at most 3 entries (start, stop, step), got {parts}.")
    return slice(*parts)


def sliced_length(context_size: int, seqpos_slice: Any) -> int:
    """Positions kept per context by a `seqpos_slice`."""
    return len(range(context_size)[seqpos_to_slice(seqpos_slice)])


def hook_width(shape: Sequence[int], head_index: int | None, hook_name: str) -> int:
    """d_in of the activation at a hook with per-token `shape`, after head selection/flattening."""
    shape = tuple(shape)
    if head_index is not None:
        if len(shape) != 2:
            raise ConfigError(
                f"hook_head_index={head_index} needs a hook with a head axis ([n_heads, d_head] "
                f"per token); {hook_name} has per-token shape {shape}."
            )
        if not 0 <= head_index < shape[0]:
            raise ConfigError(
                f"hook_head_index={head_index} out of range: {hook_name} has {shape[0]} heads."
            )
        return int(shape[1])
    return int(math.prod(shape))


def select_heads(acts: jax.Array, head_index: int | None) -> jax.Array:
    """[B, T, *shape] -> [B, T, d]: one head, or every head flattened (SAELens hook_z rule)."""
    if head_index is not None:
        return acts[:, :, head_index]
    if acts.ndim > 3:
        return acts.reshape(*acts.shape[:2], -1)
    return acts


def _per_hook(value: Any, hook_names: Sequence[str], what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(hook_names)
        if unknown:
            raise ConfigError(
                f"{what} names hooks {sorted(unknown)} that are not in hook_names "
                f"{list(hook_names)}."
            )
        return {h: value.get(h) for h in hook_names}
    return {h: value for h in hook_names}


def check_context_size(model: Any, context_size: int) -> None:
    """Refuse a context longer than the model's positions, before any work is done."""
    n_ctx = getattr(model, "n_ctx", None)
    if n_ctx is not None and context_size > n_ctx:
        raise ConfigError(
            f"context_size={context_size} exceeds the model's {n_ctx} positions; use a "
            f"context_size of at most {n_ctx}."
        )


class ActivationStore:
    """An endless iterator of activation batches from a model fed by a token source."""

    def __init__(
        self,
        model: Any,
        source: Any,
        *,
        hook_names: str | Sequence[str],
        batch_size: int,
        store_batch_size_prompts: int = 32,
        n_batches_in_buffer: int = 20,
        activations_mixing_fraction: float = 0.5,
        seqpos_slice: Any = (None,),
        hook_head_index: int | Mapping[str, int | None] | None = None,
        exclude_special_tokens: Any = False,
        dtype: str = "float32",
        seed: int = 0,
        shuffle: bool = True,
        prefetch: int = 2,
        d_in: int | Mapping[str, int] | None = None,
        context_size: int | None = None,
        process_count: int | None = None,
        sharding: Any = None,
    ) -> None:
        self.model = model
        self.source = source
        self.hook_names = (
            [hook_names] if isinstance(hook_names, str) else list(dict.fromkeys(hook_names))
        )
        if not self.hook_names:
            raise ConfigError("hook_names is empty; name at least one hook.")
        self.context_size = int(context_size or getattr(source, "context_size", 0))
        if self.context_size <= 0:
            raise ConfigError("context_size is unknown: pass context_size= or a TokenSource.")
        check_context_size(model, self.context_size)
        self.seqpos = seqpos_to_slice(seqpos_slice)
        self.positions = sliced_length(self.context_size, self.seqpos)
        if self.positions == 0:
            raise ConfigError(
                f"seqpos_slice={seqpos_slice} keeps no position of a "
                f"{self.context_size}-token context."
            )
        self.head_index = _per_hook(hook_head_index, self.hook_names, "hook_head_index")
        # Unknown hook names raise here, listing the valid ones (the model checks them).
        self.d_in = {
            h: hook_width(model.hook_shape(h), self.head_index[h], h) for h in self.hook_names
        }
        if d_in is not None:
            want = _per_hook(d_in, self.hook_names, "d_in")
            for h in self.hook_names:
                if want[h] is not None and int(want[h]) != self.d_in[h]:
                    raise ShapeError(
                        f"the activations at {h} have d_in={self.d_in[h]} but {want[h]} was "
                        "expected (the SAE's d_in); check hook_name and hook_head_index."
                    )
        self.exclude = resolve_exclude_special_tokens(
            exclude_special_tokens, getattr(model, "tokenizer", None)
        )
        self.dtype = canonical_dtype(dtype)
        self.process_count = int(
            process_count if process_count is not None else jax.process_count()
        )
        if batch_size % self.process_count:
            raise ConfigError(
                f"batch_size={batch_size} must divide evenly over {self.process_count} processes."
            )
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // self.process_count
        self.prompts = int(store_batch_size_prompts)
        chunk = self.prompts * self.positions
        self.layout = BufferLayout.make(
            capacity=int(n_batches_in_buffer) * chunk,
            chunk_rows=chunk,
            batch_size=self.local_batch_size,
            mix_fraction=float(activations_mixing_fraction),
        )
        self.width = sum(self.d_in.values())
        self.buffer = MixingBuffer(
            self.layout, self.width, dtype=jax_dtype(self.dtype), seed=seed, shuffle=shuffle
        )
        self.sharding = sharding
        self.prefetch = int(prefetch)
        self._step = self._build_step()
        self._prefetcher: Prefetcher | None = None
        self._served: dict[str, jax.Array] | None = None  # {hook: [n, B, d]} shuffled batches
        self._served_next = 0
        self._served_count = 0
        self._source_state = self._source_position()

    # -------------------------------------------------------------- device work

    def _build_step(self) -> Any:
        key = (
            tuple(self.hook_names),
            (self.seqpos.start, self.seqpos.stop, self.seqpos.step),
            tuple(self.head_index[h] for h in self.hook_names),
            tuple(self.d_in[h] for h in self.hook_names),
            self.dtype,
        )
        if not hasattr(self.model, "apply_with_cache"):
            raise ConfigError(
                f"{type(self.model).__name__} has no apply_with_cache(params, tokens, names): "
                "use a jsae.load_model model (or one with the same pure-function interface)."
            )
        per_model = _STEPS.setdefault(self.model, {})
        if key not in per_model:
            per_model[key] = _fused_step(self.model, key)
        return per_model[key]

    # -------------------------------------------------------------- host work

    def _source_position(self) -> Any:
        return self.source.state() if hasattr(self.source, "state") else None

    def _token_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
        """(tokens [P, T], keep [P * T'], source position after them), forever."""
        if hasattr(self.source, "next_batch"):
            while True:
                tokens = self.source.next_batch(self.prompts)
                yield tokens, self._keep(tokens), self._source_position()
        else:
            for tokens in self._iter_source_batches():
                yield tokens, self._keep(tokens), None

    def _iter_source_batches(self) -> Iterator[np.ndarray]:
        batch = []
        for item in self.source:
            arr = np.asarray(item, np.int32)
            for row in arr.reshape(-1, arr.shape[-1]):
                batch.append(row)
                if len(batch) == self.prompts:
                    yield np.stack(batch)
                    batch = []

    def _keep(self, tokens: np.ndarray) -> np.ndarray:
        if tokens.shape != (self.prompts, self.context_size):
            raise ShapeError(
                f"token batch has shape {tokens.shape}, expected "
                f"{(self.prompts, self.context_size)}."
            )
        check_token_ids(tokens, getattr(getattr(self.model, "config", None), "vocab_size", None))
        kept = tokens[:, self.seqpos]
        if self.exclude is None:
            return np.ones(kept.size, bool)
        return ~np.isin(kept, self.exclude).reshape(-1)

    def _next_tokens(self) -> tuple[np.ndarray, np.ndarray, Any]:
        if self.prefetch <= 0:
            if not hasattr(self, "_sync_iter"):
                self._sync_iter = self._token_batches()
            return next(self._sync_iter)
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._token_batches, self.prefetch)
        return self._prefetcher.get()

    def _refill(self) -> None:
        while not self.buffer.ready:
            tokens, keep, position = self._next_tokens()
            buf = self._step(
                self.model.params,
                self.buffer.buf,
                jnp.asarray(tokens),
                jnp.asarray(keep),
                jnp.int32(self.buffer.fill),
            )
            self.buffer.commit(buf, int(keep.sum()))
            self._source_state = position
        widths = tuple(self.d_in[h] for h in self.hook_names)
        self._served = dict(
            zip(self.hook_names, _split_columns(self.buffer.drain(), widths), strict=True)
        )
        self._served_next = 0
        self._served_count = self.layout.n_serve // self.layout.batch_size

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> ActivationStore:
        return self

    def __next__(self) -> Any:
        """The next batch: `[B, d_in]` for one hook, `{hook: [B, d_in]}` for several."""
        out = {h: self.place(x) for h, x in self.next_rows().items()}
        return out[self.hook_names[0]] if len(self.hook_names) == 1 else out

    def next_rows(self) -> dict[str, jax.Array]:
        """The next batch as this process's rows, `{hook: [B / process_count, d_in]}`, before
        `place` puts them on the store's sharding."""
        if self._served is None or self._served_next >= self._served_count:
            self._refill()
        i = self._served_next
        self._served_next += 1
        return {h: v[i] for h, v in self._served.items()}

    def place(self, x: jax.Array) -> jax.Array:
        """This process's rows of a batch as the array a consumer gets (a global array over
        `sharding` when one is set)."""
        if self.sharding is None:
            return x
        if self.process_count > 1:
            return jax.make_array_from_process_local_data(self.sharding, x)
        return jax.device_put(x, self.sharding)

    def hook_iterators(
        self, max_lag: int = 4, reads: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, Iterator[Any]]:
        """One iterator per hook over the shared stream, safe to consume from several threads.

        Each batch is produced once (one model forward) and handed to every hook's iterator;
        an iterator more than `max_lag` batches ahead of the slowest one waits for it, so
        consumers run in lockstep and memory stays bounded (see `train_saes`). The iterators
        are resumable sources: a checkpoint of each restores the stream each consumer saw, on a
        new store built with the same settings, without running the model again over the
        batches already consumed. `reads` names other consumers instead: `{name: [hook]}`, or
        `{name: [hook_in, hook_out]}` for one of `(x, y)` pairs (a transcoder).
        """
        from jsae.activations.hook_views import HookViews

        return HookViews(self, max_lag, reads).views

    # -------------------------------------------------------------- state

    def state(self, include_buffer: bool = False) -> dict[str, Any]:
        """Where the stream stands: the token source position and the buffer's RNG key.

        With `include_buffer=True` the buffered rows and the batches already shuffled but not
        yet served are included (host arrays), so `restore` continues the identical stream;
        without them a restored store refills its buffer from the source position.
        """
        out: dict[str, Any] = {
            "source": self._source_state,
            "buffer": self.buffer.state(include_rows=include_buffer),
        }
        if include_buffer and self._served is not None:
            out["served"] = {
                h: np.asarray(v[self._served_next : self._served_count])
                for h, v in self._served.items()
            }
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state()` of a store built with the same settings."""
        if "buffer" not in state:
            shared = "hooks" in state  # a position of one hook's view of a shared store
            raise ConfigError(
                f"the checkpoint was taken by train_saes, training one SAE per hook of a store of "
                f"{list(state['hooks'])}; resume it with train_saes on a store of those hooks "
                "(or of the hook alone), built with the same settings."
                if shared
                else "this position is not an ActivationStore's state(); resume with the source "
                "the run was trained on."
            )
        self.close()
        if state.get("source") is not None:
            if not hasattr(self.source, "restore"):
                raise ConfigError(
                    "this store's token source cannot be restored (it has no restore())."
                )
            self.source.restore(state["source"])
        self._source_state = state.get("source")
        self.buffer.restore(state["buffer"])
        self._served, self._served_next, self._served_count = None, 0, 0
        served = state.get("served")
        if served is not None and len(served[self.hook_names[0]]):
            self._served = {
                h: jnp.asarray(served[h], jax_dtype(self.dtype)) for h in self.hook_names
            }
            self._served_count = len(served[self.hook_names[0]])

    def close(self) -> None:
        """Stop the background reader."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        if hasattr(self, "_sync_iter"):
            del self._sync_iter

    def __del__(self) -> None:
        if getattr(self, "_prefetcher", None) is not None:
            self._prefetcher.close()


# Compiled steps per model and per (hooks, slice, heads, widths, dtype): stores built with the
# same settings reuse one compiled function instead of compiling again.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rows(cache: Mapping[str, jax.Array], key: tuple) -> jax.Array:
    """`[B * T', sum d_in]` rows from a model cache, per the step key's settings."""
    hook_names, seqpos, heads, widths, dtype = key
    parts = []
    for h, head, d in zip(hook_names, heads, widths, strict=True):
        acts = select_heads(cache[h][:, slice(*seqpos)], head)
        parts.append(acts.reshape(-1, d).astype(jax_dtype(dtype)))
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


@partial(jax.jit, static_argnums=1)
def _split_columns(served: jax.Array, widths: tuple[int, ...]) -> list[jax.Array]:
    """[n, B, sum d] -> one [n, B, d] array per hook."""
    bounds = np.cumsum((0, *widths))
    return [served[..., a:b] for a, b in itertools.pairwise(bounds)]


def _fused_step(model: Any, key: tuple) -> Any:
    """One jitted function: forward to the deepest hook, cut rows, append to the buffer."""
    hook_names = list(key[0])

    def step(params, buf, tokens, keep, fill):
        _, cache = model.apply_with_cache(params, tokens, hook_names, stop_at_layer=True)
        return write_rows(buf, _rows(cache, key), keep, fill)

    return jax.jit(step, donate_argnums=1)


def rows_fn(
    model: Any,
    hook_names: Sequence[str],
    *,
    seqpos_slice: Any = (None,),
    hook_head_index: Any = None,
    dtype: str = "float32",
) -> Any:
    """Jitted `(params, tokens [P, T]) -> {hook: [P * T', d_in]}`, unshuffled (for caching)."""
    hook_names = list(hook_names)
    heads = _per_hook(hook_head_index, hook_names, "hook_head_index")
    seqpos = seqpos_to_slice(seqpos_slice)
    widths = tuple(hook_width(model.hook_shape(h), heads[h], h) for h in hook_names)
    key = (
        tuple(hook_names),
        (seqpos.start, seqpos.stop, seqpos.step),
        tuple(heads[h] for h in hook_names),
        widths,
        canonical_dtype(dtype),
    )
    per_model = _STEPS.setdefault(model, {})
    if ("rows", key) not in per_model:

        def fn(params, tokens):
            _, cache = model.apply_with_cache(params, tokens, hook_names, stop_at_layer=True)
            rows = _rows(cache, key)
            return dict(zip(hook_names, _split_columns(rows, widths), strict=True))

        per_model[("rows", key)] = jax.jit(fn)
    return per_model[("rows", key)]
