"""The on-device mixing buffer on its own: every kept row served once, mixing, sizing, state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.activations.buffer import BufferLayout, MixingBuffer, write_rows
from jsae.errors import ConfigError

write = jax.jit(write_rows, donate_argnums=0)


def _feed(buf: MixingBuffer, chunks: int, chunk: int, rng, start: int = 0):
    """Write chunks of rows whose value is their global index; drop some; serve when full."""
    served, kept = [], []
    for c in range(chunks):
        ids = np.arange(start + c * chunk, start + (c + 1) * chunk)
        keep = rng.random(chunk) > 0.2
        rows = jnp.asarray(np.repeat(ids[:, None], buf.width, 1).astype(np.float32))
        buf.commit(write(buf.buf, rows, jnp.asarray(keep), jnp.int32(buf.fill)), keep.sum())
        kept.extend(ids[keep].tolist())
        while buf.ready:
            served.append(np.asarray(buf.drain()))
    return served, kept


def test_every_kept_row_is_served_at_most_once_and_batches_mix() -> None:
    layout = BufferLayout.make(capacity=48, chunk_rows=16, batch_size=8, mix_fraction=0.5)
    assert layout.n_serve == 24 and layout.rows == 64
    buf = MixingBuffer(layout, 3, seed=1)
    served, kept = _feed(buf, 30, 16, np.random.default_rng(0))
    rows = np.concatenate([s.reshape(-1, 3) for s in served])
    assert (rows == rows[:, :1]).all(), "rows stay whole"
    ids = rows[:, 0].astype(int)
    assert len(set(ids.tolist())) == len(ids), "no row served twice"
    assert set(ids.tolist()) <= set(kept), "dropped rows never served"
    assert len(ids) + buf.fill == len(kept), "nothing lost: served plus held"
    first = served[0].reshape(-1, 8, 3)[0, :, 0]
    assert np.ptp(first) > 16, "a batch mixes rows from several chunks"


def test_same_seed_same_stream_and_state_resumes_it() -> None:
    layout = BufferLayout.make(capacity=32, chunk_rows=8, batch_size=8, mix_fraction=0.25)
    a, b = MixingBuffer(layout, 2, seed=3), MixingBuffer(layout, 2, seed=3)
    sa, _ = _feed(a, 10, 8, np.random.default_rng(1))
    state = a.state(include_rows=True)
    sb, _ = _feed(b, 10, 8, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(sa, sb, strict=True))
    c = MixingBuffer(layout, 2, seed=0)
    c.restore(state)
    more_a, _ = _feed(a, 6, 8, np.random.default_rng(2), start=1000)
    more_c, _ = _feed(c, 6, 8, np.random.default_rng(2), start=1000)
    assert more_a and all(np.array_equal(x, y) for x, y in zip(more_a, more_c, strict=True))


def test_buffer_sizes_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"too few to serve a batch of 64.*at least 128"):
        BufferLayout.make(capacity=100, chunk_rows=10, batch_size=64, mix_fraction=0.5)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        BufferLayout.make(capacity=100, chunk_rows=10, batch_size=8, mix_fraction=1.0)
    buf = MixingBuffer(BufferLayout.make(32, 8, 8, 0.5), 4)
    with pytest.raises(ConfigError, match="does not fit"):
        buf.restore({"seed": 0, "draws": 0, "rows": np.zeros((3, 5))})
