"""`batchtopk`: keep the `k * n_tokens` largest activations over the whole batch (training).

Bussmann et al. 2024. The selection depends on the batch, so a trained BatchTopK SAE is
served as a JumpReLU whose uniform threshold is the running estimate `topk_threshold` of the
smallest selected activation (SAELens saves it that way; so does jsae). Loading a SAELens
BatchTopK training checkpoint therefore gives a `jumprelu` SAE.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jsae.architectures.base import Architecture, Params
from jsae.architectures.topk import row_norms
from jsae.errors import ConfigError

if TYPE_CHECKING:
    from jsae.config import SAEConfig


def batch_topk_activation(hidden_pre: jax.Array, k: float) -> jax.Array:
    """relu, then keep the int(k * n_tokens) largest entries of the whole batch. [..., d_sae]"""
    acts = jax.nn.relu(hidden_pre)
    flat = acts.reshape(-1)
    n_tokens = math.prod(acts.shape[:-1])
    keep = min(int(k * n_tokens), flat.size)
    vals, idx = jax.lax.top_k(flat, keep)
    return jnp.zeros_like(flat).at[idx].set(vals).reshape(acts.shape)


class BatchTopK(Architecture):
    """BatchTopK SAE: trained with a batch-level top-k, served as a JumpReLU."""

    name = "batchtopk"
    extra_cfg_keys = ("k", "rescale_acts_by_decoder_norm")
    fp32_params = frozenset({"threshold", "topk_threshold"})

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        k = cfg.k
        if isinstance(k, bool) or not isinstance(k, int | float) or not 0 < k <= cfg.d_sae:
            raise ConfigError(
                f"{cls.name} SAEs need 0 < k <= d_sae={cfg.d_sae} (mean active latents per "
                f"token), got k={k!r}."
            )

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "topk_threshold": ()}

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
        return batch_topk_activation(hidden_pre, cfg.k)

    @classmethod
    def decode(
        cls, cfg: SAEConfig, params: Params, f: jax.Array, sparse: Any = "auto"
    ) -> jax.Array:
        if cfg.rescale_acts_by_decoder_norm:
            f = f / row_norms(params["W_dec"]).astype(f.dtype)
        return super().decode(cfg, params, f, sparse)

    @classmethod
    def to_inference(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        """A JumpReLU with threshold = topk_threshold everywhere, decoder norms folded."""
        p = {k: v for k, v in params.items() if k != "topk_threshold"}
        if cfg.rescale_acts_by_decoder_norm:
            # Selection ranked pre-act * ||W_dec||; folding makes that the plain pre-activation.
            n = row_norms(p["W_dec"].astype(jnp.float32))
            p["W_dec"] = (p["W_dec"] / n[:, None]).astype(p["W_dec"].dtype)
            p["W_enc"] = (p["W_enc"] * n[None, :]).astype(p["W_enc"].dtype)
            p["b_enc"] = (p["b_enc"] * n).astype(p["b_enc"].dtype)
        threshold = jnp.asarray(params["topk_threshold"], jnp.float32)
        p["threshold"] = jnp.full((cfg.d_sae,), threshold, jnp.float32)
        return cfg.replace(architecture="jumprelu", k=None, rescale_acts_by_decoder_norm=False), p


class MatryoshkaBatchTopK(BatchTopK):
    """Matryoshka BatchTopK: BatchTopK with nested prefix reconstruction losses (training)."""

    name = "matryoshka_batchtopk"
