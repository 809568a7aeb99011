"""SAELens-format files: atomic writes, and a clear error for every broken input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_fsutil import _dead_pid
from test_sae import random_sae

import jsae
from jsae import io
from jsae.fsutil import _host, atomic_output_dir


def saved(tmp_path: Path, architecture: str = "jumprelu") -> Path:
    path = tmp_path / "sae"
    random_sae(architecture).save(path)
    return path


def test_saved_files_are_saelens_format(tmp_path: Path) -> None:
    path = tmp_path / "sae"
    random_sae("topk", metadata={"hook_name": "blocks.1.hook_resid_post"}).save(
        path, log_sparsity=np.full(64, -2.0)
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 5 and cfg["device"] == "cpu"
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    weights = load_file(path / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (16, 64) and weights["W_dec"].shape == (64, 16)
    assert list(load_file(path / "sparsity.safetensors")) == ["sparsity"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dirs left"


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = saved(tmp_path)
    before = (path / "sae_weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        random_sae("standard", seed=5).save(path)
    assert (path / "sae_weights.safetensors").read_bytes() == before
    random_sae("standard", seed=5).save(path, overwrite=True)
    assert jsae.load(path).cfg.architecture == "standard"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_save_leaves_nothing_and_keeps_the_old_directory(
    tmp_path: Path, monkeypatch
) -> None:
    path = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def exploding_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", exploding_save_file)
    with pytest.raises(OSError, match="disk full"):
        random_sae("standard").save(path, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        random_sae("standard").save(tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not (tmp_path / "fresh").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_killed_save_leaves_no_output(tmp_path: Path) -> None:
    """SIGKILL in the middle of writing: the destination never appears half-written."""
    target = tmp_path / "out"
    script = f"""
import os, signal, sys
from pathlib import Path
from jsae.fsutil import atomic_output_dir
with atomic_output_dir({str(target)!r}) as tmp:
    (tmp / "cfg.json").write_text("{{}}")
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not target.exists()


def test_load_finds_an_sae_whose_overwrite_was_killed_mid_swap(tmp_path: Path) -> None:
    """The old directory moved aside by a replacement killed before the new one was renamed
    in goes back in place when it is loaded."""
    path = saved(tmp_path)
    os.rename(path, tmp_path / f".sae.old-{_host()}~{_dead_pid()}~abc")
    loaded, original = jsae.load(path), random_sae("jumprelu")
    for name, value in original.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nan_parameters_are_refused_on_save_and_load(tmp_path: Path) -> None:
    sae = random_sae("standard")
    bad = jsae.SAE(sae.cfg, dict(sae.params, b_enc=sae.params["b_enc"].at[3].set(np.nan)))
    with pytest.raises(jsae.NonFiniteError, match="'b_enc'"):
        bad.save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    path = saved(tmp_path)
    weights = load_file(path / "sae_weights.safetensors")
    weights["W_dec"][0, 0] = np.inf
    save_file(weights, path / "sae_weights.safetensors")
    with pytest.raises(jsae.NonFiniteError, match="'W_dec' contains NaN or Inf"):
        jsae.load(path)


def test_missing_files_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(jsae.FormatError, match="not a directory"):
        jsae.load(tmp_path / "nowhere")
    path = saved(tmp_path)
    os.remove(path / "sae_weights.safetensors")
    with pytest.raises(jsae.FormatError, match=r"sae_weights\.safetensors is missing"):
        jsae.load(path)
    path2 = saved(tmp_path / "b")
    os.remove(path2 / "cfg.json")
    with pytest.raises(jsae.FormatError, match=r"cfg\.json is missing"):
        jsae.load(path2)


def test_truncated_weights_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = (path / "sae_weights.safetensors").read_bytes()
    (path / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(jsae.FormatError, match="truncated or corrupt"):
        jsae.load(path)
    (path / "sae_weights.safetensors").write_bytes(data[:5])
    with pytest.raises(jsae.FormatError, match="truncated or corrupt"):
        jsae.load(path)


def test_corrupt_config_is_reported(tmp_path: Path) -> None:
    path = saved(tmp_path)
    (path / "cfg.json").write_text('{"d_in": 16, "d_sae"')
    with pytest.raises(jsae.FormatError, match="not valid JSON"):
        jsae.load(path)
    (path / "cfg.json").write_text(json.dumps({"d_in": 16, "architecture": "jumprelu"}))
    with pytest.raises(jsae.FormatError, match="no 'd_sae'"):
        jsae.load(path)
    (path / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": 16,
                "d_sae": 64,
                "architecture": "jumprelux",
                "metadata": {"sae_lens_version": "6.1.0"},
            }
        )
    )
    with pytest.raises(jsae.ConfigError, match="known architectures"):
        jsae.load(path)


def test_shapes_that_contradict_the_config_are_reported(tmp_path: Path) -> None:
    path = saved(tmp_path)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["d_sae"] = 32
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        jsae.FormatError, match=r"'W_enc' has shape \(16, 64\) but the config .* needs \(16, 32\)"
    ):
        jsae.load(path)


def test_unexpected_tensors_are_reported(tmp_path: Path) -> None:
    path = saved(tmp_path, "standard")
    weights = load_file(path / "sae_weights.safetensors")
    weights["mystery"] = np.zeros(3, np.float32)
    save_file(weights, path / "sae_weights.safetensors")
    with pytest.raises(jsae.FormatError, match=r"unexpected \['mystery'\]"):
        jsae.load(path)


def test_legacy_scaling_factor_is_folded_into_the_decoder(tmp_path: Path) -> None:
    """SAELens < 6 could scale latents by `scaling_factor` before decoding; jsae folds it."""
    sae = random_sae("standard")
    path = tmp_path / "legacy"
    path.mkdir()
    scale = np.linspace(0.5, 2.0, 64).astype(np.float32)
    save_file(
        {**{k: np.asarray(v) for k, v in sae.params.items()}, "scaling_factor": scale},
        path / "sae_weights.safetensors",
    )
    legacy = {
        "d_in": 16,
        "d_sae": 64,
        "dtype": "torch.float32",
        "hook_point": "blocks.0.hook_resid_pre",
        "finetuning_scaling_factor": True,
    }
    (path / "cfg.json").write_text(json.dumps(legacy))
    loaded = jsae.load(path)
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    f = np.asarray(sae.encode(x))
    expected = (f * scale) @ np.asarray(sae.W_dec) + np.asarray(sae.b_dec)
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, atol=1e-5)
    assert loaded.cfg.metadata.hook_name == "blocks.0.hook_resid_pre"


def test_atomic_output_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("not a dir")
    with (
        pytest.raises(FileExistsError, match="is a file"),
        atomic_output_dir(tmp_path / "x", overwrite=True),
    ):
        pass


def test_log_sparsity_shape_is_checked(tmp_path: Path) -> None:
    with pytest.raises(jsae.FormatError, match=r"log_sparsity must have shape \[d_sae=64\]"):
        random_sae("standard").save(tmp_path / "s", log_sparsity=np.zeros(10))
    assert not (tmp_path / "s").exists()
    assert jsae.load_log_sparsity(saved(tmp_path)) is None
