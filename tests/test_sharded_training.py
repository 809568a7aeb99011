"""Training on meshes of the 8 fake CPU devices ends where training on one device does.

Data parallelism (batch over "data") and latent parallelism (d_sae over "model", with the
two-stage top-k of jsae.training.selection) only change summation orders, so after several
steps every parameter must agree with the single-device run to float tolerance, for every mesh.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from helpers import assert_close
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jsae
from jsae import parallel
from jsae.training.selection import batch_topk_mask, topk_mask

MESHES = [(1, 8), (8, 1), (2, 4)]
D_IN, D_SAE, BATCH, STEPS = 16, 64, 64, 5


def _batches(seed: int = 0, d_out: int | None = None) -> list:
    """STEPS batches [BATCH, D_IN]; for transcoders (x, target [BATCH, d_out]) pairs."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0.2, 1.0, (BATCH, D_IN)).astype(np.float32) for _ in range(STEPS)]
    if d_out is None:
        return xs
    mix = rng.normal(size=(D_IN, d_out)).astype(np.float32) / np.sqrt(D_IN)
    return [(x, np.tanh(x @ mix)) for x in xs]


def _train(arch: dict, mesh: tuple[int, int] | None) -> jsae.Trainer:
    return _train_cached(json.dumps(arch, sort_keys=True), mesh)


def _config(arch: dict, mesh: tuple[int, int] | None, **extra) -> dict:
    return {
        **arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "lr": 1e-2,
        "train_batch_size_tokens": BATCH,
        "training_tokens": BATCH * STEPS,
        "dead_feature_window": 2,
        "feature_sampling_window": 4,
        "mesh": None if mesh is None else {"data": mesh[0], "model": mesh[1]},
        "log_to_wandb": False,
        "checkpoint_path": None,
        "output_path": None,
        "progress_bar": False,
        **extra,
    }


@functools.cache
def _train_cached(arch_json: str, mesh: tuple[int, int] | None) -> jsae.Trainer:
    arch = json.loads(arch_json)
    trainer = jsae.Trainer(_config(arch, mesh), _batches(d_out=arch.get("d_out")))
    trainer.fit()
    return trainer


def _compare(sharded: jsae.Trainer, single: jsae.Trainer, what: str) -> None:
    for name, value in single.sae.params.items():
        assert_close(sharded.sae.params[name], value, atol=2e-5, rtol=2e-4, what=f"{what}: {name}")
    assert np.array_equal(
        np.asarray(sharded.state.fire_counts), np.asarray(single.state.fire_counts)
    )
    assert np.array_equal(
        np.asarray(sharded.state.since_fired), np.asarray(single.state.since_fired)
    )


TOPK = {"architecture": "topk", "k": 4, "use_sparse_activations": False}
BATCHTOPK = {"architecture": "batchtopk", "k": 4}


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
@pytest.mark.parametrize("arch", [TOPK, BATCHTOPK], ids=["topk", "batchtopk"])
def test_topk_family_on_every_mesh_matches_one_device(arch: dict, mesh: tuple[int, int]) -> None:
    single = _train(arch, None)
    assert int(np.sum(np.asarray(single.state.since_fired) > 2)) > 0, "AuxK must be exercised"
    sharded = _train(arch, mesh)
    W_enc = sharded.state.params["W_enc"]
    assert W_enc.sharding.spec == parallel.param_spec("W_enc")
    assert sharded.state.opt_state[1].mu["W_enc"].sharding.spec == parallel.param_spec("W_enc")
    assert sharded.state.since_fired.sharding.spec == P("model")
    _compare(sharded, single, f"{arch['architecture']} {mesh}")


@pytest.mark.parametrize("mesh", [(8, 1), (2, 4)], ids=lambda m: f"{m[0]}x{m[1]}")
def test_auxk_on_compacted_dead_columns_over_a_mesh_matches_one_device(
    mesh: tuple[int, int],
) -> None:
    """d_sae 2048 with under half of the latents dead: AuxK runs on a bucket of their columns
    (batch split over `data`) or, with latents split over `model`, on every latent."""
    arch = {"architecture": "topk", "k": 32, "use_sparse_activations": False}
    runs = {}
    for m in (None, mesh):
        trainer = jsae.Trainer(_config(arch, m, d_sae=2048), _batches())
        trainer.fit()
        runs[m] = trainer
    dead = np.sum(np.asarray(runs[None].state.since_fired) > 2)
    assert 0 < dead <= 1024, f"{dead} dead latents: more than the widest bucket holds"
    _compare(runs[mesh], runs[None], f"topk d_sae 2048 {mesh}")


@pytest.mark.parametrize(
    "arch",
    [
        {"architecture": "standard", "l1_coefficient": 0.5},
        {
            "architecture": "jumprelu",
            "l0_coefficient": 0.2,
            "jumprelu_bandwidth": 0.5,
            "jumprelu_init_threshold": 0.05,
            "pre_act_loss_coefficient": 0.1,
        },
        {
            "architecture": "matryoshka_batchtopk",
            "k": 4,
            "matryoshka_widths": [16, 32],
            "use_matryoshka_aux_loss": True,
        },
        {"architecture": "gated", "l1_coefficient": 0.5},
        {"architecture": "skip_transcoder", "l1_coefficient": 0.5, "d_out": 12},
        {"architecture": "jumprelu_transcoder", "l0_coefficient": 0.2, "d_out": 12},
    ],
    ids=lambda a: a["architecture"],
)
def test_other_architectures_on_a_2x4_mesh_match_one_device(arch: dict) -> None:
    _compare(_train(arch, (2, 4)), _train(arch, None), arch["architecture"])


def test_sparse_topk_path_data_parallel_matches_dense_single_device() -> None:
    sparse = _train({**TOPK, "use_sparse_activations": True}, (8, 1))
    _compare(sparse, _train(TOPK, None), "sparse topk 8x1")


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
def test_two_stage_selection_equals_single_device(mesh: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(32, 64)).astype(np.float32)
    m = parallel.make_mesh(*mesh)
    placed = jax.device_put(scores, NamedSharding(m, P("data", "model")))
    for k in (1, 5, 12):  # 12 > 64 / 8 latents per shard on the 1x8 mesh
        got = jax.jit(lambda s, k=k: topk_mask(s, k, m))(placed)
        assert np.array_equal(np.asarray(got), np.asarray(topk_mask(scores, k)))
        assert np.all(np.asarray(got).sum(-1) == k)
    for n_keep in (7, 100, 32 * 64 // 3):
        got = jax.jit(lambda s, n=n_keep: batch_topk_mask(s, n, m))(placed)
        assert np.array_equal(np.asarray(got), np.asarray(batch_topk_mask(scores, n_keep)))
        assert int(np.asarray(got).sum()) == n_keep


@pytest.mark.parametrize("first, then", [((2, 4), None), (None, (1, 8)), ((8, 1), (2, 4))], ids=str)
def test_resume_on_another_mesh_ends_where_one_device_does(
    tmp_path, first: tuple[int, int] | None, then: tuple[int, int] | None
) -> None:
    """A checkpoint written on one mesh resumes on another (or on one device): orbax re-shards
    the parameters, optimizer state and firing statistics onto the new placement."""
    arch = {**BATCHTOPK}
    single = _train(arch, None)

    def config(mesh: tuple[int, int] | None, **extra) -> dict:
        return _config(arch, mesh, checkpoint_path=str(tmp_path / "ckpt"), **extra)

    before = jsae.Trainer(config(first), _batches())
    for _ in range(3):
        before.step()
    before.save_checkpoint()
    after = jsae.Trainer(config(then, resume_from_checkpoint=str(tmp_path / "ckpt")), _batches())
    assert after.steps_done == 3
    if then is not None:
        W_enc = after.state.params["W_enc"]
        assert W_enc.sharding.mesh.shape == {"data": then[0], "model": then[1]}
        assert W_enc.sharding.spec == parallel.param_spec("W_enc")
    after.fit()
    _compare(after, single, f"resumed {first} -> {then}")


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
def test_two_stage_batch_selection_breaks_ties_as_one_device(mesh: tuple[int, int]) -> None:
    """With many equal scores (common in bfloat16) the entries kept at the cut are the first in
    the batch's flat order, as one device's top-k keeps them, whatever the mesh."""
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, size=(32, 64)).astype(np.float32)  # four values, heavy ties
    m = parallel.make_mesh(*mesh)
    placed = jax.device_put(scores, NamedSharding(m, P("data", "model")))
    for n_keep in (7, 100, 32 * 64 // 3, 32 * 64 - 5):
        got = jax.jit(lambda s, n=n_keep: batch_topk_mask(s, n, m))(placed)
        assert np.array_equal(np.asarray(got), np.asarray(batch_topk_mask(scores, n_keep)))
