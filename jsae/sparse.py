"""Decoding sparse latents: `f @ W_dec` that costs O(L0 · d) per row instead of O(d_sae · d).

SAE latents are sparse at inference (tens of active latents out of thousands), so the decoder
matmul mostly multiplies zeros. `decode_matmul` gathers the active decoder rows instead:

1. take each row's `budget` largest-|f| entries (all its non-zeros when it has at most
   `budget`; a row whose last taken entry is non-zero may have more);
2. accumulate `Σ_j f[b, i_j] · W_dec[i_j]`, stopping at the batch's largest count;
3. rows with more than `budget` non-zeros (a BOS token that lights up thousands of latents)
   get the rest of their latents through a dense matmul over just those rows, up to N/32 of
   them; beyond that the whole batch takes the dense matmul (`lax.cond`: one branch runs).

Every branch is exact (they differ from the dense matmul only in summation order). The
backward pass is the dense one (`df = g @ W_decᵀ`, `dW = fᵀ g`), because the gradient of a
matmul with respect to `f` is non-zero at inactive latents too. A sparse backward only makes
sense when latents are produced as (values, indices) pairs, as TopK training does.

Use `sparse=False` under a mesh that shards d_sae: a top-k along a sharded axis is expensive.
"auto" gathers only on CPU, where it was measured faster (benchmarks/README.md); on GPUs and
TPUs, where dense matmuls are far cheaper next to gathers and loops, it stays dense.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jsae.errors import ConfigError
from jsae.ranking import top_k

# Below this width the dense matmul is as fast as the gather (measured on CPU, see
# benchmarks/README.md); "auto" then stays dense.
AUTO_MIN_D_SAE = 4096

# Platforms where the sparse kernels were measured faster than the dense matmuls. Elsewhere
# "auto" keeps the dense path that SAELens also runs: on an H100 in bf16 the BatchTopK and
# Matryoshka sparse steps were 0.71-0.73x their dense ones and TopK's only 1.08x faster
# (benchmarks/README.md); TPUs are not measured yet.
SPARSE_BY_DEFAULT_PLATFORMS = ("cpu",)


def sparse_by_default(d_sae: int, platform: str | None = None) -> bool:
    """What "auto" / None picks: the sparse kernels for d_sae >= AUTO_MIN_D_SAE on a platform
    where they were measured faster (`platform` defaults to JAX's default backend)."""
    platform = jax.default_backend() if platform is None else platform
    return d_sae >= AUTO_MIN_D_SAE and platform in SPARSE_BY_DEFAULT_PLATFORMS


def mesh_platform(mesh: Any) -> str | None:
    """The platform of a mesh's devices (None without a mesh: the default backend)."""
    return None if mesh is None else mesh.devices.flat[0].platform


def default_max_active(d_sae: int) -> int:
    """Gathered latents per row: 1/128 of the latents, between 32 and 512 (the top-k's cost
    grows with the budget; rows over it spill to a small dense matmul; see benchmarks/)."""
    return min(d_sae, max(32, min(512, d_sae // 128)))


def decode_matmul(f: jax.Array, W_dec: jax.Array, *, sparse: Any = "auto") -> jax.Array:
    """`f @ W_dec` for f `[..., d_sae]`, W_dec `[d_sae, d]`, gathering active rows when f is sparse.

    `sparse`: "auto" (gather when d_sae >= 4096 on CPU and every row fits the budget; dense on
    GPUs and TPUs), True (gather whatever d_sae and platform), False (always the dense matmul),
    or an int budget of active latents per row.
    """
    d_sae = W_dec.shape[0]
    if sparse is False or (sparse == "auto" and not sparse_by_default(d_sae)):
        return f @ W_dec
    budget = default_max_active(d_sae) if sparse in ("auto", True) else int(sparse)
    if budget < 1:
        raise ConfigError(
            f"sparse={sparse!r}: a budget of active latents per row must be >= 1 (or use "
            "sparse=False for the dense matmul)."
        )
    budget = min(budget, d_sae)
    lead = f.shape[:-1]
    if math.prod(lead) == 0:  # no rows: nothing to gather (the max over zero rows is undefined)
        return f @ W_dec
    out = _sparse_or_dense(f.reshape(-1, d_sae), W_dec, budget)
    return out.reshape(*lead, W_dec.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sparse_or_dense(f: jax.Array, W_dec: jax.Array, budget: int) -> jax.Array:
    n_rows = f.shape[0]
    spill_rows = max(1, n_rows // 32)  # rows allowed to exceed the budget before going dense
    _, idx = top_k(jnp.abs(f), budget)  # [N, budget], largest |f| first
    vals = jnp.take_along_axis(f, idx, axis=-1)  # [N, budget]
    over = vals[:, -1] != 0  # [N] the row may hold more than `budget` non-zeros
    n_over = jnp.sum(over)

    def gathered(f: jax.Array) -> jax.Array:
        count = jnp.max(jnp.sum(vals != 0, axis=-1))  # largest L0 among the taken entries
        out = gather_decode_loop(vals, idx, W_dec, count)

        def add_spill(out: jax.Array) -> jax.Array:
            rows = jnp.nonzero(over, size=spill_rows, fill_value=n_rows)[0]  # [R]; N = padding
            f_rows = f.at[rows].get(mode="fill", fill_value=0)  # [R, d_sae]
            taken = idx.at[rows].get(mode="fill", fill_value=0)  # [R, budget]
            rest = jnp.put_along_axis(f_rows, taken, 0, axis=-1, inplace=False)
            return out.at[rows].add((rest @ W_dec).astype(out.dtype), mode="drop")

        return jax.lax.cond(n_over > 0, add_spill, lambda out: out, out)

    def dense(f: jax.Array) -> jax.Array:
        return f @ W_dec

    return jax.lax.cond(n_over <= spill_rows, gathered, dense, f)


def _sparse_or_dense_fwd(f, W_dec, budget):
    return _sparse_or_dense(f, W_dec, budget), (f, W_dec)


def _sparse_or_dense_bwd(budget, residuals, g):
    f, W_dec = residuals
    df = (g @ W_dec.T).astype(f.dtype)  # dense: inactive latents have gradients too
    dW = (f.T @ g).astype(W_dec.dtype)
    return df, dW


_sparse_or_dense.defvjp(_sparse_or_dense_fwd, _sparse_or_dense_bwd)


def gather_decode_loop(
    vals: jax.Array, idx: jax.Array, W_dec: jax.Array, count: jax.Array | int | None = None
) -> jax.Array:
    """Σ_j vals[:, j] · W_dec[idx[:, j]] over the first `count` columns. vals/idx [N, K] -> [N, d].

    A loop over j reads one decoder row per token per step and accumulates in place; on CPU it
    is several times faster than materialising the [N, K, d] gather. Columns at or after
    `count` must be zero (or are skipped), which lets callers stop at the batch's largest L0.
    Forward only: the trip count may be dynamic, which reverse-mode AD does not support.
    """
    n_cols = idx.shape[-1]
    count = n_cols if count is None else count
    out_dtype = jnp.result_type(vals, W_dec)
    acc_dtype = _accumulator(out_dtype)  # bf16 inputs: k terms summed in float32, as a matmul
    acc = jnp.zeros((idx.shape[0], W_dec.shape[1]), acc_dtype)

    def body(j, acc):
        v = jax.lax.dynamic_index_in_dim(vals, j, axis=1, keepdims=False)
        i = jax.lax.dynamic_index_in_dim(idx, j, axis=1, keepdims=False)
        return acc + v[:, None].astype(acc_dtype) * W_dec[i].astype(acc_dtype)

    return jax.lax.fori_loop(0, jnp.minimum(count, n_cols), body, acc).astype(out_dtype)


def _accumulator(dtype: Any) -> Any:
    """The dtype sums are kept in: float32 at least (a latent firing on every token adds B
    terms into its gradient row; in bfloat16 that sum loses most of its digits)."""
    return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Training with (value, index) latents: TopK's sparse forward and backward.
#
# A TopK SAE's latents are k (value, index) pairs per token. Decoding them, and back-propagating
# through the decoder and the selected encoder columns, needs O(B · k · d) work instead of the
# O(B · d_sae · d) of dense matmuls; only the encoder's forward pre-activation (which TopK must
# rank) stays dense. Both functions loop over the k columns: each iteration touches one
# [B, d] slab, so nothing of size [B, k, d] is ever materialised.


@jax.custom_vjp
def gather_decode(vals: jax.Array, idx: jax.Array, W_dec: jax.Array) -> jax.Array:
    """Σ_j vals[:, j] · W_dec[idx[:, j]]: decode (value, index) latents. [N, K] -> [N, d].

    Backward: d vals[:, j] = g · W_dec[idx[:, j]] (a gather and a row-wise dot), and
    d W_dec[i] = Σ_{(n, j): idx[n, j] = i} vals[n, j] · g[n] (a scatter-add); no dense [N, d_sae]
    matrix appears in either direction.
    """
    return gather_decode_loop(vals, idx, W_dec)


def _gather_decode_fwd(vals, idx, W_dec):
    return gather_decode_loop(vals, idx, W_dec), (vals, idx, W_dec)


def _gather_decode_bwd(residuals, g):
    vals, idx, W_dec = residuals
    n_cols = idx.shape[1]
    acc_dtype = _accumulator(jnp.result_type(g, W_dec))
    g = g.astype(acc_dtype)

    def body(j, carry):
        dvals, dW = carry
        i = jax.lax.dynamic_index_in_dim(idx, j, axis=1, keepdims=False)  # [N]
        v = jax.lax.dynamic_index_in_dim(vals, j, axis=1, keepdims=False)  # [N]
        rows = W_dec[i].astype(acc_dtype)  # [N, d]
        dvals = dvals.at[:, j].set(jnp.sum(rows * g, axis=-1).astype(dvals.dtype))
        dW = dW.at[i].add(v[:, None].astype(acc_dtype) * g)
        return dvals, dW

    init = (jnp.zeros_like(vals), jnp.zeros(W_dec.shape, acc_dtype))
    dvals, dW = jax.lax.fori_loop(0, n_cols, body, init)
    return dvals, None, dW.astype(W_dec.dtype)


gather_decode.defvjp(_gather_decode_fwd, _gather_decode_bwd)


def bias_gradient(b_enc: jax.Array, cols: jax.Array, g: jax.Array) -> jax.Array:
    """d b_enc[c] = Σ_{p: cols[p] = c} g[p], summed in float32 (a latent that fires on many
    tokens gets that many bf16 terms), kept in float32 for `center_gradient`. [d_sae]"""
    acc = jnp.zeros(b_enc.shape, jnp.promote_types(b_enc.dtype, jnp.float32))
    return acc.at[cols].add(g.astype(acc.dtype))


def center_gradient(W_enc: jax.Array, db: jax.Array, center: jax.Array) -> jax.Array:
    """d center for an encoder input `x - center`: -Σ_n d x_in[n] = -W_enc @ d b_enc, since
    every selected (n, c) adds g · W_enc[:, c] to d x_in[n] and g to d b_enc[c]. O(d · d_sae)
    instead of the O(pairs · d) of forming d x_in row by row. [d_in]"""
    return (-(W_enc.astype(db.dtype) @ db)).astype(center.dtype)


def encoder_gradients(
    dW_t: jax.Array,
    cols: jax.Array,
    g: jax.Array,
    W_enc: jax.Array,
    b_enc: jax.Array,
    center: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(d center, d W_enc, d b_enc) of the sparse encoders, from W_enc's gradient accumulated
    as rows dW_t [d_sae, d_in] and the selected latents' gradients g at columns cols."""
    db = bias_gradient(b_enc, cols, g)  # [d_sae] float32
    d_center = center_gradient(W_enc, db, center)
    return d_center, transposed(dW_t.astype(W_enc.dtype)), db.astype(b_enc.dtype)


def transposed(a: jax.Array, block: int = 1024) -> jax.Array:
    """`a.T` written out in row-major order, a block at a time. [n, d] -> [d, n]

    XLA's CPU backend otherwise fuses the transpose into every consumer: Adam's three update
    fusions each read the [d_sae, d_in] gradient column by column, about 4x slower than
    reading it in order (measured at 16384 x 768: 205 ms against 85 ms with this copy). A
    tall `a` is copied a block of rows at a time, a wide one a block of columns at a time."""
    n, d = a.shape
    if n // block >= 2:
        return _transposed_in_blocks(a, block, axis=0)
    if d // block >= 2:
        return _transposed_in_blocks(a, block, axis=1)
    return a.T


def _transposed_in_blocks(a: jax.Array, block: int, axis: int) -> jax.Array:
    """`transposed`, looping over blocks of `a` along `axis` (0: rows, 1: columns)."""
    n, d = a.shape
    size = a.shape[axis]
    n_blocks = size // block

    def body(i: jax.Array, out: jax.Array) -> jax.Array:
        part = jax.lax.dynamic_slice_in_dim(a, i * block, block, axis=axis)
        return jax.lax.dynamic_update_slice_in_dim(out, part.T, i * block, axis=1 - axis)

    out = jax.lax.fori_loop(0, n_blocks, body, jnp.zeros((d, n), a.dtype))
    done = n_blocks * block
    if done == size:
        return out
    return out.at[:, done:].set(a[done:].T) if axis == 0 else out.at[done:].set(a[:, done:].T)


@jax.custom_vjp
def gather_encode(
    hidden_pre: jax.Array,
    x: jax.Array,
    center: jax.Array,
    W_enc: jax.Array,
    b_enc: jax.Array,
    idx: jax.Array,
) -> jax.Array:
    """hidden_pre[n, idx[n, j]], differentiable in (center, W_enc, b_enc) through a sparse
    backward. [N, d_sae] -> [N, K]

    `hidden_pre` must equal `(x - center) @ W_enc + b_enc` and is not differentiated (compute
    it under `stop_gradient`: TopK needs it dense to rank latents). `x` [N, d_in] is data (no
    gradient); `center` [d_in] is what the SAE subtracts from it (b_dec, or zeros). The
    backward touches only the selected encoder columns: d W_enc[:, i] += (x[n] - center) ·
    g[n, j] (a scatter-add into W_encᵀ's rows), d b_enc[i] += g[n, j], and
    d center = -W_enc @ d b_enc.
    """
    return jnp.take_along_axis(hidden_pre, idx, axis=-1)


def _gather_encode_fwd(hidden_pre, x, center, W_enc, b_enc, idx):
    return jnp.take_along_axis(hidden_pre, idx, axis=-1), (x, center, W_enc, b_enc, idx)


def _gather_encode_bwd(residuals, g):
    x, center, W_enc, b_enc, idx = residuals
    n_cols = idx.shape[1]
    acc_dtype = _accumulator(jnp.result_type(g, W_enc))
    x_in = (x - center).astype(acc_dtype)  # [N, d_in] the encoder's input

    def body(j, dW_t):
        i = jax.lax.dynamic_index_in_dim(idx, j, axis=1, keepdims=False)  # [N]
        gj = jax.lax.dynamic_index_in_dim(g, j, axis=1, keepdims=False).astype(acc_dtype)
        return dW_t.at[i].add(gj[:, None] * x_in)

    dW_t = jax.lax.fori_loop(0, n_cols, body, jnp.zeros(W_enc.shape[::-1], acc_dtype))
    grads = encoder_gradients(dW_t, idx.reshape(-1), g.reshape(-1), W_enc, b_enc, center)
    return None, None, *grads, None


gather_encode.defvjp(_gather_encode_fwd, _gather_encode_bwd)


# ---------------------------------------------------------------------------------------------
# Training with a variable number of latents per token: BatchTopK's (row, column, value) pairs.
#
# BatchTopK keeps the k·B largest activations of the whole batch, so one token may hold
# hundreds of latents and another none. Padding every row to the largest count (as the loops
# above would) costs O(B · max count · d); these kernels cost O(P · d) for P pairs instead.
# They process the pairs in chunks of `PAIR_CHUNK` so the gathered [chunk, d] rows stay small.
# A ReLU SAE's active latents vary in number from step to step: it fills a fixed capacity of
# pairs and passes `count`, the pairs actually used; the kernels then stop after the chunk
# holding the last one, so the cost follows the step's L0, not the capacity.

PAIR_CHUNK = 16384


def _pair_chunks(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Reshape [P] arrays to [C, chunk], padding to a multiple of PAIR_CHUNK: index arrays
    (integers) repeat their last entry, which keeps sorted ones sorted; values get zeros, so
    padding pairs add nothing."""
    n = arrays[0].shape[0]
    chunk = min(PAIR_CHUNK, max(n, 1))
    pad = -n % chunk

    def padded(a: jax.Array) -> jax.Array:
        integer = jnp.issubdtype(a.dtype, jnp.integer)
        return jnp.pad(a, (0, pad), mode="edge" if integer else "constant")

    return tuple(padded(a).reshape(-1, chunk) for a in arrays)


def _chunks_used(chunked: jax.Array, count: jax.Array | None) -> jax.Array | int:
    """How many chunks hold the first `count` pairs (all of them when count is None)."""
    n_chunks, chunk = chunked.shape
    if count is None:
        return n_chunks
    return jnp.clip((count + chunk - 1) // chunk, 0, n_chunks)


def _scatter_rows(
    n_out: int,
    seg: jax.Array,
    coef: jax.Array,
    src: jax.Array,
    src_idx: jax.Array,
    sorted_: bool,
    count: jax.Array | None = None,
) -> jax.Array:
    """out[seg[p]] += coef[p] · src[src_idx[p]] over the pairs (the first `count` of them, up
    to the end of their chunk; pairs beyond `count` must have coef 0). -> [n_out, src.shape[1]]

    Accumulates in float32 at least: a row may receive thousands of bf16 contributions."""
    acc_dtype = jnp.promote_types(jnp.result_type(coef, src), jnp.float32)
    seg_c, coef_c, idx_c = _pair_chunks(seg, coef, src_idx)

    def body(c, acc):
        s, w, i = seg_c[c], coef_c[c], idx_c[c]
        rows = w[:, None].astype(acc_dtype) * src[i].astype(acc_dtype)  # [chunk, d]
        return acc.at[s].add(rows, indices_are_sorted=sorted_)

    init = jnp.zeros((n_out, src.shape[1]), acc_dtype)
    return jax.lax.fori_loop(0, _chunks_used(seg_c, count), body, init)


def _pair_dots(
    a: jax.Array, a_idx: jax.Array, b: jax.Array, b_idx: jax.Array, count: jax.Array | None = None
) -> jax.Array:
    """dot(a[a_idx[p]], b[b_idx[p]]) for every pair (0 for the chunks after `count`). -> [P]"""
    n = a_idx.shape[0]
    acc_dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    ai_c, bi_c = _pair_chunks(a_idx, b_idx)

    def body(c, out):
        ai, bi = ai_c[c], bi_c[c]
        dots = jnp.sum(a[ai].astype(acc_dtype) * b[bi].astype(acc_dtype), axis=-1)  # [chunk]
        return out.at[c].set(dots)

    out = jnp.zeros(ai_c.shape, acc_dtype)
    return jax.lax.fori_loop(0, _chunks_used(ai_c, count), body, out).reshape(-1)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def pair_decode(
    vals: jax.Array,
    seg: jax.Array,
    cols: jax.Array,
    W_dec: jax.Array,
    n_out: int,
    count: jax.Array | None = None,
) -> jax.Array:
    """out[seg[p]] += vals[p] · W_dec[cols[p]]: decode (row, column, value) latents. -> [n_out, d]

    `seg` is the output row of each pair (the token, or token · levels + level for Matryoshka's
    per-level sums) and must be sorted. With `count`, only the first `count` pairs are used
    (the rest must have value 0). Backward: d vals[p] = g[seg[p]] · W_dec[cols[p]],
    d W_dec[c] = Σ_{p: cols[p] = c} vals[p] · g[seg[p]]; nothing of size [n_out, d_sae] appears.
    """
    out = _scatter_rows(n_out, seg, vals, W_dec, cols, True, count)
    return out.astype(jnp.result_type(vals, W_dec))


def _pair_decode_fwd(vals, seg, cols, W_dec, n_out, count):
    return pair_decode(vals, seg, cols, W_dec, n_out, count), (vals, seg, cols, W_dec, count)


def _pair_decode_bwd(n_out, residuals, g):
    vals, seg, cols, W_dec, count = residuals
    dvals = _pair_dots(W_dec, cols, g, seg, count).astype(vals.dtype)
    dW = _scatter_rows(W_dec.shape[0], cols, vals, g, seg, False, count).astype(W_dec.dtype)
    return dvals, None, None, dW, None


pair_decode.defvjp(_pair_decode_fwd, _pair_decode_bwd)


@jax.custom_vjp
def pair_encode(
    hidden_pre: jax.Array,
    x: jax.Array,
    center: jax.Array,
    W_enc: jax.Array,
    b_enc: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    count: jax.Array | None = None,
) -> jax.Array:
    """hidden_pre[rows[p], cols[p]], differentiable in (center, W_enc, b_enc). -> [P]

    As `gather_encode`, for pairs: `hidden_pre` must equal `(x - center) @ W_enc + b_enc` and
    is not differentiated; `x` is data. Backward: d W_enc[:, c] += g[p] · (x[rows[p]] -
    center), d b_enc[c] += g[p], d center = -W_enc @ d b_enc. With `count`, the backward reads
    only the first `count` pairs (the others' gradients must be 0).
    """
    return hidden_pre[rows, cols]


def _pair_encode_fwd(hidden_pre, x, center, W_enc, b_enc, rows, cols, count):
    return hidden_pre[rows, cols], (x, center, W_enc, b_enc, rows, cols, count)


def _pair_encode_bwd(residuals, g):
    x, center, W_enc, b_enc, rows, cols, count = residuals
    x_in = x - center  # [N, d_in] the encoder's input
    dW_t = _scatter_rows(W_enc.shape[1], cols, g, x_in, rows, False, count)  # [d_sae, d_in]
    return None, None, *encoder_gradients(dW_t, cols, g, W_enc, b_enc, center), None, None, None


pair_encode.defvjp(_pair_encode_fwd, _pair_encode_bwd)
