"""Checkpoints in published layouts, and closed-form numpy references of each format's math.

Imported by the jsae-side tests (numpy only, no torch): the writers build files exactly as the
releases lay them out (file names, key names, shapes, orientations, dtypes), and the `*_ref`
functions compute what the originating code computes, from the formulas the formats publish
(written from their papers and source, independently of jsae's converters). Everything is
float64 so the references carry no rounding of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

f64 = np.float64


def rand(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(np.float32)


def jumprelu(pre: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """z · 1[z > θ] (all thresholds here are >= 0, where this is relu(z) · 1[z > θ])."""
    return pre * (pre > threshold)


# ------------------------------------------------------------------------------ Gemma Scope


def write_gemma_scope(
    folder: Path, rng, d_in: int, d_sae: int, d_out: int | None = None, lower: bool = False
) -> dict:
    """params.npz with W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold."""
    d_out = d_out or d_in
    p = {
        "W_enc": rand(rng, d_in, d_sae),
        "W_dec": rand(rng, d_sae, d_out),
        "b_enc": rand(rng, d_sae, scale=0.2),
        "b_dec": rand(rng, d_out),
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **({k.lower(): v for k, v in p.items()} if lower else p))
    return p


def gemma_scope_ref(p: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GDM's JumpReLUSAE: f = JumpReLU(x W_enc + b_enc), x̂ = f W_dec + b_dec."""
    pre = x.astype(f64) @ p["W_enc"].astype(f64) + p["b_enc"]
    f = jumprelu(pre, p["threshold"].astype(f64))
    return f, f @ p["W_dec"].astype(f64) + p["b_dec"]


# ------------------------------------------------------------------------------ Gemma Scope 2


def write_gemma_scope_2(
    folder: Path,
    rng,
    d_in: int,
    d_sae: int,
    d_out: int | None = None,
    affine: bool = False,
    model: str = "gemma-v3-1b-pt",
) -> dict:
    """params.safetensors (w_enc, w_dec, b_enc, b_dec, threshold[, affine_skip_connection])
    and config.json."""
    d_out = d_out or d_in
    p = {
        "w_enc": rand(rng, d_in, d_sae),
        "w_dec": rand(rng, d_sae, d_out),
        "b_enc": rand(rng, d_sae, scale=0.2),
        "b_dec": rand(rng, d_out),
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }
    if affine:
        p["affine_skip_connection"] = rand(rng, d_in, d_out, scale=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(p, folder / "params.safetensors")
    cfg = {
        "architecture": "jump_relu",
        "model_name": model,
        "hf_hook_point_in": "model.layers.5.output",
    }
    if affine or d_out != d_in:
        cfg.update(
            affine_connection=affine,
            hf_hook_point_out="model.layers.5.post_feedforward_layernorm.output",
        )
    (folder / "config.json").write_text(json.dumps(cfg))
    return p


def gemma_scope_2_ref(p: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pre = x.astype(f64) @ p["w_enc"].astype(f64) + p["b_enc"]
    f = jumprelu(pre, p["threshold"].astype(f64))
    out = f @ p["w_dec"].astype(f64) + p["b_dec"]
    if "affine_skip_connection" in p:
        out = out + x.astype(f64) @ p["affine_skip_connection"].astype(f64)
    return f, out


# ------------------------------------------------------------------------------ Llama Scope


def write_llama_scope(
    folder: Path,
    rng,
    d_in: int,
    d_sae: int,
    *,
    transcoder: bool = False,
    include_decoder_norm: bool = True,
    layer: int = 7,
) -> tuple[dict, dict]:
    """hyperparams.json + checkpoints/final.safetensors (bfloat16 nn.Linear weights)."""
    d_out = d_in
    state = {
        "encoder.weight": rand(rng, d_sae, d_in, scale=0.05),
        "encoder.bias": rand(rng, d_sae, scale=0.1),
        # decoder columns with very different norms: the threshold gotcha shows
        "decoder.weight": rand(rng, d_out, d_sae) * rng.uniform(0.2, 3.0, d_sae).astype(np.float32),
        "decoder.bias": rand(rng, d_out),
    }
    state = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    hook_in = (
        f"blocks.{layer}.ln2.hook_normalized" if transcoder else f"blocks.{layer}.hook_resid_post"
    )
    hook_out = f"blocks.{layer}.hook_mlp_out" if transcoder else hook_in
    hp = {
        "d_model": d_in,
        "d_sae": d_sae,
        "hook_point_in": hook_in,
        "hook_point_out": hook_out,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.3,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 11.5, "out": 0.75 if transcoder else 11.5},
        "sparsity_include_decoder_norm": include_decoder_norm,
        "top_k": 50,
    }
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "checkpoints" / "final.safetensors")
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    return hp, state


def openmoss_ref(
    state: dict,
    threshold,
    x: np.ndarray,
    *,
    d_model: int,
    avg_in: float,
    avg_out: float,
    include_decoder_norm: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """OpenMOSS SparseAutoEncoder (dataset-wise norm): encode + decode, de-normalised output."""
    W_E = np.asarray(state["encoder.weight"], f64)  # [d_sae, d_in]
    b_E = np.asarray(state["encoder.bias"], f64)
    W_D = np.asarray(state["decoder.weight"], f64)  # [d_out, d_sae]
    b_D = np.asarray(state["decoder.bias"], f64)
    s_in, s_out = np.sqrt(d_model) / avg_in, np.sqrt(d_model) / avg_out
    hidden_pre = (x.astype(f64) * s_in) @ W_E.T + b_E
    scores = hidden_pre * np.linalg.norm(W_D, axis=0) if include_decoder_norm else hidden_pre
    f = hidden_pre * (scores > np.asarray(threshold, f64))
    return f, (f @ W_D.T + b_D) / s_out


def write_llama_scope_r1(
    folder: Path, rng, d_in: int, d_sae: int, *, with_norms: bool = True
) -> tuple[dict, dict]:
    """config.json + sae_weights.safetensors with a per-latent log_jumprelu_threshold."""
    state = {
        "encoder.weight": rand(rng, d_sae, d_in, scale=0.05),
        "encoder.bias": rand(rng, d_sae, scale=0.1),
        "decoder.weight": rand(rng, d_in, d_sae) * rng.uniform(0.2, 3.0, d_sae).astype(np.float32),
        "decoder.bias": rand(rng, d_in),
        "log_jumprelu_threshold": np.log(rng.uniform(0.1, 0.6, d_sae)).astype(np.float32),
    }
    cfg = {
        "d_model": d_in,
        "expansion_factor": d_sae // d_in,
        "hook_point_in": "blocks.4.hook_resid_post",
        "hook_point_out": "blocks.4.hook_resid_post",
        "act_fn": "jumprelu",
    }
    if with_norms:
        cfg["norm_activation"] = "dataset-wise"
        cfg["dataset_average_activation_norm"] = {"in": 9.0, "out": 9.0}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "sae_weights.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg))
    return cfg, state


# ------------------------------------------------------------------------------ circuit-tracer


def write_circuit_tracer(file: Path, rng, d_in: int, d_sae: int, *, jump: bool, skip: bool) -> dict:
    """layer_N.safetensors: W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc, b_dec, ..."""
    p = {
        "W_enc": rand(rng, d_sae, d_in),
        "W_dec": rand(rng, d_sae, d_in),
        "b_enc": rand(rng, d_sae, scale=0.2),
        "b_dec": rand(rng, d_in),
    }
    if jump:
        p["activation_function.threshold"] = rng.uniform(0.05, 0.5, d_sae).astype(np.float32)
    if skip:
        p["W_skip"] = rand(rng, d_in, d_in, scale=0.1)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(p, file)
    return p


def circuit_tracer_ref(p: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SingleLayerTranscoder: act(F.linear(x, W_enc, b_enc)) @ W_dec + b_dec + x @ W_skipᵀ."""
    pre = x.astype(f64) @ p["W_enc"].astype(f64).T + p["b_enc"]
    if "activation_function.threshold" in p:
        f = jumprelu(pre, p["activation_function.threshold"].astype(f64))
    else:
        f = np.maximum(pre, 0)
    out = f @ p["W_dec"].astype(f64) + p["b_dec"]
    if "W_skip" in p:
        out = out + x.astype(f64) @ p["W_skip"].astype(f64).T
    return f, out


def write_mntss_clt(folder: Path, rng, d_in: int, d_sae: int, layer: int, n_targets: int) -> dict:
    p = {
        f"W_enc_{layer}": rand(rng, d_sae, d_in),
        f"b_enc_{layer}": rand(rng, d_sae, scale=0.2),
        f"b_dec_{layer}": rand(rng, d_in),
    }
    dec = {f"W_dec_{layer}": rand(rng, d_sae, n_targets, d_in)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(p, folder / f"W_enc_{layer}.safetensors")
    save_file(dec, folder / f"W_dec_{layer}.safetensors")
    (folder / "config.yaml").write_text(
        "model_name: google/gemma-2-2b\n"
        "feature_input_hook: hook_resid_mid\n"
        "feature_output_hook: hook_mlp_out\n"
    )
    return {**p, **dec}


# ------------------------------------------------------------------------------ .pt layouts


def openai_ref(
    p: dict, x: np.ndarray, activation: str, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """openai/sparse_autoencoder Autoencoder.forward (TopK models LayerNorm their input)."""
    x = x.astype(f64)
    mu = std = None
    if activation == "TopK":
        mu = x.mean(-1, keepdims=True)
        x = x - mu
        std = x.std(-1, ddof=1, keepdims=True)
        x = x / (std + 1e-5)
    pre = (x - p["pre_bias"]) @ p["encoder.weight"].astype(f64).T + p["latent_bias"]
    if activation == "TopK":
        f = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=-1)[:, :k]
        np.put_along_axis(f, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    else:
        f = np.maximum(pre, 0)
    recons = f @ p["decoder.weight"].astype(f64).T + p["pre_bias"]
    if activation == "TopK":
        recons = recons * std + mu
    return f, recons


def linear_relu_ref(W_enc_t, b_enc, W_dec_t, b_dec, x) -> tuple[np.ndarray, np.ndarray]:
    """relu(encoder(x)) then decoder(f), with nn.Linear weights [out, in]."""
    f = np.maximum(x.astype(f64) @ W_enc_t.astype(f64).T + b_enc, 0)
    return f, f @ W_dec_t.astype(f64).T + b_dec


def topk_ref(pre: np.ndarray, k: int) -> np.ndarray:
    f = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[:, :k]
    np.put_along_axis(f, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return f


# ------------------------------------------------------------------------------ session fixture

_FIXTURES: dict[str, Path] = {}


def reference_fixtures(factory) -> Path:
    """Run `converter_fixtures.py write` once per test session (shared by the test modules)."""
    if "root" not in _FIXTURES:
        from helpers import run_reference

        out = factory.mktemp("converter_reference") / "out"
        run_reference("converter_fixtures.py", "write", out)
        _FIXTURES["root"] = out
    return _FIXTURES["root"]
