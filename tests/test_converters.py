"""Every converter against the original: library outputs where it installs, else closed-form math.

sparsify and dictionary_learning: the reference environment trains nothing but writes real
checkpoints with random weights (their own save code) plus their own encode/decode outputs;
jsae must reproduce them to 1e-5 (fp32). Gemma Scope (1 and 2), Llama Scope (+ R1), OpenAI,
Goodfire, circuit-tracer, mntss, Qwen Scope, qresearch and Kissane files are built in their
exact published layouts (.pt ones by torch.save in the reference environment) and checked
against numpy implementations of each format's published math
(tests/reference/converter_layouts.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import assert_close, run_reference
from jsae.converters import Hints
from reference import converter_layouts as L
from safetensors.numpy import load_file, save_file

import jsae
from jsae import converters
from jsae.cli import main as cli

D_IN, D_SAE = 16, 64


@pytest.fixture(scope="session")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return L.reference_fixtures(tmp_path_factory)


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return (rng.normal(size=(21, D_IN)) * 1.5 + 0.3).astype(np.float32)


def _firing(f) -> None:
    f = np.asarray(f)
    assert 0 < (f != 0).sum() < f.size, "test data must have firing and silent latents"


# ----------------------------------------------------------------------- original libraries

DICT_CLASSES = {
    "AutoEncoder": "standard",
    "AutoEncoderNew": "standard",
    "GatedAutoEncoder": "gated",
    "JumpReluAutoEncoder": "jumprelu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "jumprelu",
    "MatryoshkaBatchTopKSAE": "jumprelu",
}


@pytest.mark.parametrize("dict_class", list(DICT_CLASSES))
def test_dictionary_learning_matches_load_dictionary(ref: Path, dict_class: str) -> None:
    folder = ref / "dictionary_learning" / dict_class
    io = load_file(folder / "io.safetensors")
    assert converters.detect_format(folder) == "dictionary_learning"
    sae = jsae.load(folder)
    assert sae.cfg.architecture == DICT_CLASSES[dict_class]
    f = sae.encode(io["x"])
    _firing(f)
    assert_close(f, io["feature_acts"], what="encode")
    assert_close(sae.decode(f), io["recon"], what="decode")
    assert_close(sae(io["x"]), io["forward"], what="forward")
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.context_size) == (
        "EleutherAI/pythia-70m-deduped",
        "blocks.3.hook_resid_post",
        128,
    )
    assert meta["dict_class"] == dict_class


def test_sparsify_matches_library_and_keeps_W_dec_orientation(ref: Path) -> None:
    folder = ref / "sparsify" / "fp32" / "run" / "layers.3"
    io = load_file(ref / "sparsify" / "fp32" / "io.safetensors")
    sae = jsae.load(folder)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.apply_b_dec_to_input) == ("topk", 5, True)
    f = sae.encode(io["x"])
    assert_close(f, io["feature_acts"], what="encode")
    assert_close(sae.decode(f), io["recon"], what="decode")
    assert_close(sae(io["x"]), io["forward"], what="forward")
    # sparsify's W_dec is already [d_sae, d_in]: taken as is, not transposed (SAELens's bug)
    assert_close(sae.W_dec, load_file(folder / "sae.safetensors")["W_dec"])
    meta = sae.cfg.metadata
    assert meta.model_name == "EleutherAI/pythia-70m"
    assert (meta.hook_name, meta.hf_hook_name, meta.context_size) == (
        "blocks.3.hook_resid_post",
        "layers.3",
        256,
    )
    assert meta.dataset_path == "togethercomputer/RedPajama-Data-1T-Sample"


def test_sparsify_bf16_checkpoint_loads_bit_exactly(ref: Path) -> None:
    folder = ref / "sparsify" / "bf16" / "run" / "layers.3"
    io = load_file(ref / "sparsify" / "bf16" / "io.safetensors")
    stored = load_file(folder / "sae.safetensors")
    sae = jsae.load(folder)
    assert sae.cfg.dtype == "bfloat16" and sae.W_dec.dtype == ml_dtypes.bfloat16
    assert np.array_equal(np.asarray(sae.W_dec), stored["W_dec"])
    assert np.array_equal(np.asarray(sae.W_enc), stored["encoder.weight"].T)
    # bf16 arithmetic rounds differently in torch and XLA: compare selections row by row
    f = np.asarray(sae.encode(io["x"]), np.float32)
    same_rows = np.isclose(f, io["feature_acts"], atol=3e-2, rtol=3e-2).all(-1)
    assert same_rows.mean() > 0.85
    upcast = jsae.load(folder, dtype="float32")
    assert_close(upcast.encode(io["x"]), io["feature_acts"], atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------- Gemma Scope


def _gemma_dir(root: Path, site: str, layer_folder: str) -> Path:
    return root / f"gemma-scope-2b-pt-{site}" / layer_folder / "width_16k" / "average_l0_42"


@pytest.mark.parametrize(
    ("site", "hook", "lower"),
    [
        ("res", "blocks.6.hook_resid_post", False),
        ("mlp", "blocks.6.hook_mlp_out", True),
        ("att", "blocks.6.attn.hook_z", False),
    ],
)
def test_gemma_scope_matches_published_math(
    tmp_path: Path, rng, x, site: str, hook: str, lower: bool
) -> None:
    folder = _gemma_dir(tmp_path, site, "layer_6")
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE, lower=lower)
    sae = jsae.load(folder)
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    f_ref, recon_ref = L.gemma_scope_ref(p, x)
    _firing(f_ref)
    x_in = x.reshape(21, 4, 4) if site == "att" else x  # attention SAEs read [.., heads, d_head]
    assert_close(sae.encode(x_in), f_ref, what="encode")
    assert_close(sae.decode(sae.encode(x_in)), recon_ref, what="decode")
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.context_size) == ("google/gemma-2-2b", hook, 1024)
    if site == "att":
        assert sae.cfg.reshape_activations == "hook_z"
        assert sae(x_in).shape == (21, 4, 4)


def test_gemma_scope_embedding_sae_is_rescaled_for_hook_embed(tmp_path: Path, rng, x) -> None:
    """Trained on unscaled embeddings; hook_embed is sqrt(d_model) times larger: encoder /sqrt(d),
    decoder and decoder bias *sqrt(d), so hook-space reconstructions are sqrt(d)·x̂(raw)."""
    folder = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_4k" / "average_l0_6"
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE)
    sae = jsae.load(folder)
    assert sae.cfg.metadata.hook_name == "hook_embed"
    scale = np.sqrt(D_IN)
    x_hook = x * scale
    f_ref, recon_ref = L.gemma_scope_ref(p, x)
    assert_close(sae.encode(x_hook), f_ref, what="encode")
    assert_close(sae(x_hook), recon_ref * scale, atol=1e-4, what="reconstruction in hook space")


def test_gemma_scope_transcoder(tmp_path: Path, rng, x) -> None:
    folder = _gemma_dir(tmp_path, "transcoders", "layer_3")
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE)
    sae = jsae.load(folder)
    assert sae.cfg.architecture == "jumprelu_transcoder"
    f_ref, out_ref = L.gemma_scope_ref(p, x)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), out_ref)
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out) == (
        "blocks.3.ln2.hook_normalized",
        "blocks.3.hook_mlp_out",
    )


@pytest.mark.parametrize(
    "parent", ["embedding_study", "transcoder_notes", "gemma-scope-runs/embedding/old"]
)
def test_gemma_scope_reads_only_the_layout_part_of_a_local_path(
    tmp_path: Path, rng, x, parent: str
) -> None:
    """The same params.npz loads identically under an unrelated parent folder named like
    'embedding' or 'transcoder': only a gemma-scope-* repo folder, or the trailing
    layer_N|embedding / width_* / average_l0_N components, say what the SAE is."""
    layout = Path("layer_3") / "width_16k" / "average_l0_50"
    plain = tmp_path / "runs" / layout
    p = L.write_gemma_scope(plain, rng, D_IN, D_SAE)
    other = tmp_path / parent / layout
    other.mkdir(parents=True)
    shutil.copy(plain / "params.npz", other / "params.npz")
    f_ref, out_ref = L.gemma_scope_ref(p, x)
    for folder in (plain, other):
        sae = jsae.load(folder)
        assert (sae.cfg.architecture, sae.cfg.metadata.hook_name) == ("jumprelu", None), folder
        assert_close(sae.encode(x), f_ref, what=f"encode {folder}")
        assert_close(sae(x), out_ref, what=f"forward {folder}")
    # what the path does not say, hints do: a transcoder, or the embedding SAE (rescaled)
    hinted = jsae.load(
        other, hints=Hints(repo_id="google/gemma-scope-2b-pt-transcoders", path_in_repo=str(layout))
    )
    assert hinted.cfg.architecture == "jumprelu_transcoder"
    assert hinted.cfg.metadata.hook_name == "blocks.3.ln2.hook_normalized"
    embed = jsae.load(
        other,
        hints=Hints(
            repo_id="google/gemma-scope-2b-pt-res", path_in_repo="embedding/width_4k/average_l0_6"
        ),
    )
    assert embed.cfg.metadata.hook_name == "hook_embed"
    assert_close(embed(x * np.sqrt(D_IN)), out_ref * np.sqrt(D_IN), atol=1e-4)


def test_gemma_scope_layouts_in_a_hub_cache_and_without_a_repo_folder(tmp_path: Path, rng, x):
    """A Hugging Face cache path (models--google--gemma-scope-*/snapshots/<commit>/...) names
    the repo; a bare embedding/width_*/average_l0_* tail is the embedding layout."""
    cached = (
        tmp_path
        / "models--google--gemma-scope-2b-pt-transcoders"
        / "snapshots"
        / ("0" * 40)
        / "layer_4/width_16k/average_l0_9"
    )
    p = L.write_gemma_scope(cached, rng, D_IN, D_SAE)
    sae = jsae.load(cached)
    assert sae.cfg.architecture == "jumprelu_transcoder"
    assert (sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name_out) == (
        "google/gemma-2-2b",
        "blocks.4.hook_mlp_out",
    )
    bare = tmp_path / "downloads" / "embedding" / "width_4k" / "average_l0_6"
    bare.mkdir(parents=True)
    shutil.copy(cached / "params.npz", bare / "params.npz")
    f_ref, out_ref = L.gemma_scope_ref(p, x)
    embed = jsae.load(bare)
    assert_close(embed.encode(x * np.sqrt(D_IN)), f_ref)
    assert_close(embed(x * np.sqrt(D_IN)), out_ref * np.sqrt(D_IN), atol=1e-4)


@pytest.mark.parametrize("parent", ["transcoder_notes/run", "attn_out_study", "mlp_out_x/clt_y"])
def test_gemma_scope_2_reads_only_the_layout_part_of_a_local_path(
    tmp_path: Path, rng, x, parent: str
) -> None:
    """Only the `site/layer_L_width_*` folders say what a Gemma Scope 2 SAE is: a parent
    named like a site ('transcoder_notes', 'attn_out_study') changes nothing."""
    name = "layer_5_width_16k_l0_medium"
    plain = tmp_path / "run" / name
    p = L.write_gemma_scope_2(plain, rng, D_IN, D_SAE)
    other = tmp_path / parent / name
    shutil.copytree(plain, other)
    f_ref, out_ref = L.gemma_scope_2_ref(p, x)
    for folder in (plain, other):
        sae = jsae.load(folder)
        assert (sae.cfg.architecture, sae.cfg.reshape_activations) == ("jumprelu", "none")
        assert_close(sae.encode(x), f_ref, what=f"encode {folder}")
        assert_close(sae(x), out_ref, what=f"forward {folder}")
    assert jsae.load(other, hints=Hints(path_in_repo=f"transcoder/{name}")).cfg.architecture == (
        "jumprelu_transcoder"
    )


@pytest.mark.parametrize(
    ("folder", "affine", "d_out", "architecture", "hook"),
    [
        (
            "resid_post/layer_5_width_16k_l0_medium",
            False,
            None,
            "jumprelu",
            "blocks.5.hook_resid_post",
        ),
        ("attn_out/layer_5_width_16k_l0_small", False, None, "jumprelu", "blocks.5.attn.hook_z"),
        (
            "transcoder/layer_5_width_16k_l0_big",
            False,
            12,
            "jumprelu_transcoder",
            "blocks.5.ln2.hook_normalized",
        ),
        (
            "transcoder/layer_5_width_16k_l0_big_affine",
            True,
            12,
            "jumprelu_skip_transcoder",
            "blocks.5.ln2.hook_normalized",
        ),
    ],
)
def test_gemma_scope_2_matches_published_math(
    tmp_path: Path, rng, x, folder, affine, d_out, architecture, hook
) -> None:
    path = tmp_path / folder
    p = L.write_gemma_scope_2(path, rng, D_IN, D_SAE, d_out=d_out, affine=affine)
    sae = jsae.load(path)
    assert sae.cfg.architecture == architecture
    f_ref, out_ref = L.gemma_scope_2_ref(p, x)
    _firing(f_ref)
    assert_close(sae.encode(x), f_ref, what="encode")
    assert_close(sae(x), out_ref, what="output")
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.hf_hook_name) == (
        "google/gemma-3-1b-pt",
        hook,
        "model.layers.5.output",
    )
    if affine:
        assert_close(sae.W_skip, p["affine_skip_connection"].T)


# ----------------------------------------------------------------------- Llama Scope


@pytest.mark.parametrize("transcoder", [False, True])
def test_llama_scope_matches_openmoss_math(tmp_path: Path, rng, x, transcoder: bool) -> None:
    folder = tmp_path / "Llama3_1-8B-Base-L7R-8x"
    hp, state = L.write_llama_scope(folder, rng, D_IN, D_SAE, transcoder=transcoder)
    norms = hp["dataset_average_activation_norm"]
    kw = dict(d_model=D_IN, avg_in=norms["in"], avg_out=norms["out"], include_decoder_norm=True)
    f_ref, out_ref = L.openmoss_ref(state, hp["jump_relu_threshold"], x, **kw)
    _firing(f_ref)
    # the decoder-norm gotcha matters here: one scalar threshold would select other latents
    f_scalar, _ = L.openmoss_ref(
        state, hp["jump_relu_threshold"], x, **{**kw, "include_decoder_norm": False}
    )
    assert not np.array_equal(f_scalar != 0, f_ref != 0)

    sae = jsae.load(folder, dtype="float32")
    assert sae.cfg.architecture == ("jumprelu_transcoder" if transcoder else "jumprelu")
    assert sae.cfg.normalize_activations == "none" and not sae.cfg.apply_b_dec_to_input
    assert_close(sae.encode(x), f_ref, atol=2e-5, what="encode")
    assert_close(sae(x), out_ref, atol=2e-5, what="output")
    meta = sae.cfg.metadata
    assert meta.model_name == "meta-llama/Llama-3.1-8B"
    assert meta.hook_name == hp["hook_point_in"]
    assert meta.hook_name_out == (hp["hook_point_out"] if transcoder else None)

    native = jsae.load(folder)  # the file's own dtype; bf16 rounding may flip a latent or two
    assert native.cfg.dtype == "bfloat16"
    rows = np.isclose(np.asarray(native(x), np.float32), out_ref, atol=0.1, rtol=0.1).all(-1)
    assert rows.mean() > 0.8


def test_llama_scope_r1_distill(tmp_path: Path, rng, x) -> None:
    folder = tmp_path / "800M-Slimpajama-0-OpenR1-Math-220k" / "L4R"
    _, state = L.write_llama_scope_r1(folder, rng, D_IN, D_SAE)
    assert converters.detect_format(folder) == "llama_scope_r1"
    threshold = np.exp(state["log_jumprelu_threshold"].astype(np.float64))
    f_ref, out_ref = L.openmoss_ref(
        state, threshold, x, d_model=D_IN, avg_in=9.0, avg_out=9.0, include_decoder_norm=True
    )
    _firing(f_ref)
    sae = jsae.load(folder)
    assert_close(sae.encode(x), f_ref, atol=2e-5)
    assert_close(sae(x), out_ref, atol=2e-5)

    # Without norms in the files, the registry's norm_scaling_factor is needed
    folder2 = tmp_path / "no_norms" / "L4R"
    _, state2 = L.write_llama_scope_r1(folder2, rng, D_IN, D_SAE, with_norms=False)
    with pytest.raises(jsae.FormatError, match="norm_scaling_factor"):
        jsae.load(folder2)
    s = np.sqrt(D_IN) / 9.0
    sae2 = jsae.load(folder2, hints=Hints(norm_scaling_factor=s))
    t2 = np.exp(state2["log_jumprelu_threshold"].astype(np.float64))
    f2, out2 = L.openmoss_ref(
        state2, t2, x, d_model=D_IN, avg_in=9.0, avg_out=9.0, include_decoder_norm=True
    )
    assert_close(sae2.encode(x), f2, atol=2e-5)
    assert_close(sae2(x), out2, atol=2e-5)


# ----------------------------------------------------------------------- .pt formats


@pytest.mark.parametrize(
    ("location", "activation", "hook"),
    [
        ("resid_post_mlp_v5_32k", "TopK", "blocks.5.hook_resid_post"),
        ("resid_delta_mlp_v4", "ReLU", "blocks.5.hook_mlp_out"),
    ],
)
def test_openai_matches_published_math(
    ref: Path, x, location: str, activation: str, hook: str
) -> None:
    path = ref / "pt_layouts" / "openai" / "gpt2-small" / location / "autoencoders" / "5.pt"
    p = dict(np.load(str(path) + ".params.npz"))
    assert converters.detect_format(path) == "openai"
    sae = jsae.load(path)
    f_ref, recon_ref = L.openai_ref(p, x, activation, k=7)
    _firing(f_ref)
    assert sae.cfg.architecture == ("topk" if activation == "TopK" else "standard")
    assert sae.cfg.normalize_activations == ("layer_norm" if activation == "TopK" else "none")
    assert_close(sae.encode(x), f_ref, what="encode")
    assert_close(sae(x), recon_ref, what="forward")
    assert (sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name) == ("gpt2", hook)


def test_goodfire_matches_published_math(ref: Path, x) -> None:
    path = ref / "pt_layouts" / "goodfire" / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    p = np.load(str(path) + ".params.npz")
    assert converters.detect_format(path) == "goodfire"
    sae = jsae.load(path)
    f_ref, recon_ref = L.linear_relu_ref(
        p["encoder_linear.weight"],
        p["encoder_linear.bias"],
        p["decoder_linear.weight"],
        p["decoder_linear.bias"],
        x,
    )
    _firing(f_ref)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), recon_ref)
    assert (sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name) == (
        "meta-llama/Llama-3.1-8B-Instruct",
        "blocks.19.hook_resid_post",
    )


def test_linear_pt_and_hook_z_and_qwen_scope(ref: Path, x) -> None:
    path = ref / "pt_layouts" / "linear_pt" / "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt"
    p = np.load(str(path) + ".params.npz")
    assert converters.detect_format(path) == "linear_pt"
    sae = jsae.load(path)
    f_ref, recon_ref = L.linear_relu_ref(
        p["encoder.weight"], p["encoder.bias"], p["decoder.weight"], p["decoder.bias"], x
    )
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), recon_ref)
    assert sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"

    path = next((ref / "pt_layouts" / "hook_z").glob("*.pt"))
    p = np.load(str(path) + ".params.npz")
    assert converters.detect_format(path) == "connor_rob_hook_z"
    sae = jsae.load(path)
    pre = (x - p["b_dec"]) @ p["W_enc"].astype(np.float64) + p["b_enc"]
    f_ref = np.maximum(pre, 0)
    assert_close(sae.encode(x.reshape(21, 2, 8)), f_ref)  # [.., n_heads, d_head]
    assert_close(sae(x.reshape(21, 2, 8)).reshape(21, D_IN), f_ref @ p["W_dec"] + p["b_dec"])
    assert sae.cfg.metadata.hook_name == "blocks.3.attn.hook_z"

    path = ref / "pt_layouts" / "qwen_scope" / "layer3.sae.pt"
    p = np.load(str(path) + ".params.npz")
    with pytest.raises(jsae.FormatError, match="cannot tell k"):
        jsae.load(path)
    sae = jsae.load(path, hints=Hints(repo_id="Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_9"))
    assert (sae.cfg.architecture, sae.cfg.k) == ("topk", 9)
    f_ref = L.topk_ref(x.astype(np.float64) @ p["W_enc"].T + p["b_enc"], 9)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), f_ref @ p["W_dec"].T + p["b_dec"])
    assert sae.cfg.metadata.model_name == "Qwen/Qwen3-1.7B-Base"


# ----------------------------------------------------------------------- transcoders


@pytest.mark.parametrize(
    ("jump", "skip"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_circuit_tracer_transcoders(tmp_path: Path, rng, x, jump: bool, skip: bool) -> None:
    file = tmp_path / "qwen3-4b-transcoders" / "layer_2.safetensors"
    p = L.write_circuit_tracer(file, rng, D_IN, D_SAE, jump=jump, skip=skip)
    (file.parent / "config.yaml").write_text(
        "model_name: Qwen/Qwen3-4B\nfeature_input_hook: mlp.hook_in\n"
        "feature_output_hook: hook_mlp_out\n"
    )
    assert converters.detect_format(file) == "circuit_tracer"
    sae = jsae.load(file)
    assert sae.cfg.architecture == ("jumprelu_" if jump else "") + (
        "skip_transcoder" if skip else "transcoder"
    )
    f_ref, out_ref = L.circuit_tracer_ref(p, x)
    _firing(f_ref)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), out_ref)
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.hook_name_out) == (
        "Qwen/Qwen3-4B",
        "blocks.2.mlp.hook_in",
        "blocks.2.hook_mlp_out",
    )


def test_mntss_clt_layer_sums_decoders(tmp_path: Path, rng, x) -> None:
    p = L.write_mntss_clt(tmp_path, rng, D_IN, D_SAE, layer=3, n_targets=5)
    path = tmp_path / "W_enc_3.safetensors"
    assert converters.detect_format(path) == "mntss_clt"
    sae = jsae.load(path)
    f_ref = np.maximum(x.astype(np.float64) @ p["W_enc_3"].T + p["b_enc_3"], 0)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae.W_dec, p["W_dec_3"].sum(axis=1), atol=1e-5)
    assert_close(
        sae(x), f_ref @ p["W_dec_3"].astype(np.float64).sum(axis=1) + p["b_dec_3"], atol=1e-4
    )
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_mid"


# ----------------------------------------------------------------------- detection and bad input


def test_unrecognised_inputs_fail_clearly(tmp_path: Path, ref: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(jsae.FormatError, match="no SAE checkpoint jsae recognises"):
        jsae.load(tmp_path / "empty")
    with pytest.raises(jsae.FormatError, match="does not exist"):
        jsae.load(tmp_path / "nope")
    with pytest.raises(jsae.ConfigError, match="Did you mean 'gemma_scope'"):
        jsae.load(tmp_path / "empty", format="gemma_scopes")
    with pytest.raises(jsae.UnsafePickleError):
        jsae.load(ref / "torch" / "module.pt")
    # dictionary_learning TopK vs BatchTopK are indistinguishable without config.json
    folder = tmp_path / "topk_no_cfg"
    folder.mkdir()
    (folder / "ae.pt").write_bytes(
        (ref / "dictionary_learning" / "AutoEncoderTopK" / "ae.pt").read_bytes()
    )
    with pytest.raises(jsae.FormatError, match=r"config\.json"):
        jsae.load(folder)


def test_unsupported_variants_are_refused_with_reasons(tmp_path: Path, ref: Path, rng) -> None:
    src = ref / "sparsify" / "fp32" / "run" / "layers.3"
    for key, value, match in (
        ("activation", "groupmax", "groupmax"),
        ("transcode", True, "transcoders"),
    ):
        folder = tmp_path / f"sparsify_{key}"
        folder.mkdir()
        raw = json.loads((src / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**raw, key: value}))
        (folder / "sae.safetensors").write_bytes((src / "sae.safetensors").read_bytes())
        with pytest.raises(jsae.FormatError, match=match):
            jsae.load(folder)
    file = tmp_path / "layer_1.safetensors"
    p = L.write_circuit_tracer(file, rng, D_IN, D_SAE, jump=False, skip=False)
    save_file({**p, "k": np.array(8, np.int64)}, file)
    with pytest.raises(jsae.FormatError, match="TopK transcoders"):
        jsae.load(file)


def test_broken_checkpoints_fail_clearly(tmp_path: Path, rng) -> None:
    folder = _gemma_dir(tmp_path, "res", "layer_1")
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE)
    np.savez(folder / "params.npz", **{k: v for k, v in p.items() if k != "threshold"})
    with pytest.raises(jsae.FormatError, match="no threshold"):
        jsae.load(folder)
    p["W_dec"][3, 2] = np.nan
    np.savez(folder / "params.npz", **p)
    with pytest.raises(jsae.NonFiniteError, match="W_dec"):
        jsae.load(folder)
    gs2 = tmp_path / "resid_post" / "layer_2_width_16k_l0_small"
    L.write_gemma_scope_2(gs2, rng, D_IN, D_SAE)
    data = (gs2 / "params.safetensors").read_bytes()
    (gs2 / "params.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(jsae.FormatError, match="truncated or corrupt"):
        jsae.load(gs2)
    llama = tmp_path / "Llama3_1-8B-Base-L1R-8x"
    L.write_llama_scope(llama, rng, D_IN, D_SAE)
    (llama / "hyperparams.json").write_text("{not json")
    with pytest.raises(jsae.FormatError, match="not valid JSON"):
        jsae.load(llama)


def test_lazy_loading_matches_eager_for_sharded_placement(tmp_path: Path, rng, x) -> None:
    """Chunked reads into donated device buffers give exactly the file's values."""
    from jsae.converters import lazy

    folder = _gemma_dir(tmp_path, "res", "layer_4")
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE)
    old = lazy.CHUNK_BYTES
    lazy.CHUNK_BYTES = 256  # force many small chunks
    try:
        sae = jsae.load(folder, mesh={"data": 2, "model": 4})
    finally:
        lazy.CHUNK_BYTES = old
    for name, value in p.items():
        assert np.array_equal(np.asarray(sae.params[name]), value), name
    assert sae.W_enc.sharding.spec == jsae.parallel.param_spec("W_enc")
    assert sae.W_dec.addressable_shards[0].data.shape == (D_SAE // 4, D_IN)


# ----------------------------------------------------------------------- jsae convert


CONVERT_CASES = (
    "dictionary_learning_gated",
    "sparsify",
    "gemma_scope",
    "openai_topk",
    "llama_scope_transcoder",
    "gemma_scope_2_affine",
)


@pytest.fixture(scope="module")
def converted(ref: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each case converted with `jsae convert`, then loaded and run by SAELens."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("converted")
    src = root / "src"
    sources = {
        "dictionary_learning_gated": ref / "dictionary_learning" / "GatedAutoEncoder",
        "sparsify": ref / "sparsify" / "fp32" / "run" / "layers.3",
        "openai_topk": ref
        / "pt_layouts"
        / "openai"
        / "gpt2-small"
        / "resid_post_mlp_v5_32k"
        / "autoencoders"
        / "5.pt",
    }
    sources["gemma_scope"] = _gemma_dir(src, "res", "layer_2")
    L.write_gemma_scope(sources["gemma_scope"], rng, D_IN, D_SAE)
    sources["llama_scope_transcoder"] = src / "Llama3_1-8B-Base-L2TC-8x"
    L.write_llama_scope(sources["llama_scope_transcoder"], rng, D_IN, D_SAE, transcoder=True)
    sources["gemma_scope_2_affine"] = src / "transcoder" / "layer_2_width_16k_l0_big_affine"
    L.write_gemma_scope_2(sources["gemma_scope_2_affine"], rng, D_IN, D_SAE, affine=True)
    x = (rng.normal(size=(13, D_IN)) * 1.5 + 0.3).astype(np.float32)
    for case in CONVERT_CASES:
        out = root / case
        assert cli(["convert", str(sources[case]), str(out / "sae"), "--dtype", "float32"]) == 0
        save_file({"x": x}, out / "inputs.safetensors")
        sae = jsae.load(sources[case], dtype="float32")
        f = sae.encode(x)
        save_file(
            {"feature_acts": np.asarray(f), "forward": np.asarray(sae(x))}, out / "jsae.safetensors"
        )
    run_reference("converter_fixtures.py", "check", root)
    return root


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_converted_checkpoints_load_in_saelens(converted: Path, case: str) -> None:
    ours = load_file(converted / case / "jsae.safetensors")
    theirs = load_file(converted / case / "saelens_outputs.safetensors")
    assert_close(theirs["feature_acts"], ours["feature_acts"], what="encode")
    assert_close(theirs["forward"], ours["forward"], what="forward")
    back = jsae.load(converted / case / "sae")  # and jsae reads its own output
    assert back.cfg.metadata["source_format"] is not None


def test_convert_is_atomic_and_refuses_to_clobber(tmp_path: Path, rng, capsys) -> None:
    folder = _gemma_dir(tmp_path, "res", "layer_1")
    p = L.write_gemma_scope(folder, rng, D_IN, D_SAE)
    dst = tmp_path / "out"
    assert cli(["convert", str(folder), str(dst)]) == 0
    before = {f.name: f.read_bytes() for f in dst.iterdir()}
    assert cli(["convert", str(folder), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    p["b_enc"][0] = np.inf
    np.savez(folder / "params.npz", **p)
    assert cli(["convert", str(folder), str(dst), "--overwrite"]) == 2  # fails: Inf in b_enc
    assert {f.name: f.read_bytes() for f in dst.iterdir()} == before  # old output untouched
    assert cli(["convert", str(folder), str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".new")]  # no temp dirs left
    assert cli(["convert", "no-such-release", str(tmp_path / "x")]) == 2
    assert "unknown release" in capsys.readouterr().err
