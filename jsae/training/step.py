"""One training step as one jitted function: loss, gradients, Adam update, statistics, metrics.

    step_fn = make_step(...)
    state, metrics = step_fn(state, x, y, scale)      # state donated; metrics are device scalars

SAELens's `SAETrainer._train_step` semantics: the coefficients and the dead-latent mask of
step t are computed before the update (coefficient warm-up from the step counter; dead means
"not fired for more than dead_feature_window steps"); firing statistics are updated from the
step's latents; the firing counts reset at the start of every `feature_sampling_window`-th step.

A batch holding NaN or Inf, a non-finite loss, or non-finite gradients of a finite loss leave
the state unchanged (the update is selected away inside the same fused update) and set
`metrics["finite"]` to False; the trainer stops the run with an error naming the step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jsae.architectures.base import TrainContext, TrainInputs
from jsae.training.schedules import coefficient, learning_rate
from jsae.training.state import TrainState

StepFn = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]


def make_step(
    cfg: Any,
    arch: Any,
    ctx: TrainContext,
    training: Any,
    optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The (un-jitted) step function for an architecture and its settings."""
    coefficient_specs = arch.coefficients(ctx.settings)
    transcoder = arch.is_transcoder
    # Mixed precision: the loss runs on a compute-dtype copy of the parameters (thresholds stay
    # float32); gradients flow back through the cast to the master parameters.
    compute = (
        cfg
        if training.compute_dtype in (None, cfg.dtype)
        else cfg.replace(dtype=training.compute_dtype)
    )

    def compute_params(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if compute is cfg:
            return params
        return {
            name: value if name in arch.fp32_params else value.astype(compute.jax_dtype)
            for name, value in params.items()
        }

    window = training.dead_feature_window
    sampling = training.feature_sampling_window

    def step_fn(state: TrainState, x: jax.Array, y: jax.Array, scale: jax.Array):
        step = state.step
        given_finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))  # before the cast
        x = (x * scale).astype(compute.jax_dtype)  # [B, d_in]
        target = y.astype(compute.jax_dtype) if transcoder else x  # [B, d_out]
        # constant_norm_rescale divides each row by its norm: an all-zero row has none. Every
        # path refuses such a batch (the dense one got NaN; the sparse ones masked it away).
        rows_normalisable = (
            jnp.all(jnp.any(x != 0, axis=-1))
            if cfg.normalize_activations == "constant_norm_rescale"
            else jnp.bool_(True)
        )
        coefficients = {
            name: coefficient(value, warm, step)
            for name, (value, warm) in coefficient_specs.items()
        }
        inputs = TrainInputs(coefficients, state.since_fired > window)
        which, losses = arch.train_losses(
            compute, ctx, state.params, compute_params, state.buffers, x, target, inputs
        )

        def update(loss_fn: Callable, state: TrainState) -> tuple[TrainState, dict]:
            """The rest of the step with one way of computing the loss."""
            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = arch.project_params(cfg, ctx, optax.apply_updates(state.params, updates))
            buffers = arch.update_buffers(cfg, ctx, state.buffers, out.extras)

            reset = (step > 0) & (step % sampling == 0)
            fire_counts = jnp.where(reset, 0, state.fire_counts) + out.fire_counts
            since_fired = jnp.where(out.fire_counts > 0, 0, state.since_fired + 1)
            new = TrainState(params, opt_state, buffers, step + 1, since_fired, fire_counts)

            batch_finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(target))
            grads_finite = jnp.isfinite(optax.tree.norm(grads))  # NaN or Inf in any gradient
            finite = batch_finite & rows_normalisable & jnp.isfinite(loss) & grads_finite
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)

            metrics = _metrics(out, loss, target, new, window)
            metrics["details/current_learning_rate"] = learning_rate(training, step)
            for name, value in coefficients.items():
                metrics[f"details/{name}_coefficient"] = value
            if "topk_threshold" in new.buffers:
                metrics["metrics/topk_threshold"] = new.buffers["topk_threshold"]
            metrics["finite"] = finite
            metrics["batch_finite"] = batch_finite
            metrics["rows_normalisable"] = rows_normalisable
            metrics["given_batch_finite"] = given_finite
            metrics["loss_finite"] = jnp.isfinite(loss)
            return new, metrics

        if len(losses) == 1:
            return update(losses[0], state)
        branches = [functools.partial(update, loss_fn) for loss_fn in losses]
        return jax.lax.switch(which, branches, state)

    return step_fn


def _metrics(out: Any, loss: jax.Array, target: jax.Array, state: TrainState, window: int):
    """SAELens's train-step metrics (`SAETrainer.build_train_step_log_dict`)."""
    x_hat = out.x_hat.astype(jnp.float32)
    target = target.astype(jnp.float32)
    per_token_l2 = jnp.sum((x_hat - target) ** 2, axis=-1)  # [B]
    total_variance = jnp.sum((target - jnp.mean(target, axis=0)) ** 2, axis=-1)  # [B]
    legacy = 1 - per_token_l2 / total_variance
    metrics = {
        "losses/overall_loss": loss,
        "metrics/explained_variance": 1 - jnp.mean(per_token_l2) / jnp.mean(total_variance),
        "metrics/explained_variance_legacy": jnp.mean(legacy),
        "metrics/explained_variance_legacy_std": jnp.std(legacy, ddof=1),
        "metrics/l0": out.l0,
        "sparsity/mean_passes_since_fired": jnp.mean(state.since_fired.astype(jnp.float32)),
        "sparsity/dead_features": jnp.sum(state.since_fired > window),
    }
    for name, value in out.losses.items():
        metrics[f"losses/{name}"] = value
    return metrics


__all__ = ["make_step"]
