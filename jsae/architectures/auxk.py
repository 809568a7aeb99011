"""AuxK on the dead latents only: their columns gathered into a static width before any matmul.

AuxK (Gao et al. 2024) lets the `k_aux` dead latents with the largest pre-activations of each
token reconstruct the residual. Computed over every latent, it costs three `[B, d_sae]`
matmuls (decode, the latent and the decoder-weight gradients) and a top-`k_aux` of the whole
batch as soon as one latent is dead: +50% on a TopK step of d_sae 16384. Dead latents are
usually a few percent of `d_sae`, so here their indices are compacted (in ascending order,
which keeps `lax.top_k`'s tie order) into the smallest of a few static widths that holds
them, their pre-activations gathered at those columns from the forward pass's (ranked, not
differentiated), and everything runs at that width. More dead latents than the widest bucket
(half of `d_sae`) run at full width.

The branch is picked at run time by `lax.switch`. Its gradient is a custom VJP: the forward
pass keeps each token's chosen columns and their values ([B, k]) and the reconstruction
([B, d_out]), the same shapes in every branch, and the taken branch's gradient starts from
them. Four matmuls at the branch's width in all (the decode; the decoder-weight, latent and
encoder-weight gradients): the pre-activations are never recomputed, and under `rescale` the
decoder norms' gradient, Σ_b d pre · pre / norm, is summed over the chosen entries from the
saved values. Autodiff of a switch would instead return the union of every branch's saved
values, zero-filled by the branches not taken (the full-width branch's are `[B, d_sae]`),
which cost a step with no dead latent ~0.1-0.2 s on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import Params, mean_sq_error
from jsae.ranking import top_k

_SMALLEST = 256  # the first bucket holds at least this many dead latents (and at least k)

# Platforms that add the decoder-norm gradient's B·k products onto their columns with a
# scatter-add. Elsewhere it is a dense column sum: a GPU serialises that scatter on atomics
# (it made AuxK 2-4.5x an H100's TopK step, worst with the fewest dead latents), while XLA's
# CPU ran the dense column sum 4-13% slower than the scatter at 60% dead.
SCATTER_SUM_PLATFORMS = ("cpu",)

Encoder = Callable[[Params, jax.Array, "jax.Array | None"], jax.Array]
# what a branch's forward pass keeps for its gradient: each token's chosen columns [B, k]
# int32, their values [B, k], the reconstruction [B, d_out]
Saved = tuple[jax.Array, jax.Array, jax.Array]
# (forward: the loss and what it keeps, gradient: from what was kept and the loss's cotangent)
Branch = tuple[
    Callable[[Params, tuple, jax.Array], tuple[jax.Array, Saved]],
    Callable[[Params, tuple, Saved, jax.Array], Params],
]


def bucket_widths(d_sae: int, k: int) -> tuple[int, ...]:
    """Static widths the dead latents are compacted into: doubling from max(k, 256) while at
    most half of d_sae (empty when compaction cannot pay)."""
    widths = []
    width = max(k, _SMALLEST)
    while width <= d_sae // 2:
        widths.append(width)
        width *= 2
    return tuple(widths)


def auxk_loss(
    dead: jax.Array,
    k: int,
    residual: jax.Array,
    params: Params,
    x: jax.Array,
    pre: jax.Array,
    encode_at: Encoder,
    rescale: bool,
) -> jax.Array:
    """mean_b ||Σ_{chosen j} a_bj W_dec[j] - residual_b||², where each token chooses its `k`
    dead latents with the largest pre-activations a_bj (0 when no latent is dead).

    dead [d_sae] bool; residual [B, d_out] (detached); params hold W_enc, b_enc, W_dec, b_dec
    (the differentiated arrays); x [B, d_in] is the encoder's data input. pre [B, d_sae] is the
    forward pass's pre-activation, as ranked (its value only: it is not differentiated here).
    `encode_at(params, x, cols)` is the architecture's affine encoder at columns `cols` [C]
    (every column when None), [B, C]: only its gradient is taken, so its matmul is dead code.
    With `rescale` (SAELens's `rescale_acts_by_decoder_norm`), pre = encode_at(...) · norms:
    the decoder row norms (taken at full width, then gathered, as the forward pass ranks by
    them), and the activations are divided by them again before decoding.
    """
    widths = bucket_widths(dead.shape[0], k)
    n_dead = jnp.sum(dead, dtype=jnp.int32)
    n_tokens = x.shape[0]
    rows = jnp.arange(n_tokens)[:, None]
    consts = (dead, n_dead, jax.lax.stop_gradient(residual), jax.lax.stop_gradient(x))
    pre = jax.lax.stop_gradient(pre)

    def at_width(width: int | None) -> Branch:
        """(the forward pass: the loss and what its gradient needs; the gradient)."""
        n_cols = dead.shape[0] if width is None else width  # C

        def columns(params: Params, consts: tuple) -> tuple:
            """(cols [C] or None for every column, valid [C], W_dec at cols [C, d_out], the
            decoder row norms at cols [C] when rescaling)."""
            dead, n_dead, _, _ = consts
            norms = jnp.linalg.norm(params["W_dec"], axis=-1) if rescale else None  # [d_sae]
            if width is None:  # every column
                return None, dead, params["W_dec"], norms
            cols = jnp.nonzero(dead, size=width, fill_value=0)[0]  # [C] ascending, then fill
            valid = jnp.arange(width) < n_dead  # [C]
            norms = None if norms is None else norms[cols]  # gathered, as the ranking's
            return cols, valid, params["W_dec"][cols], norms

        def decode(acts: jax.Array, W_dec: jax.Array, norms: jax.Array | None) -> jax.Array:
            """The chosen activations [B, C] (zero elsewhere) decoded: [B, d_out]."""
            return (acts if norms is None else acts / norms) @ W_dec

        def forward(params: Params, consts: tuple, pre: jax.Array) -> tuple[jax.Array, Saved]:
            cols, valid, W_dec, norms = columns(params, consts)
            pre = pre if cols is None else jnp.take(pre, cols, axis=1)  # [B, C]
            if k >= n_cols:  # every valid column: no choice (indices past C-1 repeat it)
                top = jnp.broadcast_to(jnp.minimum(jnp.arange(k), n_cols - 1), (n_tokens, k))
                first = jnp.arange(k) < n_cols  # [k] each column once
            else:
                scores = jnp.where(valid, pre, -jnp.inf)
                top = top_k(scores, k)[1]  # [B, k]
                first = True
            top = top.astype(jnp.int32)
            values = jnp.take_along_axis(pre, top, axis=-1)  # [B, k]
            values = jnp.where(valid[top] & first, values, 0).astype(pre.dtype)
            acts = jnp.zeros_like(pre).at[rows, top].add(values)  # [B, C]
            recon = decode(acts, W_dec, norms)  # [B, d_out]
            return mean_sq_error(recon, consts[2]), (top, values, recon)

        def gradient(params: Params, consts: tuple, saved: Saved, g: jax.Array) -> Params:
            """The loss's gradient from the saved choice, values and reconstruction. The
            decode's and the encoder's matmuls are dead code in the vjps below (they need only
            the cotangents)."""
            top, values, recon = saved
            d_recon = jax.vjp(lambda r: mean_sq_error(r, consts[2]), recon)[1](g)[0]
            cols, valid, _, _ = columns(params, consts)
            acts = jnp.zeros((n_tokens, n_cols), values.dtype).at[rows, top].add(values)

            def decoded(p: Params, acts: jax.Array) -> jax.Array:
                _, _, W_dec, norms = columns(p, consts)
                return decode(acts, W_dec, norms)

            grads, d_acts = jax.vjp(decoded, params, acts)[1](d_recon)
            chosen = jnp.zeros(acts.shape, bool).at[rows, top].set(True) & valid  # [B, C]
            d_pre = jnp.where(chosen, d_acts, 0).astype(d_acts.dtype)  # [B, C]
            if rescale:  # pre = z · norms at cols: d z = d pre · norms, d norms = Σ_b d pre · z
                norms, norms_vjp = jax.vjp(lambda p: columns(p, consts)[3], params)  # [C]
                summed = _column_sum(d_pre, acts, top, values)  # [C]
                grads = jax.tree.map(jnp.add, grads, norms_vjp(summed / norms)[0])
                d_pre = d_pre * norms  # [B, C] now d z
            encoder = jax.vjp(lambda p: encode_at(p, consts[3], cols), params)[1](d_pre)[0]
            return jax.tree.map(jnp.add, grads, encoder)

        return forward, gradient

    every_column = at_width(None)
    shapes = jax.eval_shape(every_column[0], params, consts, pre)  # what every branch returns

    def none_dead(params: Params, consts: tuple, pre: jax.Array) -> tuple[jax.Array, Saved]:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def no_gradient(params: Params, consts: tuple, saved: Saved, g: jax.Array) -> Params:
        return jax.tree.map(jnp.zeros_like, params)

    branches = ((none_dead, no_gradient), *(at_width(w) for w in widths), every_column)
    # 0: none dead; i: the i-th bucket is the first that holds them; last: wider than all
    index = jnp.where(n_dead == 0, 0, 1 + jnp.searchsorted(jnp.asarray(widths, jnp.int32), n_dead))
    return _switch(branches, index, params, consts, pre)


def _column_sum(d_pre: jax.Array, acts: jax.Array, top: jax.Array, values: jax.Array) -> jax.Array:
    """Σ_b d_pre[b, c] · z[b, c] over each token's chosen columns c, where the chosen values
    z are `values` [B, k] at columns `top` [B, k] and `acts` [B, C] holds them densely (0
    elsewhere); d_pre [B, C] is 0 off the chosen entries. [C] in d_pre's dtype."""
    if jax.default_backend() in SCATTER_SUM_PLATFORMS:
        d_values = jnp.take_along_axis(d_pre, top, axis=-1)  # [B, k] 0 if not chosen
        return jnp.zeros(acts.shape[1], d_pre.dtype).at[top].add(d_values * values)
    return jnp.sum(d_pre * acts, axis=0, dtype=jnp.float32).astype(d_pre.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _switch(
    branches: tuple[Branch, ...], index: jax.Array, params: Params, consts: tuple, pre: jax.Array
) -> Any:
    """The loss of branch `index`, differentiated in `params` by that branch's gradient.

    The forward pass keeps each token's chosen columns and their values ([B, k]) and the
    reconstruction ([B, d_out]): the same shapes in every branch, none of them `[B, d_sae]`
    (`pre` is read by the forward pass only).
    """
    return _switch_fwd(branches, index, params, consts, pre)[0]


def _switch_fwd(
    branches: tuple, index: jax.Array, params: Params, consts: tuple, pre: jax.Array
) -> Any:
    forwards = [forward for forward, _ in branches]
    value, saved = jax.lax.switch(index, forwards, params, consts, pre)
    return value, (index, params, consts, saved)


def _switch_bwd(branches: tuple, residuals: tuple, g: jax.Array) -> tuple:
    index, params, consts, saved = residuals
    gradients = [gradient for _, gradient in branches]
    grads = jax.lax.switch(index, gradients, params, consts, saved, g)
    return None, grads, None, None


_switch.defvjp(_switch_fwd, _switch_bwd)
