"""Rotary position embeddings computed from the model's own config (theta and scaling).

transformers' Flax Llama, Mistral and Gemma build their rotary tables with a hard-coded base
of 10000 and no scaling, which silently breaks Llama 3 (theta 500000, "llama3" scaling),
Mistral v0.2+ (theta 1e6) and others. jsae computes the rotation the way PyTorch transformers
does (float32 frequencies, `rotate_half` convention) and substitutes it for the Flax rotary
module's call through `nn.intercept_methods`; Gemma 2 uses the same function directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.errors import ConfigError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_settings(config: Any) -> tuple[float, Mapping[str, Any] | None]:
    """(theta, scaling dict or None) from a transformers 4.x or 5.x config."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = getattr(config, "rope_theta", None) or params.get("rope_theta") or 10000.0
    scaling = getattr(config, "rope_scaling", None)
    if not scaling and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rotary scaling {kind!r} is not supported by jsae's Flax models "
                f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})."
            )
        if kind == "default":
            scaling = None
    return float(theta), scaling


def inverse_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None
) -> np.ndarray:
    """`[head_dim // 2]` float32 inverse frequencies, as PyTorch transformers computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32)
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, position_ids: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate `x [B, T, heads, head_dim]` by positions `[B, T]`."""
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    return x * cos + _rotate_half(x) * sin


def rotary_patch(config: Any, head_dim: int) -> Callable[..., Any]:
    """Interceptor piece replacing transformers' Flax `*RotaryEmbedding.__call__(key, query,
    position_ids) -> (key, query)` with the rotation the config asks for."""
    theta, scaling = rope_settings(config)
    inv_freq = inverse_frequencies(head_dim, theta, scaling)

    def patch(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if context.method_name != "__call__" or not type(module).__name__.endswith(
            "RotaryEmbedding"
        ):
            return NotImplemented
        names = ("key", "query", "position_ids")
        bound = dict(zip(names, args, strict=False)) | kwargs
        key, query, positions = bound["key"], bound["query"], bound["position_ids"]
        dtype = getattr(module, "dtype", key.dtype)
        return (
            apply_rotary(key, positions, inv_freq).astype(dtype),
            apply_rotary(query, positions, inv_freq).astype(dtype),
        )

    return patch
