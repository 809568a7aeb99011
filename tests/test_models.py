"""Hooked Flax models against PyTorch transformers and TransformerLens, on the same weights.

tests/reference/torch_models.py builds a tiny random model per architecture in PyTorch, saves
it (config.json + model.safetensors) and records logits, hidden states, every hook's activation
(PyTorch forward hooks, and TransformerLens where it supports the architecture) and
TransformerLens's logits under a set of interventions. jsae loads the same files and must
agree on all of it.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from models_helpers import expected, torch_reference_models

import jsae

CASES = {  # reference case -> jsae family
    "gpt2": "gpt2",
    "gpt_neo": "gpt_neo",
    "gptj": "gptj",
    "llama": "llama",
    "llama3_rope": "llama",
    "mistral": "mistral",
    "llama_tied": "llama",
    "mistral_window": "mistral",
    "gemma": "gemma",
    "opt": "opt",
    "opt_postln": "opt",
    "bloom": "bloom",
    "xglm": "xglm",
    "gemma2": "gemma2",
    "gemma2_gelu": "gemma2",
}
ATOL, RTOL = 5e-5, 1e-5  # float32; observed differences are ~5e-6


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory):
    return torch_reference_models(tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2(torch_models):
    return jsae.load_model(torch_models / "gpt2" / "model")


def standard_names(model: jsae.HookedModel) -> list[str]:
    return [n for n in model.hook_names() if "hook_" in n]


def tl_interventions(model: jsae.HookedModel) -> dict:
    """The edits tests/reference/torch_models.py::tl_interventions makes in TransformerLens."""
    hooks = {
        "hook_embed": lambda x: x + 0.1,
        "blocks.0.attn.hook_z": lambda z: z.at[:, :, 1].set(0.0),
        "blocks.0.hook_mlp_out": lambda x: x * 2.0,
    }
    last_mid = f"blocks.{model.n_layers - 1}.hook_resid_mid"
    if last_mid in model.hook_names():
        hooks[last_mid] = lambda x: x * 0.5
    return hooks


@pytest.mark.parametrize("case", list(CASES))
def test_matches_pytorch_and_transformerlens(torch_models, case):
    ref = expected(torch_models, case)
    model = jsae.load_model(torch_models / case / "model")
    assert model.family == CASES[case]
    names = standard_names(model)
    logits, cache = model.run_with_cache(ref["input_ids"], names, stop_at_layer=False)
    assert_close(logits, ref["logits"], ATOL, RTOL, what=f"{case} logits")

    for name in names:  # every hook jsae offers is checked against PyTorch
        assert f"torch/{name}" in ref, f"{case}: no PyTorch reference for {name}"
        assert_close(cache[name], ref[f"torch/{name}"], ATOL, RTOL, what=f"{case} {name}")
        if f"tl/{name}" in ref:
            assert_close(cache[name], ref[f"tl/{name}"], ATOL, RTOL, what=f"{case} TL {name}")
    tl_names = [k.removeprefix("tl/") for k in ref if k.startswith("tl/") and k != "tl/logits"]
    assert set(tl_names) <= set(names), f"{case}: TransformerLens hooks jsae lacks"
    for layer in range(model.n_layers):  # hidden_states[L] is block L's input
        assert_close(cache[f"blocks.{layer}.hook_resid_pre"], ref[f"hidden/{layer}"], ATOL, RTOL)

    masked = model(ref["input_ids"], attention_mask=ref["mask"])
    keep = ref["mask"].astype(bool)
    assert_close(np.asarray(masked)[keep], ref["masked_logits"][keep], ATOL, RTOL, what="masked")

    if "tl_hooked/logits" in ref:  # replacement semantics, against TransformerLens's hooks
        hooked = model.run_with_hooks(ref["input_ids"], tl_interventions(model))
        assert np.abs(np.asarray(hooked) - ref["logits"]).max() > 1e-2  # the edits do something
        assert_close(hooked, ref["tl_hooked/logits"], ATOL, RTOL, what=f"{case} hooked logits")


def test_stop_at_layer_traces_only_up_to_the_deepest_hook(gpt2):
    ids = jnp.zeros((2, 8), jnp.int32)

    def n_matmuls(names, stop=True):
        jaxpr = jax.make_jaxpr(lambda p, x: gpt2.apply_with_cache(p, x, names, stop_at_layer=stop))(
            gpt2.params, ids
        )
        return str(jaxpr).count("dot_general")

    embed, block0, block1 = (
        n_matmuls(["hook_embed"]),
        n_matmuls(["blocks.0.hook_resid_post"]),
        n_matmuls(["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]),
    )
    full = n_matmuls(["hook_embed"], stop=False)
    assert embed == 0 < block0 < block1 < full  # the full forward adds the unembedding
    assert n_matmuls(["blocks.1.attn.hook_z"]) < block1  # stops mid-block, before the MLP


def test_stop_at_layer_values_and_logits(gpt2):
    ids = np.arange(16).reshape(2, 8) % 100
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    logits, early = gpt2.run_with_cache(ids, names)
    full_logits, full = gpt2.run_with_cache(ids, names, stop_at_layer=False)
    assert logits is None and full_logits.shape == (2, 8, gpt2.config.vocab_size)
    for name in names:
        np.testing.assert_array_equal(early[name], full[name])
    assert early["blocks.1.attn.hook_z"].shape == (2, 8, 4, 16)


def test_identity_hooks_change_nothing(gpt2, torch_models):
    ids = expected(torch_models, "gpt2")["input_ids"]
    hooks = {name: (lambda x: x) for name in standard_names(gpt2)}
    assert_close(gpt2.run_with_hooks(ids, hooks), gpt2(ids), atol=1e-6, rtol=0)


def test_hook_functions_see_the_documented_shapes(gpt2):
    ids = jnp.zeros((3, 5), jnp.int32)
    seen = {}

    def record(name):
        def fn(x):
            seen[name] = x.shape
            return x

        return fn

    names = standard_names(gpt2)
    gpt2.run_with_hooks(ids, {n: record(n) for n in names})
    for name in names:
        assert seen[name] == (3, 5, *gpt2.hook_shape(name)), name
    assert gpt2.hook_shape("blocks.0.hook_resid_post") == (64,)
    assert gpt2.hook_shape("blocks.0.attn.hook_z") == (4, 16)
    assert gpt2.hook_shape("blocks.0.mlp.hook_post") == (256,)


def test_raw_module_paths_are_hooks(gpt2):
    ids = jnp.ones((1, 6), jnp.int32)
    _, cache = gpt2.run_with_cache(ids, ["transformer.h.0.mlp", "blocks.0.hook_mlp_out"])
    np.testing.assert_array_equal(cache["transformer.h.0.mlp"], cache["blocks.0.hook_mlp_out"])
    assert "transformer.h.1.attn.c_proj" in gpt2.hook_names()
    zeroed = gpt2.run_with_hooks(ids, {"transformer.h.0.mlp": jnp.zeros_like})
    ref = gpt2.run_with_hooks(ids, {"blocks.0.hook_mlp_out": jnp.zeros_like})
    np.testing.assert_array_equal(zeroed, ref)


def test_pure_functions_compose_with_jit_and_grad(gpt2):
    ids = jnp.arange(12).reshape(2, 6)
    names = ["blocks.1.hook_resid_pre"]
    _, cache = jax.jit(lambda p, x: gpt2.apply_with_cache(p, x, names))(gpt2.params, ids)
    np.testing.assert_allclose(cache[names[0]], gpt2.run_with_cache(ids, names)[1][names[0]])

    @jax.jit
    def loss(vector):  # gradient of the logits with respect to a steering vector
        logits = gpt2.apply_with_hooks(
            gpt2.params, ids, {"blocks.0.hook_resid_post": lambda x: x + vector}
        )
        return logits[:, -1, 0].sum()

    grad = jax.grad(loss)(jnp.zeros(64))
    eps = 1e-2 * grad / jnp.linalg.norm(grad)
    assert float(loss(eps) - loss(-eps)) == pytest.approx(
        float(2 * grad @ eps), rel=1e-2
    )  # finite difference along the gradient


def test_unknown_hook_name_lists_the_valid_ones(gpt2):
    with pytest.raises(jsae.ConfigError) as err:
        gpt2.run_with_cache(jnp.zeros((1, 4), jnp.int32), ["blocks.1.hook_resid_psot"])
    msg = str(err.value)
    assert "'blocks.1.hook_resid_psot'" in msg and "Did you mean 'blocks.1.hook_resid_post'" in msg
    for name in ("hook_embed", "blocks.L.hook_resid_mid", "blocks.L.attn.hook_z", "L in 0..1"):
        assert name in msg
    with pytest.raises(jsae.ConfigError, match="unknown hook name"):
        gpt2.run_with_hooks(jnp.zeros((1, 4), jnp.int32), {"blocks.7.hook_mlp_out": lambda x: x})
    with pytest.raises(jsae.ConfigError, match="unknown hook name"):
        gpt2.hook_shape("hook_nope")


def test_context_longer_than_the_model_is_refused_before_any_work(gpt2):
    too_long = jnp.zeros((1, gpt2.n_ctx + 1), jnp.int32)
    compiled = len(gpt2._jitted)
    for call in (
        lambda: gpt2(too_long),
        lambda: gpt2.run_with_cache(too_long, ["hook_embed"]),
        lambda: gpt2.run_with_hooks(too_long, {"hook_embed": lambda x: x}),
        lambda: gpt2.apply(gpt2.params, too_long),
    ):
        with pytest.raises(jsae.ConfigError, match=f"exceeds this model's {gpt2.n_ctx} positions"):
            call()
    assert len(gpt2._jitted) == compiled  # nothing was compiled for it
    assert gpt2(jnp.zeros((1, gpt2.n_ctx), jnp.int32)).shape[1] == gpt2.n_ctx


def test_bad_tokens_and_masks_are_refused(gpt2):
    with pytest.raises(jsae.ShapeError, match="batch axis"):
        gpt2(jnp.zeros(5, jnp.int32))
    with pytest.raises(jsae.ShapeError, match="integer token ids"):
        gpt2(jnp.zeros((1, 5), jnp.float32))
    with pytest.raises(jsae.ShapeError, match="attention_mask has shape"):
        gpt2(jnp.zeros((1, 5), jnp.int32), attention_mask=jnp.ones((1, 4)))
    with pytest.raises(jsae.ShapeError, match="must return the shape it was given"):
        gpt2.run_with_hooks(jnp.zeros((1, 5), jnp.int32), {"hook_embed": lambda x: x[..., :3]})
    with pytest.raises(jsae.ShapeError, match="'hook_embed' returned None"):  # a forgotten return
        gpt2.run_with_hooks(jnp.zeros((1, 5), jnp.int32), {"hook_embed": lambda x: None})
    vocab = gpt2.config.vocab_size  # an embedding lookup would give NaN / wrap around
    for bad in (vocab, -1):
        with pytest.raises(jsae.ConfigError, match=f"token id {bad} is outside"):
            gpt2(jnp.asarray([[1, 2, bad]], jnp.int32))
        with pytest.raises(jsae.ConfigError, match=f"token id {bad} is outside"):
            gpt2.run_with_cache(np.asarray([[bad, 1]]), ["blocks.0.hook_resid_pre"])


def test_bfloat16_and_save_roundtrip(gpt2, torch_models, tmp_path):
    ids = expected(torch_models, "gpt2")["input_ids"]
    half = jsae.load_model(torch_models / "gpt2" / "model", dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    assert half(ids).dtype == jnp.bfloat16
    assert_close(half(ids), gpt2(ids), atol=0.1, rtol=0.05, what="bf16 vs fp32")

    saved = gpt2.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "flax_model.msgpack"]
    again = jsae.load_model(saved)
    np.testing.assert_array_equal(again(ids), gpt2(ids))
    with pytest.raises(FileExistsError):
        gpt2.save_pretrained(saved)


def test_from_config_builds_a_random_model():
    from transformers import LlamaConfig

    sizes = dict(
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        vocab_size=50,
        max_position_embeddings=16,
    )
    model = jsae.HookedModel.from_config(LlamaConfig(**sizes))
    assert (model.family, model.n_layers, model.d_model, model.n_ctx) == ("llama", 1, 32, 16)
    assert model(jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 50)
    tied = jsae.HookedModel.from_config(LlamaConfig(**sizes, tie_word_embeddings=True))
    params = tied.params
    np.testing.assert_array_equal(
        params["lm_head"]["kernel"], params["model"]["embed_tokens"]["embedding"].T
    )


def test_no_torch_import(gpt2):
    assert "torch" not in sys.modules
