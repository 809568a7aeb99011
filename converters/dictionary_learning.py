"""saprmarks/dictionary_learning (and SAEBench): `ae.pt` (torch state dict) + `config.json`.

`config.json` is `{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer",
"lm_name", "submodule_name", ...}, "buffer": {"ctx_len", ...}}`; without it the class is
inferred from the state-dict keys where that is unambiguous. Each class, in jsae terms
(`nn.Linear` weights are `[out, in]`, hence the transposes):

    AutoEncoder             standard, b_dec subtracted: W_enc = encoder.weightᵀ,
                            b_enc = encoder.bias, W_dec = decoder.weightᵀ, b_dec = bias; then
                            decoder rows normalised with the norms folded into the encoder, as
                            AutoEncoder.from_pretrained (and so load_dictionary) does
    AutoEncoderNew          standard, no b_dec subtraction: W_enc, b_enc as above,
                            W_dec = decoder.weightᵀ, b_dec = decoder.bias
    GatedAutoEncoder        gated: W_enc = encoder.weightᵀ, b_gate = gate_bias, r_mag,
                            b_mag = mag_bias, W_dec = decoder.weightᵀ, b_dec = decoder_bias
    JumpReluAutoEncoder     jumprelu, no b_dec subtraction: parameters as stored
    AutoEncoderTopK         topk (k): W_enc = encoder.weightᵀ, b_enc = encoder.bias,
                            W_dec = decoder.weightᵀ, b_dec
    BatchTopKSAE            jumprelu, the scalar `threshold` buffer for every latent
    MatryoshkaBatchTopKSAE  jumprelu, scalar threshold broadcast; W_* and b_* as stored

BatchTopK and Matryoshka SAEs encode with their learned threshold by default
(`use_threshold=True`), which is exactly a JumpReLU; TopK SAEs encode with per-token top-k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError, choices_hint

from .base import Hints, build_config, dtype_name, read_json, require
from .torch_pickle import load_state_dict

NAME = "dictionary_learning"
DESCRIPTION = "saprmarks/dictionary_learning, SAEBench: ae.pt + config.json"
DICT_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "ae.pt").is_file()
    return path.name == "ae.pt"


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [f"{p}/ae.pt", f"{p}/config.json"], []


def infer_dict_class(state: dict[str, Any]) -> str | None:
    """The dictionary class a state dict belongs to, when its keys say so unambiguously."""
    keys = set(state)
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if {"W_enc", "W_dec", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if {"bias", "encoder.weight", "decoder.weight"} <= keys:
        return "AutoEncoder"
    if {"encoder.weight", "decoder.weight", "decoder.bias"} <= keys:
        return "AutoEncoderNew"
    return None  # AutoEncoderTopK and BatchTopKSAE share their keys: config.json decides


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, np.float32)


def state_to_params(
    dict_class: str, state: dict[str, Any], source: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(jsae params, SAEConfig fields) for one dictionary class."""
    s = state
    if dict_class == "AutoEncoder":
        require(s, ("encoder.weight", "encoder.bias", "decoder.weight", "bias"), source, dict_class)
        W_dec = s["decoder.weight"].T  # [d_sae, d_in]
        norms = np.linalg.norm(_f32(W_dec), axis=1)
        if not np.allclose(norms, 1.0):  # as AutoEncoder.from_pretrained(normalize_decoder=True)
            W_dec = (W_dec / norms[:, None]).astype(W_dec.dtype)
            W_enc = (s["encoder.weight"].T * norms[None, :]).astype(W_dec.dtype)
            b_enc = (s["encoder.bias"] * norms).astype(W_dec.dtype)
        else:
            W_enc, b_enc = s["encoder.weight"].T, s["encoder.bias"]
        params = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": s["bias"]}
        return params, {"architecture": "standard", "apply_b_dec_to_input": True}
    if dict_class == "AutoEncoderNew":
        require(
            s,
            ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"),
            source,
            dict_class,
        )
        params = {
            "W_enc": s["encoder.weight"].T,
            "b_enc": s["encoder.bias"],
            "W_dec": s["decoder.weight"].T,
            "b_dec": s["decoder.bias"],
        }
        return params, {"architecture": "standard", "apply_b_dec_to_input": False}
    if dict_class == "GatedAutoEncoder":
        require(
            s,
            ("encoder.weight", "decoder.weight", "decoder_bias", "gate_bias", "mag_bias", "r_mag"),
            source,
            dict_class,
        )
        params = {
            "W_enc": s["encoder.weight"].T,
            "b_gate": s["gate_bias"],
            "r_mag": s["r_mag"],
            "b_mag": s["mag_bias"],
            "W_dec": s["decoder.weight"].T,
            "b_dec": s["decoder_bias"],
        }
        return params, {"architecture": "gated", "apply_b_dec_to_input": True}
    if dict_class == "JumpReluAutoEncoder":
        require(s, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), source, dict_class)
        params = {k: s[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        params["threshold"] = _f32(s["threshold"])
        return params, {"architecture": "jumprelu", "apply_b_dec_to_input": False}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        require(
            s, ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"), source, dict_class
        )
        params = {
            "W_enc": s["encoder.weight"].T,
            "b_enc": s["encoder.bias"],
            "W_dec": s["decoder.weight"].T,
            "b_dec": s["b_dec"],
        }
        if dict_class == "AutoEncoderTopK":
            require(s, ("k",), source, dict_class)
            return params, {
                "architecture": "topk",
                "k": int(np.asarray(s["k"])),
                "apply_b_dec_to_input": True,
            }
        return _with_scalar_threshold(params, s, source), {
            "architecture": "jumprelu",
            "apply_b_dec_to_input": True,
        }
    if dict_class == "MatryoshkaBatchTopKSAE":
        require(s, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), source, dict_class)
        params = {k: s[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return _with_scalar_threshold(params, s, source), {
            "architecture": "jumprelu",
            "apply_b_dec_to_input": True,
        }
    raise FormatError(
        f"{source}: dictionary class {dict_class!r} is not supported; supported: "
        f"{list(DICT_CLASSES)}." + choices_hint(dict_class, DICT_CLASSES)
    )


def _with_scalar_threshold(
    params: dict[str, Any], state: dict[str, Any], source: Any
) -> dict[str, Any]:
    threshold = _f32(state["threshold"])
    d_sae = np.shape(params["b_enc"])[0]
    if threshold.ndim == 0:
        threshold = np.full(d_sae, threshold, np.float32)
    params["threshold"] = threshold
    return params


def _hook(trainer: dict[str, Any]) -> str | None:
    layer = trainer.get("layer")
    if layer is None:
        return None
    sub = str(trainer.get("submodule_name") or "")
    if "mlp" in sub:
        return f"blocks.{layer}.hook_mlp_out"
    if "attn" in sub or "attention" in sub:
        return f"blocks.{layer}.hook_attn_out"
    return f"blocks.{layer}.hook_resid_post"


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    state = load_state_dict(folder / "ae.pt")
    if "ae" in state and isinstance(state["ae"], dict):  # training backup {"ae", "optimizer", ...}
        state = dict(state["ae"])
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    trainer = dict(config.get("trainer") or {})
    buffer = dict(config.get("buffer") or {})
    dict_class = trainer.get("dict_class") or infer_dict_class(state)
    if dict_class is None:
        raise FormatError(
            f"{folder}/ae.pt could be an AutoEncoderTopK or a BatchTopKSAE, and there is no "
            "config.json saying which; put the training config.json next to it."
        )
    params, fields = state_to_params(dict_class, state, folder / "ae.pt")
    d_in, d_sae = np.shape(params["W_enc"])
    if (
        trainer.get("k") is not None
        and fields["architecture"] == "topk"
        and int(trainer["k"]) != fields["k"]
    ):
        raise FormatError(
            f"{folder}: config.json says k={trainer['k']} but ae.pt stores k={fields['k']}."
        )
    cfg = build_config(
        NAME,
        hints,
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        metadata={
            "model_name": trainer.get("lm_name"),
            "hook_name": _hook(trainer),
            "context_size": buffer.get("ctx_len"),
            "prepend_bos": True,
            "dict_class": dict_class,
        },
        **fields,
    )
    return cfg, params
