"""Splicing SAEs, transcoders, feature edits and steering into a model (jsae.analysis.splice).

Each helper is checked against the same intervention written out by hand: read the
activation with run_with_cache, compute what the helper should put there, and replace it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from transformers import GPT2Config

import jsae
from jsae.analysis.splice import (
    Ablate,
    SetFeatures,
    Steer,
    ablate_features,
    clamp_features,
    feature_steering,
    merge_hooks,
    sae_hooks,
    splice_sae,
)

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=16)
    return jsae.HookedModel.from_config(cfg, seed=3)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, 100, (2, 10)))


def make_sae(seed=0, hook=HOOK, **kw):
    meta = {"hook_name": hook, **kw.pop("metadata", {})}
    cfg = jsae.SAEConfig(
        architecture=kw.pop("architecture", "standard"),
        d_in=kw.pop("d_in", 64),
        d_sae=96,
        metadata=meta,
        **kw,
    )
    sae = jsae.SAE.init(cfg, seed)
    # a positive encoder bias keeps many latents on, so edits have something to act on
    return jsae.SAE.from_params(cfg, {**sae.params, "b_enc": sae.params["b_enc"] + 0.5})


def replaced(model, tokens, name, fn):
    """Logits after replacing the activation at `name` by fn(activation), done by hand."""
    _, cache = model.run_with_cache(tokens, [name])
    new = fn(cache[name])
    return model.run_with_hooks(tokens, {name: lambda x: new})


def test_splice_replaces_by_the_reconstruction(model, tokens):
    sae = make_sae()
    spliced = model.run_with_saes(tokens, sae)
    assert np.abs(np.asarray(spliced - model(tokens))).max() > 1e-3
    assert_close(spliced, replaced(model, tokens, HOOK, sae.forward), atol=1e-5, rtol=1e-5)


def test_error_term_makes_the_splice_lossless(model, tokens):
    sae = make_sae()
    assert_close(
        model.run_with_saes(tokens, sae, use_error_term=True), model(tokens), atol=1e-5, rtol=0
    )


def test_ablating_features_removes_their_decoder_contribution(model, tokens):
    sae = make_sae()
    idx = jnp.array([0, 5, 17])

    def by_hand(x):  # x - sum_i f_i W_dec[i] over the ablated latents
        return x - sae.encode(x)[..., idx] @ sae.W_dec[idx]

    out = model.run_with_hooks(tokens, ablate_features(sae, idx))
    assert np.abs(np.asarray(out - model(tokens))).max() > 1e-4
    assert_close(out, replaced(model, tokens, HOOK, by_hand), atol=1e-5, rtol=1e-5)


def test_clamping_features(model, tokens):
    sae = make_sae()
    idx, value = jnp.array([3]), 4.0

    def by_hand(x):
        return x + (value - sae.encode(x)[..., 3:4]) @ sae.W_dec[3:4]

    out = model.run_with_hooks(tokens, clamp_features(sae, idx, jnp.array([value])))
    assert_close(out, replaced(model, tokens, HOOK, by_hand), atol=1e-5, rtol=1e-5)


def test_steering(model, tokens):
    sae = make_sae()
    by_hand = replaced(model, tokens, HOOK, lambda x: x + 2.0 * sae.W_dec[7] - 1.0 * sae.W_dec[9])
    out = model.run_with_hooks(tokens, feature_steering(sae, [7, 9], [2.0, -1.0]))
    assert_close(out, by_hand, atol=1e-5, rtol=1e-5)
    at_pos = model.run_with_hooks(tokens, {HOOK: Steer(sae.W_dec[7], 2.0, positions=[4])})
    assert_close(
        at_pos[:, :4], model(tokens)[:, :4], atol=1e-6, rtol=0
    )  # causal: earlier unchanged
    assert np.abs(np.asarray(at_pos[:, 4:] - model(tokens)[:, 4:])).max() > 1e-3


def test_zero_and_mean_ablation(model, tokens):
    name = "blocks.1.hook_mlp_out"
    assert_close(
        model.run_with_hooks(tokens, {name: Ablate()}),
        replaced(model, tokens, name, jnp.zeros_like),
        atol=1e-6,
        rtol=0,
    )
    mean = jnp.arange(64.0) / 64
    assert_close(
        model.run_with_hooks(tokens, {name: Ablate(mean)}),
        replaced(model, tokens, name, lambda x: jnp.broadcast_to(mean, x.shape)),
        atol=1e-6,
        rtol=0,
    )


def test_head_sae_and_hook_z_sae(model, tokens):
    z = "blocks.1.attn.hook_z"
    head = make_sae(hook=z, d_in=16, metadata={"hook_head_index": 2})

    def by_hand(x):
        return x.at[:, :, 2].set(head.forward(x[:, :, 2]))

    assert_close(model.run_with_saes(tokens, head), replaced(model, tokens, z, by_hand), 1e-5, 1e-5)

    flat = make_sae(hook=z, d_in=64, reshape_activations="hook_z")

    def flat_by_hand(x):
        return flat.forward(x.reshape(2, 10, 64)).reshape(x.shape)

    assert_close(
        model.run_with_saes(tokens, flat), replaced(model, tokens, z, flat_by_hand), 1e-5, 1e-5
    )


def test_steering_a_head_sae_and_a_hook_z_sae(model, tokens):
    """Steering vectors go where the SAE reads: one head, or each head's slice of a hook_z row."""
    z = "blocks.1.attn.hook_z"
    head = make_sae(hook=z, d_in=16, metadata={"hook_head_index": 2})
    by_hand = replaced(model, tokens, z, lambda x: x.at[:, :, 2].add(3.0 * head.W_dec[5]))
    assert_close(
        model.run_with_hooks(tokens, feature_steering(head, [5], [3.0])), by_hand, 1e-5, 1e-5
    )

    flat = make_sae(hook=z, d_in=64, reshape_activations="hook_z")
    by_hand = replaced(model, tokens, z, lambda x: x + 3.0 * flat.W_dec[5].reshape(4, 16))
    assert_close(
        model.run_with_hooks(tokens, feature_steering(flat, [5], [3.0])), by_hand, 1e-5, 1e-5
    )

    at_pos = Steer(head.W_dec[5], 3.0, positions=[4], head_index=2)
    by_hand = replaced(model, tokens, z, lambda x: x.at[:, 4, 2].add(3.0 * head.W_dec[5]))
    assert_close(model.run_with_hooks(tokens, {z: at_pos}), by_hand, 1e-5, 1e-5)


def test_per_head_interventions_need_a_head_axis(model, tokens):
    """A head index on `[B, T, d]` would index positions: refused, naming the problem."""
    on_resid = make_sae(hook=HOOK, d_in=16, metadata={"hook_head_index": 3})
    with pytest.raises(jsae.ConfigError, match=r"per attention head \(head 3\).*\(2, 10, 64\)"):
        model.run_with_saes(tokens, on_resid)
    with pytest.raises(jsae.ConfigError, match="per attention head"):
        model.run_with_hooks(tokens, feature_steering(on_resid, [1], [1.0]))
    out_of_range = make_sae(hook="blocks.1.attn.hook_z", d_in=16, metadata={"hook_head_index": 4})
    with pytest.raises(jsae.ConfigError, match="head 4"):
        model.run_with_saes(tokens, out_of_range)


def test_transcoder_reads_one_hook_and_writes_another(model, tokens):
    src, dst = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"
    tc = make_sae(architecture="transcoder", hook=src, d_out=64, metadata={"hook_name_out": dst})
    _, cache = model.run_with_cache(tokens, [src])
    out = tc.forward(cache[src])
    by_hand = model.run_with_hooks(tokens, {dst: lambda y: out})
    assert_close(model.run_with_saes(tokens, tc), by_hand, atol=1e-5, rtol=1e-5)
    assert_close(model.run_with_saes(tokens, tc, use_error_term=True), model(tokens), 1e-5, 0)

    backwards = make_sae(
        architecture="transcoder", hook=dst, d_out=64, metadata={"hook_name_out": src}
    )
    with pytest.raises(jsae.ConfigError, match="ran before its input hook"):
        model.run_with_saes(tokens, backwards)


@pytest.mark.parametrize(
    "src, head, dst, head_out, d_in, d_out",
    [
        ("blocks.0.attn.hook_z", None, "blocks.0.hook_attn_out", None, 64, 64),  # all heads
        ("blocks.0.attn.hook_z", 1, "blocks.1.attn.hook_z", 2, 16, 16),  # head to head
        ("blocks.0.hook_resid_post", None, "blocks.0.hook_resid_post", None, 64, 64),  # itself
    ],
)
def test_transcoder_views_of_head_shaped_and_shared_hooks(
    model, tokens, src, head, dst, head_out, d_in, d_out
):
    """A transcoder reads (and writes) one head where its metadata names one, every head
    flattened otherwise (as it trained), and may read and write views of one hook."""
    meta = {"hook_name_out": dst, "hook_head_index": head, "hook_head_index_out": head_out}
    tc = make_sae(architecture="transcoder", hook=src, d_in=d_in, d_out=d_out, metadata=meta)
    _, cache = model.run_with_cache(tokens, [src])
    x = cache[src]
    x = x[:, :, head] if head is not None else x.reshape(*x.shape[:2], -1)
    out = tc.forward(x)  # [B, T, d_out]

    def by_hand(y):
        if head_out is not None:
            return y.at[:, :, head_out].set(out)
        return out.reshape(y.shape)

    expected = model.run_with_hooks(tokens, {dst: by_hand})
    assert np.abs(np.asarray(expected) - np.asarray(model(tokens))).max() > 1e-3
    assert_close(model.run_with_saes(tokens, tc), expected, atol=1e-5, rtol=1e-5)
    assert_close(model.run_with_saes(tokens, tc, use_error_term=True), model(tokens), 1e-5, 0)

    # steering adds decoder rows where the transcoder writes (they live in its output space)
    row = 3.0 * tc.W_dec[5]  # [d_out]

    def steered(y):
        if head_out is not None:
            return y.at[:, :, head_out].add(row)
        return y + row.reshape(y.shape[2:])

    assert_close(
        model.run_with_hooks(tokens, feature_steering(tc, [5], [3.0])),
        replaced(model, tokens, dst, steered),
        1e-5,
        1e-5,
    )


def _gemma2():
    from transformers import Gemma2Config

    cfg = Gemma2Config(
        vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32,
    )  # fmt: skip
    return jsae.HookedModel.from_config(cfg, seed=1)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
@pytest.mark.parametrize("src", ["ln2.hook_normalized", "mlp.hook_in", "hook_mlp_in"])
def test_transcoders_on_the_mlp_input_hooks(model, tokens, family, src):
    """The hooks transcoders read (Gemma Scope's `ln2.hook_normalized`, circuit-tracer's
    `mlp.hook_in`, `hook_mlp_in`) splice like any other: the pre-MLP norm's output, and the
    residual it normalises. (Their values are checked against PyTorch in test_models.py.)"""
    model = model if family == "gpt2" else _gemma2()
    src, dst = f"blocks.1.{src}", "blocks.1.hook_mlp_out"
    _, cache = model.run_with_cache(tokens, [src, "blocks.1.hook_resid_mid"])
    if src.endswith("hook_mlp_in"):
        assert_close(cache[src], cache["blocks.1.hook_resid_mid"], 0, 0)
    tc = make_sae(architecture="transcoder", hook=src, d_out=64, metadata={"hook_name_out": dst})
    out = tc.forward(cache[src])
    by_hand = model.run_with_hooks(tokens, {dst: lambda y: out})
    assert np.abs(np.asarray(by_hand) - np.asarray(model(tokens))).max() > 1e-3
    assert_close(model.run_with_saes(tokens, tc), by_hand, atol=1e-5, rtol=1e-5)
    assert_close(model.run_with_saes(tokens, tc, use_error_term=True), model(tokens), 1e-5, 0)
    sae = make_sae(hook=src)  # an SAE there replaces what the MLP (or its norm) reads
    assert_close(
        model.run_with_saes(tokens, sae), replaced(model, tokens, src, sae.forward), 1e-5, 1e-5
    )


def test_compiled_once_for_new_weights(tokens):
    model = jsae.HookedModel.from_config(  # its own: the compile cache holds at most 64 entries
        GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=16), seed=3
    )
    model.run_with_saes(tokens, make_sae(0))
    compiled = len(model._jitted)
    model.run_with_saes(tokens, make_sae(1))
    model.run_with_hooks(
        tokens, splice_sae(make_sae(2), edit=SetFeatures(jnp.array([1, 2]), jnp.array(0.0)))
    )
    model.run_with_hooks(
        tokens, splice_sae(make_sae(2), edit=SetFeatures(jnp.array([4, 8]), jnp.array(1.0)))
    )
    assert len(model._jitted) == compiled + 1  # the edit adds one; new weights and indices none
    src, dst = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"
    meta = {"hook_name_out": dst}
    model.run_with_saes(
        tokens, make_sae(3, src, architecture="transcoder", d_out=64, metadata=meta)
    )
    compiled = len(model._jitted)
    model.run_with_saes(
        tokens, make_sae(4, src, architecture="transcoder", d_out=64, metadata=meta)
    )
    assert len(model._jitted) == compiled  # a transcoder's new hooks reuse the compiled forward


def test_transcoders_rewired_compile_anew(tokens):
    """Two transcoders spliced with their inputs swapped (hook_name overrides) are a different
    intervention: the compiled forward of the first wiring must not serve the second."""
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=16)
    model = jsae.HookedModel.from_config(cfg, seed=3)
    a = make_sae(1, "blocks.0.hook_resid_pre", architecture="transcoder", d_out=64,
                 metadata={"hook_name_out": "blocks.0.hook_mlp_out"})  # fmt: skip
    b = make_sae(2, "blocks.1.hook_resid_pre", architecture="transcoder", d_out=64,
                 metadata={"hook_name_out": "blocks.1.hook_mlp_out"})  # fmt: skip
    mid = "blocks.0.hook_resid_mid"
    first = merge_hooks(splice_sae(a), splice_sae(b, hook_name=mid))
    second = merge_hooks(
        splice_sae(a, hook_name=mid), splice_sae(b, hook_name=a.cfg.metadata.hook_name)
    )
    model.run_with_hooks(tokens, first)
    fresh = jsae.HookedModel.from_config(cfg, seed=3).run_with_hooks(tokens, second)
    assert_close(model.run_with_hooks(tokens, second), fresh, 1e-6, 0)


def test_bad_splices(model, tokens):
    with pytest.raises(jsae.ConfigError, match="two SAEs hook"):
        sae_hooks([make_sae(0), make_sae(1)])
    with pytest.raises(jsae.ConfigError, match="set twice"):
        merge_hooks(splice_sae(make_sae(0)), {HOOK: Ablate()})
    cfg = jsae.SAEConfig(architecture="standard", d_in=64, d_sae=8)
    with pytest.raises(jsae.ConfigError, match="no hook_name"):
        splice_sae(jsae.SAE.init(cfg))
    with pytest.raises(jsae.ShapeError, match="hook the SAE was trained on"):
        model.run_with_saes(tokens, make_sae(hook="blocks.0.mlp.hook_post"))
    assert "blocks.1.hook_resid_pre" in merge_hooks(
        splice_sae(make_sae(0)), {"blocks.1.hook_resid_pre": Ablate()}
    )
