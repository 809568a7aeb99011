"""BatchTopK's cut (the n-th largest value of a whole batch) found by counting, not sorting.

BatchTopK keeps the `n = k·B` largest pre-activations of a `[B, d_sae]` batch. `lax.top_k`
over the flat batch partially sorts every value (0.59 s for 4096 x 16384 on a 2-core CPU; a
full sort on XLA:GPU), but the selection only needs the cut value `v`: the kept entries are
those above `v` plus, when several entries equal `v`, the first of them in flat order (the
order `lax.top_k` keeps). `v` can be found exactly from counts `#{s > t}`, each one fused pass
over the batch:

1. guess `t` from a strided sample's quantile (a top-k over 1/67 of the values);
2. count, and narrow a bracket `lo < v <= hi` with `#{s > lo} >= n > #{s > hi}` by
   interpolating between its ends in float bit patterns (linear within a binade, logarithmic
   across binades), aiming just past `n` on the side opposite the last count so the bracket
   closes from both ends; bisecting the bit patterns after three passes land on one side,
   and always after 16 passes, so no batch takes more than 48;
3. once at most `band` (8192) values lie in the bracket, gather the blocks of 32 values
   that hold them and take the exact `v` with a small top-k (or `v = hi` when the bracket is
   one float wide).

Counts are exact integers, so the result equals the sort's; typically 3-6 passes. Over a
mesh every count is one `psum` of a scalar instead of gathering every device's candidates.
Only positive values are searched (kept values pass through a ReLU); when fewer than `n`
entries exceed `2**-60` the caller falls back to `lax.top_k`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Thresholds are searched in [TINY, max]: a difference s - t of a float above t is then at
# least 2**-84 (one unit in the last place of t), so `_above` is an exact 0/1 indicator.
_TINY = 2.0**-60
_BIG = 2.0**100
_SAMPLE_STRIDE = 67  # prime: the sample walks every column of a power-of-two-wide batch
_INTERPOLATING_PASSES = 16  # then bisection only: it closes any bracket within 31 passes
_MAX_PASSES = _INTERPOLATING_PASSES + 32
_BLOCK = 32  # the final band is gathered in blocks of this many consecutive values


class Cut(NamedTuple):
    """The n-th largest value of a batch and the counts around it (all replicated scalars)."""

    value: jax.Array  # v (float32)
    n_greater: jax.Array  # #{s > v}
    n_at_least: jax.Array  # #{s >= v}
    found: jax.Array  # False: too few positive values (or the search ran out); use top_k
    passes: jax.Array  # counting passes the search took (for benchmarks)


def settled_float32(scores: jax.Array) -> jax.Array:
    """`scores` as one materialised float32 array that every counting pass reads.

    Counting is exact only if every pass sees the same values. XLA may otherwise recompute
    a producer inside each consumer and, for bfloat16, skip the rounding in some of them
    (excess precision), so two passes could count different numbers. A narrow tensor is
    materialised as itself before widening, and the float32 copy is kept whole
    (`optimization_barrier`, which XLA neither fuses through nor simplifies away).
    """
    if scores.dtype != jnp.float32:  # round here: the narrow values themselves, kept whole
        scores = jax.lax.optimization_barrier(scores)
    return jax.lax.optimization_barrier(scores.astype(jnp.float32))


def _above(s: jax.Array, t: jax.Array) -> jax.Array:
    """1.0 where s > t, else 0.0, in arithmetic form: XLA's CPU backend vectorises it, but runs
    the compare-and-select form (`where(s > t, 1, 0)`) about 3x slower."""
    return jnp.minimum(jnp.maximum(s - t, 0) * jnp.float32(_BIG), 1)


def _count_rows(s: jax.Array, t: jax.Array) -> jax.Array:
    """#{s > t} per row, exact: a row of at most 2**24 ones sums exactly in float32. [B]"""
    return jnp.sum(_above(s, t), axis=-1).astype(jnp.int32)


def nth_largest(
    scores: jax.Array, n: int, axes: tuple[str, ...] | None = None, band: int = 8192
) -> Cut:
    """The n-th largest entry of `scores` [B, N] (1 <= n), exactly, with its neighbour counts.

    Pass the same `settled_float32(scores)` to this and to the mask or index functions.

    `axes`: inside `shard_map`, the mesh axes the batch is split over; counts, maxima and the
    sample are combined across them, so every device gets the global cut. `band` bounds how
    many values the final bracket may hold before they are gathered (in as many blocks of 32).
    """
    s = scores.astype(jnp.float32)  # exact for bf16/f16 scores
    if s.shape[-1] > 2**24:
        raise ValueError(f"rows of {s.shape[-1]} values do not count exactly in float32")
    # bfloat16 values are float32 patterns with 16 zero low bits: search that coarser grid
    shift = 16 if scores.dtype == jnp.bfloat16 else 0

    def total(x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, axes) if axes else x

    def gather(x: jax.Array) -> jax.Array:
        return jax.lax.all_gather(x, axes, tiled=True) if axes else x

    def to_grid(t: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(t, jnp.int32) >> shift

    def from_grid(g: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(g << shift, jnp.float32)

    def count(t: jax.Array) -> jax.Array:
        return total(jnp.sum(_count_rows(s, t)))

    local_sample = s.reshape(-1)[::_SAMPLE_STRIDE]
    sample = gather(local_sample)  # [~size/67] across every device
    size = s.size * (sample.shape[0] // local_sample.shape[0])  # the global batch's entries
    m = min(max(1, round(n * sample.shape[0] / size)), sample.shape[0]) - 1  # 0-based rank
    spread = int(2 * (m + 1) ** 0.5) + 1  # about two standard deviations of the rank
    top = jax.lax.top_k(sample, min(sample.shape[0], m + spread + 1))[0]
    # index with an array: a scalar index into top_k's values makes XLA CPU sort everything
    picks = jnp.asarray([max(m - spread, 0), m, min(m + spread, top.shape[0] - 1)])
    above_guess, guess, below_guess = jnp.take(top, picks)
    tiny = to_grid(jnp.float32(_TINY))
    top_grid = to_grid(jax.lax.pmax(jnp.max(s), axes) if axes else jnp.max(s))

    def searching(st: tuple[jax.Array, ...]) -> jax.Array:
        lo, c_lo, hi, c_hi, _, i, _ = st
        return (i < _MAX_PASSES) & (c_lo >= n) & (hi - lo > 1) & (c_lo - c_hi > band)

    def narrow(st: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        lo, c_lo, hi, c_hi, t, i, streak = st
        # pass 0 counts above TINY (is there anything to search?), pass 1 the sample's guess
        t = jnp.where(i == 0, tiny, jnp.clip(t, lo + 1, hi - 1))
        c = count(from_grid(t))
        is_lo = (c >= n) | (i == 0)  # keeps #{s > lo} >= n > #{s > hi}
        # signed run of passes that landed on the same side (+ below the cut, - above it)
        streak = jnp.where(is_lo, jnp.maximum(streak, 0) + 1, jnp.minimum(streak, 0) - 1)
        lo, c_lo = jnp.where(is_lo, t, lo), jnp.where(is_lo, c, c_lo)
        hi, c_hi = jnp.where(is_lo, hi, t), jnp.where(is_lo, c_hi, c)
        # aim past n on the other side, further each time a pass lands on the same side again
        margin = max(band // 4, 1) * 2 ** jnp.minimum(jnp.abs(streak) - 1, 3)
        aim = jnp.clip(n - jnp.sign(streak) * margin, c_hi + 1, c_lo - 1)
        frac = (c_lo - aim).astype(jnp.float32) / (c_lo - c_hi).astype(jnp.float32)
        # in float bit patterns: linear within a binade, logarithmic across binades
        interpolated = lo + ((hi - lo).astype(jnp.float32) * frac).astype(jnp.int32)
        midpoint = lo + (hi - lo) // 2
        second = to_grid(jnp.where(is_lo, above_guess, below_guess))  # the other side's guess
        stalled = ((jnp.abs(streak) >= 3) & (i >= 3)) | (i >= _INTERPOLATING_PASSES - 1)
        t_next = jnp.select(
            [i == 0, i == 1, stalled], [to_grid(guess), second, midpoint], interpolated
        )
        return lo, c_lo, hi, c_hi, t_next, i + 1, streak

    start = (tiny, jnp.int32(2**31 - 1), top_grid, jnp.int32(0), tiny, jnp.int32(0), jnp.int32(0))
    lo, c_lo, hi, c_hi, _, passes, _ = jax.lax.while_loop(searching, narrow, start)

    # the values in (lo, hi]: at most `band` of them, in at most `band` blocks of 32
    v_lo, v_hi = from_grid(lo), from_grid(hi)
    flat = s.reshape(-1)
    if flat.shape[0] % _BLOCK:  # -inf is never in the band
        flat = jnp.pad(flat, (0, _BLOCK - flat.shape[0] % _BLOCK), constant_values=-jnp.inf)
    blocks = flat.reshape(-1, _BLOCK)  # [n_blocks, 32]
    in_band = jnp.sum(_above(blocks, v_lo) - _above(blocks, v_hi), axis=-1)  # [n_blocks]
    holding = jnp.nonzero(in_band, size=band, fill_value=blocks.shape[0])[0]  # [band]
    picked = jnp.take(blocks, holding, axis=0, mode="fill", fill_value=-jnp.inf)  # [band, 32]
    picked = jnp.where((picked > v_lo) & (picked <= v_hi), picked, -jnp.inf)
    local_top = jax.lax.top_k(picked.reshape(-1), band)[0]
    band_top = jax.lax.top_k(gather(local_top), band)[0] if axes else local_top  # [band]
    rank = jnp.clip(n - c_hi - 1, 0, band - 1)  # v's place among the band's values
    v_band = jnp.take(band_top, rank[None])[0]

    one_float = hi - lo <= 1  # (lo, hi] holds one representable value: hi itself
    value = jnp.where(one_float, v_hi, v_band)
    n_greater = jnp.where(one_float, c_hi, c_hi + jnp.sum(band_top > v_band))
    n_at_least = jnp.where(one_float, c_lo, c_hi + jnp.sum(band_top >= v_band))
    # no pass ran when nothing exceeds TINY (the bracket starts empty): c_lo is no count then
    found = (passes > 0) & (c_lo >= n) & (one_float | (c_lo - c_hi <= band))
    return Cut(value, n_greater.astype(jnp.int32), n_at_least.astype(jnp.int32), found, passes)


def _just_below(v: jax.Array) -> jax.Array:
    """The largest float32 below positive `v`: `s > just_below(v)` is `s >= v`."""
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(v, jnp.int32) - 1, jnp.float32)


def _ties(s: jax.Array, v: jax.Array) -> jax.Array:
    """#{s == v} along the last axis, as #{s > just_below(v)} - #{s > v} in one fused pass (two
    separate counts make XLA CPU fuse them into one slow loop). [...]"""
    return jnp.sum(_above(s, _just_below(v)) - _above(s, v), axis=-1).astype(jnp.int32)


def _last_kept_tie(s: jax.Array, cut: Cut, n: int) -> tuple[jax.Array, jax.Array]:
    """(row, column) of the last entry equal to the cut that is kept, the (n - n_greater)-th
    in flat order; (B, 0) when every tie is kept. s [B, N] float32."""
    v = cut.value

    def last_kept() -> tuple[jax.Array, jax.Array]:
        wanted = n - cut.n_greater
        ties = _ties(s, v)  # [B]
        through = jnp.cumsum(ties)  # [B]
        row = jnp.searchsorted(through, wanted, side="left").astype(jnp.int32)
        before = through[row] - ties[row]
        in_row = jnp.cumsum(s[row] == v)  # [N]
        col = jnp.searchsorted(in_row, wanted - before, side="left").astype(jnp.int32)
        return row, col

    def keep_every_tie() -> tuple[jax.Array, jax.Array]:
        return jnp.int32(s.shape[0]), jnp.int32(0)

    return jax.lax.cond(cut.n_at_least > n, last_kept, keep_every_tie)


def first_ties_mask(scores: jax.Array, cut: Cut, n: int) -> jax.Array:
    """Mask of the n largest entries given their cut: every entry above `cut.value`, then the
    entries equal to it in flat (row-major) order until n are kept, as `lax.top_k` keeps
    them. One device only. [B, N] -> bool [B, N]"""
    s = scores.astype(jnp.float32)
    v = cut.value
    row, col = _last_kept_tie(s, cut, n)
    r = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
    c = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    return (s > v) | ((s == v) & ((r < row) | ((r == row) & (c <= col))))


def kept_positions(
    scores: jax.Array, cut: Cut, n: int, block: int = 32
) -> tuple[jax.Array, jax.Array]:
    """(rows, columns) of the n entries `first_ties_mask` keeps, in flat order. [n] each

    A stream compaction without a scan over the batch: one pass counts the kept entries of
    every `block` consecutive values of a row, a cumulative sum over those counts says which
    block holds each output slot, and each slot finds its entry among its block's values.
    Positions are (block, offset) pairs, so batches beyond 2**31 entries need no int64.
    """
    s = scores.astype(jnp.float32)
    width = s.shape[1]
    v = cut.value
    tie_row, tie_col = _last_kept_tie(s, cut, n)
    per_row = -(-width // block)  # blocks per row
    if per_row * block != width:  # -inf is never kept
        s = jnp.pad(s, ((0, 0), (0, per_row * block - width)), constant_values=-jnp.inf)
    blocks = s.reshape(-1, block)  # [n_blocks, block]
    # the last kept tie as (block, offset); (n_blocks, 0) when every tie is kept
    tie_block, tie_offset = tie_row * per_row + tie_col // block, tie_col % block
    kept_in = jnp.sum(_above(blocks, _just_below(v)), axis=-1).astype(jnp.int32)  # [n_blocks]

    def drop_late_ties(kept: jax.Array) -> jax.Array:
        """Take out of each block's count the entries equal to v after the last kept tie."""
        index = jnp.arange(blocks.shape[0], dtype=jnp.int32)
        late = jnp.where(index > tie_block, _ties(blocks, v), 0)
        tail = jnp.sum((blocks[tie_block] == v) & (jnp.arange(block) > tie_offset))
        return kept - late.at[tie_block].add(tail.astype(jnp.int32))

    kept_in = jax.lax.cond(cut.n_at_least > n, drop_late_ties, lambda k: k, kept_in)
    offset = jnp.arange(block, dtype=jnp.int32)

    def kept(values: jax.Array, blk: jax.Array) -> jax.Array:
        tie_kept = (blk[:, None] < tie_block) | (
            (blk[:, None] == tie_block) & (offset <= tie_offset)
        )
        return (values > v) | ((values == v) & tie_kept)  # [n, block]

    return _fill_slots(blocks, kept_in, kept, n, per_row)


def _fill_slots(
    blocks: jax.Array, kept_in: jax.Array, kept: Any, n: int, per_row: int
) -> tuple[jax.Array, jax.Array]:
    """(rows, columns) of the first n kept entries in flat order, from each block's count.

    blocks [n_blocks, block] hold a batch's rows in `per_row` consecutive blocks each;
    `kept(values [n, block], blk [n])` says which of a block's values are kept (and must agree
    with `kept_in`). A cumulative sum over the counts says which block holds each output slot,
    and each slot finds its entry among its block's values. Slots past the last kept entry
    get the last block (and a column past its end)."""
    block = blocks.shape[1]
    ends = jnp.cumsum(kept_in)  # [n_blocks] slots filled up to each block's end
    slot = jnp.arange(n, dtype=jnp.int32)
    blk = jnp.searchsorted(ends, slot, side="right").astype(jnp.int32)  # [n] block of each slot
    blk = jnp.minimum(blk, blocks.shape[0] - 1)
    rank = slot - (ends[blk] - kept_in[blk])  # [n] the slot's place among its block's entries
    values = jnp.take(blocks, blk, axis=0)  # [n, block]
    inside = jnp.sum(jnp.cumsum(kept(values, blk), axis=-1) <= rank[:, None], axis=-1)
    return blk // per_row, (blk % per_row) * block + inside.astype(jnp.int32)


def _positive(s: jax.Array) -> jax.Array:
    """1.0 where s > 0, else 0.0, exact down to the smallest subnormal (see `_above`)."""
    return jnp.ceil(jnp.minimum(jnp.maximum(s, 0) * jnp.float32(2.0**126), 1))


def _positive_blocks(scores: jax.Array, block: int) -> tuple[jax.Array, int]:
    """(`scores` [B, N] as float32 blocks of `block` consecutive values of a row, padded with
    zeros, [B · per_row, block]; blocks per row)."""
    s = scores.astype(jnp.float32)
    width = s.shape[1]
    per_row = -(-width // block)
    if per_row * block != width:  # padding is never positive
        s = jnp.pad(s, ((0, 0), (0, per_row * block - width)))
    return s.reshape(-1, block), per_row


def positive_counts(scores: jax.Array, block: int = _BLOCK) -> jax.Array:
    """Positive entries of `scores` [B, N] in each block of `block` consecutive values of a row
    (one fused pass), for `positive_positions`. [B · ceil(N / block)] int32

    `scores` must hold the same values for both calls: pass a bfloat16 batch through
    `settled_float32` first (a float32 one is the same values whichever fusion computes it).
    """
    blocks, _ = _positive_blocks(scores, block)
    return jnp.sum(_positive(blocks), axis=-1).astype(jnp.int32)


def positive_positions(
    scores: jax.Array, counts: jax.Array, n: int, block: int = _BLOCK
) -> tuple[jax.Array, jax.Array]:
    """(rows, columns) of the first n positive entries of `scores` [B, N] in flat order, given
    their `positive_counts`. [n] each

    The positions a ReLU keeps, compacted into a fixed capacity of n slots (the block
    compaction of `kept_positions`). Slots from `sum(counts)` on are padding: their row is the
    last row (rows stay sorted) and their column is clipped into range. Subnormal values count
    as zero, as in XLA's CPU arithmetic (which flushes them).
    """
    blocks, per_row = _positive_blocks(scores, block)
    rows, cols = _fill_slots(blocks, counts, lambda values, _: _positive(values) > 0, n, per_row)
    return rows, jnp.minimum(cols, scores.shape[1] - 1)


__all__ = [
    "Cut",
    "first_ties_mask",
    "kept_positions",
    "nth_largest",
    "positive_counts",
    "positive_positions",
    "settled_float32",
]
