"""Training a ReLU SAE on its active (token, latent) pairs once few latents fire.

A trained standard SAE fires tens of its thousands of latents per token, yet a dense step
runs five `[B, d_in] x [d_in, d_sae]`-sized matmuls, four of them over mostly zero latents:
the ReLU's gradient is zero wherever the pre-activation is not positive, so the decoder, its
gradient, the latents' gradient and the encoder's gradient all need only the active
positions. This path keeps the dense encoder forward (the ReLU must see every
pre-activation), compacts the positive entries into a fixed capacity of (row, column) pairs
(`jsae.training.cut.positive_positions`) and runs the rest on them (`jsae.sparse.pair_*`),
at O(active pairs · d) instead of O(B · d_sae · d).

Early in training (and whenever a batch has more active pairs than the capacity) the step
takes the dense path instead, reusing the pre-activation already computed. The choice is a
`lax.switch` over two separately differentiated losses, each with its whole update
(`Architecture.train_losses`): differentiating through a switch would make the dense branch's
[B, d_sae] residuals a cost of the sparse branch too. Both compute the same losses (SAELens's
`StandardTrainingSAE`) up to summation order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import (
    Params,
    TrainContext,
    TrainInputs,
    TrainOutput,
    abs_power,
    computed_affine_encoder,
    lp_root,
    mean_sq_error,
)
from jsae.sparse import mesh_platform, pair_decode, pair_encode, sparse_by_default

if TYPE_CHECKING:
    from jsae.config import SAEConfig

# Active pairs the sparse branch holds: this fraction of the batch's B · d_sae entries (L0 up
# to 170 at d_sae 16384). The branch's cost grows with the active pairs and reaches the dense
# step's at about L0 200 on CPU (benchmarks/README.md); beyond the capacity the dense branch
# runs. A larger capacity also slows the compaction at every L0.
CAPACITY_FRACTION = 1 / 96


def pair_capacity(n_tokens: int, d_sae: int) -> int:
    """Active (token, latent) pairs the sparse branch can hold for a [n_tokens, d_sae] batch."""
    return max(1, int(n_tokens * d_sae * CAPACITY_FRACTION))


def uses_active_pairs(cfg: SAEConfig, ctx: TrainContext) -> bool:
    """Whether a standard SAE trains on its active pairs when they fit (`use_sparse_activations`).

    One device only: the compaction runs over the whole batch.
    """
    if cfg.architecture != "standard" or (ctx.mesh is not None and ctx.mesh.size > 1):
        return False
    choice = ctx.settings.use_sparse_activations
    if choice is None:
        return sparse_by_default(cfg.d_sae, mesh_platform(ctx.mesh))
    return bool(choice)


def segment_lp_norm(v: jax.Array, rows: jax.Array, n_rows: int, p: float) -> jax.Array:
    """`lp_norm` of each row's entries given as (row, value) pairs, rows sorted. [P] -> [n_rows]"""
    v = jnp.abs(v.astype(jnp.float32))
    if p == 1:
        return jax.ops.segment_sum(v, rows, n_rows, indices_are_sorted=True)
    return lp_root(jax.ops.segment_sum(abs_power(v, p), rows, n_rows, indices_are_sorted=True), p)


def train_losses(
    arch: Any,
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    cast: Any,
    x: jax.Array,
    target: jax.Array,
    inputs: TrainInputs,
) -> tuple[jax.Array, tuple[Any, Any]]:
    """`Architecture.train_losses` for a standard SAE: (0 when the batch's positive
    pre-activations fit `pair_capacity`, else 1; (the active-pair loss, the dense loss))."""
    from jsae.normalization import normalize_in, normalize_out
    from jsae.training.cut import positive_counts, positive_positions, settled_float32

    x = x.astype(cfg.jax_dtype)
    target = target.astype(cfg.jax_dtype)
    n_tokens = x.shape[0]
    x_norm, stats = normalize_in(cfg.normalize_activations, x)

    def centered(p: Params) -> tuple[jax.Array, jax.Array]:
        """(the encoder's input, what is subtracted from x_norm: b_dec or zeros)."""
        if cfg.apply_b_dec_to_input:
            return x_norm - p["b_dec"], p["b_dec"]
        return x_norm, jnp.zeros_like(p["b_dec"])

    p0 = cast(params)
    encoded = jax.lax.stop_gradient(centered(p0)[0] @ p0["W_enc"])  # [B, d_sae] without b_enc
    b_enc = jax.lax.stop_gradient(p0["b_enc"])

    # The pre-activation [B, d_sae], as the dense step computes it. In float32 each reader
    # (the count here, the compaction in the pair branch) recomputes it inside its own fusion:
    # every fusion gives the same values, and a value closed over by a switch branch would be
    # stored (268 MB at 4096 x 16384). Narrower dtypes may round differently between fusions
    # (excess precision), so there it is stored once, settled.
    if encoded.dtype == jnp.float32:

        def pre_activation() -> jax.Array:
            return encoded + b_enc

    else:
        settled = settled_float32(encoded + b_enc)

        def pre_activation() -> jax.Array:
            return settled

    counts = positive_counts(pre_activation())  # [B · d_sae / 32] positives per block
    count = jnp.sum(counts)
    capacity = pair_capacity(n_tokens, cfg.d_sae)

    def dense_loss(params: Params) -> tuple[jax.Array, TrainOutput]:
        def encode(cfg, ctx, p, x_norm, center, x_in):
            # [B, d_sae] as the dense step computes it (center: b_dec, or None)
            hidden_pre = computed_affine_encoder(
                encoded, x_norm, center, p["W_enc"], p["b_enc"], ctx.weight_grad_layout
            )
            return hidden_pre, jax.nn.relu(hidden_pre), {}

        out = arch.train_forward_with(encode, cfg, ctx, cast(params), x, target, inputs)
        return out.loss, out

    def pair_loss(params: Params) -> tuple[jax.Array, TrainOutput]:
        p = cast(params)
        pre = pre_activation()
        rows, cols = positive_positions(pre, counts, capacity)  # [P] each, token-major
        valid = jnp.arange(capacity) < count  # [P] the rest is padding
        center = centered(p)[1]
        z = pair_encode(pre, x_norm, center, p["W_enc"], p["b_enc"], rows, cols, count)  # [P]
        z = z.astype(cfg.jax_dtype)  # exact: `pre` holds values of the compute dtype
        acts = jnp.where(valid, jax.nn.relu(z), 0)  # padding: no value and no gradient
        decoded = pair_decode(acts, rows, cols, p["W_dec"], n_tokens, count) + p["b_dec"]
        x_hat = normalize_out(cfg.normalize_activations, decoded, stats)  # [B, d_in]
        norms = jnp.linalg.norm(p["W_dec"], axis=-1)  # [d_sae]
        sparsity = segment_lp_norm(acts * norms[cols], rows, n_tokens, ctx.settings.lp_norm)
        losses = {
            "mse_loss": mean_sq_error(x_hat, target),
            "l1_loss": jnp.mean(inputs.coefficients["l1"] * sparsity),
        }
        out = TrainOutput(
            loss=sum(losses.values()),
            losses=losses,
            x_hat=x_hat,
            fire_counts=jnp.zeros((cfg.d_sae,), jnp.int32).at[cols].add(valid.astype(jnp.int32)),
            l0=count.astype(jnp.float32) / n_tokens,
            extras={},
        )
        return out.loss, out

    return jnp.where(count <= capacity, 0, 1), (pair_loss, dense_loss)
