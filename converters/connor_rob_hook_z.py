"""Kissane & Krzyzanowski's GPT-2 small attention SAEs (ckkissane/attn-saes-gpt2-small-all-layers).

Each SAE is `<name>.pt`, a torch state dict already in SAELens names and orientation
(`W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`), plus `<name>_cfg.json`
(`act_size`, `dict_size`, `act_name`). They read the concatenated head outputs `hook_z`
(d_in = n_heads * d_head), subtract b_dec before encoding, and use ReLU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, read_json, require
from .torch_pickle import load_state_dict

NAME = "connor_rob_hook_z"
DESCRIPTION = "GPT-2 attention hook_z SAEs: <name>.pt + <name>_cfg.json"


def cfg_path(path: Path) -> Path:
    return path.with_name(path.name.split(".pt")[0] + "_cfg.json")


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt" and cfg_path(path).is_file()


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [p, p.split(".pt")[0] + "_cfg.json"], []


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    raw = read_json(cfg_path(path))
    state = load_state_dict(path)
    require(state, ("W_enc", "b_enc", "W_dec", "b_dec"), path, "hook_z SAE")
    params = {k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    d_in, d_sae = np.shape(params["W_enc"])
    if raw.get("act_size", d_in) != d_in or raw.get("dict_size", d_sae) != d_sae:
        raise FormatError(f"{cfg_path(path)} does not match the weights' shape ({d_in}, {d_sae}).")
    cfg = build_config(
        NAME,
        hints,
        architecture="standard",
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=True,
        reshape_activations="hook_z",
        metadata={
            "model_name": "gpt2",
            "hook_name": raw.get("act_name"),
            "context_size": 128,
            "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext",
        },
    )
    return cfg, params
