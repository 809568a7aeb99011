"""Transcoders: encode activations at one hook, reconstruct the activations at another.

    f   = relu(x @ W_enc + b_enc)            (jumprelu_*: z * 1[z > threshold])
    out = f @ W_dec + b_dec  (+ x @ W_skipᵀ for skip variants)

`W_dec [d_sae, d_out]`, `b_dec [d_out]`, `W_skip [d_out, d_in]`. As in SAELens, b_dec is never
subtracted from the input (it lives in the output space), the output is not de-normalised or
reshaped, and there is no error term (the output belongs to a different hook than the input).

Training (SAELens has none): reconstruct the target activations `y` from `x`, with the loss of
the matching SAE: `mean_b ||out - y||² + l1 · mean_b ||f ⊙ ||W_dec rows|| ||_p` for ReLU
transcoders, the JumpReLU sparsity losses for JumpReLU ones. Skip variants train W_skip too.
W_dec rows start at `decoder_init_norm`; the encoder keeps its own initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax

from jsae.architectures.base import (
    Architecture,
    Params,
    kaiming_uniform,
)
from jsae.architectures.jumprelu import JumpReLUGate
from jsae.errors import ConfigError

if TYPE_CHECKING:
    from jsae.config import SAEConfig


class Transcoder(Architecture):
    """ReLU transcoder (SAELens `Transcoder`)."""

    name = "transcoder"
    is_transcoder = True
    extra_cfg_keys = ("d_out",)

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        if cfg.apply_b_dec_to_input:
            raise ConfigError(
                f"{cls.name} cannot subtract b_dec from its input: b_dec lives in the output "
                "space. Set apply_b_dec_to_input=False (the default for transcoders)."
            )
        if cfg.reshape_activations != "none":
            raise ConfigError(f"{cls.name} does not support reshape_activations='hook_z'.")
        if cfg.d_out is not None and (isinstance(cfg.d_out, bool) or cfg.d_out <= 0):
            raise ConfigError(f"d_out must be a positive integer, got {cfg.d_out!r}.")

    @classmethod
    def init_params(cls, cfg: SAEConfig, key: jax.Array) -> Params:
        """Independent kaiming-uniform encoder and decoder (not tied), zero biases."""
        k_enc, k_dec = jax.random.split(key)
        params = super().init_params(cfg, k_dec)
        params["W_enc"] = kaiming_uniform(k_enc, (cfg.d_in, cfg.d_sae), cfg.jax_dtype)
        return params


class SkipTranscoder(Transcoder):
    """Transcoder with a linear skip connection `x @ W_skipᵀ` (SAELens `SkipTranscoder`)."""

    name = "skip_transcoder"

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "W_skip": (cfg.output_dim, cfg.d_in)}

    @classmethod
    def skip(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array:
        return x @ params["W_skip"].T


class JumpReLUTranscoder(JumpReLUGate, Transcoder):
    """Transcoder with a JumpReLU activation (Gemma Scope transcoders), trained as JumpReLU."""

    name = "jumprelu_transcoder"


class JumpReLUSkipTranscoder(JumpReLUTranscoder, SkipTranscoder):
    """JumpReLU transcoder with a skip connection (Gemma Scope 2 affine-skip transcoders)."""

    name = "jumprelu_skip_transcoder"


__all__ = ["JumpReLUSkipTranscoder", "JumpReLUTranscoder", "SkipTranscoder", "Transcoder"]
