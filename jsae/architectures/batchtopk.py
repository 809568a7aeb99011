"""`batchtopk`: keep the `k * n_tokens` largest activations over the whole batch (training).

Bussmann et al. 2024. The selection depends on the batch, so a trained BatchTopK SAE is
served as a JumpReLU whose uniform threshold is the running estimate `topk_threshold` of the
smallest selected activation (SAELens saves it that way; so does jsae). Loading a SAELens
BatchTopK training checkpoint therefore gives a `jumprelu` SAE.

Training: TopK's losses (MSE + AuxK) with the batch-level selection (a two-stage top-k across
every device of a mesh), and after each step `topk_threshold ← (1 - lr) · topk_threshold +
lr · min(positive activations)` (SAELens keeps it in float64; jsae in float32). Matryoshka adds
`inner_mse_loss_{w}` for each prefix width w < d_sae: the reconstruction from latents [:w]
only, unit weight (Bussmann et al. 2025), and optionally a per-level AuxK.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.architectures.base import (
    ForwardPass,
    Params,
    TrainContext,
    TrainInputs,
    TrainOutput,
    mean_sq_error,
)
from jsae.architectures.topk import (
    SparseEncoder,
    TopK,
    dead_latent_auxk,
    row_norms,
    topk_aux_loss,
)
from jsae.errors import ConfigError
from jsae.sparse import mesh_platform, pair_decode, pair_encode, sparse_by_default

if TYPE_CHECKING:
    from jsae.config import SAEConfig


def batch_topk_activation(hidden_pre: jax.Array, k: float) -> jax.Array:
    """relu, then keep the int(k * n_tokens) largest entries of the whole batch. [..., d_sae]"""
    from jsae.training.selection import batch_topk_mask, masked_topk_values

    rows = hidden_pre.reshape(-1, hidden_pre.shape[-1])  # [n_tokens, d_sae]
    keep = min(int(k * rows.shape[0]), rows.size)
    if keep == 0:
        return jnp.zeros_like(hidden_pre)
    return masked_topk_values(rows, batch_topk_mask(rows, keep)).reshape(hidden_pre.shape)


class BatchTopK(TopK):
    """BatchTopK SAE: TopK with a batch-level selection; trained as such, served as a JumpReLU."""

    name = "batchtopk"
    fp32_params = frozenset({"threshold", "topk_threshold"})
    row_independent = False  # the selection is batch-wide

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super(TopK, cls).validate(cfg)  # skip TopK.validate: k may be fractional here
        k = cfg.k
        if isinstance(k, bool) or not isinstance(k, int | float) or not 0 < k <= cfg.d_sae:
            raise ConfigError(
                f"{cls.name} SAEs need 0 < k <= d_sae={cfg.d_sae} (mean active latents per "
                f"token), got k={k!r}."
            )

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "topk_threshold": ()}

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        return batch_topk_activation(hidden_pre, cfg.k)

    @classmethod
    def decode_budget(cls, cfg: SAEConfig, sparse: Any) -> Any:
        return sparse  # per-token counts vary around k: the default budget applies

    @classmethod
    def fold_activation_norm_scaling_factor(
        cls, cfg: SAEConfig, params: Params, scale: float
    ) -> tuple[SAEConfig, Params]:
        """The base fold, plus the threshold: with decoder-norm-aware selection it is in units
        of pre-act · ||W_dec row||, and the fold divides W_dec by `scale`."""
        cfg, p = super().fold_activation_norm_scaling_factor(cfg, params, scale)
        if cfg.rescale_acts_by_decoder_norm and "topk_threshold" in p:
            p["topk_threshold"] = p["topk_threshold"] / scale
        return cfg, p

    @classmethod
    def to_inference(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        """A JumpReLU with threshold = topk_threshold everywhere, decoder norms folded."""
        p = {k: v for k, v in params.items() if k != "topk_threshold"}
        if cfg.rescale_acts_by_decoder_norm:
            # Selection ranked pre-act * ||W_dec||; folding makes that the plain pre-activation.
            n = row_norms(p["W_dec"].astype(jnp.float32))
            p["W_dec"] = (p["W_dec"] / n[:, None]).astype(p["W_dec"].dtype)
            p["W_enc"] = (p["W_enc"] * n[None, :]).astype(p["W_enc"].dtype)
            p["b_enc"] = (p["b_enc"] * n).astype(p["b_enc"].dtype)
        threshold = jnp.asarray(params["topk_threshold"], jnp.float32)
        p["threshold"] = jnp.full((cfg.d_sae,), threshold, jnp.float32)
        return cfg.replace(architecture="jumprelu", k=None, rescale_acts_by_decoder_norm=False), p

    @classmethod
    def from_inference(cls, cfg: SAEConfig, saved: SAEConfig, params: Params) -> Params | None:
        """A saved BatchTopK SAE (a JumpReLU with one threshold for every latent) starts a
        BatchTopK run: the threshold becomes `topk_threshold`. Its decoder rows are unit norm
        after `to_inference`'s fold, so decoder-norm-aware selection ranks the same values."""
        if saved.architecture != "jumprelu":
            return super().from_inference(cfg, saved, params)
        threshold = np.asarray(params["threshold"], np.float32)  # [d_sae]
        if not np.all(threshold == threshold[0]):
            raise ConfigError(
                f"the initial SAE is a JumpReLU whose thresholds differ across latents "
                f"({threshold.min():.4g} to {threshold.max():.4g}), so it was not saved from a "
                f"{cfg.architecture} run, whose export has one threshold for every latent; "
                "fine-tune it with architecture: jumprelu."
            )
        p = {k: v for k, v in params.items() if k != "threshold"}
        p["topk_threshold"] = jnp.asarray(threshold[0], jnp.float32)
        return p

    # ------------------------------------------------------------------ training

    @classmethod
    def buffer_names(cls) -> tuple[str, ...]:
        return ("topk_threshold",)

    @classmethod
    def init_buffers(cls, cfg: SAEConfig, settings: Any) -> Params:
        return {"topk_threshold": jnp.zeros((), jnp.float32)}

    @classmethod
    def train_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        hidden_pre: jax.Array,
        x: jax.Array,
    ) -> jax.Array:
        return cls._select(cfg, ctx, hidden_pre)[0]

    @classmethod
    def train_encode(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x_norm: jax.Array,
        center: jax.Array | None,
        x_in: jax.Array,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """The selection also gives the smallest kept activation (the threshold statistic)."""
        hidden_pre = cls.train_pre_activation(cfg, ctx, params, x_norm, center)
        f, smallest = cls._select(cfg, ctx, hidden_pre)
        return hidden_pre, f, {"smallest_kept": smallest}

    @classmethod
    def _select(
        cls, cfg: SAEConfig, ctx: TrainContext, hidden_pre: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(latents [B, d_sae], their smallest positive value: float32, inf if none)."""
        from jsae.training.selection import batch_topk_selection, masked_topk_values

        n_keep = min(int(cfg.k * math.prod(hidden_pre.shape[:-1])), hidden_pre.size)
        mask, smallest = batch_topk_selection(hidden_pre, n_keep, ctx.mesh)
        return masked_topk_values(hidden_pre, mask), smallest

    @classmethod
    def train_extras(cls, cfg: SAEConfig, ctx: TrainContext, fwd: ForwardPass) -> Params:
        smallest = fwd.encoded["smallest_kept"]
        return {"min_positive": smallest, "any_positive": jnp.isfinite(smallest)}

    @classmethod
    def update_buffers(
        cls, cfg: SAEConfig, ctx: TrainContext, buffers: Params, extras: Params
    ) -> Params:
        lr = ctx.settings.topk_threshold_lr
        old = buffers["topk_threshold"]
        new = (1 - lr) * old + lr * extras["min_positive"]
        return {**buffers, "topk_threshold": jnp.where(extras["any_positive"], new, old)}

    @classmethod
    def forms_dense_weight_grads(cls, cfg: SAEConfig, ctx: TrainContext, n_tokens: int) -> bool:
        return not uses_sparse_batch_training(cfg, ctx, n_tokens)  # pairs: scatter-adds

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
        if uses_sparse_batch_training(cfg, ctx, x.shape[0]):
            return sparse_batch_train_forward(cfg, ctx, params, x, target, inputs)
        return super(TopK, cls).train_forward(cfg, ctx, params, buffers, x, target, inputs)


class MatryoshkaBatchTopK(BatchTopK):
    """Matryoshka BatchTopK: BatchTopK with nested prefix reconstruction losses (training)."""

    name = "matryoshka_batchtopk"

    @classmethod
    def train_reconstruct(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        f: jax.Array,
        x: jax.Array,
        stats: Any,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The reconstruction is the last prefix: every level's decode comes from one pass over
        the latents in bands (the matmul work of one decoder), summed cumulatively."""
        from jsae.normalization import normalize_out

        prefixes = prefix_decodes(cfg, params, f, ctx.settings.matryoshka_widths)
        x_hat = normalize_out(cfg.normalize_activations, prefixes[-1], stats)
        return x_hat, {"prefixes": prefixes}

    @classmethod
    def aux_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        fwd: ForwardPass,
        inputs: TrainInputs,
    ) -> dict[str, jax.Array]:
        from jsae.normalization import normalize_out

        widths = ctx.settings.matryoshka_widths
        prefixes = fwd.encoded["prefixes"]
        if ctx.settings.use_matryoshka_aux_loss:
            aux = matryoshka_aux_loss(cfg, ctx, params, fwd, inputs.dead_mask)
        else:
            aux = topk_aux_loss(cfg, ctx, params, fwd, inputs.dead_mask)
        losses = {"auxiliary_reconstruction_loss": aux}
        for width, partial in zip(widths[:-1], prefixes[:-1], strict=True):
            inner = normalize_out(cfg.normalize_activations, partial, fwd.stats)
            losses[f"inner_mse_loss_{width}"] = mean_sq_error(inner, fwd.target)
        return losses


def prefix_decodes(
    cfg: SAEConfig, params: Params, f: jax.Array, widths: tuple[int, ...]
) -> list[jax.Array]:
    """b_dec + f[:, :w] @ W_dec[:w] for each width w (the last being d_sae). [B, d_in] each

    Each band of latents [previous width, w) is decoded once and the bands are summed in
    order, so all levels together cost one decoder matmul.
    """
    W_dec = params["W_dec"]
    if cfg.rescale_acts_by_decoder_norm:
        f = f / row_norms(W_dec)
    decoded = params["b_dec"]
    prefixes = []
    prev = 0
    for width in widths:
        decoded = decoded + f[:, prev:width] @ W_dec[prev:width]  # [B, d_in]
        prev = width
        prefixes.append(decoded)
    return prefixes


def matryoshka_aux_loss(
    cfg: SAEConfig, ctx: TrainContext, params: Params, fwd: ForwardPass, dead_mask: jax.Array
) -> jax.Array:
    """AuxK per level: each level's top dead latents reconstruct that level's residual.

    On one device or a data-parallel mesh each level's dead columns are compacted first
    (`compacted_matryoshka_aux_loss`); with latents split over `model` every latent takes part,
    with a two-stage top-k.
    """
    from jsae.normalization import normalize_out
    from jsae.training.selection import model_axis_size, topk_mask

    if model_axis_size(ctx.mesh) == 1:
        outputs = [
            normalize_out(cfg.normalize_activations, partial, fwd.stats)
            for partial in fwd.encoded["prefixes"]
        ]
        return compacted_matryoshka_aux_loss(
            cfg, ctx, params, fwd.x_norm, fwd.target, outputs, fwd.hidden_pre, dead_mask
        )
    coefficient = ctx.settings.aux_loss_coefficient
    if not coefficient:
        return jnp.zeros((), jnp.float32)
    widths = ctx.settings.matryoshka_widths
    k_aux = max(fwd.target.shape[-1] // 2, 1)
    W_dec = params["W_dec"]
    scaled_W = W_dec / row_norms(W_dec)[:, None] if cfg.rescale_acts_by_decoder_norm else W_dec
    latent = jnp.arange(cfg.d_sae)
    total = jnp.zeros((), jnp.float32)
    prev = 0
    for width, partial in zip(widths, fwd.encoded["prefixes"], strict=True):
        level_dead = dead_mask & (latent >= prev) & (latent < width)
        n_dead = jnp.sum(level_dead)
        scale = jnp.minimum(n_dead / k_aux, 1.0).astype(total.dtype)
        residual = jax.lax.stop_gradient(
            fwd.target - normalize_out(cfg.normalize_activations, partial, fwd.stats)
        )
        scores = jnp.where(level_dead, fwd.hidden_pre, -jnp.inf)
        chosen = topk_mask(scores, min(k_aux, width - prev), ctx.mesh) & level_dead
        acts = jnp.where(chosen, fwd.hidden_pre, 0).astype(total.dtype)
        recons = acts[:, prev:width] @ scaled_W[prev:width]
        total = total + scale * mean_sq_error(recons, residual)
        prev = width
    return coefficient * total


def compacted_matryoshka_aux_loss(
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    x_norm: jax.Array,
    target: jax.Array,
    outputs: list[jax.Array],
    scores: jax.Array,
    dead: jax.Array,
) -> jax.Array:
    """`matryoshka_aux_loss` on compacted dead columns: each level's dead latents (AuxK with
    their columns gathered, `dead_latent_auxk`) reconstruct that level's residual. outputs:
    each level's prefix reconstruction [B, d_out], normalised back; scores [B, d_sae]: the
    pre-activations as ranked. With no dead latent a level costs nothing (AuxK's empty
    branch), where the full-width loss takes a top-k over every latent and a decode per level.
    """
    k_aux = max(target.shape[-1] // 2, 1)
    latent = jnp.arange(cfg.d_sae)
    total = jnp.zeros((), jnp.float32)
    prev = 0
    for width, out in zip(ctx.settings.matryoshka_widths, outputs, strict=True):
        level_dead = dead & (latent >= prev) & (latent < width)  # [d_sae]
        k = min(k_aux, width - prev)
        total = total + dead_latent_auxk(
            cfg, ctx, params, x_norm, target, out, scores, level_dead, k
        )
        prev = width
    return total


def uses_sparse_batch_training(cfg: SAEConfig, ctx: TrainContext, n_tokens: int) -> bool:
    """Whether BatchTopK training runs on (row, column, value) pairs (`use_sparse_activations`).

    Only on one device: the selection is a top-k over the whole batch, which a mesh splits.
    """
    if ctx.mesh is not None and ctx.mesh.size > 1:
        return False
    if int(cfg.k * n_tokens) < 1:
        return False
    choice = ctx.settings.use_sparse_activations
    if choice is None:
        return sparse_by_default(cfg.d_sae, mesh_platform(ctx.mesh))
    return bool(choice)


def sparse_batch_train_forward(
    cfg: SAEConfig,
    ctx: TrainContext,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    inputs: TrainInputs,
) -> TrainOutput:
    """BatchTopK (and Matryoshka) training on the k·B kept (row, column, value) pairs.

    The same losses as the dense path: the dense pre-activation is ranked once; the decoder,
    its gradient and the kept encoder columns' gradients cost O(k·B·d) (`jsae.sparse.pair_*`)
    instead of four dense [B, d_sae] x [d_sae, d] matmuls. Matryoshka's prefix reconstructions
    come from the same pass: each pair adds into its token's level (the band of prefix widths
    its latent falls in) and the levels are summed cumulatively.
    """
    from jsae.normalization import normalize_out
    from jsae.training.selection import batch_topk_positions

    x = x.astype(cfg.jax_dtype)
    target = target.astype(cfg.jax_dtype)
    enc = SparseEncoder.build(cfg, params, x)
    n_tokens, d_sae = enc.h.shape
    n_keep = min(int(cfg.k * n_tokens), enc.h.size)
    # the batch's k·B largest, in token-major order: pairs of one token are contiguous
    rows, cols = batch_topk_positions(enc.scores, n_keep)  # [P] each
    W_enc, b_enc = params["W_enc"], params["b_enc"]
    z = pair_encode(enc.h, enc.x_norm, enc.center, W_enc, b_enc, rows, cols)  # [P]
    if enc.norms is not None:
        z = z * enc.norms[cols]
    acts = jax.nn.relu(z)  # [P] the kept latents (zero where the batch has < P positives)
    dec_vals = acts if enc.norms is None else acts / enc.norms[cols]

    matryoshka = cfg.architecture == "matryoshka_batchtopk"
    widths = ctx.settings.matryoshka_widths if matryoshka else (d_sae,)
    n_levels = len(widths)
    level = jnp.searchsorted(jnp.asarray(widths), cols, side="right")  # [P] band of each latent
    seg = rows * n_levels + level  # sorted, as rows are and levels rise along a token's columns
    bands = pair_decode(dec_vals, seg, cols, params["W_dec"], n_tokens * n_levels)
    prefixes = jnp.cumsum(bands.reshape(n_tokens, n_levels, -1), axis=1) + params["b_dec"]

    def output(decoded: jax.Array) -> jax.Array:
        return normalize_out(cfg.normalize_activations, decoded, enc.stats)

    x_hat = output(prefixes[:, -1])  # [B, d_out]
    if matryoshka and ctx.settings.use_matryoshka_aux_loss:
        outputs = [output(prefixes[:, i]) for i in range(n_levels)]
        aux = compacted_matryoshka_aux_loss(
            cfg, ctx, params, enc.x_norm, target, outputs, enc.scores, inputs.dead_mask
        )
    else:
        aux = dead_latent_auxk(
            cfg, ctx, params, enc.x_norm, target, x_hat, enc.scores, inputs.dead_mask
        )
    losses = {"mse_loss": mean_sq_error(x_hat, target), "auxiliary_reconstruction_loss": aux}
    for i, width in enumerate(widths[:-1]):
        losses[f"inner_mse_loss_{width}"] = mean_sq_error(output(prefixes[:, i]), target)

    fired = acts != 0  # [P]
    kept = jax.lax.stop_gradient(acts).astype(jnp.float32)
    return TrainOutput(
        loss=sum(losses.values()),
        losses=losses,
        x_hat=x_hat,
        fire_counts=jnp.zeros((d_sae,), jnp.int32).at[cols].add(fired.astype(jnp.int32)),
        l0=jnp.sum(fired, dtype=jnp.float32) / n_tokens,
        extras={
            "min_positive": jnp.min(jnp.where(fired, kept, jnp.inf)),
            "any_positive": jnp.any(fired),
        },
    )
