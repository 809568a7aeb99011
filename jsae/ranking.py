"""`top_k` as TopK and AuxK rank latents: `lax.top_k`'s exact result, on each backend's fast path.

XLA's CPU backend has a fast top-k for float32 only; on bfloat16 it falls back to a sort
that took 11.7 s instead of 0.18 s for the per-row top-32 of a [4096, 16384] batch on a 2-core
CPU (`benchmarks/bench_train.py --parts select` shows the flat case), so narrow floats are
ranked in float32. XLA:GPU sorts a whole row to take its top k, so on GPUs the row is ranked
in two stages (`blocked_top_k`), or, where `PEEL_BY_PLATFORM` says so, in passes of a top-k
narrow enough for the backend's own kernel (`peeled_top_k`). Widening, blocking and peeling are
exact and keep every order and tie, so values and indices equal `lax.top_k`'s on every backend.

TopK's dense path needs only the mask of those k entries, not their order: `top_k_mask` can
find it by counting instead (`counting_top_k_mask`, a radix select of each row's k-th largest
value in a few fused counting passes, no sort), where `COUNTING_MASK_PLATFORMS` says it is
the faster way.
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

# Widest top-k pass by platform, where `top_k` of a larger k takes several such passes
# (`peeled_top_k`); elsewhere none. XLA:GPU has its own top-k kernel for small k (at most 16 in
# recent XLA) and sorts the whole row above that. Empty until measured faster
# (`benchmarks/bench_train.py --parts topk`): on a 2-core CPU two top-16 passes took longer than
# one top-32, and peeling has not yet run on a GPU.
PEEL_BY_PLATFORM: dict[str, int] = {}
MAX_PEELS = 4  # a top-k needing more passes than this ranks in one stage or blocks

# Platforms whose `top_k_mask` counts (`counting_top_k_mask`) rather than ranks; elsewhere the
# mask comes from `top_k`'s indices. Empty until a platform measures it faster
# (`benchmarks/bench_train.py --parts topk`): on a 2-core CPU the top-32 mask of a float32
# [4096, 16384] batch took 1.12-3.47 s counted (1-4 bits per pass) against 169 ms from the
# indices, and counting has not yet run on a GPU.
COUNTING_MASK_PLATFORMS: tuple[str, ...] = ()
RADIX_BITS = 2  # bits of the k-th largest value settled per counting pass


def top_k(x: jax.Array, k: int, block: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` along the last axis, ranked in float32 when `x` is a narrower float.

    `block`: rank in two stages of this width (`blocked_top_k`), with the same values,
    indices and order; 0 ranks in one stage; None takes the platform's choice: passes of
    `PEEL_BY_PLATFORM`'s width (`peeled_top_k`; one pass when k fits) where that takes at most
    `MAX_PEELS`, else blocks of `BLOCK_BY_PLATFORM`'s.
    Returns (values in x's dtype, int32 indices), each [..., k].
    """
    peel = 0
    if block is None:
        peel = PEEL_BY_PLATFORM.get(jax.default_backend(), 0)
        peel = peel if k <= MAX_PEELS * peel and jnp.issubdtype(x.dtype, jnp.floating) else 0
        block = 0 if peel else _platform_block(k)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        wide = x.astype(jnp.float32)
        vals, idx = peeled_top_k(wide, k, peel) if peel else top_k(wide, k, block)
        return vals.astype(x.dtype), idx
    if peel:
        return peeled_top_k(x, k, peel)
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


def peeled_top_k(x: jax.Array, k: int, width: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k` in passes of at most `width`: each pass takes the next largest after the
    entries already taken are set to -inf.

    Exact whenever every entry a later pass takes is above -inf, as the k largest of a row of
    trained pre-activations are; a row whose later passes reach -inf or NaN (where a taken
    entry could tie) is ranked in one stage instead, for the whole batch (`lax.cond`). Ties keep
    `lax.top_k`'s order: each pass takes the lower index first. For backends whose own top-k
    kernel serves only small k (XLA:GPU, k <= 16) and sorts each row above it.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"peeled_top_k takes floats, not {x.dtype}")
    if k <= width:
        return jax.lax.top_k(x, k)
    rest, vals, idx = x, [], []
    for start in range(0, k, width):
        v, i = jax.lax.top_k(rest, min(width, k - start))  # [..., <= width]
        vals.append(v)
        idx.append(i)
        if start + width < k:
            rest = jnp.put_along_axis(rest, i, -jnp.inf, axis=-1, inplace=False)
    vals, idx = jnp.concatenate(vals, axis=-1), jnp.concatenate(idx, axis=-1)  # [..., k]
    exact = jnp.all(vals[..., width:] > -jnp.inf)  # False on NaN too
    return jax.lax.cond(exact, lambda: (vals, idx), lambda: tuple(jax.lax.top_k(x, k)))


def top_k_mask(x: jax.Array, k: int, counting: bool | None = None) -> jax.Array:
    """Mask of `lax.top_k(x, k)`'s entries along the last axis: the k largest of each row, ties
    to the lower index. bool [..., N]

    `counting`: find it by `counting_top_k_mask` (True) or from `top_k`'s indices (False);
    None takes the platform's choice (`COUNTING_MASK_PLATFORMS`). Both give the same mask.
    """
    if counting is None:
        counting = jax.default_backend() in COUNTING_MASK_PLATFORMS
    if counting and _countable(x):
        return counting_top_k_mask(x, k)
    _, idx = top_k(x, k)  # [..., k]
    n = x.shape[-1]
    rows = x.size // n
    flat = jnp.zeros((rows, n), bool).at[jnp.arange(rows)[:, None], idx.reshape(rows, k)]
    return flat.set(True).reshape(x.shape)


def _countable(x: jax.Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits in (16, 32)


def _ordered_keys(x: jax.Array) -> tuple[jax.Array, int]:
    """(unsigned integers in the order of `x`'s floats, their bit width): the float's bits with
    the sign bit set for positives, all bits flipped for negatives. uint32 [...]

    This is the total order: -0 below +0, infinities at the ends, NaNs beyond them by sign,
    the order `lax.top_k` ranks in.
    """
    bits = jnp.finfo(x.dtype).bits
    u = jax.lax.bitcast_convert_type(x, {16: jnp.uint16, 32: jnp.uint32}[bits])
    u = u.astype(jnp.uint32)
    sign, every = jnp.uint32(1 << (bits - 1)), jnp.uint32((1 << bits) - 1)
    return jnp.where(u & sign, ~u & every, u | sign), bits


def _digit_spans(bits: int, radix_bits: int) -> list[tuple[int, int]]:
    """(shift, width) of each digit of a `bits`-wide key, most significant first."""
    spans = []
    while bits > 0:
        width = min(radix_bits, bits)
        bits -= width
        spans.append((bits, width))
    return spans


def _radix_select(
    keys: jax.Array, bits: int, wanted: jax.Array, radix_bits: int, where: jax.Array | None
) -> jax.Array:
    """The largest t with #{keys >= t} >= wanted in each row (the wanted-th largest key), one
    digit of `radix_bits` per counting pass; only entries under `where` count. uint32 [...]"""
    t = jnp.zeros(keys.shape[:-1], jnp.uint32)
    for shift, width in _digit_spans(bits, radix_bits):
        digits = jnp.arange(1, 1 << width, dtype=jnp.uint32) << shift  # [D]
        candidates = t[..., None] | digits  # [..., D]
        at_least = keys[..., None, :] >= candidates[..., :, None]  # [..., D, N]
        if where is not None:
            at_least &= where[..., None, :]
        counts = jnp.sum(at_least, axis=-1, dtype=jnp.int32)  # [..., D], falling with D
        digit = jnp.sum(counts >= wanted[..., None], axis=-1, dtype=jnp.int32)  # [...]
        t |= digit.astype(jnp.uint32) << shift
    return t


def counting_top_k_mask(x: jax.Array, k: int, radix_bits: int = RADIX_BITS) -> jax.Array:
    """`top_k_mask` without ranking: each row's k-th largest value found by radix select.

    `radix_bits` bits of the value's order-preserving key are settled per pass, from the most
    significant, by counting the row's entries at or above each candidate digit (one fused
    reduction). Entries above the k-th largest are kept; of those equal to it, the first ones
    by index until k are kept, found the same way over the reversed index (skipped when every
    row keeps all its ties). Exact: 32 / radix_bits passes for float32 values (16 / radix_bits
    for 16-bit floats), plus up to log2(N) / radix_bits for ties. x [..., N] -> bool [..., N]
    """
    if not _countable(x):
        raise ValueError(f"counting_top_k_mask takes 16- or 32-bit floats, not {x.dtype}")
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the last axis), got {k}")
    keys, bits = _ordered_keys(x)  # [..., N]
    kth = _radix_select(keys, bits, jnp.full(x.shape[:-1], k, jnp.int32), radix_bits, None)
    above = keys > kth[..., None]  # [..., N]
    ties = keys == kth[..., None]
    wanted = k - jnp.sum(above, axis=-1, dtype=jnp.int32)  # [...] ties to keep, >= 1

    def first_ties() -> jax.Array:
        reversed_index = jax.lax.broadcasted_iota(jnp.uint32, x.shape, x.ndim - 1)
        reversed_index = jnp.uint32(n - 1) - reversed_index  # larger = earlier
        index_bits = max((n - 1).bit_length(), 1)
        last = _radix_select(reversed_index, index_bits, wanted, radix_bits, ties)
        return ties & (reversed_index >= last[..., None])

    every_tie = jnp.all(jnp.sum(ties, axis=-1, dtype=jnp.int32) == wanted)
    return above | jax.lax.cond(every_tie, lambda: ties, first_ties)


__all__ = ["blocked_top_k", "counting_top_k_mask", "peeled_top_k", "top_k", "top_k_mask"]
