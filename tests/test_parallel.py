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
