"""Run-time input normalisation inside an SAE, and its inverse on the output.

SAELens keeps the per-token statistics on the module between `encode` and `decode`; here they
are explicit values returned by `normalize_in` and consumed by `normalize_out`.

    constant_norm_rescale  x <- x * sqrt(d_in)/||x||     y <- y / (sqrt(d_in)/||x||)
    layer_norm             x <- (x - μ)/(σ + 1e-5)        y <- y * σ + μ   (σ unbiased, torch.std)
    expected_average_only_in, none: identity at inference (the trainer scales; see jsae.training)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-5
NEEDS_INPUT_STATS = ("constant_norm_rescale", "layer_norm")


class NormStats(NamedTuple):
    """Per-token statistics of one normalisation, each [..., 1] (None when unused)."""

    coeff: jax.Array | None = None  # constant_norm_rescale
    mean: jax.Array | None = None  # layer_norm
    std: jax.Array | None = None  # layer_norm


def normalize_in(mode: str, x: jax.Array) -> tuple[jax.Array, NormStats]:
    """Normalise the SAE input; returns the statistics `normalize_out` needs."""
    if mode == "constant_norm_rescale":
        coeff = (x.shape[-1] ** 0.5) / jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x * coeff, NormStats(coeff=coeff)
    if mode == "layer_norm":
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        std = jnp.std(centred, axis=-1, keepdims=True, ddof=1)
        return centred / (std + LAYER_NORM_EPS), NormStats(mean=mean, std=std)
    return x, NormStats()


def normalize_out(mode: str, y: jax.Array, stats: NormStats) -> jax.Array:
    """Undo `normalize_in` on the reconstruction."""
    if mode == "constant_norm_rescale":
        return y / stats.coeff
    if mode == "layer_norm":
        return y * stats.std + stats.mean
    return y
