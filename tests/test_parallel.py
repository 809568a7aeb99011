"""Partition rules on 8 fake CPU devices: placement, divisibility errors, sharded == unsharded."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import assert_close

import jsae
from jsae import parallel


def test_eight_fake_devices_are_available() -> None:
    assert jax.device_count() == 8


@pytest.mark.parametrize(("data", "model"), [(1, 8), (8, 1), (2, 4)])
def test_sharded_forward_equals_single_device(data: int, model: int) -> None:
    cfg = jsae.SAEConfig(architecture="jumprelu", d_in=16, d_sae=64)
    sae = jsae.SAE.init(cfg, 0)
    sae = jsae.SAE.from_params(cfg, {**sae.params, "threshold": np.full(64, 0.1, np.float32)})
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    mesh = parallel.make_mesh(data, model)
    sharded = parallel.shard_sae(sae, mesh)
    assert sharded.W_enc.sharding.spec == parallel.param_spec("W_enc")
    shard_shape = sharded.W_dec.addressable_shards[0].data.shape
    assert shard_shape == (64 // model, 16)
    x_s = jax.device_put(x, parallel.batch_sharding(mesh))
    out = jax.jit(lambda s, x: s(x, sparse=False))(sharded, x_s)
    assert_close(out, sae(x))


def test_mesh_errors_are_clear() -> None:
    with pytest.raises(jsae.ConfigError, match="needs 16 devices"):
        parallel.make_mesh(4, 4)
    with pytest.raises(jsae.ConfigError, match="unknown mesh axes"):
        parallel.mesh_from_config({"data": 2, "tensor": 4})
    sae = jsae.SAE.init(jsae.SAEConfig(architecture="standard", d_in=8, d_sae=12))
    with pytest.raises(jsae.ConfigError, match="cannot be split"):
        parallel.shard_sae(sae, parallel.make_mesh(1, 8))


@pytest.mark.parametrize("threshold", [0.9, 4.0], ids=["dense-branch", "gather-branch"])
def test_default_sparse_decode_stays_exact_when_latents_are_sharded(threshold: float) -> None:
    """sparse="auto" with d_sae split over "model": slower than sparse=False, never wrong."""
    cfg = jsae.SAEConfig(architecture="jumprelu", d_in=32, d_sae=4096)
    rng = np.random.default_rng(0)
    shapes = jsae.get_architecture("jumprelu").param_shapes(cfg)
    params = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
    params["threshold"] = np.full(4096, threshold, np.float32)
    sae = jsae.SAE.from_params(cfg, params)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    mesh = parallel.make_mesh(2, 4)
    out = jax.jit(lambda s, x: s(x))(
        parallel.shard_sae(sae, mesh), jax.device_put(x, parallel.batch_sharding(mesh))
    )
    assert_close(out, sae(x, sparse=False), atol=1e-4)
