"""An on-device mixing buffer: activation rows in, shuffled `[B, D]` batches out.

Rows arrive in chunks (one model forward's tokens); once `capacity` rows are held, they are
permuted on device, `n_serve` of them leave as training batches and the rest (a fraction
`mix_fraction` of the capacity) stay to mix with the next chunks, so consecutive batches
draw on many documents, as SAELens's mixing buffer does. Every shape is static, so the whole
cycle is two jitted functions and nothing round-trips through the host:

    buf [capacity + chunk, D]     rows [0, fill) are live; the tail absorbs one extra chunk
    write_rows(buf, rows, keep, fill)    kept rows (special tokens dropped) appended at fill
    shuffle_split(buf, seed, i, ...)     -> (buf with the kept rows in front, served [n, B, D])

The host knows `fill` without asking the device (it counts kept tokens from the token ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.errors import ConfigError


def write_rows(buf: jax.Array, rows: jax.Array, keep: jax.Array, fill: jax.Array) -> jax.Array:
    """Append the rows whose `keep` is True at row `fill` (kept rows first, order preserved).

    buf [C + M, D], rows [M, D], keep [M] bool, fill scalar int. Rows past `fill + keep.sum()`
    are scratch and will be overwritten by the next write.
    """
    order = jnp.argsort(~keep, stable=True)  # [M], kept rows first
    return jax.lax.dynamic_update_slice(buf, rows[order].astype(buf.dtype), (fill, 0))


def shuffle_split(
    buf: jax.Array,
    seed: jax.Array,
    draw: jax.Array,
    *,
    capacity: int,
    n_serve: int,
    batch_size: int,
    shuffle: bool,
) -> tuple[jax.Array, jax.Array]:
    """Permute the first `capacity` rows; serve `n_serve` of them as `[n_serve/B, B, D]` batches.

    Returns the buffer with the `capacity - n_serve` unserved rows moved to the front,
    followed by the rows that were beyond `capacity` (written after the buffer filled).
    """
    head = buf[:capacity]
    if shuffle:
        key = jax.random.fold_in(jax.random.key(seed), draw)
        head = head[jax.random.permutation(key, capacity)]
    served = head[:n_serve].reshape(n_serve // batch_size, batch_size, buf.shape[1])
    rest = jnp.concatenate(
        [head[n_serve:], buf[capacity:], jnp.zeros((n_serve, buf.shape[1]), buf.dtype)]
    )
    return rest, served


_split_jit = jax.jit(
    shuffle_split,
    static_argnames=("capacity", "n_serve", "batch_size", "shuffle"),
    donate_argnums=0,
)


@dataclass(frozen=True)
class BufferLayout:
    """Sizes of a mixing buffer, checked once: rows held, rows served per cycle, batch size."""

    capacity: int  # rows held before a shuffle
    chunk_rows: int  # most rows one write can add
    batch_size: int  # rows per served batch
    n_serve: int  # rows served per shuffle (a multiple of batch_size)

    @classmethod
    def make(
        cls, capacity: int, chunk_rows: int, batch_size: int, mix_fraction: float
    ) -> BufferLayout:
        if not 0.0 <= mix_fraction < 1.0:
            raise ConfigError(f"activations_mixing_fraction must be in [0, 1), got {mix_fraction}.")
        if batch_size <= 0 or chunk_rows <= 0:
            raise ConfigError(
                f"batch size and chunk size must be positive ({batch_size}, {chunk_rows})."
            )
        n_serve = int(capacity * (1.0 - mix_fraction)) // batch_size * batch_size
        if n_serve < batch_size:
            need = int(np.ceil(batch_size / (1.0 - mix_fraction)))
            raise ConfigError(
                f"the activation buffer holds {capacity} tokens, too few to serve a batch of "
                f"{batch_size} while keeping a fraction {mix_fraction} for mixing; it needs at "
                f"least {need} tokens: raise n_batches_in_buffer or store_batch_size_prompts, "
                "or lower train_batch_size_tokens."
            )
        return cls(capacity, chunk_rows, batch_size, n_serve)

    @property
    def rows(self) -> int:
        """Allocated rows: the capacity plus room for one chunk written past it."""
        return self.capacity + self.chunk_rows


class MixingBuffer:
    """Host-side bookkeeping around the jitted buffer functions (fill level, shuffle count).

    Shuffle `i` uses the key `fold_in(key(seed), i)`, so the random state is two integers held
    on the host: reading it never waits for the device.
    """

    def __init__(
        self,
        layout: BufferLayout,
        width: int,
        *,
        dtype: Any = jnp.float32,
        seed: int = 0,
        shuffle: bool = True,
        device: Any = None,
    ) -> None:
        self.layout = layout
        self.width = int(width)
        self.dtype = jnp.dtype(dtype)
        self.shuffle = shuffle
        self.device = device
        self.fill = 0
        self.seed = int(seed)
        self.draws = 0  # shuffles done so far
        self.buf = self._zeros()
        self._split = partial(
            _split_jit,
            capacity=layout.capacity,
            n_serve=layout.n_serve,
            batch_size=layout.batch_size,
            shuffle=shuffle,
        )

    def _zeros(self) -> jax.Array:
        return jax.device_put(jnp.zeros((self.layout.rows, self.width), self.dtype), self.device)

    @property
    def ready(self) -> bool:
        """Whether enough rows are held to serve batches."""
        return self.fill >= self.layout.capacity

    def commit(self, buf: jax.Array, n_kept: int) -> None:
        """Install a buffer updated by the caller's own jitted `write_rows` (fused steps)."""
        if self.ready:
            raise RuntimeError("buffer is full; call drain() before adding more rows")
        self.buf = buf
        self.fill += int(n_kept)

    def drain(self) -> jax.Array:
        """Shuffle and serve: `[n_serve / B, B, D]` batches; the unserved rows stay."""
        if not self.ready:
            raise RuntimeError("buffer is not full yet")
        self.buf, served = self._split(self.buf, jnp.uint32(self.seed), jnp.uint32(self.draws))
        self.draws += 1
        self.fill -= self.layout.n_serve
        return served

    # -------------------------------------------------------------- state

    def state(self, include_rows: bool = True) -> dict[str, Any]:
        """Fill level, shuffle seed and count, and (optionally) the held rows, as host data."""
        out: dict[str, Any] = {"fill": self.fill, "seed": self.seed, "draws": self.draws}
        if include_rows:
            out["rows"] = np.asarray(self.buf[: self.fill])
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Back to a `state()`; without saved rows the buffer restarts empty."""
        self.seed, self.draws = int(state["seed"]), int(state["draws"])
        rows = state.get("rows")
        self.buf = self._zeros()
        if rows is None:
            self.fill = 0
            return
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.shape[0] > self.layout.rows:
            raise ConfigError(
                f"saved buffer rows have shape {rows.shape}, which does not fit this buffer "
                f"([{self.layout.rows}, {self.width}]): restore with the same configuration."
            )
        self.buf = self.buf.at[: rows.shape[0]].set(jnp.asarray(rows, self.dtype))
        self.fill = rows.shape[0]
