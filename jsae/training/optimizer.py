"""The optimiser: torch-style global-norm clipping, Adam, and the scheduled learning rate.

Matches SAELens's `clip_grad_norm_(params, 1.0)` + `torch.optim.Adam(betas, eps=1e-8)` +
scheduler: the clipping coefficient is `max_norm / (norm + 1e-6)` clamped at 1 (torch's
formula, slightly different from `optax.clip_by_global_norm`), Adam adds ε after the square
root of the bias-corrected second moment, and there is no weight decay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from jsae.training.schedules import learning_rate

if TYPE_CHECKING:
    from jsae.training.config import TrainingSettings


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Scale gradients by min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(settings: TrainingSettings) -> optax.GradientTransformation:
    """Clip (optional), Adam, then step by -lr(step); the step count lives in the state."""
    parts = []
    if settings.max_grad_norm is not None:
        parts.append(clip_by_global_norm_torch(settings.max_grad_norm))
    parts.append(
        optax.scale_by_adam(b1=settings.adam_beta1, b2=settings.adam_beta2, eps=settings.adam_epsilon)
    )
    parts.append(optax.scale_by_learning_rate(lambda step: learning_rate(settings, step)))
    return optax.chain(*parts)


__all__ = ["clip_by_global_norm_torch", "make_optimizer"]
