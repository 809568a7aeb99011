"""The weight gradients' orientations (`jsae.architectures.grad_layout`): every layout gives
autodiff's gradients, training ends in the same place under each (one device and a data-split
mesh), "auto" times the layouts only where it can matter and once per machine (a cache file), and a
resumed run keeps the layout its checkpoint was written with, so it replays the uninterrupted
run bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import jsae
from jsae.architectures import grad_layout
from jsae.architectures.grad_layout import (
    LAYOUTS,
    choose_layout,
    decoder_weight_grad,
    dense_decode,
    encoder_weight_grad,
)
from jsae.training import trainer as trainer_module

# 2051 latents: the copies run two whole blocks of 1024 and a partial one
WIDTHS = [7, 2051]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", WIDTHS)
def test_weight_gradients_are_the_plain_products(layout: str, n: int) -> None:
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((9, 5)), rng.standard_normal((9, n))
    xj, gj = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
    enc = jax.jit(encoder_weight_grad, static_argnums=(2, 3))(xj, gj, layout, jnp.float32)
    dec = jax.jit(decoder_weight_grad, static_argnums=(2, 3))(gj, xj, layout, jnp.float32)
    assert enc.shape == (5, n) and dec.shape == (n, 5)
    assert_close(enc, x.T @ g, atol=1e-5, rtol=1e-5)
    assert_close(dec, g.T @ x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("lead", [(9,), (2, 3)])  # rows, and leading dims (hook_z)
def test_dense_decode_gradients_equal_autodiff(layout: str, n: int, lead: tuple) -> None:
    rng = np.random.default_rng(1)
    f = jnp.asarray(rng.standard_normal((*lead, n)), jnp.float32)
    W = jnp.asarray(rng.standard_normal((n, 5)) / np.sqrt(n), jnp.float32)
    probe = jnp.asarray(rng.standard_normal((*lead, 5)), jnp.float32)

    def ours(f, W):
        return jnp.sum(probe * jnp.tanh(dense_decode(f, W, layout)))

    def plain(f, W):
        return jnp.sum(probe * jnp.tanh(f @ W))

    assert_close(dense_decode(f, W, layout), f @ W, atol=1e-5)
    got = jax.jit(jax.grad(ours, (0, 1)))(f, W)
    want = jax.grad(plain, (0, 1))(f, W)
    for name, g, w in zip(("f", "W_dec"), got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert_close(g, w, atol=1e-5, rtol=1e-5, what=name)


def test_choose_layout_times_only_large_products(monkeypatch) -> None:
    def no_timing(*args, **kwargs):
        raise AssertionError("timed a product below MIN_TIMED_MACS")

    monkeypatch.setattr(grad_layout, "time_layouts", no_timing)
    assert choose_layout(64, 16, 16, 64, jnp.float32) == ("direct", None, "untimed")


@pytest.fixture
def fresh_layout_cache(monkeypatch, tmp_path) -> Path:
    """choose_layout with nothing remembered: an empty process table and cache directory."""
    monkeypatch.setattr(grad_layout, "MIN_TIMED_MACS", 0)
    monkeypatch.setattr(grad_layout, "_CHOSEN", {})
    monkeypatch.setenv("JSAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JSAE_LAYOUT_CACHE", raising=False)
    return tmp_path / "cache" / "weight_grad_layout.json"


def _count_timings(monkeypatch, times: dict[str, float]) -> list:
    calls = []
    monkeypatch.setattr(grad_layout, "time_layouts", lambda *a: calls.append(a) or times)
    return calls


def test_choose_layout_keeps_the_fastest_once_per_shape(monkeypatch, fresh_layout_cache) -> None:
    times = grad_layout.time_layouts(64, 16, 24, 2051, jnp.float32, repeats=1)
    assert set(times) == set(LAYOUTS)
    assert all(np.isfinite(t) and t > 0 for t in times.values())
    fixed = {"direct": 3.0, "latent_rows": 2.5, "latent_columns": 2.0}
    calls = _count_timings(monkeypatch, fixed)
    assert choose_layout(64, 16, 24, 2051, jnp.float32) == ("latent_columns", fixed, "measured")
    # the second trainer at these shapes reuses the choice (and has no timing to report)
    assert choose_layout(64, 16, 24, 2051, jnp.float32) == ("latent_columns", None, "process")
    assert len(calls) == 1
    assert choose_layout(64, 16, 24, 2051, jnp.bfloat16).layout == "latent_columns"
    assert len(calls) == 2  # another dtype is timed on its own
    assert choose_layout(64, 16, 24, 4096, jnp.float32).layout == "latent_columns"
    assert len(calls) == 3  # and so is another shape


def test_a_later_process_takes_the_machines_choice_from_the_cache(
    monkeypatch, fresh_layout_cache
) -> None:
    fixed = {"direct": 3.0, "latent_rows": 1.5, "latent_columns": 2.0}
    calls = _count_timings(monkeypatch, fixed)
    assert choose_layout(64, 16, 24, 2051, jnp.float32).origin == "measured"
    assert fresh_layout_cache.is_file()
    monkeypatch.setattr(grad_layout, "_CHOSEN", {})  # a new process on the same machine
    calls.clear()
    again = choose_layout(64, 16, 24, 2051, jnp.float32)
    assert again == ("latent_rows", fixed, "machine") and calls == []
    # a different machine (here: different XLA flags) times again, and both are kept
    monkeypatch.setattr(grad_layout, "_CHOSEN", {})
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_foo_bar")
    other = {"direct": 1.0, "latent_rows": 1.5, "latent_columns": 2.0}
    monkeypatch.setattr(grad_layout, "time_layouts", lambda *a: calls.append(a) or other)
    assert choose_layout(64, 16, 24, 2051, jnp.float32) == ("direct", other, "measured")
    assert len(calls) == 1
    entries = json.loads(fresh_layout_cache.read_text())["entries"]
    assert sorted(e["layout"] for e in entries.values()) == ["direct", "latent_rows"]


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"version": 99, "entries": {}}', '{"version": 1}']
)
def test_an_unreadable_cache_is_timed_again_and_rewritten(
    monkeypatch, fresh_layout_cache, content: str
) -> None:
    fresh_layout_cache.parent.mkdir(parents=True)
    fresh_layout_cache.write_text(content)
    calls = _count_timings(monkeypatch, {"direct": 1.0, "latent_rows": 2.0, "latent_columns": 3.0})
    assert choose_layout(64, 16, 24, 2051, jnp.float32).origin == "measured"
    assert len(calls) == 1
    assert json.loads(fresh_layout_cache.read_text())["version"] == 1


def test_the_cache_can_be_turned_off_and_an_unwritable_one_is_reported(
    monkeypatch, fresh_layout_cache, tmp_path, capsys
) -> None:
    monkeypatch.setenv("JSAE_LAYOUT_CACHE", "0")
    assert grad_layout.layout_cache_path() is None
    calls = _count_timings(monkeypatch, {"direct": 1.0, "latent_rows": 2.0, "latent_columns": 3.0})
    choose_layout(64, 16, 24, 2051, jnp.float32)
    assert not fresh_layout_cache.parent.exists() and len(calls) == 1

    monkeypatch.delenv("JSAE_LAYOUT_CACHE")
    monkeypatch.setattr(grad_layout, "_CHOSEN", {})
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("JSAE_CACHE_DIR", str(tmp_path / "a_file"))  # not a directory
    assert choose_layout(64, 16, 24, 2051, jnp.float32) == (
        "direct", {"direct": 1.0, "latent_rows": 2.0, "latent_columns": 3.0}, "measured"
    )  # fmt: skip
    assert "could not keep the weight_grad_layout choice" in capsys.readouterr().err


def test_the_cache_location_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("JSAE_LAYOUT_CACHE", raising=False)
    monkeypatch.setenv("JSAE_CACHE_DIR", str(tmp_path / "mine"))
    assert grad_layout.layout_cache_path() == tmp_path / "mine" / "weight_grad_layout.json"
    monkeypatch.delenv("JSAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert grad_layout.layout_cache_path() == tmp_path / "xdg" / "jsae" / "weight_grad_layout.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    want = tmp_path / "home" / ".cache" / "jsae" / "weight_grad_layout.json"
    assert grad_layout.layout_cache_path() == want


D_IN, D_SAE, BATCH, STEPS = 16, 2051, 32, 4
ARCHS = [
    {"architecture": "standard", "use_sparse_activations": False},
    {"architecture": "topk", "k": 4, "use_sparse_activations": False},
]


def _config(arch: dict, layout: str, **extra) -> dict:
    return {
        **arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "lr": 1e-2,
        "train_batch_size_tokens": BATCH,
        "training_tokens": BATCH * STEPS,
        "weight_grad_layout": layout,
        "log_to_wandb": False,
        "checkpoint_path": None,
        "output_path": None,
        "progress_bar": False,
        **extra,
    }


def _batches(n: int = STEPS) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0.2, 1.0, (BATCH, D_IN)).astype(np.float32) for _ in range(n)]


ON_ONE_DEVICE = [(layout, None) for layout in LAYOUTS]
# TopK: its decoder rescales latents before the shared dense decode
RUNS = {
    "standard": [*ON_ONE_DEVICE, ("latent_columns", {"data": 8})],
    "topk": [("direct", None), ("latent_columns", None)],
}


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["architecture"])
def test_every_layout_trains_to_the_same_parameters(arch: dict) -> None:
    runs = {}
    for layout, mesh in RUNS[arch["architecture"]]:
        trainer = jsae.Trainer(_config(arch, layout, mesh=mesh), _batches())
        trainer.fit()
        assert trainer.ctx.weight_grad_layout == layout
        runs[(layout, json.dumps(mesh))] = trainer.sae.params
    # Adam moves each weight by ~lr a step: a misoriented gradient would be off by ~1e-2 here;
    # rounding differences stay below 1e-4 (Adam's normalisation amplifies them near zero)
    reference = runs[("direct", "null")]
    for key, params in runs.items():
        for name, value in reference.items():
            assert_close(params[name], value, atol=1e-4, rtol=1e-3, what=f"{key}: {name}")


def test_auto_records_its_choice_and_a_resume_keeps_it(tmp_path: Path, monkeypatch) -> None:
    """The checkpoint of a run written with "latent_columns" makes an "auto" resume take
    "latent_columns" without timing; it then ends bit for bit where the uninterrupted run does."""
    arch = ARCHS[0]
    batches = _batches(2 * STEPS)
    ckpt = str(tmp_path / "ckpt")
    whole = jsae.Trainer(
        _config(arch, "latent_columns", training_tokens=2 * BATCH * STEPS), batches
    )
    whole.fit()

    first = jsae.Trainer(
        _config(arch, "latent_columns", training_tokens=2 * BATCH * STEPS, checkpoint_path=ckpt),
        batches,
    )
    for _ in range(STEPS):
        first.step()
    step = first.save_checkpoint()
    host = json.loads((tmp_path / "ckpt" / "host" / f"{step}.p0.json").read_text())
    assert host["weight_grad_layout"] == "latent_columns"

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run timed the layouts again")

    monkeypatch.setattr(trainer_module, "choose_layout", no_timing)
    resumed = jsae.Trainer(
        _config(
            arch, "auto", training_tokens=2 * BATCH * STEPS, checkpoint_path=ckpt,
            resume_from_checkpoint=ckpt,
        ),
        batches,
    )  # fmt: skip
    assert resumed.grad_layout == "latent_columns"
    resumed.fit()
    for name, value in whole.sae.params.items():
        np.testing.assert_array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value))


def test_auto_without_a_checkpoint_takes_the_timed_choice(monkeypatch, capsys) -> None:
    calls = []

    def pick(rows, d_in, d_out, d_sae, dtype):
        calls.append((rows, d_in, d_out, d_sae, jnp.dtype(dtype)))
        times = {"direct": 2.0, "latent_rows": 1.0, "latent_columns": 3.0}
        return grad_layout.LayoutChoice("latent_rows", times, "measured")

    monkeypatch.setattr(trainer_module, "choose_layout", pick)
    trainer = jsae.Trainer(_config(ARCHS[0], "auto", mesh={"data": 8}), _batches())
    trainer.step()
    err = capsys.readouterr().err
    assert "weight_grad_layout 'latent_rows', the fastest" in err and "timed now" in err
    # a device's share of the batch, at the step's compute dtype
    assert calls == [(BATCH // 8, D_IN, D_IN, D_SAE, jnp.dtype(jnp.float32))]
    assert trainer.ctx.weight_grad_layout == "latent_rows"


def test_unknown_layout_is_refused_with_the_choices() -> None:
    with pytest.raises(jsae.ConfigError, match="latent_rows"):
        jsae.TrainConfig.coerce(_config(ARCHS[0], "latent_row"))


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_sparse_paths_skip_the_timing(monkeypatch, architecture: str) -> None:
    """The TopK family's (value, index) paths form no dense weight gradient: nothing to time."""

    def no_timing(*args, **kwargs):
        raise AssertionError("timed the layouts for a step that does not use them")

    monkeypatch.setattr(trainer_module, "choose_layout", no_timing)
    arch = {"architecture": architecture, "k": 4, "use_sparse_activations": True}
    trainer = jsae.Trainer(_config(arch, "auto"), _batches())
    trainer.step()
    assert trainer.grad_layout == "direct"
