"""Learning-rate and coefficient schedules as pure functions of the step, SAELens semantics.

SAELens chains torch schedulers (`training/optim.py`): a `LinearLR` warm-up from `lr/W` to `lr`
over W steps, then the main phase (constant, `CosineAnnealingLR` or `CosineAnnealingWarmRestarts`
down to `lr_end`), then a `LinearLR` decay to 0 over the last D steps, starting from `lr_end`
(from `lr` for the constant schedule). Each value below is the learning rate used *at* step t
(0-based), i.e. after t calls of the torch scheduler's `step()`. Being functions of the step,
they need no state of their own: restoring the step restores them.

Sparsity coefficients warm up linearly from 0 (SAELens's `CoefficientScheduler`): step t uses
`value * min(t, W) / W`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from jsae.errors import ConfigError

if TYPE_CHECKING:
    from jsae.training.config import TrainingSettings


def learning_rate(settings: TrainingSettings, step: Any) -> Any:
    """The learning rate used at training step `step` (int or traced scalar)."""
    lr = settings.lr
    lr_end = settings.lr_end
    total = settings.total_steps
    warm = settings.lr_warm_up_steps
    decay = settings.lr_decay_steps
    main_steps = total - warm - decay
    name = settings.lr_scheduler_name
    t = jnp.asarray(step, jnp.float32)

    # warm-up: LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1)
    if warm > 1:
        warm_lr = lr * (1.0 / warm + (1.0 - 1.0 / warm) * jnp.minimum(t, warm - 1) / (warm - 1))
    else:
        warm_lr = jnp.asarray(lr, jnp.float32)

    # main phase, local step e
    e = jnp.maximum(t - warm, 0.0)
    if name == "constant":
        main_lr = jnp.asarray(lr, jnp.float32) + 0.0 * e
    elif name == "cosineannealing":
        main_lr = lr_end + (lr - lr_end) * (1 + jnp.cos(jnp.pi * e / max(main_steps, 1))) / 2
    else:  # cosineannealingwarmrestarts, T_mult = 1
        period = main_steps // settings.n_restart_cycles
        if period < 1:
            raise ConfigError(
                f"cosineannealingwarmrestarts needs at least one step per cycle: "
                f"{main_steps} main steps over n_restart_cycles={settings.n_restart_cycles}."
            )
        main_lr = lr_end + (lr - lr_end) * (1 + jnp.cos(jnp.pi * jnp.mod(e, period) / period)) / 2

    # decay: LinearLR(start_factor=start/lr, end_factor=0, total_iters=D)
    start = lr if name == "constant" else lr_end
    if decay > 0:
        d = jnp.clip(t - (total - decay), 0.0, decay)
        decay_lr = start * (1.0 - d / decay)
    else:
        decay_lr = main_lr

    out = jnp.where(t < warm, warm_lr, main_lr)
    if decay > 0:
        out = jnp.where(t >= total - decay, decay_lr, out)
    return out


def coefficient(value: float, warm_up_steps: int, step: Any) -> Any:
    """A sparsity coefficient at step `step`: linear warm-up from 0 over `warm_up_steps`."""
    if warm_up_steps <= 0:
        return jnp.asarray(value, jnp.float32)
    t = jnp.asarray(step, jnp.float32)
    return value * jnp.minimum(t, warm_up_steps) / warm_up_steps


__all__ = ["coefficient", "learning_rate"]
