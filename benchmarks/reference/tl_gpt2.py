"""A random GPT-2-small-shaped model, saved as Hugging Face PyTorch weights and loaded into
TransformerLens offline (shared by the reference sides of the activation benchmarks)."""

import json
from pathlib import Path

import torch
import transformers
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as loading


def random_gpt2(model_dir: Path) -> HookedTransformer:
    """Save a seeded random GPT-2 small to `model_dir` and return it as a HookedTransformer.

    TransformerLens's `from_pretrained` looks official names up online, so the lower-level
    loaders are used; transformers 5 no longer writes `n_ctx`, which they need.
    """
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))
    cfg = loading.get_pretrained_model_config(
        str(model_dir), device="cpu", fold_ln=False, dtype=torch.float32
    )
    cfg.tokenizer_name = None
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(
        loading.get_pretrained_state_dict(str(model_dir), cfg, hf_model=hf),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return tl.eval()
