"""Device meshes and the partition rules that place SAE parameters and batches on them.

Sharding is declared, not coded: a mesh with axes ("data", "model") and one PartitionSpec per
parameter name. Latents (d_sae) split over "model"; batches split over "data"; the same jitted
function then runs on one device or many, GSPMD inserting the collectives.

    mesh = jsae.parallel.make_mesh(data=2, model=4)
    sae = jsae.parallel.shard_sae(sae, mesh)
    x = jax.device_put(x, jsae.parallel.batch_sharding(mesh))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jsae.errors import ConfigError

if TYPE_CHECKING:
    from jsae.sae import SAE

MESH_AXES = ("data", "model")

# Parameter name -> how its axes map onto the mesh. Per-latent vectors follow W_enc's columns.
PARAM_SPECS: dict[str, P] = {
    "W_enc": P(None, "model"),  # [d_in, d_sae]
    "W_dec": P("model", None),  # [d_sae, d_out]
    "b_enc": P("model"),
    "threshold": P("model"),
    "b_gate": P("model"),
    "b_mag": P("model"),
    "r_mag": P("model"),
    "b_dec": P(),  # [d_out], replicated
    "W_skip": P(),  # [d_out, d_in], replicated
    "topk_threshold": P(),
}


def make_mesh(
    data: int = 1, model: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ("data", "model") mesh over `data * model` devices (all local ones by default).

    `data=-1` takes every device not used by `model`. Axes are `AxisType.Auto`, so jitted
    code needs no sharding annotations beyond its inputs.
    """
    devices = list(devices if devices is not None else jax.devices())
    if data == -1:
        if len(devices) % model:
            raise ConfigError(f"model={model} does not divide the {len(devices)} devices.")
        data = len(devices) // model
    if data < 1 or model < 1:
        raise ConfigError(f"mesh sizes must be positive, got data={data}, model={model}.")
    if data * model > len(devices):
        raise ConfigError(
            f"a {data}x{model} mesh needs {data * model} devices but only {len(devices)} exist "
            f"({devices[0].platform}). On CPU, set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={data * model} before importing jax."
        )
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_from_config(spec: dict[str, int] | Mesh | None) -> Mesh | None:
    """A mesh from `{"data": 2, "model": 4}` (missing axes default to 1), or pass-through."""
    if spec is None or isinstance(spec, Mesh):
        return spec
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"unknown mesh axes {sorted(unknown)}; the axes are {list(MESH_AXES)}.")
    return make_mesh(int(spec.get("data", 1)), int(spec.get("model", 1)))


def param_spec(name: str) -> P:
    """PartitionSpec for a parameter name (replicated when the name is not in the table)."""
    return PARAM_SPECS.get(name, P())


def _check_divisible(name: str, shape: tuple[int, ...], spec: P, mesh: Mesh) -> None:
    for dim, axis in zip(shape, spec, strict=False):
        if axis is None:
            continue
        size = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
        if dim % size:
            raise ConfigError(
                f"{name} has a dimension of {dim} that cannot be split over mesh axis "
                f"{axis!r} of size {size}; choose d_sae divisible by the 'model' axis."
            )


def param_shardings(params: dict[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """NamedSharding for each parameter, after checking the shapes divide the mesh."""
    out = {}
    for name, value in params.items():
        spec = param_spec(name)
        _check_divisible(name, tuple(np.shape(value)), spec, mesh)
        out[name] = NamedSharding(mesh, spec)
    return out


def sae_shardings(sae: SAE, mesh: Mesh) -> SAE:
    """An SAE-shaped pytree of NamedShardings (use as jit in/out_shardings)."""
    return type(sae)(sae.cfg, param_shardings(sae.params, mesh))


def shard_sae(sae: SAE, mesh: Mesh) -> SAE:
    """Place every parameter on `mesh` by the partition rules."""
    return jax.device_put(sae, sae_shardings(sae, mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch `[B, ...]`: split over "data", replicated over "model"."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
