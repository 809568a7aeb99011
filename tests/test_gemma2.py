"""jsae's Flax Gemma 2 (jsae/models/gemma2.py).

Parity with PyTorch transformers' Gemma2ForCausalLM and TransformerLens (logits, every hook,
interventions) is tested in test_models.py on the "gemma2" case: 2 layers (one sliding, one
global), window 4 < 12 tokens, GQA (4 query / 2 key-value heads), query_pre_attn_scalar 24 !=
head_dim 16, attention and final soft-capping. Here: that each of those features really shapes
the reference outputs (switching it off breaks parity), and properties that hold by design.
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from models_helpers import expected, torch_reference_models

import jsae


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory):
    return torch_reference_models(tmp_path_factory)


@pytest.fixture(scope="module")
def gemma2(torch_models):
    return jsae.load_model(torch_models / "gemma2" / "model")


def test_parity_with_pytorch(gemma2, torch_models):
    ref = expected(torch_models, "gemma2")
    assert gemma2.family == "gemma2" and ref["input_ids"].shape[1] > gemma2.config.sliding_window
    assert_close(gemma2(ref["input_ids"]), ref["logits"], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"final_logit_softcapping": None},
        {"attn_logit_softcapping": None},
        {"query_pre_attn_scalar": 16},
        {"sliding_window": 12},
        {"layer_types": ["full_attention", "full_attention"]},
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_feature_matters_in_the_reference(torch_models, tmp_path, change):
    """Switching one Gemma 2 feature off makes jsae disagree with PyTorch: the parity test
    above and in test_models.py would catch it being wrong or missing."""
    ref = expected(torch_models, "gemma2")
    model_dir = tmp_path / "gemma2"
    shutil.copytree(torch_models / "gemma2" / "model", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **change}))
    logits = jsae.load_model(model_dir)(ref["input_ids"])
    assert np.abs(np.asarray(logits) - ref["logits"]).max() > 1e-3


def test_sliding_layer_sees_only_its_window(gemma2):
    window = gemma2.config.sliding_window
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (1, 12)))
    changed = ids.at[0, 0].set((ids[0, 0] + 1) % 128)
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, a = gemma2.run_with_cache(ids, names)
    _, b = gemma2.run_with_cache(changed, names)
    local = np.abs(np.asarray(a[names[0]] - b[names[0]])).max(axis=(0, 2, 3))  # per position
    assert np.all(local[:window] > 0) and np.all(local[window:] == 0)
    global_ = np.abs(np.asarray(a[names[1]] - b[names[1]])).max(axis=(0, 2, 3))
    assert np.all(global_ > 0)


def test_soft_capped_logits_and_scaled_embeddings(gemma2):
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 128, (2, 12)))
    logits, cache = gemma2.run_with_cache(ids, ["hook_embed"], stop_at_layer=False)
    assert float(jnp.abs(logits).max()) < gemma2.config.final_logit_softcapping
    table = gemma2.params["model"]["embed_tokens"]["embedding"]
    assert_close(cache["hook_embed"], table[ids] * gemma2.d_model**0.5, atol=1e-6, rtol=1e-6)


def test_bfloat16(gemma2, torch_models):
    ref = expected(torch_models, "gemma2")
    half = jsae.load_model(torch_models / "gemma2" / "model", dtype=jnp.bfloat16)
    logits = half(ref["input_ids"])
    assert logits.dtype == jnp.bfloat16
    assert_close(logits, ref["logits"], atol=0.05, rtol=0.05, what="bf16 Gemma 2 vs fp32 PyTorch")
