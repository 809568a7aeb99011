"""Runs in the reference environment (torch, sparsify, dictionary_learning, sae-lens).

    python converter_fixtures.py write OUT     real checkpoints + the original libraries' outputs
    python converter_fixtures.py check DIR     SAELens loads jsae-converted folders, records outputs
    python converter_fixtures.py from_pretrained DIR   SAELens's from_pretrained on DIR/cache

`write` makes, under OUT:
  torch/        files written by torch.save (zip and legacy formats) covering every tensor dtype,
                views, shared storages and non-tensor entries, plus expected.npz; module.pt, a
                pickled nn.Module (must be refused)
  sparsify/     a sparsify run folder (SparseCoder.save_to_disk) for fp32 and bf16, with inputs and
                sparsify's own encode/decode outputs (io.safetensors)
  dictionary_learning/<DictClass>/   ae.pt + config.json for every dictionary class, with
                the outputs of dictionary_learning's own load_dictionary() model
  pt_layouts/   .pt files in the published layouts of OpenAI, Goodfire, Qwen Scope, the
                qresearch DeepSeek SAE and Kissane's hook_z SAEs (torch.save), each with a
                params.npz of the same tensors for the closed-form references
  saelens_registry.json   SAELens's own view of pretrained_saes.yaml (get_pretrained_saes_directory)

`check` reads DIR/<case>/sae (written by `jsae convert`) and DIR/<case>/inputs.safetensors and
writes DIR/<case>/saelens_outputs.safetensors and saelens_class.txt.
"""

import collections
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
torch.manual_seed(0)

D_IN, D_SAE, BATCH = 16, 64, 21


def inputs(shape=(BATCH, D_IN)):
    return torch.randn(*shape) * 1.5 + 0.3


# ----------------------------------------------------------------------------- torch files


def write_torch(out: Path):
    out.mkdir(parents=True)
    base = torch.randn(6, 9)
    shared = torch.randn(40)
    sd = collections.OrderedDict(
        f32=base,
        transposed=base.T,  # non-contiguous view of the same storage
        block=base[1:4, 2:7],  # offset + strides
        strided=shared[3:30:4],  # step slicing
        window=shared[10:20].view(2, 5),  # another view of the shared storage
        f64=torch.randn(3, 2, dtype=torch.float64),
        f16=torch.randn(5).half(),
        bf16=torch.randn(4, 3).bfloat16(),
        bf16_t=torch.randn(3, 4).bfloat16().T,
        i64=torch.arange(-4, 8).reshape(3, 4),
        i32=torch.tensor(32, dtype=torch.int),
        i8=torch.tensor([-3, 7], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.25),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(2, 2)),
    )
    obj = {
        "state": sd,
        "activation": "TopK",
        "activation_state_dict": {"k": 32, "postact_fn": "ReLU"},
        "misc": [1, 2.5, None, (3, "x"), {"nested": torch.ones(2)}],
        "blob": b"\x00\x01bytes",
        "flags": {True, False},
    }
    torch.save(obj, out / "zip.pt")
    torch.save(obj, out / "legacy.pt", _use_new_zipfile_serialization=False)
    expected = {}
    for k, v in sd.items():
        v = v.detach()
        expected[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        expected[k + ".dtype"] = np.array(str(v.dtype).removeprefix("torch."))
    expected["nested"] = np.ones(2, np.float32)
    np.savez(out / "expected.npz", **expected)
    torch.save(torch.nn.Linear(3, 4), out / "module.pt")  # a whole module: must be refused


# ----------------------------------------------------------------------------- sparsify


def write_sparsify(out: Path):
    from sparsify import SparseCoder, SparseCoderConfig

    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        run = out / name / "run"
        run.mkdir(parents=True)
        (run / "config.json").write_text(
            json.dumps(
                {
                    "model": "EleutherAI/pythia-70m",
                    "dataset": "togethercomputer/RedPajama-Data-1T-Sample",
                    "ctx_len": 256,
                }
            )
        )
        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=5), dtype=dtype)
        with torch.no_grad():
            sae.encoder.weight.copy_(torch.randn(D_SAE, D_IN) * 0.4)
            sae.encoder.bias.copy_(torch.randn(D_SAE) * 0.2)
            sae.W_dec.copy_(torch.randn(D_SAE, D_IN) * 0.3)  # deliberately not unit norm
            sae.b_dec.copy_(torch.randn(D_IN) * 0.5)
        sae.save_to_disk(run / "layers.3")
        loaded = SparseCoder.load_from_disk(run / "layers.3")
        x = inputs().to(dtype)
        with torch.no_grad():
            top_acts, top_idx, _ = loaded.encode(x)
            dense = torch.zeros(BATCH, D_SAE, dtype=top_acts.dtype).scatter_(-1, top_idx, top_acts)
            recon = loaded.decode(top_acts, top_idx)
            fwd = loaded(x).sae_out
        save_file(
            {
                "x": x.float(),
                "feature_acts": dense.float(),
                "recon": recon.float(),
                "forward": fwd.float(),
            },
            out / name / "io.safetensors",
        )


# ----------------------------------------------------------------------------- dictionary_learning


def write_dictionary_learning(out: Path):
    from dictionary_learning.dictionary import (
        AutoEncoder,
        AutoEncoderNew,
        GatedAutoEncoder,
        JumpReluAutoEncoder,
    )
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK
    from dictionary_learning.utils import load_dictionary

    models = {
        "AutoEncoder": AutoEncoder(D_IN, D_SAE),
        "AutoEncoderNew": AutoEncoderNew(D_IN, D_SAE),
        "GatedAutoEncoder": GatedAutoEncoder(D_IN, D_SAE),
        "JumpReluAutoEncoder": JumpReluAutoEncoder(D_IN, D_SAE),
        "AutoEncoderTopK": AutoEncoderTopK(D_IN, D_SAE, k=6),
        "BatchTopKSAE": BatchTopKSAE(D_IN, D_SAE, k=6),
        "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE(
            D_IN, D_SAE, k=6, group_sizes=[16, 16, 32]
        ),
    }
    x = inputs()
    for name, ae in models.items():
        with torch.no_grad():
            for p in ae.parameters():
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 2 else 0.2))
            if hasattr(ae, "threshold"):
                if ae.threshold.ndim == 0:
                    ae.threshold.fill_(0.35)
                else:
                    ae.threshold.copy_(torch.rand_like(ae.threshold) * 0.5)
        folder = out / name
        folder.mkdir(parents=True)
        torch.save(ae.state_dict(), folder / "ae.pt")
        trainer = {
            "dict_class": name,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_3",
        }
        if hasattr(ae, "k"):
            trainer["k"] = int(ae.k)
        (folder / "config.json").write_text(
            json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}})
        )
        loaded, _ = load_dictionary(str(folder), "cpu")
        with torch.no_grad():
            f = loaded.encode(x)
            tensors = {"x": x, "feature_acts": f, "recon": loaded.decode(f), "forward": loaded(x)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "io.safetensors")


# ----------------------------------------------------------------------------- other .pt layouts


def _save_pt(folder: Path, filename: str, state: dict):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / filename)
    arrays = {
        k: v.detach().float().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    np.savez(folder / (filename + ".params.npz"), **arrays)


def write_pt_layouts(out: Path):
    r = lambda *shape, s=0.3: torch.randn(*shape) * s  # noqa: E731
    # OpenAI sparse_autoencoder state dicts (TopK with LayerNorm'd inputs, and ReLU)
    for location, activation in (("resid_post_mlp_v5_32k", "TopK"), ("resid_delta_mlp_v4", "ReLU")):
        state = collections.OrderedDict(
            pre_bias=r(D_IN),
            latent_bias=r(D_SAE, s=0.2),
            stats_last_nonzero=torch.randint(0, 100, (D_SAE,), dtype=torch.int64),
            latents_activation_frequency=torch.rand(D_SAE),
            latents_mean_square=torch.rand(D_SAE),
        )
        state["encoder.weight"] = r(D_SAE, D_IN)
        state["decoder.weight"] = r(D_IN, D_SAE).T.contiguous().T  # a transposed view, as saved
        state["activation"] = activation
        if activation == "TopK":
            state["activation_state_dict"] = {"k": 7, "postact_fn": "ReLU"}
        _save_pt(out / "openai" / "gpt2-small" / location / "autoencoders", "5.pt", state)
    # Goodfire
    _save_pt(
        out / "goodfire",
        "Llama-3.1-8B-Instruct-SAE-l19.pth",
        {
            "encoder_linear.weight": r(D_SAE, D_IN),
            "encoder_linear.bias": r(D_SAE, s=0.2),
            "decoder_linear.weight": r(D_IN, D_SAE),
            "decoder_linear.bias": r(D_IN),
        },
    )
    # Qwen Scope (W_enc [d_sae, d_in], W_dec [d_in, d_sae])
    _save_pt(
        out / "qwen_scope",
        "layer3.sae.pt",
        {
            "W_enc": r(D_SAE, D_IN),
            "W_dec": r(D_IN, D_SAE),
            "b_enc": r(D_SAE, s=0.2),
            "b_dec": r(D_IN),
        },
    )
    # qresearch DeepSeek-R1 SAE: nn.Linear encoder / decoder
    _save_pt(
        out / "linear_pt",
        "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt",
        {
            "encoder.weight": r(D_SAE, D_IN),
            "encoder.bias": r(D_SAE, s=0.2),
            "decoder.weight": r(D_IN, D_SAE),
            "decoder.bias": r(D_IN),
        },
    )
    # Kissane hook_z SAEs: SAELens names + <name>_cfg.json
    name = "gpt2-small_L3_Hcat_z_lr1.20e-03_l11.80e+00_ds64_bs4096_v9.pt"
    _save_pt(
        out / "hook_z",
        name,
        {
            "W_enc": r(D_IN, D_SAE),
            "b_enc": r(D_SAE, s=0.2),
            "W_dec": r(D_SAE, D_IN),
            "b_dec": r(D_IN),
        },
    )
    (out / "hook_z" / name.replace(".pt", "_cfg.json")).write_text(
        json.dumps({"act_size": D_IN, "dict_size": D_SAE, "act_name": "blocks.3.attn.hook_z"})
    )


def write_registry(out: Path):
    import sae_lens
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = {
        name: {
            "repo_id": r.repo_id,
            "model": r.model,
            "conversion_func": r.conversion_func,
            "saes_map": r.saes_map,
            "neuronpedia_id": r.neuronpedia_id,
            "norm_scaling_factor": r.norm_scaling_factor,
            "config_overrides": r.config_overrides,
        }
        for name, r in get_pretrained_saes_directory().items()
    }
    yaml_path = Path(sae_lens.__file__).parent / "pretrained_saes.yaml"
    out.write_text(
        json.dumps(
            {"version": sae_lens.__version__, "yaml": str(yaml_path), "directory": directory}
        )
    )


def write(out: Path):
    write_torch(out / "torch")
    write_sparsify(out / "sparsify")
    write_dictionary_learning(out / "dictionary_learning")
    write_pt_layouts(out / "pt_layouts")
    write_registry(out / "saelens_registry.json")


def check(root: Path):
    from sae_lens import SAE

    for case in sorted(p for p in root.iterdir() if (p / "sae").is_dir()):
        sae = SAE.load_from_disk(case / "sae")
        x = load_file(case / "inputs.safetensors")["x"]
        with torch.no_grad():
            f = sae.encode(x)
            out = {"feature_acts": f, "recon": sae.decode(f), "forward": sae(x)}
        save_file({k: v.contiguous() for k, v in out.items()}, case / "saelens_outputs.safetensors")
        (case / "saelens_class.txt").write_text(type(sae).__name__)


def from_pretrained(root: Path):
    """SAELens's from_pretrained on ROOT/cache (a Hugging Face cache, offline) for each
    {"name", "release", "sae_id"} in ROOT/requests.json; writes ROOT/<name>.safetensors
    (encode and forward of ROOT/inputs.safetensors) and ROOT/<name>.json (its config mode and
    the warnings it gave)."""
    import os

    cache = str(root / "cache")
    os.environ["HF_HUB_CACHE"] = cache
    from huggingface_hub import constants
    from sae_lens import SAE

    if cache != constants.HF_HUB_CACHE:
        raise RuntimeError("huggingface_hub was imported before HF_HUB_CACHE was set")
    x = load_file(root / "inputs.safetensors")["x"]
    for req in json.loads((root / "requests.json").read_text()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sae = SAE.from_pretrained(req["release"], req["sae_id"])
        with torch.no_grad():
            out = {"feature_acts": sae.encode(x), "forward": sae(x)}
        save_file({k: v.contiguous() for k, v in out.items()}, root / f"{req['name']}.safetensors")
        (root / f"{req['name']}.json").write_text(
            json.dumps(
                {
                    "normalize_activations": sae.cfg.normalize_activations,
                    "warnings": [str(w.message) for w in caught],
                }
            )
        )


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    {"write": write, "check": check, "from_pretrained": from_pretrained}[command](path)
