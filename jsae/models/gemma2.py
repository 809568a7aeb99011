"""Gemma 2 in Flax: the model Gemma Scope's SAEs were trained on, which transformers never ported.

Loads Hugging Face Gemma 2 weights (`model.safetensors` + `config.json`) unchanged: module
and parameter names mirror `transformers.Gemma2ForCausalLM` (`model/layers/3/self_attn/q_proj/
kernel`, ...), so the generic PyTorch-to-Flax name mapping in `jsae.models.weights` applies.
Verified against PyTorch transformers in tests/test_gemma2.py.

What makes Gemma 2 differ from Llama, all implemented here:
  * embeddings scaled by sqrt(hidden_size); RMSNorm with `(1 + weight)`, computed in float32;
  * a norm after each sublayer as well as before (`post_attention_layernorm`,
    `pre_feedforward_layernorm`, `post_feedforward_layernorm`);
  * alternating sliding-window (local) and global attention layers (`config.layer_types`);
  * attention scores scaled by `query_pre_attn_scalar ** -0.5` and soft-capped with
    `tanh(s / cap) * cap`; final logits soft-capped the same way;
  * grouped-query attention and a GeGLU MLP (tanh-approximate GELU).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jsae.models.rope import apply_rotary, inverse_frequencies, rope_settings

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is exact (erf)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def layer_types(config: Any) -> list[str]:
    """ "sliding_attention" or "full_attention" per layer (even layers slide by default)."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    return [
        "sliding_attention" if (i + 1) % 2 else "full_attention"
        for i in range(config.num_hidden_layers)
    ]


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """`cap * tanh(x / cap)`: squashes x smoothly into (-cap, cap)."""
    if not cap:
        return x
    return jnp.tanh(x / cap) * cap


class Gemma2RMSNorm(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.zeros, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(
            jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps
        )
        return (normed * (1.0 + weight.astype(jnp.float32))).astype(self.dtype)


class Gemma2Attention(nn.Module):
    config: Any
    sliding: bool
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        dense = lambda n: nn.Dense(n, use_bias=c.attention_bias, dtype=self.dtype)  # noqa: E731
        self.n_heads, self.n_kv, self.d_head = (
            c.num_attention_heads,
            c.num_key_value_heads,
            head_dim(c),
        )
        self.q_proj = dense(self.n_heads * self.d_head)
        self.k_proj = dense(self.n_kv * self.d_head)
        self.v_proj = dense(self.n_kv * self.d_head)
        self.o_proj = dense(c.hidden_size)
        theta, scaling = rope_settings(c)
        self.inv_freq = inverse_frequencies(self.d_head, theta, scaling)

    def __call__(
        self, x: jax.Array, attention_mask: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        c = self.config
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.d_head)
        k = self.k_proj(x).reshape(B, T, self.n_kv, self.d_head)
        v = self.v_proj(x).reshape(B, T, self.n_kv, self.d_head)
        q = apply_rotary(q, position_ids, self.inv_freq)
        k = apply_rotary(k, position_ids, self.inv_freq)
        groups = self.n_heads // self.n_kv
        k = jnp.repeat(k, groups, axis=2)  # [B, T, n_heads, d_head]
        v = jnp.repeat(v, groups, axis=2)

        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(
            c.query_pre_attn_scalar**-0.5, q.dtype
        )  # [B, H, T, T]
        scores = soft_cap(scores, c.attn_logit_softcapping)
        qi = jnp.arange(T)[:, None]
        ki = jnp.arange(T)[None, :]
        allowed = ki <= qi
        if self.sliding and c.sliding_window:
            allowed &= ki > qi - c.sliding_window
        allowed = allowed[None, None] & attention_mask.astype(bool)[:, None, None, :]
        scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        z = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, self.n_heads * self.d_head)
        return self.o_proj(z)


class Gemma2MLP(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        self.gate_proj = nn.Dense(c.intermediate_size, use_bias=False, dtype=self.dtype)
        self.up_proj = nn.Dense(c.intermediate_size, use_bias=False, dtype=self.dtype)
        self.down_proj = nn.Dense(c.hidden_size, use_bias=False, dtype=self.dtype)
        name = getattr(c, "hidden_activation", None) or getattr(
            c, "hidden_act", "gelu_pytorch_tanh"
        )
        self.act = _ACTIVATIONS[name]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Gemma2DecoderLayer(nn.Module):
    config: Any
    sliding: bool
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c, dt = self.config, self.dtype
        self.input_layernorm = Gemma2RMSNorm(c, dtype=dt)
        self.self_attn = Gemma2Attention(c, self.sliding, dtype=dt)
        self.post_attention_layernorm = Gemma2RMSNorm(c, dtype=dt)
        self.pre_feedforward_layernorm = Gemma2RMSNorm(c, dtype=dt)
        self.mlp = Gemma2MLP(c, dtype=dt)
        self.post_feedforward_layernorm = Gemma2RMSNorm(c, dtype=dt)

    def __call__(
        self, x: jax.Array, attention_mask: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        attn = self.self_attn(self.input_layernorm(x), attention_mask, position_ids)
        x = x + self.post_attention_layernorm(attn)  # resid_mid
        mlp = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(mlp)  # resid_post


class Gemma2LayerCollection(nn.Module):
    """The decoder layers, named "0", "1", ... like the Hugging Face parameter names."""

    config: Any
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.blocks = [
            Gemma2DecoderLayer(
                self.config, kind == "sliding_attention", dtype=self.dtype, name=str(i)
            )
            for i, kind in enumerate(layer_types(self.config))
        ]

    def __call__(
        self, x: jax.Array, attention_mask: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        for block in self.blocks:
            x = block(x, attention_mask, position_ids)
        return x


class Gemma2Model(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        self.layers = Gemma2LayerCollection(c, dtype=self.dtype)
        self.norm = Gemma2RMSNorm(c, dtype=self.dtype)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        x = self.embed_tokens(input_ids.astype(jnp.int32))
        x = x * jnp.asarray(self.config.hidden_size**0.5, x.dtype)  # [B, T, d_model]
        return self.norm(self.layers(x, attention_mask, position_ids))


class Gemma2ForCausalLMModule(nn.Module):
    """`(input_ids, attention_mask, position_ids) -> (logits,)`, like transformers' Flax modules."""

    config: Any
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.model = Gemma2Model(self.config, dtype=self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
        return_dict: bool = False,
    ) -> tuple[jax.Array]:
        del deterministic, return_dict  # no dropout; always a tuple
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        hidden = self.model(input_ids, attention_mask, position_ids)
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return (soft_cap(logits, self.config.final_logit_softcapping),)
