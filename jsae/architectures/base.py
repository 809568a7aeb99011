"""The interface every architecture implements, with the behaviour most of them share.

An architecture is a class of classmethods over `(cfg, params)`; it holds no state. The
`SAE` pytree in `jsae.sae` does the input/output plumbing (dtype cast, hook_z reshape,
run-time normalisation, b_dec subtraction, error term) and calls into these for the parts
that differ: parameters, encoder, decoder, folding and conversion to the inference form.

Shapes: `x [..., d_in]`, `hidden_pre`/`f [..., d_sae]`, reconstruction `[..., d_out]`.
Parameter names and orientations are SAELens's: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from jsae.errors import ConfigError
from jsae.sparse import decode_matmul

if TYPE_CHECKING:
    from jsae.config import SAEConfig

Params = dict[str, jax.Array]

# SAELens clamps decoder norms here before dividing by them (fold_W_dec_norm).
NORM_EPS = 1e-8


def decoder_norms(W_dec: jax.Array) -> jax.Array:
    """L2 norm of each decoder row, clamped away from zero. [d_sae]"""
    return jnp.maximum(jnp.linalg.norm(W_dec.astype(jnp.float32), axis=-1), NORM_EPS)


def kaiming_uniform(key: jax.Array, shape: tuple[int, int], dtype: Any) -> jax.Array:
    """torch.nn.init.kaiming_uniform_ with its defaults (a=0, fan_in=shape[1]): U(±√(6/fan_in))."""
    bound = (6.0 / shape[1]) ** 0.5
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


class Architecture:
    """Base class: a ReLU SAE with W_enc, b_enc, W_dec, b_dec; subclasses override what differs."""

    name: ClassVar[str] = ""
    is_transcoder: ClassVar[bool] = False
    # Keys written to cfg.json beyond the common SAELens fields.
    extra_cfg_keys: ClassVar[tuple[str, ...]] = ()
    # Parameters kept in float32 whatever the SAE dtype (comparisons sensitive to rounding).
    fp32_params: ClassVar[frozenset[str]] = frozenset({"threshold"})

    # ---------------------------------------------------------------- config and parameters

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        """Raise ConfigError when cfg fields contradict this architecture."""
        if cfg.k is not None and "k" not in cls.extra_cfg_keys:
            raise ConfigError(f"k is only meaningful for topk SAEs, not {cls.name!r}.")
        if cfg.d_out is not None and not cls.is_transcoder:
            raise ConfigError(f"d_out is only meaningful for transcoders, not {cls.name!r}.")

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter, in SAELens orientation."""
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.output_dim),
            "b_dec": (cfg.output_dim,),
        }

    @classmethod
    def param_dtype(cls, cfg: SAEConfig, name: str) -> Any:
        return jnp.float32 if name in cls.fp32_params else cfg.jax_dtype

    @classmethod
    def init_params(cls, cfg: SAEConfig, key: jax.Array) -> Params:
        """SAELens's initialisation: kaiming-uniform W_dec, W_enc = W_dec.T, zero biases."""
        dtype = cfg.jax_dtype
        shapes = cls.param_shapes(cfg)
        W_dec = kaiming_uniform(key, (cfg.d_sae, cfg.output_dim), dtype)
        params = {
            name: jnp.zeros(shape, cls.param_dtype(cfg, name)) for name, shape in shapes.items()
        }
        params["W_dec"] = W_dec
        params["W_enc"] = W_dec.T if not cls.is_transcoder else params["W_enc"]
        return params

    # ---------------------------------------------------------------- the forward pass

    @classmethod
    def pre_activation(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array:
        """Encoder pre-activation from the processed input. [..., d_sae]"""
        return x @ params["W_enc"] + params["b_enc"]

    @classmethod
    def activation(
        cls, cfg: SAEConfig, params: Params, hidden_pre: jax.Array, x: jax.Array
    ) -> jax.Array:
        """Latent activations from the pre-activation (x is the processed input). [..., d_sae]"""
        return jax.nn.relu(hidden_pre)

    @classmethod
    def encode(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(f, hidden_pre) from the processed input."""
        hidden_pre = cls.pre_activation(cfg, params, x)
        return cls.activation(cfg, params, hidden_pre, x), hidden_pre

    @classmethod
    def decode(
        cls, cfg: SAEConfig, params: Params, f: jax.Array, sparse: Any = "auto"
    ) -> jax.Array:
        """f @ W_dec + b_dec, before output de-normalisation. [..., d_out]"""
        return decode_matmul(f, params["W_dec"], sparse=sparse) + params["b_dec"]

    @classmethod
    def skip(cls, cfg: SAEConfig, params: Params, x: jax.Array) -> jax.Array | None:
        """Skip-connection term added to the output (skip transcoders), else None."""
        return None

    # ---------------------------------------------------------------- weight folding

    @classmethod
    def fold_W_dec_norm(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        """Give decoder rows unit norm without changing outputs; latents scale by the norms."""
        n = decoder_norms(params["W_dec"])
        p = dict(params)
        p["W_dec"] = (params["W_dec"] / n[:, None]).astype(params["W_dec"].dtype)
        p["W_enc"] = (params["W_enc"] * n[None, :]).astype(params["W_enc"].dtype)
        for name in cls.per_latent_encoder_params():
            if name in p:
                p[name] = (params[name] * n).astype(params[name].dtype)
        return cfg, p

    @classmethod
    def per_latent_encoder_params(cls) -> tuple[str, ...]:
        """Per-latent vectors on the pre-activation scale (rescaled with W_enc's columns)."""
        return ("b_enc", "threshold")

    @classmethod
    def fold_activation_norm_scaling_factor(
        cls, cfg: SAEConfig, params: Params, scale: float
    ) -> tuple[SAEConfig, Params]:
        """Make an SAE trained on `scale * x` act on raw `x` (SAELens semantics).

        Refused for per-token normalisation modes: they discard the input's scale, so there is
        nothing to fold (SAELens rewrites the config to "none" there but keeps normalising,
        leaving a config that no longer describes the SAE).
        """
        if cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ConfigError(
                f"cannot fold an activation scaling factor into an SAE with "
                f"normalize_activations={cfg.normalize_activations!r}: it normalises every "
                "token itself, so a dataset-wide scale has no effect to fold."
            )
        p = dict(params)
        p["W_enc"] = (params["W_enc"] * scale).astype(params["W_enc"].dtype)
        p["W_dec"] = (params["W_dec"] / scale).astype(params["W_dec"].dtype)
        p["b_dec"] = (params["b_dec"] / scale).astype(params["b_dec"].dtype)
        return cfg.replace(normalize_activations="none"), p

    # ---------------------------------------------------------------- serialisation

    @classmethod
    def cfg_to_dict(cls, cfg: SAEConfig) -> dict[str, Any]:
        """SAELens 6.x inference cfg.json for this architecture."""
        out: dict[str, Any] = {
            "d_in": cfg.d_in,
            "d_sae": cfg.d_sae,
            "dtype": cfg.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
            "normalize_activations": cfg.normalize_activations,
            "reshape_activations": cfg.reshape_activations,
        }
        for key in cls.extra_cfg_keys:
            out[key] = getattr(cfg, key)
        out["architecture"] = cls.name
        out["metadata"] = cfg.metadata.to_dict()
        return out

    @classmethod
    def cfg_fields_from_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """SAEConfig keyword arguments for this architecture's cfg.json keys."""
        return {key: data[key] for key in cls.extra_cfg_keys if key in data}

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, state: dict[str, Any]) -> dict[str, Any]:
        """Map a SAELens state dict (possibly a training checkpoint) to jsae param names."""
        return state

    @classmethod
    def to_inference(cls, cfg: SAEConfig, params: Params) -> tuple[SAEConfig, Params]:
        """The architecture an SAE is saved and served as (batchtopk -> jumprelu, ...)."""
        return cfg, params
