"""`topk`: keep the k largest pre-activations per token, ReLU them, zero the rest.

With `rescale_acts_by_decoder_norm`, latents are ranked by `pre-act * ||W_dec row||` and
divided by the norm again before decoding, which makes the selection independent of decoder
row scale (SAELens's training default). Folding the decoder norms then leaves outputs and
selections unchanged, so `fold_W_dec_norm` is only allowed in that mode (as in SAELens).

Training (SAELens 6.54 `TopKTrainingSAE`): MSE plus the AuxK loss (Gao et al. 2024, App. B.1):
the `k_aux = d_in // 2` dead latents with the largest (unrectified) pre-activations reconstruct
the detached residual `x - x_hat` through the decoder without b_dec; its gradient reaches the
encoder through those pre-activations. Scaled by `min(n_dead / k_aux, 1)`. With latents split
over a mesh, selection is a two-stage top-k (`jsae.training.selection`). With
`use_sparse_activations`, latents stay (value, index) pairs and the decoder, the decoder's and
the selected encoder columns' gradients cost O(B·k·d) (`jsae.sparse.gather_decode/encode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.auxk import auxk_loss
from jsae.architectures.base import (
    Architecture,
    ForwardPass,
    Params,
    TrainContext,
    TrainInputs,
    TrainOutput,
    affine_encoder,
    mean_sq_error,
)
from jsae.errors import ConfigError
from jsae.ranking import top_k
from jsae.sparse import (
    default_max_active,
    gather_decode,
    gather_encode,
    mesh_platform,
    sparse_by_default,
)

if TYPE_CHECKING:
    from jsae.config import SAEConfig


def topk_activation(hidden_pre: jax.Array, k: int) -> jax.Array:
    """relu of the k largest entries along the last axis, zeros elsewhere. [..., d_sae]"""
    vals, idx = top_k(hidden_pre, k)
    dense = jnp.zeros_like(hidden_pre)
    return jnp.put_along_axis(dense, idx, jax.nn.relu(vals), axis=-1, inplace=False)


def row_norms(W_dec: jax.Array) -> jax.Array:
    """Unclamped decoder row norms, as SAELens's TopK rescale uses them. [d_sae]"""
    return jnp.linalg.norm(W_dec, axis=-1)


class TopK(Architecture):
    """TopK SAE (SAELens `TopKSAE`; Gao et al. 2024)."""

    name = "topk"
    extra_cfg_keys = ("k", "rescale_acts_by_decoder_norm")

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        k = cfg.k
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= cfg.d_sae:
            raise ConfigError(
                f"topk SAEs need an integer k with 0 < k <= d_sae={cfg.d_sae}, got k={k!r}."
            )

    @classmethod
    def pre_activation(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array:
        hidden_pre = x @ params["W_enc"] + params["b_enc"]
        if cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * row_norms(params["W_dec"]).astype(hidden_pre.dtype)
        return hidden_pre

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        return topk_activation(hidden_pre, cfg.k)

    @classmethod
    def decode(
        cls,
        cfg: SAEConfig,
        params: Params,
        f: jax.Array,
        sparse: Any = "auto",
        grad_layout: str = "direct",
    ) -> jax.Array:
        if cfg.rescale_acts_by_decoder_norm:
            f = f / row_norms(params["W_dec"]).astype(f.dtype)
        return super().decode(cfg, params, f, cls.decode_budget(cfg, sparse), grad_layout)

    @classmethod
    def decode_budget(cls, cfg: SAEConfig, sparse: Any) -> Any:
        """Rows hold at most k latents, so the sparse decoder gathers at least k per row."""
        if sparse is True or (sparse == "auto" and sparse_by_default(cfg.d_sae)):
            return max(cfg.k, default_max_active(cfg.d_sae))
        return sparse

    @classmethod
    def fold_W_dec_norm(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        if not cfg.rescale_acts_by_decoder_norm:
            raise ConfigError(
                "fold_W_dec_norm would change which latents a topk SAE selects unless it was "
                "built with rescale_acts_by_decoder_norm=True (decoder-norm-aware selection)."
            )
        return super().fold_W_dec_norm(cfg, params)

    # ------------------------------------------------------------------ training

    @classmethod
    def train_pre_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x: jax.Array,
        center: jax.Array | None,
    ) -> jax.Array:
        hidden_pre = affine_encoder(
            x, center, params["W_enc"], params["b_enc"], ctx.weight_grad_layout
        )
        if cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * row_norms(params["W_dec"]).astype(hidden_pre.dtype)
        return hidden_pre

    @classmethod
    def coefficients(cls, settings: Any) -> dict[str, tuple[float, int]]:
        return {}

    @classmethod
    def train_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        hidden_pre: jax.Array,
        x: jax.Array,
    ) -> jax.Array:
        from jsae.training.selection import masked_topk_values, topk_mask

        return masked_topk_values(hidden_pre, topk_mask(hidden_pre, cfg.k, ctx.mesh))

    @classmethod
    def aux_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        fwd: ForwardPass,
        inputs: TrainInputs,
    ) -> dict[str, jax.Array]:
        loss = topk_aux_loss(cfg, ctx, params, fwd, inputs.dead_mask)
        return {"auxiliary_reconstruction_loss": loss}

    @classmethod
    def forms_dense_weight_grads(cls, cfg: SAEConfig, ctx: TrainContext, n_tokens: int) -> bool:
        return not uses_sparse_training(cfg, ctx)  # (value, index) pairs: scatter-adds

    @classmethod
    def train_forward(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        buffers: Params,
        x: jax.Array,
        target: jax.Array,
        inputs: TrainInputs,
    ) -> TrainOutput:
        if uses_sparse_training(cfg, ctx):
            return _sparse_train_forward(cfg, ctx, params, x, target, inputs)
        return super().train_forward(cfg, ctx, params, buffers, x, target, inputs)


def uses_sparse_training(cfg: SAEConfig, ctx: TrainContext) -> bool:
    """Whether TopK training runs on (value, index) pairs (see `use_sparse_activations`)."""
    from jsae.training.selection import model_axis_size

    if cfg.architecture != "topk" or model_axis_size(ctx.mesh) > 1:
        return False
    choice = ctx.settings.use_sparse_activations
    if choice is None:
        return sparse_by_default(cfg.d_sae, mesh_platform(ctx.mesh))
    return bool(choice)


def topk_aux_loss(
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    fwd: ForwardPass,
    dead_mask: jax.Array,
) -> jax.Array:
    """AuxK: the top dead latents reconstruct the detached residual (0 when none is dead).

    On one device or a data-parallel mesh the dead latents' columns are compacted first
    (`jsae.architectures.auxk`); with latents split over `model` the loss runs on the
    forward pass's pre-activations over every latent, with a two-stage top-k.
    """
    from jsae.training.selection import model_axis_size, topk_mask

    if model_axis_size(ctx.mesh) == 1:
        return dead_latent_auxk(
            cfg, ctx, params, fwd.x_norm, fwd.target, fwd.x_hat, fwd.hidden_pre, dead_mask
        )
    coefficient = ctx.settings.aux_loss_coefficient
    if not coefficient:
        return jnp.zeros((), jnp.float32)  # losses are float32 (see mean_sq_error)
    hidden_pre = fwd.hidden_pre  # [B, d_sae]
    k_aux = max(fwd.target.shape[-1] // 2, 1)
    n_dead = jnp.sum(dead_mask)
    residual = jax.lax.stop_gradient(fwd.target - fwd.x_hat)  # [B, d_out]

    def loss(hidden_pre: jax.Array, W_dec: jax.Array) -> jax.Array:
        scores = jnp.where(dead_mask, hidden_pre, -jnp.inf)
        chosen = topk_mask(scores, min(k_aux, cfg.d_sae), ctx.mesh) & dead_mask
        acts = jnp.where(chosen, hidden_pre, 0).astype(hidden_pre.dtype)  # [B, d_sae]
        if cfg.rescale_acts_by_decoder_norm:
            acts = acts / row_norms(W_dec)
        return mean_sq_error(acts @ W_dec, residual)

    def none(hidden_pre: jax.Array, W_dec: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    value = jax.lax.cond(n_dead > 0, loss, none, hidden_pre, params["W_dec"])
    scale = jnp.minimum(n_dead / k_aux, 1.0).astype(jnp.float32)
    return coefficient * scale * value


def dead_latent_auxk(
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    x_norm: jax.Array,
    target: jax.Array,
    x_hat: jax.Array,
    hidden_pre: jax.Array,
    dead: jax.Array,
    k: int | None = None,
) -> jax.Array:
    """AuxK with the dead latents' columns compacted (`jsae.architectures.auxk`), scaled by
    min(n_dead / k_aux, 1) and the coefficient. x_norm [B, d_in]: the normalised input;
    hidden_pre [B, d_sae]: the forward pass's pre-activation (rescaled by the decoder norms
    with `rescale_acts_by_decoder_norm`), whose values AuxK ranks and decodes. Each token
    takes its `k` (default min(k_aux, d_sae)) largest dead latents."""
    coefficient = ctx.settings.aux_loss_coefficient
    if not coefficient:
        return jnp.zeros((), jnp.float32)  # losses are float32 (see mean_sq_error)
    k_aux = max(target.shape[-1] // 2, 1)

    def encode_at(p: Params, x: jax.Array, cols: jax.Array | None) -> jax.Array:
        """TopK's affine encoder at columns `cols` (every column when None), before any
        rescale. [B, C]"""
        center = p["b_dec"] if cfg.apply_b_dec_to_input else None
        W_enc, b_enc = (
            (p["W_enc"], p["b_enc"]) if cols is None else (p["W_enc"][:, cols], p["b_enc"][cols])
        )
        return affine_encoder(x, center, W_enc, b_enc, False)  # AuxK: often a column subset

    differentiated = {name: params[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    residual = jax.lax.stop_gradient(target - x_hat)  # [B, d_out]
    value = auxk_loss(
        dead,
        min(k_aux, cfg.d_sae) if k is None else k,
        residual,
        differentiated,
        x_norm,
        hidden_pre,
        encode_at,
        cfg.rescale_acts_by_decoder_norm,
    )
    scale = jnp.minimum(jnp.sum(dead) / k_aux, 1.0).astype(jnp.float32)
    return coefficient * scale * value


@dataclass(frozen=True)
class SparseEncoder:
    """What the sparse training paths share: the encoder's input and its dense pre-activation
    (computed once, ranked, never differentiated: gradients reach the encoder through the
    selected entries only), plus the decoder-norm rescaling of `rescale_acts_by_decoder_norm`."""

    params: Params
    x_norm: jax.Array  # [B, d_in] normalised
    center: jax.Array  # [d_in] what the encoder subtracts from x_norm: b_dec, or zeros
    stats: Any  # run-time normalisation statistics (for normalize_out)
    h: jax.Array  # [B, d_sae] (x_norm - center) @ W_enc + b_enc, under stop_gradient
    norms: jax.Array | None  # [d_sae] decoder row norms when rescaling, else None
    scores: jax.Array  # [B, d_sae] what selection ranks: h, times the (detached) norms

    @classmethod
    def build(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> SparseEncoder:
        from jsae.normalization import normalize_in

        x_norm, stats = normalize_in(cfg.normalize_activations, x)
        b_dec = params["b_dec"]
        center = b_dec if cfg.apply_b_dec_to_input else jnp.zeros_like(b_dec)
        h = jax.lax.stop_gradient((x_norm - center) @ params["W_enc"] + params["b_enc"])
        norms = row_norms(params["W_dec"]) if cfg.rescale_acts_by_decoder_norm else None
        scores = h if norms is None else h * jax.lax.stop_gradient(norms)
        return cls(params, x_norm, center, stats, h, norms, scores)

    def pre_at(self, idx: jax.Array) -> jax.Array:
        """Differentiable pre-activations at per-row indices idx [B, K] (rescaled). [B, K]"""
        p = self.params
        z = gather_encode(self.h, self.x_norm, self.center, p["W_enc"], p["b_enc"], idx)
        return z if self.norms is None else z * self.norms[idx]

    def decode_at(self, acts: jax.Array, idx: jax.Array) -> jax.Array:
        """Σ_j acts[:, j] · W_dec[idx[:, j]] (without b_dec), undoing the rescale. [B, d]"""
        if self.norms is not None:
            acts = acts / self.norms[idx]
        return gather_decode(acts, idx, self.params["W_dec"])


def _sparse_train_forward(
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    inputs: TrainInputs,
) -> TrainOutput:
    """TopK training on (value, index) pairs: same losses as the dense path, O(B·k·d) decode."""
    from jsae.normalization import normalize_out

    x = x.astype(cfg.jax_dtype)
    target = target.astype(cfg.jax_dtype)
    enc = SparseEncoder.build(cfg, params, x)
    _, idx = top_k(enc.scores, cfg.k)  # [B, k]
    vals = jax.nn.relu(enc.pre_at(idx))  # [B, k]
    decoded = enc.decode_at(vals, idx) + params["b_dec"]
    x_hat = normalize_out(cfg.normalize_activations, decoded, enc.stats)
    losses = {
        "mse_loss": mean_sq_error(x_hat, target),
        "auxiliary_reconstruction_loss": dead_latent_auxk(
            cfg, ctx, params, enc.x_norm, target, x_hat, enc.scores, inputs.dead_mask
        ),
    }

    active = vals != 0  # [B, k]
    fire_counts = (
        jnp.zeros((cfg.d_sae,), jnp.int32)
        .at[idx.reshape(-1)]
        .add(active.reshape(-1).astype(jnp.int32))
    )
    return TrainOutput(
        loss=sum(losses.values()),
        losses=losses,
        x_hat=x_hat,
        fire_counts=fire_counts,
        l0=jnp.mean(jnp.sum(active, axis=-1, dtype=jnp.float32)),
        extras={},
    )
