"""`top_k` as TopK and AuxK rank latents: `lax.top_k`'s exact result, on each backend's fast path.

XLA's CPU backend has a fast top-k for float32 only; on bfloat16 it falls back to a sort
that took 11.7 s instead of 0.18 s for the per-row top-32 of a [4096, 16384] batch on a 2-core
CPU (`benchmarks/bench_train.py --parts select` shows the flat case), so narrow floats are
ranked in float32. XLA:GPU sorts a whole row to take its top k, so on GPUs the row is ranked
in two stages (`blocked_top_k`). Widening and blocking are exact and keep every order and
tie, so values and indices equal `lax.top_k`'s on every backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Narrowest block of the two-stage top-k by platform (`jax.default_backend()`), where it was
# measured faster than one stage (`benchmarks/bench_train.py --parts topk`); elsewhere one
# stage. On an H100 the top-32 of [4096, 16384] took 2.9 ms in blocks of 512 against 5.0 ms in
# one stage, and the top-384 took 4.5 ms in blocks of 2048 against 5.1 ms (XLA:GPU sorts each
# row); on CPUs one stage is fastest (136 ms against 273 ms and more).
BLOCK_BY_PLATFORM: dict[str, int] = {"gpu": 512}


def top_k(x: jax.Array, k: int, block: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` along the last axis, ranked in float32 when `x` is a narrower float.

    `block`: rank in two stages of this width (`blocked_top_k`), with the same values,
    indices and order; 0 ranks in one stage; None takes the platform's `BLOCK_BY_PLATFORM`.
    Returns (values in x's dtype, int32 indices), each [..., k].
    """
    if block is None:
        block = _platform_block(k)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        vals, idx = top_k(x.astype(jnp.float32), k, block)
        return vals.astype(x.dtype), idx
    if k <= block < x.shape[-1] and x.shape[-1] % block == 0:
        return blocked_top_k(x, k, block)
    return jax.lax.top_k(x, k)


def _platform_block(k: int) -> int:
    """This platform's block width for a top-k: its narrowest, widened to at least 4k (a
    block narrower than that keeps most of itself as candidates); 0 for one stage."""
    narrowest = BLOCK_BY_PLATFORM.get(jax.default_backend(), 0)
    return max(narrowest, 1 << (4 * k - 1).bit_length()) if narrowest else 0


def blocked_top_k(x: jax.Array, k: int, block: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k` in two stages: the k largest of each `block` consecutive entries, then the
    k largest of those candidates.

    Exact: the row's k largest are among its blocks' k largest. Ties keep `lax.top_k`'s order
    (lower index first): candidates are laid out by block, then by rank within the block. Two
    short top-ks replace one over the whole row, which XLA:GPU lowers to a sort of the row.
    """
    *lead, n = x.shape
    n_blocks = n // block
    vals, idx = jax.lax.top_k(x.reshape(*lead, n_blocks, block), k)  # [..., n_blocks, k]
    idx = idx + (jnp.arange(n_blocks, dtype=idx.dtype) * block)[:, None]
    top, pos = jax.lax.top_k(vals.reshape(*lead, n_blocks * k), k)  # [..., k]
    return top, jnp.take_along_axis(idx.reshape(*lead, n_blocks * k), pos, axis=-1)


__all__ = ["blocked_top_k", "top_k"]
