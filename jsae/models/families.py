"""Per-family tables: which Flax class runs a model and where its TransformerLens hooks live.

One `Family` per architecture. Module paths are relative to a decoder block unless noted; each
hook is a module's first output or (for `attn.hook_z`, `mlp.hook_post`) first input. Adding a
family is adding one entry here and one parity case in tests/reference/torch_models.py.

Semantics (TransformerLens's): `hook_resid_pre` = the block's input; `hook_attn_out` and
`hook_mlp_out` = what the sublayer adds to the residual stream (after Gemma 2's post-norms);
`hook_resid_mid` = `resid_pre + attn_out`; `hook_resid_post` = the block's output (not the
final-norm'd last hidden state); `attn.hook_z` = the input of the attention output projection,
`[..., n_heads, d_head]`; `mlp.hook_post` = the input of the MLP's output projection.
`mlp.hook_in` = what the MLP reads (the pre-MLP norm's output); in a block with a
`hook_resid_mid` the same value is also `ln2.hook_normalized`, and `hook_mlp_in` is the
residual the norm reads (= `hook_resid_mid`). These are the input hooks of transcoders. Unlike
TransformerLens's RMSNorm, whose `hook_normalized` comes before the norm's gain, jsae's is the
norm's whole output, the value the MLP (and Gemma Scope's transcoders) read.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsae.errors import ConfigError
from jsae.models.hooks import ModulePath, Site


@dataclass(frozen=True)
class Family:
    """How jsae runs and hooks one model architecture."""

    name: str
    model_types: tuple[str, ...]  # Hugging Face `config.model_type` values
    flax_class: str | None  # transformers Flax class; None: jsae's own module
    prefix: str  # base-model prefix of the parameter tree
    blocks: ModulePath  # absolute path of the block list; block L is blocks + (str(L),)
    attn_out: ModulePath  # output = hook_attn_out
    z: ModulePath  # input = attn.hook_z
    mlp_out: ModulePath  # output = hook_mlp_out
    mlp_post: ModulePath  # input = mlp.hook_post
    mlp_in: ModulePath = ("mlp",)  # input = mlp.hook_in (the pre-MLP norm's output)
    resid_mid: str | ModulePath | None = "sum"  # "sum": resid_pre + attn_out; a path: its output
    embed: ModulePath | None = None  # absolute; None: hook_embed is block 0's input
    embed_scale: Callable[[Any], float | None] = lambda config: None
    pos_embed: ModulePath | None = None  # absolute
    flat_mlp: bool = False  # MLP sees tokens flattened to [B*T, d]
    positions: str = "arange"  # "arange" | "cumsum" (OPT) | "none" (ALiBi)
    rope: bool = False  # rotary embedding recomputed from config (see jsae.models.rope)
    specialize: Callable[[Family, Any], Family] | None = None  # config-dependent changes
    check: Callable[[Any], None] | None = None  # refuse configs the Flax class gets wrong
    module_config: Callable[[Any], Any] | None = None  # config as the Flax class must see it

    def for_config(self, config: Any) -> Family:
        if self.check is not None:
            self.check(config)
        return self.specialize(self, config) if self.specialize else self


def hook_sites(family: Family, config: Any) -> dict[str, Site]:
    """TransformerLens hook name -> Site, in forward order."""
    n_heads = config.num_attention_heads
    sites: dict[str, Site] = {}

    def block(layer: int) -> ModulePath:
        return (*family.blocks, str(layer))

    if family.embed is not None:
        sites["hook_embed"] = Site(family.embed, scale=family.embed_scale(config))
    else:
        sites["hook_embed"] = Site(block(0), "in")
    if family.pos_embed is not None:
        sites["hook_pos_embed"] = Site(family.pos_embed)
    for layer in range(config.num_hidden_layers):
        b = block(layer)
        resid_pre = Site(b, "in")
        sites[f"blocks.{layer}.hook_resid_pre"] = resid_pre
        sites[f"blocks.{layer}.attn.hook_z"] = Site((*b, *family.z), "in", heads=n_heads)
        sites[f"blocks.{layer}.hook_attn_out"] = Site((*b, *family.attn_out))
        if family.resid_mid == "sum":
            sites[f"blocks.{layer}.hook_resid_mid"] = Site((*b, *family.attn_out), plus=resid_pre)
        elif family.resid_mid is not None:
            sites[f"blocks.{layer}.hook_resid_mid"] = Site((*b, *family.resid_mid))
        flat = family.flat_mlp
        mlp_in = Site((*b, *family.mlp_in), "in", flat=flat)
        if family.resid_mid is not None:  # a pre-MLP norm reads resid_mid
            sites[f"blocks.{layer}.hook_mlp_in"] = sites[f"blocks.{layer}.hook_resid_mid"]
            sites[f"blocks.{layer}.ln2.hook_normalized"] = mlp_in
        sites[f"blocks.{layer}.mlp.hook_in"] = mlp_in
        sites[f"blocks.{layer}.mlp.hook_post"] = Site((*b, *family.mlp_post), "in", flat=flat)
        sites[f"blocks.{layer}.hook_mlp_out"] = Site((*b, *family.mlp_out), flat=flat)
        sites[f"blocks.{layer}.hook_resid_post"] = Site(b)
    return sites


# --------------------------------------------------------------------------- checks


def _check_head_dim(config: Any) -> None:
    declared = getattr(config, "head_dim", None)
    implied = config.hidden_size // config.num_attention_heads
    if declared is not None and declared != implied:
        raise ConfigError(
            f"head_dim={declared} differs from hidden_size / num_attention_heads = {implied}; "
            f"transformers' Flax {config.model_type} assumes they are equal, so this model "
            "cannot run correctly through it."
        )


def _check_llama(config: Any) -> None:
    _check_head_dim(config)
    if getattr(config, "mlp_bias", False):
        raise ConfigError("mlp_bias=True is not supported by transformers' Flax Llama.")


def _check_gpt2(config: Any) -> None:
    """transformers' Flax GPT-2 always scales attention scores by 1/sqrt(d_head); PyTorch's also
    reads these two flags (the Stanford CRFM GPT-2s set the first), so refuse rather than run
    another model than the checkpoint's."""
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) or not getattr(
        config, "scale_attn_weights", True
    ):
        raise ConfigError(
            "this GPT-2 config sets scale_attn_by_inverse_layer_idx=True or "
            "scale_attn_weights=False; transformers' Flax GPT-2, which jsae runs, ignores both "
            "and would compute different attention, so the model is refused."
        )


def _opt(family: Family, config: Any) -> Family:
    embed = "project_in" if config.word_embed_proj_dim != config.hidden_size else "embed_tokens"
    return dataclasses.replace(
        family,
        embed=("model", "decoder", embed),
        resid_mid="sum" if config.do_layer_norm_before else None,
    )


def _bloom(family: Family, config: Any) -> Family:
    if config.apply_residual_connection_post_layernorm:
        return dataclasses.replace(family, resid_mid=None)
    return family


def _mistral_module_config(config: Any) -> Any:
    """transformers' Flax Mistral lets a token see `sliding_window + 1` positions (PyTorch:
    `sliding_window`) and, with no window, only itself: hand it the window that gives
    PyTorch's mask."""
    flax_config = copy.deepcopy(config)
    window = config.sliding_window
    flax_config.sliding_window = window - 1 if window else config.max_position_embeddings
    return flax_config


def _xglm_scale(config: Any) -> float | None:
    return config.d_model**0.5 if config.scale_embedding else None


def _llama_like(name: str, model_type: str, flax_class: str, **kw: Any) -> Family:
    return Family(
        name=name,
        model_types=(model_type,),
        flax_class=flax_class,
        prefix="model",
        blocks=("model", "layers"),
        attn_out=("self_attn",),
        z=("self_attn", "o_proj"),
        mlp_out=("mlp",),
        mlp_post=("mlp", "down_proj"),
        rope=True,
        **kw,
    )


FAMILIES: tuple[Family, ...] = (
    Family(
        name="gpt2",
        model_types=("gpt2",),
        flax_class="FlaxGPT2LMHeadModel",
        prefix="transformer",
        blocks=("transformer", "h"),
        attn_out=("attn",),
        z=("attn", "c_proj"),
        mlp_out=("mlp",),
        mlp_post=("mlp", "c_proj"),
        embed=("transformer", "wte"),
        pos_embed=("transformer", "wpe"),
        check=_check_gpt2,
    ),
    Family(
        name="gpt_neo",
        model_types=("gpt_neo",),
        flax_class="FlaxGPTNeoForCausalLM",
        prefix="transformer",
        blocks=("transformer", "h"),
        attn_out=("attn",),
        z=("attn", "attention", "out_proj"),
        mlp_out=("mlp",),
        mlp_post=("mlp", "c_proj"),
        embed=("transformer", "wte"),
        pos_embed=("transformer", "wpe"),
    ),
    Family(
        name="gptj",
        model_types=("gptj",),
        flax_class="FlaxGPTJForCausalLM",
        prefix="transformer",
        blocks=("transformer", "h"),
        attn_out=("attn",),
        z=("attn", "out_proj"),
        mlp_out=("mlp",),
        mlp_post=("mlp", "fc_out"),
        resid_mid=None,  # attention and MLP run in parallel: there is no resid_mid
        embed=("transformer", "wte"),
    ),
    _llama_like(
        "llama",
        "llama",
        "FlaxLlamaForCausalLM",
        embed=("model", "embed_tokens"),
        check=_check_llama,
    ),
    _llama_like(
        "mistral",
        "mistral",
        "FlaxMistralForCausalLM",
        embed=("model", "embed_tokens"),
        check=_check_head_dim,
        module_config=_mistral_module_config,
    ),
    # Gemma scales embeddings by sqrt(d_model) after the embedding module: hook_embed is the
    # scaled embedding, i.e. block 0's input, as in TransformerLens.
    _llama_like("gemma", "gemma", "FlaxGemmaForCausalLM"),
    Family(
        name="opt",
        model_types=("opt",),
        flax_class="FlaxOPTForCausalLM",
        prefix="model",
        blocks=("model", "decoder", "layers"),
        attn_out=("self_attn",),
        z=("self_attn", "out_proj"),
        mlp_out=("fc2",),
        mlp_post=("fc2",),
        mlp_in=("fc1",),
        pos_embed=("model", "decoder", "embed_positions"),
        flat_mlp=True,
        positions="cumsum",
        specialize=_opt,
    ),
    Family(
        name="bloom",
        model_types=("bloom",),
        flax_class="FlaxBloomForCausalLM",
        prefix="transformer",
        blocks=("transformer", "h"),
        attn_out=("self_attention", "dense"),
        z=("self_attention", "dense"),
        mlp_out=("mlp", "dense_4h_to_h"),
        mlp_post=("mlp", "dense_4h_to_h"),
        # Bloom's attention module adds the residual itself: its output is resid_mid.
        resid_mid=("self_attention",),
        embed=("transformer", "word_embeddings_layernorm"),
        positions="none",
        specialize=_bloom,
    ),
    Family(
        name="xglm",
        model_types=("xglm",),
        flax_class="FlaxXGLMForCausalLM",
        prefix="model",
        blocks=("model", "layers"),
        attn_out=("self_attn",),
        z=("self_attn", "out_proj"),
        mlp_out=("fc2",),
        mlp_post=("fc2",),
        mlp_in=("fc1",),
        embed=("model", "embed_tokens"),
        embed_scale=_xglm_scale,
    ),
    Family(
        name="gemma2",
        model_types=("gemma2",),
        flax_class=None,
        prefix="model",
        blocks=("model", "layers"),
        attn_out=("post_attention_layernorm",),
        z=("self_attn", "o_proj"),
        mlp_out=("post_feedforward_layernorm",),
        mlp_post=("mlp", "down_proj"),
    ),
)

_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(config: Any) -> Family:
    """The family of a Hugging Face config, specialised to it; ConfigError if unsupported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        raise ConfigError(
            f"model_type {model_type!r} is not supported: jsae runs "
            f"{', '.join(supported_model_types())} (transformers' Flax causal LMs, plus its "
            "own Gemma 2)."
        )
    return _BY_MODEL_TYPE[model_type].for_config(config)


def flax_module(family: Family, config: Any, dtype: Any) -> Any:
    """The (unbound) linen module that computes `(logits, ...)` for this family."""
    if family.flax_class is None:
        from jsae.models.gemma2 import Gemma2ForCausalLMModule

        return Gemma2ForCausalLMModule(config=config, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")
        import transformers

        model_class = getattr(transformers, family.flax_class)
    if family.module_config is not None:
        config = family.module_config(config)
    return model_class.module_class(config=config, dtype=dtype)
