"""What training produces: the activation scale folded exactly into the weights, TopK decoder
norms folded, BatchTopK exported as JumpReLU, and an output directory that SAELens itself loads
and runs to the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, run_reference
from safetensors.numpy import load_file, save_file

import jsae


def _batches(n: int, scale: float = 7.0, d: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(scale * rng.normal(0.3, 1.0, (64, d))).astype(np.float32) for _ in range(n)]


def _config(tmp: Path, name: str, **extra) -> dict:
    return {
        "d_in": 12, "d_sae": 48, "train_batch_size_tokens": 64, "training_tokens": 64 * 25,
        "normalize_activations": "expected_average_only_in", "n_batches_for_norm_estimate": 4,
        "log_to_wandb": False, "progress_bar": False, "checkpoint_path": None,
        "output_path": str(tmp / name), **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "arch",
    [
        {"architecture": "standard"},
        {"architecture": "topk", "k": 4},
        {"architecture": "batchtopk", "k": 4},
    ],
    ids=lambda a: a["architecture"],
)
def test_scale_is_estimated_applied_and_folded(tmp_path: Path, arch: dict) -> None:
    batches = _batches(30)
    trainer = jsae.Trainer(_config(tmp_path, "out", **arch), batches)
    final = trainer.fit()
    x = batches[-1]
    norms = np.linalg.norm(np.concatenate(batches[:4]), axis=-1)
    assert trainer.scale == pytest.approx(np.sqrt(12) / norms.mean(), rel=1e-5)
    assert final.cfg.normalize_activations == "none"
    # the training-form SAE works on scaled activations; the saved one on raw activations
    trained = trainer.sae.to_inference()
    s = trainer.scale
    assert_close(final(x), np.asarray(trained(s * x)) / s, atol=1e-4, rtol=1e-4)
    # the same latents fire (BatchTopK: only because its threshold is rescaled with the fold)
    active = np.asarray(final.encode(x)) > 0
    assert np.array_equal(active, np.asarray(trained.encode(s * x)) > 0)
    assert 0 < active.mean() < 1
    saved = jsae.load(tmp_path / "out")
    assert saved.cfg.architecture == final.cfg.architecture
    assert_close(saved(x), final(x))
    if arch["architecture"] == "batchtopk":
        assert final.cfg.architecture == "jumprelu"
    if arch["architecture"] == "topk":
        assert_close(np.linalg.norm(np.asarray(final.W_dec), axis=1), np.ones(48), atol=1e-5)
    meta = final.cfg.metadata
    assert meta["l0"] > 0 and meta["num_dead_features"] is not None


@pytest.mark.parametrize(
    "arch",
    [
        {"architecture": "batchtopk", "k": 4},
        {"architecture": "batchtopk", "k": 4, "rescale_acts_by_decoder_norm": True},
        {"architecture": "matryoshka_batchtopk", "k": 4, "matryoshka_widths": [12, 48]},
    ],
    ids=["batchtopk", "batchtopk-rescaled", "matryoshka"],
)
def test_a_saved_batchtopk_sae_starts_a_batchtopk_run(tmp_path: Path, arch: dict) -> None:
    """A BatchTopK run saves a JumpReLU with one threshold for every latent; fine-tuning it as
    BatchTopK takes that threshold back as `topk_threshold` and the weights as they are, so the
    run's inference form before its first step is the saved SAE again."""
    jsae.train(_config(tmp_path, "out", **arch), _batches(30))
    saved = jsae.load(tmp_path / "out")
    assert saved.cfg.architecture == "jumprelu"
    config = _config(tmp_path, "again", **arch)
    trainer = jsae.Trainer({**config, "from_pretrained_path": str(tmp_path / "out")}, [])
    threshold = np.asarray(saved.params["threshold"])
    assert float(trainer.state.buffers["topk_threshold"]) == threshold[0] > 0
    start = trainer.final_sae()
    assert start.cfg.architecture == "jumprelu"
    for name, value in saved.params.items():
        assert_close(start.params[name], value, atol=1e-6, rtol=1e-6, what=name)
    # Fine-tuning goes on from the saved SAE: after 30 more batches it reconstructs better
    # than the saved one did, and better than 30 batches from a fresh start.
    x = np.concatenate(_batches(30))
    tuned = jsae.train({**config, "output_path": None}, _batches(30), init=saved)
    fresh = jsae.train({**config, "output_path": None}, _batches(30))
    errors = [float(np.mean((np.asarray(sae(x)) - x) ** 2)) for sae in (tuned, saved, fresh)]
    assert errors[0] < min(errors[1:]), errors
    assert np.unique(np.asarray(tuned.params["threshold"])).size == 1

    varied = jsae.SAE.from_params(
        saved.cfg, {**saved.params, "threshold": threshold * 1.5 ** np.arange(48)}
    )
    with pytest.raises(
        jsae.ConfigError, match=r"thresholds differ across latents.*architecture: jumprelu"
    ):
        jsae.Trainer(config, [], init=varied)


@pytest.mark.parametrize(
    "arch",
    [
        {"architecture": "standard"},
        {"architecture": "gated"},
        {"architecture": "jumprelu", "l1_coefficient": 1.0},
        {"architecture": "batchtopk", "k": 4, "topk_threshold_lr": 1e-7},
    ],
    ids=lambda a: a["architecture"],
)
def test_fine_tuning_with_an_estimated_scale_starts_from_the_saved_function(
    tmp_path: Path, arch: dict
) -> None:
    """A saved SAE acts on raw activations (its scale folded in). A run that starts from it and
    estimates a scale of its own first unfolds that scale, so one step at a tiny learning rate
    leaves the same function. (Feeding the folded weights `scale * x` would scale the
    pre-activations.)"""
    jsae.train(_config(tmp_path, "out", **arch), _batches(30))
    saved = jsae.load(tmp_path / "out")
    config = _config(tmp_path, "again", **arch, lr=1e-7, training_tokens=64, output_path=None)
    trainer = jsae.Trainer(config, _batches(5, scale=3.0), init=saved)
    tuned = trainer.fit()
    assert trainer.steps_done == 1 and abs(trainer.scale - 1) > 0.5
    x = np.concatenate(_batches(4))
    assert_close(tuned(x), saved(x), atol=1e-3, rtol=1e-3)
    assert np.array_equal(np.asarray(tuned.encode(x)) > 0, np.asarray(saved.encode(x)) > 0)


def test_an_initial_sae_that_handles_its_input_differently_is_refused(tmp_path: Path) -> None:
    """The config would change how the starting SAE reads its input: refused, naming the
    setting, instead of silently training another function."""
    config = _config(tmp_path, "again", output_path=None)
    sae = jsae.SAE.init(jsae.TrainConfig.from_dict(config).sae_config(), 0)
    for setting, value in [
        ("apply_b_dec_to_input", False),
        ("normalize_activations", "layer_norm"),
    ]:
        other = jsae.SAE.from_params(sae.cfg.replace(**{setting: value}), sae.params)
        with pytest.raises(jsae.ConfigError, match=f"{setting}: the SAE has {value}"):
            jsae.Trainer(config, [], init=other)
    # A TopK-family SAE trained without decoder-norm-aware selection has decoder rows of other
    # norms: ranking by pre-activation x norm would pick other latents.
    for arch in ({"architecture": "topk", "k": 4}, {"architecture": "batchtopk", "k": 4}):
        plain = _config(tmp_path, "plain", **arch, rescale_acts_by_decoder_norm=False)
        jsae.train({**plain, "overwrite_output": True}, _batches(30))
        saved = jsae.load(tmp_path / "plain")
        norms = np.linalg.norm(np.asarray(saved.params["W_dec"]), axis=-1)
        assert np.abs(norms - 1).max() > 0.1
        rescaled = _config(tmp_path, "again", **arch, rescale_acts_by_decoder_norm=True)
        with pytest.raises(jsae.ConfigError, match="rescale_acts_by_decoder_norm: the SAE has F"):
            jsae.Trainer(rescaled, [], init=saved)
        as_trained = jsae.Trainer({**plain, "output_path": None}, [], init=saved)
        x = np.concatenate(_batches(4))
        assert_close(as_trained.final_sae()(x), saved(x), atol=1e-6, rtol=1e-5)


def test_stepping_by_hand_scales_like_fit(tmp_path: Path) -> None:
    """Trainer.step() estimates the scale before its first step, as fit() does: from the
    source's first n_batches_for_norm_estimate batches, or from the batch it is given."""
    batches = _batches(30)
    config = _config(tmp_path, "out", architecture="standard", output_path=None)
    fitted = jsae.Trainer(config, batches)
    fitted.fit()
    by_hand = jsae.Trainer(config, batches)
    while by_hand.steps_done < fitted.steps_done:
        by_hand.step()
    assert by_hand.scale == fitted.scale
    for name, value in fitted.sae.params.items():
        assert np.array_equal(np.asarray(by_hand.sae.params[name]), np.asarray(value)), name
    given = jsae.Trainer(config, [])
    given.step(batches[5])
    norms = np.linalg.norm(batches[5], axis=-1)
    assert given.scale == pytest.approx(np.sqrt(12) / norms.mean(), rel=1e-6)


def test_saelens_loads_and_runs_what_jsae_trained(tmp_path: Path) -> None:
    """Each architecture's output directory, loaded by SAELens 6.54 (reference env)."""
    root = tmp_path / "cases"
    x = _batches(1, scale=1.0)[0]
    cases = {
        "standard": {"architecture": "standard"},
        "gated": {"architecture": "gated"},
        "jumprelu": {"architecture": "jumprelu", "jumprelu_init_threshold": 0.05},
        "topk": {"architecture": "topk", "k": 4},
        "batchtopk": {"architecture": "batchtopk", "k": 4},
        "transcoder": {"architecture": "transcoder", "d_out": 5},
        "hook_z": {"architecture": "standard", "metadata": {"hook_name": HOOK_Z}},
    }
    saes = {}
    inputs = {name: x for name in cases} | {"hook_z": x.reshape(64, 3, 4)}  # [B, heads, d_head]
    for name, arch in cases.items():
        config = _config(root / name, "sae", **arch, normalize_activations="none")
        batches = _batches(25, scale=1.0)
        if arch["architecture"] == "transcoder":
            batches = [(b, b[:, :5] * 2) for b in batches]
        saes[name] = jsae.train(config, batches)
        save_file({"x": inputs[name]}, root / name / "inputs.safetensors")
    run_reference("saelens_fixtures.py", "check", root)
    for name, sae in saes.items():
        out = load_file(root / name / "saelens_outputs.safetensors")
        x_in = inputs[name]
        assert_close(out["feature_acts"], sae.encode(x_in), atol=1e-5, what=f"{name} encode")
        assert_close(out["forward"], sae(x_in), atol=1e-5, what=f"{name} forward")
    hook_z_out = load_file(root / "hook_z" / "saelens_outputs.safetensors")
    assert hook_z_out["forward"].shape == (64, 3, 4)  # SAELens's hook_z SAE took the heads
    assert (root / "batchtopk" / "saelens_class.txt").read_text() == "JumpReLUSAE"


HOOK_Z = "blocks.0.attn.hook_z"  # 3 heads of d_head 4: d_in = 12


def test_hook_z_sae_trains_on_flat_rows_and_takes_heads_once_saved(tmp_path: Path) -> None:
    """reshape_activations='hook_z' changes what the saved SAE takes, not what is trained."""
    batches = _batches(4 + 25)  # the scale estimate, then 25 steps
    meta = {"hook_name": HOOK_Z}
    trainer = jsae.Trainer(
        _config(tmp_path, "hz", architecture="topk", k=4, metadata=meta), batches
    )
    final = trainer.fit()  # reshape_activations follows the hook: all heads of attn.hook_z
    flat = jsae.train(
        _config(
            tmp_path, "flat", architecture="topk", k=4, metadata=meta, reshape_activations="none"
        ),
        batches,
    )
    assert final.cfg.reshape_activations == "hook_z" and flat.cfg.reshape_activations == "none"
    for name, value in flat.params.items():  # the same flat [B, d_in] rows were trained on
        assert np.array_equal(np.asarray(final.params[name]), np.asarray(value)), name

    assert json.loads((tmp_path / "hz" / "cfg.json").read_text())["reshape_activations"] == "hook_z"
    loaded = jsae.load(tmp_path / "hz")
    assert loaded.cfg.reshape_activations == "hook_z"
    x = batches[-1]  # [64, 12]
    s = trainer.scale
    trained = trainer.sae.to_inference()  # the trained params, in the scaled training space
    for heads in [(64, 3, 4), (8, 8, 3, 4)]:  # [..., n_heads, d_head]
        xh = x.reshape(heads)
        assert loaded(xh).shape == heads
        want = (np.asarray(trained(s * x)) / s).reshape(heads)
        assert_close(loaded(xh), want, atol=1e-4, rtol=1e-4)
        assert_close(loaded.encode(xh), flat.encode(x).reshape(*heads[:-2], -1), atol=1e-5)
    assert_close(loaded(x), flat(x), atol=1e-5)  # flat rows are still accepted
