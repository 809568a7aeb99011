"""`topk`: keep the k largest pre-activations per token, ReLU them, zero the rest.

With `rescale_acts_by_decoder_norm`, latents are ranked by `pre-act * ||W_dec row||` and
divided by the norm again before decoding, which makes the selection independent of decoder
row scale (SAELens's training default). Folding the decoder norms then leaves outputs and
selections unchanged, so `fold_W_dec_norm` is only allowed in that mode (as in SAELens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import Architecture, Params
from jsae.errors import ConfigError
from jsae.sparse import AUTO_MIN_D_SAE, decode_matmul, default_max_active

if TYPE_CHECKING:
    from jsae.config import SAEConfig


def topk_activation(hidden_pre: jax.Array, k: int) -> jax.Array:
    """relu of the k largest entries along the last axis, zeros elsewhere. [..., d_sae]"""
    vals, idx = jax.lax.top_k(hidden_pre, k)
    dense = jnp.zeros_like(hidden_pre)
    return jnp.put_along_axis(dense, idx, jax.nn.relu(vals), axis=-1, inplace=False)


def row_norms(W_dec: jax.Array) -> jax.Array:
    """Unclamped decoder row norms, as SAELens's TopK rescale uses them. [d_sae]"""
    return jnp.linalg.norm(W_dec, axis=-1)


class TopK(Architecture):
    """TopK SAE (SAELens `TopKSAE`; Gao et al. 2024)."""

    name = "topk"
    extra_cfg_keys = ("k", "rescale_acts_by_decoder_norm")

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        k = cfg.k
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= cfg.d_sae:
            raise ConfigError(
                f"topk SAEs need an integer k with 0 < k <= d_sae={cfg.d_sae}, got k={k!r}."
            )

    @classmethod
    def pre_activation(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array:
        hidden_pre = x @ params["W_enc"] + params["b_enc"]
        if cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * row_norms(params["W_dec"]).astype(hidden_pre.dtype)
        return hidden_pre

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        return topk_activation(hidden_pre, cfg.k)

    @classmethod
    def decode(
        cls, cfg: SAEConfig, params: Params, f: jax.Array, sparse: Any = "auto"
    ) -> jax.Array:
        if cfg.rescale_acts_by_decoder_norm:
            f = f / row_norms(params["W_dec"]).astype(f.dtype)
        if sparse is True or (sparse == "auto" and cfg.d_sae >= AUTO_MIN_D_SAE):
            sparse = max(cfg.k, default_max_active(cfg.d_sae))  # at most k active: always fits
        return decode_matmul(f, params["W_dec"], sparse=sparse) + params["b_dec"]

    @classmethod
    def fold_W_dec_norm(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        if not cfg.rescale_acts_by_decoder_norm:
            raise ConfigError(
                "fold_W_dec_norm would change which latents a topk SAE selects unless it was "
                "built with rescale_acts_by_decoder_norm=True (decoder-norm-aware selection)."
            )
        return super().fold_W_dec_norm(cfg, params)
