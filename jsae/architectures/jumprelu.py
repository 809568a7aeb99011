"""`jumprelu`: `f = z * 1[z > threshold]` with z the pre-activation and a per-latent threshold.

Gemma Scope's architecture (Rajamanoharan et al. 2024). The comparison is strict, and the
threshold is kept in float32 whatever the SAE dtype: bf16 rounding of thresholds flips which
latents fire. `relu(z) * 1[z > θ]` equals `z * 1[z > θ]` for θ >= 0; the relu form is kept
so that negative thresholds (seen in some converted checkpoints) behave as in SAELens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import Architecture, Params

if TYPE_CHECKING:
    from jsae.config import SAEConfig


class JumpReLU(Architecture):
    """JumpReLU SAE (SAELens `JumpReLUSAE`)."""

    name = "jumprelu"

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "threshold": (cfg.d_sae,)}

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        return jnp.where(hidden_pre > params["threshold"], jax.nn.relu(hidden_pre), 0).astype(
            hidden_pre.dtype
        )

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, state: dict[str, Any]) -> dict[str, Any]:
        """Older SAELens training checkpoints store log_threshold."""
        state = dict(state)
        if "log_threshold" in state and "threshold" not in state:
            state["threshold"] = jnp.exp(jnp.asarray(state.pop("log_threshold"), jnp.float32))
        return state
