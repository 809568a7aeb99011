"""`gated`: a hard gate decides which latents fire, a rescaled copy of W_enc sets magnitudes.

    gate = 1[x @ W_enc + b_gate > 0]
    f    = gate * relu(x @ (W_enc * exp(r_mag)) + b_mag)        # hidden_pre = the magnitude path

Rajamanoharan et al. 2024, as in SAELens `GatedSAE`. There is no b_enc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jsae.architectures.base import Architecture, Params

if TYPE_CHECKING:
    from jsae.config import SAEConfig


class Gated(Architecture):
    """Gated SAE with weight sharing between the gate and magnitude paths."""

    name = "gated"

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_gate": (cfg.d_sae,),
            "r_mag": (cfg.d_sae,),
            "b_mag": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    @classmethod
    def pre_activation(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array:
        W_mag = params["W_enc"] * jnp.exp(params["r_mag"])  # [d_in, d_sae], r_mag per column
        return x @ W_mag + params["b_mag"]

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        gate = (x @ params["W_enc"] + params["b_gate"]) > 0
        return jnp.where(gate, jax.nn.relu(hidden_pre), 0).astype(hidden_pre.dtype)

    @classmethod
    def per_latent_encoder_params(cls) -> tuple[str, ...]:
        # r_mag is a log-ratio between the two paths and is unchanged by the fold.
        return ("b_gate", "b_mag")
