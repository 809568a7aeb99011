"""AuxK on the dead latents only: their columns gathered into a static width before any matmul.

AuxK (Gao et al. 2024) lets the `k_aux` dead latents with the largest pre-activations of each
token reconstruct the residual. Computed over every latent, it costs three `[B, d_sae]`
matmuls (decode, the latent and the decoder-weight gradients) and a top-`k_aux` of the whole
batch as soon as one latent is dead: +50% on a TopK step of d_sae 16384. Dead latents are
usually a few percent of `d_sae`, so here their indices are compacted (in ascending order,
which keeps `lax.top_k`'s tie order) into the smallest of a few static widths that holds
them, their pre-activations recomputed from the encoder's input at those columns, and
everything runs at that width. More dead latents than the widest bucket (half of `d_sae`)
recompute every column.

The branch is picked at run time by `lax.switch`. Its gradient is a custom VJP that keeps
only each token's chosen columns and reruns the taken branch's loss in the backward pass:
autodiff of a switch would return the union of every branch's saved values, zero-filled by
the branches not taken (the full-width branch's are `[B, d_sae]`), which costs a step with no
dead latent ~0.1-0.2 s on a 2-core CPU.
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

PreActivation = Callable[[Params, jax.Array, "jax.Array | None"], jax.Array]
# (choose: each token's top-k columns [B, k], loss given that choice)
Branch = tuple[
    Callable[[Params, tuple], jax.Array], Callable[[Params, tuple, jax.Array], jax.Array]
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
    pre_at: PreActivation,
    rescale: bool,
) -> jax.Array:
    """mean_b ||Σ_{chosen j} a_bj W_dec[j] - residual_b||², where each token chooses its `k`
    dead latents with the largest pre-activations a_bj (0 when no latent is dead).

    dead [d_sae] bool; residual [B, d_out] (detached); params hold W_enc, b_enc, W_dec, b_dec
    (the differentiated arrays); x [B, d_in] is the encoder's data input.
    `pre_at(params, x, cols)` is the architecture's pre-activation at columns `cols` [C]
    (every column when None): [B, C]. `rescale` divides the activations by their decoder row
    norms before decoding (SAELens's `rescale_acts_by_decoder_norm`); the norms are taken at
    full width and gathered, as `pre_at` should take the ones it scales by.
    """
    widths = bucket_widths(dead.shape[0], k)
    n_dead = jnp.sum(dead, dtype=jnp.int32)
    n_tokens = x.shape[0]

    def at_width(width: int | None) -> Branch:
        """(the choice: each token's top-k valid columns [B, k], the loss given a choice)."""

        def columns(params: Params, consts: tuple) -> tuple:
            dead, n_dead, _, x = consts
            norms = jnp.linalg.norm(params["W_dec"], axis=-1) if rescale else None  # [d_sae]
            if width is None:  # every column
                return dead, pre_at(params, x, None), params["W_dec"], norms  # [B, d_sae]
            cols = jnp.nonzero(dead, size=width, fill_value=0)[0]  # [C] ascending, then fill
            valid = jnp.arange(width) < n_dead  # [C]
            norms = None if norms is None else norms[cols]  # gathered, as the ranking's
            return valid, pre_at(params, x, cols), params["W_dec"][cols], norms  # [B, C], ...

        def choose(params: Params, consts: tuple) -> jax.Array:
            valid, pre, _, _ = columns(params, consts)
            if k >= pre.shape[-1]:
                return jnp.zeros((n_tokens, k), jnp.int32)  # every valid column: no choice
            scores = jnp.where(valid, jax.lax.stop_gradient(pre), -jnp.inf)
            return top_k(scores, k)[1].astype(jnp.int32)  # [B, k]

        def loss(params: Params, consts: tuple, top: jax.Array) -> jax.Array:
            valid, pre, W_dec, norms = columns(params, consts)
            chosen = jnp.broadcast_to(valid, pre.shape)
            if k < pre.shape[-1]:
                rows = jnp.arange(n_tokens)[:, None]
                chosen = jnp.zeros(pre.shape, bool).at[rows, top].set(True) & valid
            acts = jnp.where(chosen, pre, 0).astype(pre.dtype)  # [B, C]
            if norms is not None:
                acts = acts / norms
            return mean_sq_error(acts @ W_dec, consts[2])

        return choose, loss

    def none_chosen(params: Params, consts: tuple) -> jax.Array:
        return jnp.zeros((n_tokens, k), jnp.int32)

    def no_loss(params: Params, consts: tuple, top: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    branches = ((none_chosen, no_loss), *(at_width(w) for w in widths), at_width(None))
    # 0: none dead; i: the i-th bucket is the first that holds them; last: wider than all
    index = jnp.where(n_dead == 0, 0, 1 + jnp.searchsorted(jnp.asarray(widths, jnp.int32), n_dead))
    consts = (dead, n_dead, jax.lax.stop_gradient(residual), jax.lax.stop_gradient(x))
    return _switch(branches, index, params, consts)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _switch(branches: tuple[Branch, ...], index: jax.Array, params: Params, consts: tuple) -> Any:
    """The loss of branch `index` (its choice, then its loss), differentiated in `params`.

    The forward pass keeps only each token's chosen columns ([B, k] int32, the same shape in
    every branch); the backward pass reruns the taken branch's loss on that choice.
    """
    return _switch_fwd(branches, index, params, consts)[0]


def _switch_fwd(branches: tuple, index: jax.Array, params: Params, consts: tuple) -> Any:
    def forward(choose: Callable, loss: Callable) -> Callable:
        def run(params: Params, consts: tuple) -> tuple[jax.Array, jax.Array]:
            top = choose(params, consts)
            return loss(params, consts, top), top

        return run

    value, top = jax.lax.switch(index, [forward(*b) for b in branches], params, consts)
    return value, (index, params, consts, top)


def _switch_bwd(branches: tuple, saved: tuple, g: jax.Array) -> tuple:
    index, params, consts, top = saved

    def gradient(loss: Callable) -> Callable:
        def run(params: Params, consts: tuple, top: jax.Array) -> Params:
            return jax.vjp(lambda p: loss(p, consts, top), params)[1](g)[0]

        return run

    grads = jax.lax.switch(index, [gradient(loss) for _, loss in branches], params, consts, top)
    return None, grads, None


_switch.defvjp(_switch_fwd, _switch_bwd)
