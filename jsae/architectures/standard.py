"""`standard`: ReLU SAE, `f = relu((x - b_dec) @ W_enc + b_enc)`; the base class's, plus
training on the active (token, latent) pairs once few latents fire (`relu_pairs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from jsae.architectures import relu_pairs
from jsae.architectures.base import Architecture, Params, TrainContext, TrainInputs

if TYPE_CHECKING:
    from jsae.config import SAEConfig


class Standard(Architecture):
    """The ReLU SAE (SAELens `StandardSAE`)."""

    name = "standard"

    @classmethod
    def train_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        cast: Any,
        buffers: Params,
        x: jax.Array,
        target: jax.Array,
        inputs: TrainInputs,
    ) -> tuple[jax.Array | int, tuple[Any, ...]]:
        if relu_pairs.uses_active_pairs(cfg, ctx):
            return relu_pairs.train_losses(cls, cfg, ctx, params, cast, x, target, inputs)
        return super().train_losses(cfg, ctx, params, cast, buffers, x, target, inputs)
