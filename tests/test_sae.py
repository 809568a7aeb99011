"""Properties of the SAE pytree and its pure functions that would catch them being wrong."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import jsae
from jsae.sparse import decode_matmul

ARCH_KWARGS = {
    "standard": {},
    "gated": {},
    "jumprelu": {},
    "topk": {"k": 5},
    "batchtopk": {"k": 3.0},
    "matryoshka_batchtopk": {"k": 3.0},
    "transcoder": {"d_out": 12},
    "skip_transcoder": {"d_out": 12},
    "jumprelu_transcoder": {"d_out": 12},
    "jumprelu_skip_transcoder": {"d_out": 12},
}


def random_sae(architecture: str, seed: int = 0, d_in: int = 16, d_sae: int = 64, **kw) -> jsae.SAE:
    """An SAE with every parameter random and some latents that never fire."""
    cfg = jsae.SAEConfig(
        architecture=architecture, d_in=d_in, d_sae=d_sae, **{**ARCH_KWARGS[architecture], **kw}
    )
    rng = np.random.default_rng(seed)
    shapes = jsae.get_architecture(architecture).param_shapes(cfg)
    params = {n: rng.normal(0, 0.4, s).astype(np.float32) for n, s in shapes.items()}
    for name in ("b_enc", "b_gate", "b_mag"):
        if name in params:
            params[name][:4] = -30.0
    if "threshold" in params:
        params["threshold"] = rng.uniform(0, 0.5, shapes["threshold"]).astype(np.float32)
    if "topk_threshold" in params:
        params["topk_threshold"] = np.float32(0.3)
    return jsae.SAE.from_params(cfg, params)


def inputs(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.2, 1.3, shape).astype(np.float32)


# ----------------------------------------------------------------------------- pytree


def test_sae_is_a_pytree_with_static_config() -> None:
    sae = random_sae("jumprelu")
    leaves, treedef = jax.tree_util.tree_flatten(sae)
    assert len(leaves) == len(sae.params)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.cfg == sae.cfg
    doubled = jax.tree.map(lambda a: a * 2, sae)
    assert_close(doubled.W_enc, 2 * sae.W_enc)
    assert doubled.cfg is sae.cfg


def test_metadata_is_part_of_the_jit_cache_key() -> None:
    """Two SAEs differing only in metadata must not share a trace (outputs carry cfg)."""
    a = random_sae("standard", metadata={"hook_name": "blocks.0.hook_resid_pre"})
    b = jsae.SAE(a.cfg.replace(metadata={"hook_name": "blocks.5.hook_resid_pre"}), a.params)
    identity = jax.jit(lambda s: s)
    assert identity(a).cfg.metadata.hook_name == "blocks.0.hook_resid_pre"
    assert identity(b).cfg.metadata.hook_name == "blocks.5.hook_resid_pre"
    assert hash(a.cfg) != hash(b.cfg)


def test_grad_flows_to_every_parameter_of_a_standard_sae() -> None:
    sae = random_sae("standard")
    x = inputs((8, 16))
    grads = jax.grad(lambda s: jnp.sum((s(x) - x) ** 2))(sae)
    for name, g in grads.params.items():
        assert g.shape == sae.params[name].shape
        assert float(jnp.abs(g).sum()) > 0, name


def test_batch_dims_are_free() -> None:
    sae = random_sae("jumprelu")
    x = inputs((3, 5, 16))
    assert_close(sae(x).reshape(15, 16), sae(x.reshape(15, 16)))
    assert sae.encode(x).shape == (3, 5, 64)
    assert_close(sae(x[0, 0]), sae(x[:1, 0])[0])


def test_vmap_over_inputs_matches_batched() -> None:
    sae = random_sae("topk")
    x = inputs((6, 16))
    assert_close(jax.vmap(sae.encode)(x), sae.encode(x))


@pytest.mark.parametrize("architecture", sorted(ARCH_KWARGS))
def test_every_architecture_runs_under_jit(architecture: str) -> None:
    sae = random_sae(architecture)
    x = inputs((9, 16))
    out, f = jax.jit(lambda s, x: s.forward_with_activations(x))(sae, x)
    assert out.shape == (9, sae.cfg.output_dim)
    assert f.shape == (9, 64)
    assert bool(jnp.all(f >= 0))
    assert 0 < int((f > 0).sum()) < f.size
    assert bool(jnp.all(f[:, :4] == 0)), "latents with b_enc = -30 must never fire"


@pytest.mark.parametrize("architecture", sorted(ARCH_KWARGS))
def test_chunked_forward_equals_the_whole_batch(architecture: str, monkeypatch) -> None:
    """forward() in chunks of 5 rows (17 rows: padding included) == one pass over all rows."""
    sae = random_sae(architecture)
    x = inputs((17, 16))
    whole = sae.forward_with_activations(x)[0]
    monkeypatch.setattr(jsae.sae, "FORWARD_CHUNK_LATENTS", 5 * 64)
    chunked = jax.jit(lambda s, x: s(x))(sae, x)
    if jsae.get_architecture(architecture).row_independent:
        assert_close(chunked, whole, atol=1e-5)
    else:  # BatchTopK's selection is batch-wide: never chunked
        assert_close(chunked, whole, atol=0)


def test_chunked_forward_keeps_layouts_normalisation_and_the_error_term(monkeypatch) -> None:
    sae = random_sae("standard", reshape_activations="hook_z", normalize_activations="layer_norm")
    x = inputs((3, 7, 4, 4))  # 21 tokens of 4 heads x 4
    whole = sae.forward_with_activations(x)[0]
    whole_err = sae.forward_with_activations(x, use_error_term=True)[0]
    monkeypatch.setattr(jsae.sae, "FORWARD_CHUNK_LATENTS", 4 * 64)
    assert_close(sae(x), whole, atol=1e-5)
    assert sae(x).shape == (3, 7, 4, 4)
    assert_close(sae(x, use_error_term=True), whole_err, atol=1e-5)


# ----------------------------------------------------------------------------- semantics


def test_jumprelu_threshold_is_strict_and_fp32() -> None:
    cfg = jsae.SAEConfig(architecture="jumprelu", d_in=2, d_sae=3, dtype="bfloat16")
    params = {
        "W_enc": np.eye(2, 3, dtype=np.float32),
        "b_enc": np.zeros(3, np.float32),
        "W_dec": np.eye(3, 2, dtype=np.float32),
        "b_dec": np.zeros(2, np.float32),
        "threshold": np.array([0.5, 0.5, 0.1], np.float32),
    }
    sae = jsae.SAE.from_params(cfg, params)
    assert sae.W_enc.dtype == jnp.bfloat16
    assert sae.threshold.dtype == jnp.float32
    f = sae.encode(np.array([[0.5, 0.75]], np.float32))
    assert f.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(f, np.float32), [[0.0, 0.75, 0.0]])


def test_topk_keeps_exactly_k_and_relus_them() -> None:
    sae = random_sae("topk", k=5)
    f, pre = sae.encode_with_hidden_pre(inputs((20, 16)))
    nnz = np.asarray((f != 0).sum(-1))
    assert nnz.max() <= 5
    # the kept values are the 5 largest pre-activations (where positive)
    top5 = np.sort(np.asarray(pre), axis=-1)[:, -5:]
    kept = np.sort(np.asarray(f), axis=-1)[:, -5:]
    np.testing.assert_allclose(kept, np.maximum(top5, 0), rtol=1e-6)


def test_batchtopk_keeps_k_per_token_on_average() -> None:
    sae = random_sae("batchtopk", k=3.0)
    f = sae.encode(inputs((40, 16)))
    assert int((f > 0).sum()) <= 3 * 40
    assert int((f > 0).sum()) >= 3 * 40 - 5  # unless fewer are positive


def test_batchtopk_serves_as_jumprelu() -> None:
    sae = random_sae("batchtopk", k=3.0, rescale_acts_by_decoder_norm=True)
    served = sae.to_inference()
    assert served.cfg.architecture == "jumprelu"
    np.testing.assert_allclose(np.asarray(served.threshold), 0.3, rtol=1e-6)
    rows = np.linalg.norm(np.asarray(served.W_dec), axis=-1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "architecture", ["standard", "gated", "jumprelu", "transcoder", "jumprelu_skip_transcoder"]
)
def test_fold_W_dec_norm_preserves_outputs(architecture: str) -> None:
    sae = random_sae(architecture)
    x = inputs((10, 16))
    folded = sae.fold_W_dec_norm()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(folded.W_dec), axis=-1), 1.0, rtol=1e-5)
    assert_close(folded(x), sae(x), atol=1e-4)
    norms = np.linalg.norm(np.asarray(sae.W_dec), axis=-1)
    assert_close(folded.encode(x), np.asarray(sae.encode(x)) * norms, atol=1e-4)


def test_topk_fold_requires_decoder_norm_aware_selection() -> None:
    with pytest.raises(jsae.ConfigError, match="rescale_acts_by_decoder_norm"):
        random_sae("topk").fold_W_dec_norm()
    sae = random_sae("topk", rescale_acts_by_decoder_norm=True)
    x = inputs((10, 16))
    assert_close(sae.fold_W_dec_norm()(x), sae(x), atol=1e-4)


def test_fold_activation_norm_scaling_factor_makes_raw_inputs_equivalent() -> None:
    sae = random_sae("jumprelu", normalize_activations="expected_average_only_in")
    x = inputs((10, 16))
    folded = sae.fold_activation_norm_scaling_factor(3.0)
    assert folded.cfg.normalize_activations == "none"
    assert_close(folded.encode(x), sae.encode(3.0 * x), atol=1e-5)
    assert_close(folded(x), sae(3.0 * x) / 3.0, atol=1e-5)
    with pytest.raises(jsae.ConfigError, match="normalises every token"):
        random_sae(
            "standard", normalize_activations="layer_norm"
        ).fold_activation_norm_scaling_factor(2.0)


@pytest.mark.parametrize("rescale", [False, True])
def test_batchtopk_scale_fold_keeps_the_served_jumprelu_equivalent(rescale: bool) -> None:
    """The served JumpReLU of the folded SAE on x fires like the original's on 3x, and its
    outputs are the original's / 3. With decoder-norm-aware selection latents are in units of
    pre-act * ||W_dec row||, and the fold divides W_dec by the scale, so they scale by 1/3."""
    sae = random_sae(
        "batchtopk",
        k=3.0,
        rescale_acts_by_decoder_norm=rescale,
        normalize_activations="expected_average_only_in",
    )
    x = inputs((10, 16))
    folded = sae.fold_activation_norm_scaling_factor(3.0).to_inference()
    served = sae.to_inference()
    unit = 3.0 if rescale else 1.0
    assert_close(folded.encode(x) * unit, served.encode(3.0 * x), atol=1e-5)
    assert 0 < int((served.encode(3.0 * x) > 0).sum()) < 10 * 64
    assert_close(folded(x), served(3.0 * x) / 3.0, atol=1e-5)


def test_error_term_splices_losslessly_and_applies_edits_exactly() -> None:
    sae = random_sae("standard")
    x = inputs((7, 16))
    assert_close(sae(x, use_error_term=True), x, atol=1e-5)
    ablate = lambda f: f.at[:, 10].set(0.0)  # noqa: E731
    edited = sae(x, use_error_term=True, edit_features=ablate)
    f = sae.encode(x)
    expected = x - np.asarray(f[:, 10:11]) * np.asarray(sae.W_dec[10])
    assert_close(edited, expected, atol=1e-5)
    # the error term carries no gradient: d out / d W_dec comes from the decode path only
    g = jax.grad(lambda s: jnp.sum(s(x, use_error_term=True)))(sae)
    assert_close(g.params["W_dec"], jnp.sum(f, 0)[:, None] * jnp.ones((1, 16)), atol=1e-4)


def test_transcoders_refuse_the_error_term() -> None:
    with pytest.raises(jsae.ConfigError, match="no error term"):
        random_sae("transcoder")(inputs((2, 16)), use_error_term=True)


def test_skip_transcoder_adds_the_skip_path() -> None:
    sae = random_sae("skip_transcoder")
    x = inputs((4, 16))
    no_skip = jsae.SAE.from_params(
        sae.cfg.replace(architecture="transcoder"),
        {k: v for k, v in sae.params.items() if k != "W_skip"},
    )
    assert_close(sae(x), no_skip(x) + x @ np.asarray(sae.W_skip).T, atol=1e-5)


def test_hook_z_inputs_keep_their_head_layout() -> None:
    sae = random_sae("standard", reshape_activations="hook_z")
    x = inputs((5, 4, 4))
    out = sae(x)
    assert out.shape == (5, 4, 4)
    assert_close(out.reshape(5, 16), sae(x.reshape(5, 16)))
    assert sae.decode(sae.encode(x), x).shape == (5, 4, 4)
    assert sae.decode(sae.encode(x)).shape == (5, 16)


def test_layer_norm_mode_needs_the_input_to_decode() -> None:
    sae = random_sae("standard", normalize_activations="layer_norm")
    x = inputs((5, 16))
    f = sae.encode(x)
    with pytest.raises(jsae.ConfigError, match=r"sae.decode\(f, x\)"):
        sae.decode(f)
    assert_close(sae.decode(f, x), sae(x))
    # layer-norm mode is invariant to affine rescaling of each token's input
    assert_close(sae.encode(3.0 * x + 1.5), f, atol=1e-4)


def test_astype_bfloat16_keeps_thresholds_fp32_and_tracks_fp32() -> None:
    sae = random_sae("jumprelu")
    half = sae.astype("bfloat16")
    assert half.cfg.dtype == "bfloat16"
    assert half.W_enc.dtype == jnp.bfloat16 and half.threshold.dtype == jnp.float32
    x = inputs((64, 16))
    out32, out16 = np.asarray(sae(x)), np.asarray(half(x), np.float32)
    rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
    assert rel < 0.05


# ----------------------------------------------------------------------------- sparse decode


@pytest.mark.parametrize(
    ("density", "dense_rows"),
    [(0.002, 0), (0.002, 2), (0.002, 40), (0.02, 0), (0.3, 0)],
    ids=["sparse", "sparse+spilled-rows", "too-many-dense-rows", "over-budget", "dense"],
)
def test_sparse_decode_equals_dense_at_every_density(density: float, dense_rows: int) -> None:
    """Exact whichever branch runs: gather, gather + dense spill rows, or the dense matmul."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8192, 32)).astype(np.float32)
    f = rng.normal(size=(64, 8192)).astype(np.float32) * (rng.random((64, 8192)) < density)
    f[3] = 0.0  # an all-zero row
    f[4, :5] = -2.0  # negative latents (edited features) are exact too
    f[10 : 10 + dense_rows] = rng.normal(size=(dense_rows, 8192))  # BOS-like rows
    exact = f.astype(np.float64) @ W.astype(np.float64)
    scale = np.abs(f).astype(np.float64) @ np.abs(W).astype(np.float64)  # bound on rounding
    for sparse in ("auto", True, 16, False):
        out = np.asarray(decode_matmul(jnp.asarray(f), jnp.asarray(W), sparse=sparse), np.float64)
        assert np.all(np.abs(out - exact) <= 1e-6 * scale + 1e-6), sparse


def test_auto_decode_gathers_on_cpu_only(monkeypatch) -> None:
    """ "auto" gathers where the gather was measured faster (CPU, wide SAEs); on a GPU or TPU
    backend it compiles the plain dense matmul, with no top-k in the program."""
    f, W = jnp.zeros((4, 4096)), jnp.zeros((4096, 8))

    def has_top_k() -> bool:
        return "top_k" in str(jax.make_jaxpr(lambda f, W: decode_matmul(f, W))(f, W))

    assert has_top_k()
    for platform in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda platform=platform: platform)
        assert not has_top_k(), platform
        assert "top_k" in str(jax.make_jaxpr(lambda f, W: decode_matmul(f, W, sparse=True))(f, W))


def test_sparse_decode_gradient_is_the_dense_gradient() -> None:
    rng = np.random.default_rng(1)
    W = jnp.asarray(rng.normal(size=(4096, 8)).astype(np.float32))
    f = jnp.asarray(rng.normal(size=(6, 4096)).astype(np.float32) * (rng.random((6, 4096)) < 0.003))
    loss = lambda f, W, sparse: jnp.sum(jnp.sin(decode_matmul(f, W, sparse=sparse)))  # noqa: E731
    g_sparse = jax.grad(loss, argnums=(0, 1))(f, W, True)
    g_dense = jax.grad(loss, argnums=(0, 1))(f, W, False)
    for a, b in zip(g_sparse, g_dense, strict=True):
        assert_close(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- bad input


def test_wrong_input_width_names_the_expected_shape() -> None:
    sae = random_sae("standard", metadata={"hook_name": "blocks.3.hook_resid_post"})
    with pytest.raises(
        jsae.ShapeError, match=r"expects \[\.\.\., d_in\] with d_in = 16.*blocks\.3"
    ):
        sae.encode(np.zeros((4, 15), np.float32))
    with pytest.raises(jsae.ShapeError, match="scalar"):
        sae.encode(np.float32(1.0))
    with pytest.raises(jsae.ShapeError, match="floating point"):
        sae.encode(np.zeros((4, 16), np.int32))
    with pytest.raises(jsae.ShapeError, match="d_sae=64"):
        sae.decode(np.zeros((4, 63), np.float32))


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(
        jsae.ConfigError, match=r"known architectures: .*jumprelu.*Did you mean 'jumprelu'"
    ):
        jsae.SAEConfig(architecture="jumprelux", d_in=4, d_sae=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 0}, "0 < k <= d_sae=8"),
        ({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 9}, "0 < k <= d_sae=8"),
        ({"architecture": "topk", "d_in": 4, "d_sae": 8}, "integer k"),
        ({"architecture": "standard", "d_in": 4, "d_sae": 8, "k": 3}, "only meaningful for topk"),
        ({"architecture": "standard", "d_in": 0, "d_sae": 8}, "d_in must be a positive integer"),
        (
            {"architecture": "standard", "d_in": 4, "d_sae": 8, "normalize_activations": "l2"},
            "choose one of",
        ),
        (
            {"architecture": "standard", "d_in": 4, "d_sae": 8, "dtype": "float8"},
            "unsupported dtype",
        ),
        (
            {"architecture": "transcoder", "d_in": 4, "d_sae": 8, "apply_b_dec_to_input": True},
            "apply_b_dec_to_input=False",
        ),
    ],
)
def test_invalid_configs_are_refused_with_the_fix(kwargs: dict, match: str) -> None:
    with pytest.raises(jsae.ConfigError, match=match):
        jsae.SAEConfig(**kwargs)


def test_float64_without_x64_is_refused_not_silently_downcast() -> None:
    cfg = jsae.SAEConfig(architecture="standard", d_in=4, d_sae=8, dtype="float64")
    with pytest.raises(jsae.ConfigError, match="jax_enable_x64"):
        jsae.SAE.init(cfg)


def test_params_that_contradict_the_config_are_refused() -> None:
    sae = random_sae("jumprelu")
    bad = dict(sae.params, W_dec=np.zeros((64, 15), np.float32))
    with pytest.raises(jsae.FormatError, match=r"'W_dec' has shape \(64, 15\).*needs \(64, 16\)"):
        jsae.SAE.from_params(sae.cfg, bad)
    missing = {k: v for k, v in sae.params.items() if k != "threshold"}
    with pytest.raises(jsae.FormatError, match=r"missing \['threshold'\]"):
        jsae.SAE.from_params(sae.cfg, missing)


def test_dtypes_are_accepted_in_every_spelling() -> None:
    """jnp.bfloat16 and np.float32 are scalar types, not dtypes: they name dtypes all the same."""
    from jsae.config import canonical_dtype

    spellings = [jnp.bfloat16, jnp.float32, np.float32, np.dtype("float16"), "torch.bfloat16"]
    assert [canonical_dtype(d) for d in spellings] == [
        "bfloat16", "float32", "float32", "float16", "bfloat16"
    ]  # fmt: skip
    sae = random_sae("standard")
    cfg = sae.cfg.replace(dtype=jnp.bfloat16)
    assert jsae.SAE.from_params(cfg, sae.params).cfg.dtype == "bfloat16"
    with pytest.raises(jsae.ConfigError, match="unsupported dtype"):
        canonical_dtype(np.int32)


def test_error_term_of_a_bf16_sae_keeps_a_float32_input_exact() -> None:
    """x_hat + (x - x_hat) in the wider dtype: with nothing edited the output is x (SAELens)."""
    sae = random_sae("standard").astype("bfloat16")
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    out = sae(x, use_error_term=True)
    assert out.dtype == jnp.float32
    assert_close(out, x, atol=1e-5)


def test_an_empty_batch_decodes_on_the_sparse_path() -> None:
    sae = random_sae("topk", d_sae=4096, k=8)  # wide enough for sparse="auto" to gather
    assert sae(np.zeros((0, 16), np.float32)).shape == (0, 16)
    with pytest.raises(jsae.ConfigError, match="budget of active latents per row must be >= 1"):
        decode_matmul(jnp.ones((2, 4096)), sae.W_dec, sparse=0)


@pytest.mark.parametrize("architecture", ["jumprelu", "gated"])
def test_a_nan_token_stays_nan(architecture: str) -> None:
    """The gate multiplies (as in SAELens): a NaN pre-activation is not selected away to 0."""
    sae = random_sae(architecture)
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    x[1, 4] = np.nan
    out = np.asarray(sae(x))
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()


def test_saved_directories_get_the_usual_permissions(tmp_path) -> None:
    """tempfile makes private (0700/0600) paths; a saved SAE is as readable as a plain mkdir."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        random_sae("standard").save(tmp_path / "sae")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sae").stat().st_mode) == 0o755
    for file in (tmp_path / "sae").iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name
