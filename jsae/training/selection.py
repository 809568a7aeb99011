"""Which latents a TopK or BatchTopK SAE keeps, on one device or with latents split over a mesh.

Both return a boolean mask `[B, d_sae]`; the caller keeps `relu(scores)` where it is set (the
selection is discrete, so gradients flow through the kept values only, as with torch's
`topk` + `scatter`).

With latents split over the mesh's "model" axis, a top-k along that axis would gather the
whole `[B, d_sae]` pre-activation. Instead each shard takes its own top-k, the shards exchange
only those candidates (values and global positions), every shard picks the global top-k among
them, and marks the winners it owns: OpenAI's `sharded_topk`. BatchTopK does the same across
every device (its top-k runs over the whole batch). Winners are identified by position, so the
selection equals the single-device one whenever the kept values are distinct.

BatchTopK first tries the cheaper exact route of `jsae.training.cut`: the batch's cut value
found by counting passes, each one scalar `psum` across the mesh; the candidates' exchange
is its fallback (ties straddling the cut, or too few positive scores).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jsae.errors import ConfigError
from jsae.ranking import top_k, top_k_mask
from jsae.training.cut import first_ties_mask, kept_positions, nth_largest, settled_float32


def topk_mask(scores: jax.Array, k: int, mesh: Mesh | None = None) -> jax.Array:
    """Mask of the k largest scores of each row. scores [B, d_sae] -> bool [B, d_sae]."""
    scores = jax.lax.stop_gradient(scores)
    if mesh is None or mesh.shape["model"] == 1:
        return top_k_mask(scores, k)

    def local(s: jax.Array) -> jax.Array:
        rows, width = s.shape
        k_local = min(k, width)
        vals, idx = top_k(s, k_local)  # [b, k_local]
        offset = jax.lax.axis_index("model") * width
        all_vals = jax.lax.all_gather(vals, "model", axis=1, tiled=True)  # [b, M*k_local]
        all_cols = jax.lax.all_gather(idx + offset, "model", axis=1, tiled=True)
        _, pos = top_k(all_vals, k)  # [b, k] positions among the candidates
        cols = jnp.take_along_axis(all_cols, pos, axis=1) - offset  # local column or outside
        cols = jnp.where((cols >= 0) & (cols < width), cols, width)  # width = dropped
        row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], cols.shape)
        return jnp.zeros(s.shape, bool).at[row_ids, cols].set(True, mode="drop")

    spec = P("data", "model")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(scores)


def batch_topk_mask(scores: jax.Array, n_keep: int, mesh: Mesh | None = None) -> jax.Array:
    """Mask of the `n_keep` largest scores of the whole batch. [B, d_sae] -> bool [B, d_sae]"""
    return batch_topk_selection(scores, n_keep, mesh)[0]


def batch_topk_selection(
    scores: jax.Array, n_keep: int, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array]:
    """(mask of the `n_keep` largest scores of the whole batch [B, d_sae], the smallest positive
    kept score (float32; inf when none is positive)).

    The cut is found by counting (`jsae.training.cut`), not by a top-k over the flat batch;
    ties at the cut are kept in flat order, as `lax.top_k` keeps them. The cut is then also
    the smallest kept score (BatchTopK's threshold statistic) at no extra pass. The top-k
    remains the fallback for batches with fewer than `n_keep` positive scores.
    """
    single_device = mesh is None or mesh.size == 1
    if single_device:
        _check_countable(scores)
    countable = scores.size < 2**31  # counts are int32; beyond, a mesh exchanges candidates
    scores = settled_float32(jax.lax.stop_gradient(scores))  # what every pass reads
    if single_device:
        cut = nth_largest(scores, n_keep)

        def by_top_k(s: jax.Array) -> tuple[jax.Array, jax.Array]:
            mask = _flat_topk_mask(s, n_keep)
            return mask, _smallest_positive(s, mask)

        return jax.lax.cond(
            cut.found, lambda s: (first_ties_mask(s, cut, n_keep), cut.value), by_top_k, scores
        )
    axes = ("data", "model")

    def local(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not countable:
            return exchange(s)
        cut = nth_largest(s, n_keep, axes)  # the same global cut on every device
        # ties straddling the cut need the batch's flat order: the candidates' exchange
        clean = cut.found & (cut.n_at_least == n_keep)
        return jax.lax.cond(clean, lambda s: (s >= cut.value, cut.value), exchange, s)

    def exchange(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = exchange_candidates(s)
        return mask, jax.lax.pmin(_smallest_positive(s, mask), axes)

    def exchange_candidates(s: jax.Array) -> jax.Array:
        rows, width = s.shape
        k_local = min(n_keep, rows * width)
        vals, flat_idx = top_k(s.reshape(-1), k_local)  # [k_local]
        row0 = jax.lax.axis_index("data") * rows
        col0 = jax.lax.axis_index("model") * width
        g_rows = flat_idx // width + row0
        g_cols = flat_idx % width + col0
        all_vals = jax.lax.all_gather(vals, axes, tiled=True)  # [n_dev * k_local]
        all_rows = jax.lax.all_gather(g_rows, axes, tiled=True)
        all_cols = jax.lax.all_gather(g_cols, axes, tiled=True)
        pos = _top_positions_in_flat_order(all_vals, all_rows, all_cols, n_keep)
        r = all_rows[pos] - row0
        c = all_cols[pos] - col0
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < width)
        r = jnp.where(inside, r, rows)  # rows = dropped
        c = jnp.where(inside, c, 0)
        return jnp.zeros(s.shape, bool).at[r, c].set(True, mode="drop")

    spec = P("data", "model")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=(spec, P()), check_vma=False)(
        scores
    )


def _smallest_positive(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """The smallest positive score under `mask` (float32), inf when there is none."""
    kept = mask & (scores > 0)
    return jnp.min(jnp.where(kept, scores.astype(jnp.float32), jnp.inf))


def batch_topk_positions(scores: jax.Array, n_keep: int) -> tuple[jax.Array, jax.Array]:
    """(rows, columns) of the `n_keep` largest scores of the batch, in flat (token-major) order,
    on one device: the kept entries of `batch_topk_mask`. [B, d_sae] -> int32 [n_keep] each"""
    _check_countable(scores)
    scores = settled_float32(jax.lax.stop_gradient(scores))  # what every pass reads
    cut = nth_largest(scores, n_keep)

    def by_top_k(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        flat = jnp.sort(top_k(s.reshape(-1), n_keep)[1])
        return flat // s.shape[1], flat % s.shape[1]

    return jax.lax.cond(cut.found, lambda s: kept_positions(s, cut, n_keep), by_top_k, scores)


def _check_countable(scores: jax.Array) -> None:
    """The selection counts (and the top-k indexes) the batch's entries in int32."""
    if scores.size >= 2**31:
        raise ConfigError(
            f"BatchTopK's selection runs over the whole [{scores.shape[0]}, {scores.shape[1]}] "
            "batch, more than 2**31 entries; use a smaller train_batch_size_tokens."
        )


def _flat_topk_mask(scores: jax.Array, n_keep: int) -> jax.Array:
    """The top-k form of `batch_topk_mask` on one device. [B, d_sae] -> bool [B, d_sae]"""
    flat = scores.reshape(-1)
    _, idx = top_k(flat, n_keep)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(scores.shape)


def _top_positions_in_flat_order(
    vals: jax.Array, rows: jax.Array, cols: jax.Array, n_keep: int
) -> jax.Array:
    """Positions of the n_keep largest `vals`, ties at the cut broken by (row, column) as one
    device's top-k over the flat batch breaks them. [n] -> [n_keep]

    The candidates arrive in device order, which is not the batch's flat order when latents are
    split over "model"; a plain top-k would then keep other (equally valued) entries than one
    device does. Ties at the cut are rare in float32 but common in bfloat16, so the sort runs
    only when one straddles the cut.
    """
    top, pos = top_k(vals, n_keep)
    cut = top[-1]
    straddles = jnp.sum(vals >= cut) > n_keep

    def in_flat_order(_: Any) -> jax.Array:
        group = jnp.where(vals > cut, 0, jnp.where(vals == cut, 1, 2))  # above, at, below
        order = jnp.arange(vals.shape[0])
        return jax.lax.sort((group, rows, cols, order), num_keys=3)[-1][:n_keep]

    return jax.lax.cond(straddles, in_flat_order, lambda _: pos, None)


def model_axis_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.shape["model"])


def masked_topk_values(scores: jax.Array, mask: jax.Array) -> Any:
    """relu(scores) where selected, 0 elsewhere (differentiable in scores)."""
    return jnp.where(mask, jax.nn.relu(scores), 0).astype(scores.dtype)


__all__ = [
    "batch_topk_mask",
    "batch_topk_positions",
    "batch_topk_selection",
    "masked_topk_values",
    "model_axis_size",
    "topk_mask",
]
