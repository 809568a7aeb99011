"""Reference activations from PyTorch transformers and TransformerLens for jsae's model tests.

Runs in the reference environment (torch, transformers 5, transformer-lens):

    python torch_models.py write OUT [case ...]

For each case (a tiny random model of one architecture) it writes
  OUT/<case>/model/         save_pretrained: config.json + model.safetensors (what jsae loads)
  OUT/<case>/expected.npz   input_ids, mask (left-padded batch), logits, masked_logits, and per
                            TransformerLens hook name the activation read by PyTorch forward
                            hooks ("torch/<name>") and, where TransformerLens supports the
                            architecture, by TransformerLens ("tl/<name>", plus "tl/logits").
The references are computed in float64 on the saved float32 weights (XGLM excepted), so the
tests' float32 tolerances measure jsae alone, not this machine's torch kernels.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as T

VOCAB, N_CTX, BATCH, SEQ = 128, 32, 2, 12
PAD = 3  # left padding of the second row in the masked forward
# transformers' XGLM attention fills masks with float32's minimum, which overflows float64
FLOAT32_ONLY = {"xglm"}


def llama_like(**kw):
    base = dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=N_CTX,
        tie_word_embeddings=False,
    )
    return {**base, **kw}


CASES = {
    "gpt2": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=N_CTX)
    ),
    "gpt_neo": lambda: T.GPTNeoForCausalLM(
        T.GPTNeoConfig(
            num_layers=2,
            hidden_size=64,
            num_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=N_CTX,
            attention_types=[[["global", "local"], 1]],
            window_size=5,
        )
    ),
    "gptj": lambda: T.GPTJForCausalLM(
        T.GPTJConfig(
            n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=N_CTX, rotary_dim=8
        )
    ),
    "llama": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(**llama_like(rope_parameters={"rope_type": "default", "rope_theta": 500.0}))
    ),
    "llama3_rope": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            **llama_like(
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 50000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8,
                }
            )
        )
    ),
    "mistral": lambda: T.MistralForCausalLM(
        T.MistralConfig(
            **llama_like(rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
            sliding_window=None,
        )
    ),
    "llama_tied": lambda: T.LlamaForCausalLM(  # Llama 3.2 1B/3B: no lm_head.weight saved
        T.LlamaConfig(**llama_like(tie_word_embeddings=True))
    ),
    "mistral_window": lambda: T.MistralForCausalLM(
        T.MistralConfig(**llama_like(), sliding_window=5)  # < SEQ: the window matters
    ),
    "gemma": lambda: T.GemmaForCausalLM(
        T.GemmaConfig(**llama_like(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True))
    ),
    "opt": lambda: T.OPTForCausalLM(
        T.OPTConfig(
            num_hidden_layers=2,
            hidden_size=64,
            ffn_dim=128,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=N_CTX,
            word_embed_proj_dim=64,
        )
    ),
    "opt_postln": lambda: T.OPTForCausalLM(  # OPT-350m's layout: post-LN, projected embeddings
        T.OPTConfig(
            num_hidden_layers=2,
            hidden_size=64,
            ffn_dim=128,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=N_CTX,
            word_embed_proj_dim=32,
            do_layer_norm_before=False,
        )
    ),
    "bloom": lambda: T.BloomForCausalLM(
        T.BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=VOCAB)
    ),
    "xglm": lambda: T.XGLMForCausalLM(
        T.XGLMConfig(
            num_layers=2,
            d_model=64,
            attention_heads=4,
            ffn_dim=128,
            vocab_size=VOCAB,
            max_position_embeddings=N_CTX,
        )
    ),
    "gemma2": lambda: T.Gemma2ForCausalLM(
        T.Gemma2Config(
            **llama_like(
                head_dim=16,
                query_pre_attn_scalar=24,  # != head_dim: the scale must come from the config
                sliding_window=4,  # < SEQ: the local layer really is local
                attn_logit_softcapping=1.5,
                final_logit_softcapping=2.0,
                tie_word_embeddings=True,
                layer_types=["sliding_attention", "full_attention"],
            )
        )
    ),
    "gemma2_gelu": lambda: T.Gemma2ForCausalLM(  # "gelu" is the exact (erf) GELU
        T.Gemma2Config(**llama_like(head_dim=16, hidden_activation="gelu"))
    ),
}

# Per architecture: TransformerLens hook name (L = layer) -> (torch module, "in" | "out").
_LLAMA = {
    "blocks.L.attn.hook_z": ("model.layers.L.self_attn.o_proj", "in"),
    "blocks.L.hook_attn_out": ("model.layers.L.self_attn", "out"),
    "blocks.L.hook_resid_mid": ("model.layers.L.post_attention_layernorm", "in"),
    "blocks.L.hook_mlp_in": ("model.layers.L.post_attention_layernorm", "in"),
    "blocks.L.ln2.hook_normalized": ("model.layers.L.post_attention_layernorm", "out"),
    "blocks.L.mlp.hook_in": ("model.layers.L.mlp", "in"),
    "blocks.L.mlp.hook_post": ("model.layers.L.mlp.down_proj", "in"),
    "blocks.L.hook_mlp_out": ("model.layers.L.mlp", "out"),
    "blocks.L.hook_resid_pre": ("model.layers.L", "in"),
    "blocks.L.hook_resid_post": ("model.layers.L", "out"),
}
_GPT2 = {
    "hook_embed": ("transformer.wte", "out"),
    "hook_pos_embed": ("transformer.wpe", "out"),
    "blocks.L.attn.hook_z": ("transformer.h.L.attn.c_proj", "in"),
    "blocks.L.hook_attn_out": ("transformer.h.L.attn", "out"),
    "blocks.L.hook_resid_mid": ("transformer.h.L.ln_2", "in"),
    "blocks.L.hook_mlp_in": ("transformer.h.L.ln_2", "in"),
    "blocks.L.ln2.hook_normalized": ("transformer.h.L.ln_2", "out"),
    "blocks.L.mlp.hook_in": ("transformer.h.L.mlp", "in"),
    "blocks.L.mlp.hook_post": ("transformer.h.L.mlp.c_proj", "in"),
    "blocks.L.hook_mlp_out": ("transformer.h.L.mlp", "out"),
    "blocks.L.hook_resid_pre": ("transformer.h.L", "in"),
    "blocks.L.hook_resid_post": ("transformer.h.L", "out"),
}
_OPT = {
    "hook_pos_embed": ("model.decoder.embed_positions", "out"),
    "blocks.L.attn.hook_z": ("model.decoder.layers.L.self_attn.out_proj", "in"),
    "blocks.L.hook_attn_out": ("model.decoder.layers.L.self_attn", "out"),
    "blocks.L.mlp.hook_in": ("model.decoder.layers.L.fc1", "in"),
    "blocks.L.mlp.hook_post": ("model.decoder.layers.L.fc2", "in"),
    "blocks.L.hook_mlp_out": ("model.decoder.layers.L.fc2", "out"),
    "blocks.L.hook_resid_pre": ("model.decoder.layers.L", "in"),
    "blocks.L.hook_resid_post": ("model.decoder.layers.L", "out"),
}
TORCH_SITES = {
    "gpt2": _GPT2,
    "gpt_neo": {
        **_GPT2,
        "blocks.L.attn.hook_z": ("transformer.h.L.attn.attention.out_proj", "in"),
    },
    "gptj": {
        "hook_embed": ("transformer.wte", "out"),
        "blocks.L.attn.hook_z": ("transformer.h.L.attn.out_proj", "in"),
        "blocks.L.hook_attn_out": ("transformer.h.L.attn", "out"),
        "blocks.L.mlp.hook_in": ("transformer.h.L.mlp", "in"),
        "blocks.L.mlp.hook_post": ("transformer.h.L.mlp.fc_out", "in"),
        "blocks.L.hook_mlp_out": ("transformer.h.L.mlp", "out"),
        "blocks.L.hook_resid_pre": ("transformer.h.L", "in"),
        "blocks.L.hook_resid_post": ("transformer.h.L", "out"),
    },
    "llama": {**_LLAMA, "hook_embed": ("model.embed_tokens", "out")},
    "llama3_rope": {**_LLAMA, "hook_embed": ("model.embed_tokens", "out")},
    "mistral": {**_LLAMA, "hook_embed": ("model.embed_tokens", "out")},
    "llama_tied": {**_LLAMA, "hook_embed": ("model.embed_tokens", "out")},
    "mistral_window": {**_LLAMA, "hook_embed": ("model.embed_tokens", "out")},
    "gemma": {**_LLAMA, "hook_embed": ("model.layers.0", "in")},
    "opt": {
        **_OPT,
        "hook_embed": ("model.decoder.embed_tokens", "out"),
        "blocks.L.hook_resid_mid": ("model.decoder.layers.L.final_layer_norm", "in"),
        "blocks.L.hook_mlp_in": ("model.decoder.layers.L.final_layer_norm", "in"),
        "blocks.L.ln2.hook_normalized": ("model.decoder.layers.L.final_layer_norm", "out"),
    },
    "opt_postln": {**_OPT, "hook_embed": ("model.decoder.project_in", "out")},
    "bloom": {
        "hook_embed": ("transformer.word_embeddings_layernorm", "out"),
        "blocks.L.attn.hook_z": ("transformer.h.L.self_attention.dense", "in"),
        "blocks.L.hook_attn_out": ("transformer.h.L.self_attention.dense", "out"),
        "blocks.L.hook_resid_mid": ("transformer.h.L.post_attention_layernorm", "in"),
        "blocks.L.hook_mlp_in": ("transformer.h.L.post_attention_layernorm", "in"),
        "blocks.L.ln2.hook_normalized": ("transformer.h.L.post_attention_layernorm", "out"),
        "blocks.L.mlp.hook_in": ("transformer.h.L.mlp", "in"),
        "blocks.L.mlp.hook_post": ("transformer.h.L.mlp.dense_4h_to_h", "in"),
        "blocks.L.hook_mlp_out": ("transformer.h.L.mlp.dense_4h_to_h", "out"),
        "blocks.L.hook_resid_pre": ("transformer.h.L", "in"),
        "blocks.L.hook_resid_post": ("transformer.h.L", "out"),
    },
    "xglm": {
        "hook_embed": ("model.embed_tokens", "out"),
        "blocks.L.attn.hook_z": ("model.layers.L.self_attn.out_proj", "in"),
        "blocks.L.hook_attn_out": ("model.layers.L.self_attn", "out"),
        "blocks.L.hook_resid_mid": ("model.layers.L.final_layer_norm", "in"),
        "blocks.L.hook_mlp_in": ("model.layers.L.final_layer_norm", "in"),
        "blocks.L.ln2.hook_normalized": ("model.layers.L.final_layer_norm", "out"),
        "blocks.L.mlp.hook_in": ("model.layers.L.fc1", "in"),
        "blocks.L.mlp.hook_post": ("model.layers.L.fc2", "in"),
        "blocks.L.hook_mlp_out": ("model.layers.L.fc2", "out"),
        "blocks.L.hook_resid_pre": ("model.layers.L", "in"),
        "blocks.L.hook_resid_post": ("model.layers.L", "out"),
    },
    "gemma2": {
        "hook_embed": ("model.layers.0", "in"),
        "blocks.L.attn.hook_z": ("model.layers.L.self_attn.o_proj", "in"),
        "blocks.L.hook_attn_out": ("model.layers.L.post_attention_layernorm", "out"),
        "blocks.L.hook_resid_mid": ("model.layers.L.pre_feedforward_layernorm", "in"),
        "blocks.L.hook_mlp_in": ("model.layers.L.pre_feedforward_layernorm", "in"),
        "blocks.L.ln2.hook_normalized": ("model.layers.L.pre_feedforward_layernorm", "out"),
        "blocks.L.mlp.hook_in": ("model.layers.L.mlp", "in"),
        "blocks.L.mlp.hook_post": ("model.layers.L.mlp.down_proj", "in"),
        "blocks.L.hook_mlp_out": ("model.layers.L.post_feedforward_layernorm", "out"),
        "blocks.L.hook_resid_pre": ("model.layers.L", "in"),
        "blocks.L.hook_resid_post": ("model.layers.L", "out"),
    },
}
TORCH_SITES["gemma2_gelu"] = TORCH_SITES["gemma2"]
# Cases TransformerLens loads from a local directory (others: "gemma2" via a hand-made config).
TL_FROM_DIR = ("gpt2", "gpt_neo", "gptj", "llama", "mistral", "opt", "bloom")


def randomize(model: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (norm gains != 1, biases != 0), so mix-ups show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * 0.15)
            else:
                p.add_(noise * 0.1)


def torch_hooks(model, case: str, n_layers: int):
    """Forward hooks recording every mapped activation; returns (records, handles)."""
    records: dict[str, torch.Tensor] = {}
    handles = []
    modules = dict(model.named_modules())
    for pattern, (module_name, port) in TORCH_SITES[case].items():
        layers = range(n_layers) if ".L." in pattern or pattern.startswith("blocks.L") else [None]
        for layer in layers:
            name = pattern if layer is None else pattern.replace("L", str(layer), 1)
            target = module_name if layer is None else module_name.replace(".L", f".{layer}", 1)
            module = modules[target]
            if port == "in":

                def pre(mod, args, kwargs, name=name):
                    x = (
                        args[0]
                        if args
                        else kwargs.get("hidden_states", next(iter(kwargs.values())))
                    )
                    records[name] = x.detach().clone()

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod, args, out, name=name):
                    x = out[0] if isinstance(out, tuple) else out
                    records[name] = x.detach().clone()

                handles.append(module.register_forward_hook(post))
    return records, handles


def masked_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Logits of the left-padded batch; only the kept positions are meaningful.

    A padded query has every key masked. Some models (Bloom, Gemma 2) take the softmax in
    float32, where float64's mask minimum becomes -inf, so those rows turn NaN and would reach
    kept positions as 0 * NaN through the values. Kept positions never give a padded key any
    weight, so zeroing NaN in every module's output changes nothing they read.
    """

    def clean(mod, args, out):
        return torch.nan_to_num(out, nan=0.0) if isinstance(out, torch.Tensor) else out

    handles = [m.register_forward_hook(clean) for m in model.modules()]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    for h in handles:
        h.remove()
    kept = logits[mask.bool()]
    assert torch.isfinite(kept).all(), "masked forward: non-finite logits at kept positions"
    return logits.numpy()


def transformer_lens(case: str, model, model_dir: Path):
    """A HookedTransformer with the same weights, no weight processing; None if unsupported."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    if case in TL_FROM_DIR:
        # TransformerLens guesses the architecture from names containing "llama" or "gemma":
        # give it a neutral path to the same directory.
        neutral = model_dir.parent.parent / "_tl" / f"m{sorted(CASES).index(case)}"
        neutral.parent.mkdir(exist_ok=True)
        if not neutral.exists():
            neutral.symlink_to(model_dir.resolve(), target_is_directory=True)
        model_dir = neutral
        cfg = loading.get_pretrained_model_config(
            str(model_dir), device="cpu", fold_ln=False, dtype=model.dtype
        )
    elif case == "gemma2":
        c = model.config
        cfg = HookedTransformerConfig(
            d_model=c.hidden_size,
            d_head=c.head_dim,
            n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=c.max_position_embeddings,
            eps=c.rms_norm_eps,
            d_vocab=c.vocab_size,
            act_fn="gelu_pytorch_tanh",
            normalization_type="RMS",
            rotary_base=10000.0,
            rotary_dim=c.head_dim,
            positional_embedding_type="rotary",
            use_attn_scale=True,
            attn_scale=math.sqrt(c.query_pre_attn_scalar),
            n_key_value_heads=c.num_key_value_heads,
            window_size=c.sliding_window,
            use_local_attn=True,
            attn_types=["local", "global"],
            attn_scores_soft_cap=c.attn_logit_softcapping,
            output_logits_soft_cap=c.final_logit_softcapping,
            gated_mlp=True,
            final_rms=True,
            use_normalization_before_and_after=True,
            original_architecture="Gemma2ForCausalLM",
            dtype=model.dtype,
            device="cpu",
        )
    else:
        return None
    cfg.tokenizer_name = None
    state = loading.get_pretrained_state_dict(str(model_dir), cfg, hf_model=model)
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return tl.eval()


def tl_interventions(tl, n_layers: int) -> list:
    """The edits tests/test_models.py makes with jsae's run_with_hooks, in TransformerLens."""

    def zero_head_1(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [
        ("hook_embed", lambda x, hook: x + 0.1),
        ("blocks.0.attn.hook_z", zero_head_1),
        ("blocks.0.hook_mlp_out", lambda x, hook: x * 2.0),
    ]
    last_mid = f"blocks.{n_layers - 1}.hook_resid_mid"
    if last_mid in tl.hook_dict:
        hooks.append((last_mid, lambda x, hook: x * 0.5))
    return hooks


def write_case(case: str, out: Path) -> None:
    torch.manual_seed(0)
    model = CASES[case]().eval()
    randomize(model)
    model_dir = out / case / "model"
    model.save_pretrained(model_dir)
    if case == "gpt2":  # TransformerLens reads n_ctx, which transformers 5 no longer writes
        cfg_path = model_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps({**cfg, "n_ctx": cfg["n_positions"]}, indent=2))
    # The saved weights are float32; the references are computed in float64 on those same
    # values, so they do not carry the float32 rounding of whichever CPU kernels torch picks on
    # the machine (that rounding once put TransformerLens and transformers 1e-4 apart on GPT-2).
    # A few float32 steps remain inside the libraries (rotary tables, GPT-Neo's attention).
    if case not in FLOAT32_ONLY:
        model = model.double()

    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(0, VOCAB, (BATCH, SEQ)))
    mask = torch.ones_like(ids)
    mask[1, :PAD] = 0
    n_layers = model.config.num_hidden_layers
    expected: dict[str, np.ndarray] = {"input_ids": ids.numpy(), "mask": mask.numpy()}

    records, handles = torch_hooks(model, case, n_layers)
    with torch.no_grad():
        result = model(ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    expected["logits"] = result.logits.numpy()
    for i, hidden in enumerate(result.hidden_states[:n_layers]):
        expected[f"hidden/{i}"] = hidden.numpy()  # hidden_states[L] = input of block L
    for name, value in records.items():
        # positional embeddings come without a batch axis; OPT flattens tokens in its layers
        value = value.expand(BATCH, SEQ, -1) if value.shape[0] == 1 else value
        value = value.reshape(BATCH, SEQ, -1)
        if name.endswith("hook_z"):
            value = value.reshape(BATCH, SEQ, model.config.num_attention_heads, -1)
        expected[f"torch/{name}"] = value.numpy()
    expected["masked_logits"] = masked_logits(model, ids, mask)

    tl = transformer_lens(case, model, model_dir)
    if tl is not None:
        with torch.no_grad():
            tl_logits, cache = tl.run_with_cache(ids)
        gap = (tl_logits - result.logits).abs().max().item()
        assert gap < 1e-4, f"{case}: TransformerLens and transformers disagree on logits ({gap})"
        expected["tl/logits"] = tl_logits.numpy()
        for name in cache:
            if name.split(".")[-1] in {"hook_embed", "hook_pos_embed"} or any(
                name.endswith(s)
                for s in (
                    "hook_resid_pre",
                    "hook_resid_mid",
                    "hook_resid_post",
                    "hook_attn_out",
                    "hook_mlp_out",
                    "attn.hook_z",
                    "mlp.hook_post",
                )
            ):
                expected[f"tl/{name}"] = cache[name].numpy()
        with torch.no_grad():
            hooked = tl.run_with_hooks(ids, fwd_hooks=tl_interventions(tl, n_layers))
        expected["tl_hooked/logits"] = hooked.numpy()
    np.savez(out / case / "expected.npz", **expected)
    print(case, "ok", "with TransformerLens" if tl is not None else "")


def main() -> None:
    command, out, *cases = sys.argv[1:]
    assert command == "write", command
    for case in cases or CASES:
        write_case(case, Path(out))


if __name__ == "__main__":
    main()
