"""`gated`: a hard gate decides which latents fire, a rescaled copy of W_enc sets magnitudes.

    gate = 1[x @ W_enc + b_gate > 0]
    f    = gate * relu(x @ (W_enc * exp(r_mag)) + b_mag)        # hidden_pre = the magnitude path

Rajamanoharan et al. 2024, as in SAELens `GatedSAE`. There is no b_enc.

Training adds, on the gate path π = x @ W_enc + b_gate:
    l1_loss   = l1 · mean_b Σ_i relu(π_i) ||W_dec,i||
    auxiliary_reconstruction_loss = mean_b ||relu(π) @ W_dec + b_dec - x||²
The paper computes the auxiliary reconstruction with frozen copies of the decoder (its
gradient trains only the gate path), and keeps decoder rows at unit norm. SAELens 6.54 does
neither: it has no norm constraint and does not detach, so that loss also trains the decoder.
jsae follows SAELens by default. `gated_detach_aux_decoder=True` gives the paper's detached loss;
without the paper's norm constraint it is unstable (on the synthetic benchmark of
tests/test_train_synthetic.py the gate path and the decoder norms drift apart: L0 climbs to
d_sae and explained variance falls towards 0), which is why it is not the default.

With `normalize_activations` constant_norm_rescale or layer_norm, π is taken from the
normalised input the encoder sees and the gate's reconstruction is de-normalised before it is
compared with x, as the main reconstruction is. SAELens 6.54 takes π from the raw input there
(an encoder trained on normalised inputs, fed raw ones, and the L1 penalty on that) and so
differs by 16-41% in these losses; with no normalisation, or expected_average_only_in (a
constant folded into the input), both agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jsae.architectures.base import (
    Architecture,
    ForwardPass,
    Params,
    TrainContext,
    TrainInputs,
    affine_encoder,
    lp_norm,
    mean_sq_error,
)

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
        gate = ((x @ params["W_enc"] + params["b_gate"]) > 0).astype(hidden_pre.dtype)
        return jax.nn.relu(hidden_pre) * gate  # a product: NaN stays NaN, as in SAELens

    @classmethod
    def per_latent_encoder_params(cls) -> tuple[str, ...]:
        # r_mag is a log-ratio between the two paths and is unchanged by the fold.
        return ("b_gate", "b_mag")

    @classmethod
    def train_pre_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x: jax.Array,
        center: jax.Array | None,
    ) -> jax.Array:
        W_mag = params["W_enc"] * jnp.exp(params["r_mag"])  # [d_in, d_sae]
        return affine_encoder(x, center, W_mag, params["b_mag"], ctx.weight_grad_layout)

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
        # The gate pre-activation π serves the hard gate and the auxiliary losses: computed once.
        pi_gate = affine_encoder(  # [B, d_sae]
            x_norm, center, params["W_enc"], params["b_gate"], ctx.weight_grad_layout
        )
        hidden_pre = cls.train_pre_activation(cfg, ctx, params, x_norm, center)  # magnitude path
        gate = jax.lax.stop_gradient(pi_gate) > 0
        f = jnp.where(gate, jax.nn.relu(hidden_pre), 0).astype(hidden_pre.dtype)
        return hidden_pre, f, {"pi_gate": pi_gate}

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

        pi_gate = jax.nn.relu(fwd.encoded["pi_gate"])  # [B, d_sae]
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)  # [d_sae]
        l1 = inputs.coefficients["l1"] * jnp.mean(lp_norm(pi_gate * norms, 1.0))
        W_dec, b_dec = params["W_dec"], params["b_dec"]
        if ctx.settings.gated_detach_aux_decoder:
            W_dec, b_dec = jax.lax.stop_gradient(W_dec), jax.lax.stop_gradient(b_dec)
        via_gate = pi_gate @ W_dec + b_dec  # [B, d_in], in the encoder's normalised space
        via_gate = normalize_out(cfg.normalize_activations, via_gate, fwd.stats)  # as x_hat is
        aux = mean_sq_error(via_gate, fwd.target)
        return {"l1_loss": l1, "auxiliary_reconstruction_loss": aux}
