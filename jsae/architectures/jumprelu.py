"""`jumprelu`: `f = z * 1[z > threshold]` with z the pre-activation and a per-latent threshold.

Gemma Scope's architecture (Rajamanoharan et al. 2024). The comparison is strict, and the
threshold is kept in float32 whatever the SAE dtype: bf16 rounding of thresholds flips which
latents fire. `relu(z) * 1[z > θ]` equals `z * 1[z > θ]` for θ >= 0; the relu form is kept
so that negative thresholds (seen in some converted checkpoints) behave as in SAELens.

Training (SAELens 6.54, `JumpReLUTrainingSAE`): the threshold is a parameter in its own right,
kept in float32 and projected to >= 0 after every update. (SAELens <= 6.18 trained
`log_threshold`; under Adam that moves θ by ~lr·θ per step, so thresholds barely trained.)
Gradients through the discontinuities use rectangle-kernel straight-through estimators of
bandwidth ε (Rajamanoharan et al. 2024):
    ∂JumpReLU/∂θ := -(θ/ε) K((z-θ)/ε)      ∂Step/∂θ := -(1/ε) K((z-θ)/ε)      K(u) = 1[|u| < 1/2]
and, with `jumprelu_ste_to_input`, the same estimators (negated) flow into z (Anthropic).
Sparsity loss modes: "step" (l0 · mean_b Σ_i Step(z_i, θ_i)), "quadratic" (Gemma Scope 2:
l0 · mean_b 2/t · (L0 - t)²) and "tanh" (Anthropic: l0 · mean_b Σ_i tanh(c · f_i ||W_dec,i||));
plus the optional pre-activation loss on dead latents,
pre · mean_b Σ_i relu(θ_i - z_i) dead_i ||W_dec,i||.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import (
    Architecture,
    ForwardPass,
    Params,
    TrainContext,
    TrainInputs,
    column_sum,
)

if TYPE_CHECKING:
    from jsae.config import SAEConfig


class JumpReLUGate(Architecture):
    """The JumpReLU gate: a per-latent float32 threshold and its straight-through training.

    Mixed into JumpReLU SAEs and JumpReLU transcoders (`class X(JumpReLUGate, Base)`), so the
    gate is written once whatever it gates.
    """

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "threshold": (cfg.d_sae,)}

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        # a product, not a select: a NaN pre-activation stays NaN (as in SAELens), not 0
        gate = (hidden_pre > params["threshold"]).astype(hidden_pre.dtype)
        return jax.nn.relu(hidden_pre) * gate

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, state: dict[str, Any]) -> dict[str, Any]:
        """Older SAELens training checkpoints store log_threshold."""
        state = dict(state)
        if "log_threshold" in state and "threshold" not in state:
            state["threshold"] = jnp.exp(jnp.asarray(state.pop("log_threshold"), jnp.float32))
        return state

    # ------------------------------------------------------------------ training

    @classmethod
    def train_init_params(cls, cfg: SAEConfig, settings: Any, key: jax.Array) -> Params:
        return init_threshold(super().train_init_params(cfg, settings, key), cfg, settings)

    @classmethod
    def coefficients(cls, settings: Any) -> dict[str, tuple[float, int]]:
        return jumprelu_coefficients(settings)

    @classmethod
    def train_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        hidden_pre: jax.Array,
        x: jax.Array,
    ) -> jax.Array:
        return jumprelu_train_activation(ctx, params, hidden_pre)

    @classmethod
    def aux_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        fwd: ForwardPass,
        inputs: TrainInputs,
    ) -> dict[str, jax.Array]:
        return jumprelu_losses(ctx, params, fwd, inputs)

    @classmethod
    def project_params(cls, cfg: SAEConfig, ctx: TrainContext, params: Params) -> Params:
        return {**params, "threshold": jnp.maximum(params["threshold"], 0.0)}


class JumpReLU(JumpReLUGate):
    """JumpReLU SAE (SAELens `JumpReLUSAE`)."""

    name = "jumprelu"


# --------------------------------------------------------------------------- estimators


def _rectangle(u: jax.Array) -> jax.Array:
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a [..., d_sae] cotangent over the leading axes (the threshold is per latent)."""
    return column_sum(g.reshape(-1, g.shape[-1])).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def jumprelu_ste(z: jax.Array, threshold: jax.Array, bandwidth: float, ste_to_input: bool):
    """z · 1[z > θ]; ∂/∂θ := -(θ/ε) K((z-θ)/ε); ∂/∂z = 1[z > θ] (+ the θ estimator negated)."""
    return z * (z > threshold).astype(z.dtype)


def _jumprelu_fwd(z, threshold, bandwidth, ste_to_input):
    return jumprelu_ste(z, threshold, bandwidth, ste_to_input), (z, threshold)


def _jumprelu_bwd(bandwidth, ste_to_input, residuals, g):
    z, threshold = residuals
    ste = (threshold / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    dz = (z > threshold).astype(g.dtype) * g
    if ste_to_input:
        dz = dz + ste
    return dz, _sum_to(-ste, threshold.shape).astype(threshold.dtype)


jumprelu_ste.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def step_ste(z: jax.Array, threshold: jax.Array, bandwidth: float, ste_to_input: bool):
    """1[z > θ]; ∂/∂θ := -(1/ε) K((z-θ)/ε); ∂/∂z := 0 (or (1/ε) K((z-θ)/ε) with ste_to_input)."""
    return (z > threshold).astype(z.dtype)


def _step_fwd(z, threshold, bandwidth, ste_to_input):
    return step_ste(z, threshold, bandwidth, ste_to_input), (z, threshold)


def _step_bwd(bandwidth, ste_to_input, residuals, g):
    z, threshold = residuals
    ste = (1.0 / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    dz = ste if ste_to_input else jnp.zeros_like(z)
    return dz, _sum_to(-ste, threshold.shape).astype(threshold.dtype)


step_ste.defvjp(_step_fwd, _step_bwd)


# ---------------------------------------------------------------- shared with JumpReLU transcoders


def init_threshold(params: Params, cfg: SAEConfig, settings: Any) -> Params:
    """Every threshold at `jumprelu_init_threshold`, float32."""
    threshold = jnp.full((cfg.d_sae,), settings.jumprelu_init_threshold, jnp.float32)
    return {**params, "threshold": threshold}


def jumprelu_coefficients(settings: Any) -> dict[str, tuple[float, int]]:
    return {"l0": (settings.l0_coefficient, settings.l0_warm_up_steps)}


def jumprelu_train_activation(
    ctx: TrainContext, params: Params, hidden_pre: jax.Array
) -> jax.Array:
    s = ctx.settings
    threshold = params["threshold"].astype(hidden_pre.dtype)
    return jumprelu_ste(hidden_pre, threshold, s.jumprelu_bandwidth, s.jumprelu_ste_to_input)


def jumprelu_losses(
    ctx: TrainContext, params: Params, fwd: ForwardPass, inputs: TrainInputs
) -> dict[str, jax.Array]:
    s = ctx.settings
    z = fwd.hidden_pre
    threshold = params["threshold"].astype(z.dtype)
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)  # [d_sae]
    coeff = inputs.coefficients["l0"]
    if s.jumprelu_sparsity_loss_mode == "tanh":
        tanh = jnp.tanh(s.jumprelu_tanh_scale * fwd.f * norms)
        per_item = jnp.sum(tanh, axis=-1, dtype=jnp.float32)
    else:
        steps = step_ste(z, threshold, s.jumprelu_bandwidth, s.jumprelu_ste_to_input)
        l0 = jnp.sum(steps, axis=-1, dtype=jnp.float32)
        if s.jumprelu_sparsity_loss_mode == "quadratic":
            per_item = 2.0 / s.target_l0 * (l0 - s.target_l0) ** 2
        else:
            per_item = l0
    losses = {"l0_loss": jnp.mean(coeff * per_item)}
    if s.pre_act_loss_coefficient is not None:
        dead = inputs.dead_mask.astype(z.dtype)
        gap = jax.nn.relu(threshold - z) * dead * norms
        per_item = jnp.sum(gap, axis=-1, dtype=jnp.float32)
        losses["pre_act_loss"] = s.pre_act_loss_coefficient * jnp.mean(per_item)
    return losses
