"""`TrainState`: everything a training step reads and writes, as one pytree placed on the mesh.

Params and optimizer state follow the partition rules of `jsae.parallel` (optimizer moments
take their parameter's spec, found by name in their tree path); per-latent firing statistics
split over "model" like the latents; scalars are replicated. The learning-rate and coefficient
schedules are functions of `step`, so the state holds no scheduler objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jsae.parallel import param_spec


@dataclass
class TrainState:
    """Parameters, Adam state, buffers, the step counter and the firing statistics."""

    params: dict[str, jax.Array]  # trained parameters, SAELens names
    opt_state: Any  # optax state (clip, Adam moments, schedule count)
    buffers: dict[str, jax.Array]  # state that is not trained (BatchTopK's topk_threshold)
    step: jax.Array  # int32 []: completed training steps
    since_fired: jax.Array  # int32 [d_sae]: steps since each latent last fired
    fire_counts: jax.Array  # int32 [d_sae]: tokens each latent fired on, this sampling window


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=["params", "opt_state", "buffers", "step", "since_fired", "fire_counts"],
    meta_fields=[],
)


def init_state(
    params: dict[str, jax.Array], buffers: dict[str, jax.Array], optimizer: optax.GradientTransformation
) -> TrainState:
    """A fresh state around initial parameters."""
    d_sae = params["W_dec"].shape[0]
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        buffers=buffers,
        step=jnp.zeros((), jnp.int32),
        since_fired=jnp.zeros((d_sae,), jnp.int32),
        fire_counts=jnp.zeros((d_sae,), jnp.int32),
    )


def _leaf_spec(path: tuple, leaf: Any, param_shapes: dict[str, tuple]) -> P:
    """A parameter's spec for leaves that belong to it (same name in the path, same shape)."""
    shape = tuple(getattr(leaf, "shape", ()))
    for key in reversed(path):
        name = getattr(key, "key", None)
        if isinstance(name, str) and name in param_shapes and param_shapes[name] == shape:
            return param_spec(name)
    return P()


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A TrainState-shaped pytree of NamedShardings (works on abstract states too)."""
    param_shapes = {k: tuple(v.shape) for k, v in state.params.items()}

    def spec_of(path, leaf):
        return NamedSharding(mesh, _leaf_spec(path, leaf, param_shapes))

    shardings = jax.tree_util.tree_map_with_path(spec_of, state)
    latent = NamedSharding(mesh, P("model"))
    shardings.since_fired = latent
    shardings.fire_counts = latent
    return shardings


__all__ = ["TrainState", "init_state", "state_shardings"]
