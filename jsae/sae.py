"""`SAE`: a sparse autoencoder as a JAX pytree, and the pure functions that run it.

    sae = jsae.SAE.init(jsae.SAEConfig(architecture="jumprelu", d_in=2304, d_sae=16384))
    f = sae.encode(x)            # [..., d_sae]
    x_hat = sae.decode(f)        # [..., d_in]
    out = sae(x)                 # forward; use_error_term=True splices it in losslessly

`SAE(cfg, params)`: `cfg` is static (hashable `SAEConfig`), `params` a flat dict of arrays with
SAELens's names and orientations. Being a pytree, an SAE goes through `jax.jit`, `jax.grad`,
`jax.device_put` and orbax unchanged. The methods are thin sugar over `encode`, `decode` and
`forward` below, which are pure and jittable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.architectures import Architecture, get_architecture
from jsae.config import SAEConfig
from jsae.errors import ConfigError, FormatError, ShapeError
from jsae.normalization import NEEDS_INPUT_STATS, NormStats, normalize_in, normalize_out


@dataclass(frozen=True)
class SAE:
    """A sparse autoencoder: static config plus a flat dict of parameter arrays."""

    cfg: SAEConfig
    params: dict[str, jax.Array]

    # ------------------------------------------------------------------ construction

    @classmethod
    def init(cls, cfg: SAEConfig, key: jax.Array | int = 0) -> SAE:
        """Randomly initialised SAE, using SAELens's initialisation for the architecture."""
        if isinstance(key, int):
            key = jax.random.key(key)
        return cls.from_params(cfg, cfg_arch(cfg).init_params(cfg, key))

    @classmethod
    def from_params(cls, cfg: SAEConfig, params: Mapping[str, Any]) -> SAE:
        """Validate names and shapes against cfg, cast to the config's dtypes, and wrap."""
        arch = cfg_arch(cfg)
        check_param_shapes(cfg, {name: np.shape(value) for name, value in params.items()})
        out = {
            name: jnp.asarray(params[name], arch.param_dtype(cfg, name))
            for name in arch.param_shapes(cfg)
        }
        return cls(cfg, out)

    # ------------------------------------------------------------------ running

    def encode(self, x: Any) -> jax.Array:
        """Latent activations `[..., d_sae]` for inputs `[..., d_in]`."""
        return encode(self, x)

    def encode_with_hidden_pre(self, x: Any) -> tuple[jax.Array, jax.Array]:
        """(latent activations, pre-activations), both `[..., d_sae]`."""
        return encode_with_hidden_pre(self, x)

    def decode(self, f: jax.Array, x: Any = None, *, sparse: Any = "auto") -> jax.Array:
        """Reconstruction `[..., d_out]` from latents; see `jsae.sae.decode` for `x`."""
        return decode(self, f, x, sparse=sparse)

    def forward(self, x: Any, **kwargs: Any) -> jax.Array:
        """Reconstruction of `x` (same shape as x, or `[..., d_out]` for transcoders)."""
        return forward(self, x, **kwargs)

    __call__ = forward

    def forward_with_activations(self, x: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array]:
        """(reconstruction, latent activations)."""
        return forward_with_activations(self, x, **kwargs)

    # ------------------------------------------------------------------ transformations

    def fold_W_dec_norm(self) -> SAE:
        """Same outputs, unit-norm decoder rows; latents scale by the old row norms."""
        cfg, params = cfg_arch(self.cfg).fold_W_dec_norm(self.cfg, self.params)
        return SAE(cfg, params)

    def fold_activation_norm_scaling_factor(self, scale: float) -> SAE:
        """An SAE that acts on raw `x` like this one acts on `scale * x`."""
        cfg, params = cfg_arch(self.cfg).fold_activation_norm_scaling_factor(
            self.cfg, self.params, float(scale)
        )
        return SAE(cfg, params)

    def to_inference(self) -> SAE:
        """The form an SAE is saved and served in (a BatchTopK SAE becomes a JumpReLU)."""
        cfg, params = cfg_arch(self.cfg).to_inference(self.cfg, self.params)
        return SAE.from_params(cfg, params)

    def astype(self, dtype: Any) -> SAE:
        """Parameters cast to `dtype` (thresholds stay float32); cfg.dtype updated."""
        return SAE.from_params(self.cfg.replace(dtype=dtype), self.params)

    def save(self, path: str | Path, *, log_sparsity: Any = None, overwrite: bool = False) -> Path:
        """Write SAELens format (`cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`)."""
        from jsae.io import save

        return save(self, path, log_sparsity=log_sparsity, overwrite=overwrite)

    # ------------------------------------------------------------------ conveniences

    @property
    def W_enc(self) -> jax.Array:
        return self.params["W_enc"]

    @property
    def W_dec(self) -> jax.Array:
        return self.params["W_dec"]

    @property
    def b_dec(self) -> jax.Array:
        return self.params["b_dec"]

    def __getattr__(self, name: str) -> Any:
        # Other parameters by name (b_enc, threshold, b_gate, W_skip, ...).
        params = self.__dict__.get("params")
        if not name.startswith("__") and isinstance(params, dict) and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or parameter {name!r}")

    def __repr__(self) -> str:
        shapes = {k: getattr(v, "shape", v) for k, v in sorted(self.params.items())}
        cfg = self.cfg
        return (
            f"SAE(architecture={cfg.architecture!r}, d_in={cfg.d_in}, d_sae={cfg.d_sae}, "
            f"dtype={cfg.dtype!r}, params={shapes})"
        )


jax.tree_util.register_dataclass(SAE, data_fields=["params"], meta_fields=["cfg"])


def cfg_arch(cfg: SAEConfig) -> type[Architecture]:
    """The architecture implementation for a config."""
    return get_architecture(cfg.architecture)


def check_param_shapes(cfg: SAEConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise FormatError unless `shapes` names exactly cfg's parameters, with cfg's shapes.

    Takes shapes rather than arrays so loaders can check a checkpoint before reading it.
    """
    expected = cfg_arch(cfg).param_shapes(cfg)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise FormatError(
            f"parameters do not match a {cfg.architecture!r} SAE: missing {missing}, "
            f"unexpected {unexpected}; expected exactly {sorted(expected)}."
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise FormatError(
                f"parameter {name!r} has shape {tuple(shapes[name])} but the config "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.output_dim}) needs {shape}."
            )


# ---------------------------------------------------------------------- input handling


def _as_input(cfg: SAEConfig, x: Any) -> tuple[jax.Array, tuple[int, ...] | None]:
    """Check x's shape against cfg; flatten hook_z heads. Returns (x [..., d_in], head shape)."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ShapeError(f"SAE input must have shape [..., {cfg.d_in}], got a scalar.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ShapeError(f"SAE input must be floating point, got dtype {x.dtype}.")
    if cfg.reshape_activations == "hook_z" and x.ndim >= 2:
        n_heads, d_head = x.shape[-2:]
        if n_heads * d_head == cfg.d_in and d_head != cfg.d_in:
            return x.reshape(*x.shape[:-2], cfg.d_in), (n_heads, d_head)
    if x.shape[-1] != cfg.d_in:
        layout = (
            "[..., n_heads, d_head] with n_heads*d_head"
            if cfg.reshape_activations == "hook_z"
            else "[..., d_in] with d_in"
        )
        raise ShapeError(
            f"SAE input has shape {tuple(x.shape)} but this SAE expects {layout} = {cfg.d_in}. "
            f"Check that the activations come from the hook the SAE was trained on"
            + (f" ({cfg.metadata.hook_name})." if cfg.metadata.hook_name else ".")
        )
    return x, None


def _process_in(sae: SAE, x: Any) -> tuple[jax.Array, NormStats, tuple[int, ...] | None]:
    """Cast, flatten heads, normalise, subtract b_dec: the encoder's actual input."""
    cfg = sae.cfg
    x, heads = _as_input(cfg, x)
    x = x.astype(cfg.jax_dtype)
    x, stats = normalize_in(cfg.normalize_activations, x)
    if cfg.apply_b_dec_to_input:
        x = x - sae.params["b_dec"]
    return x, stats, heads


def _check_latents(cfg: SAEConfig, f: Any) -> jax.Array:
    f = jnp.asarray(f)
    if f.ndim == 0 or f.shape[-1] != cfg.d_sae:
        raise ShapeError(
            f"latent activations must have shape [..., d_sae={cfg.d_sae}], got {tuple(f.shape)}."
        )
    return f


# ---------------------------------------------------------------------- pure functions


def encode_with_hidden_pre(sae: SAE, x: Any) -> tuple[jax.Array, jax.Array]:
    """(f, hidden_pre), both `[..., d_sae]`, for inputs `[..., d_in]` (or heads for hook_z)."""
    x_in, _, _ = _process_in(sae, x)
    return cfg_arch(sae.cfg).encode(sae.cfg, sae.params, x_in)


def encode(sae: SAE, x: Any) -> jax.Array:
    """Latent activations `[..., d_sae]`."""
    return encode_with_hidden_pre(sae, x)[0]


def _finish_output(
    sae: SAE, y: jax.Array, stats: NormStats, heads: tuple[int, ...] | None
) -> jax.Array:
    """Undo normalisation and head flattening on a reconstruction (not for transcoders)."""
    y = normalize_out(sae.cfg.normalize_activations, y, stats)
    return y.reshape(*y.shape[:-1], *heads) if heads else y


def decode(sae: SAE, f: Any, x: Any = None, *, sparse: Any = "auto") -> jax.Array:
    """Reconstruction `[..., d_out]` from latents `f [..., d_sae]`.

    `x`, the input that was encoded, is needed only to undo per-token normalisation
    (`constant_norm_rescale`, `layer_norm`) and to restore `[..., n_heads, d_head]` for hook_z
    SAEs; SAELens keeps those on the module between calls, jsae asks for them explicitly.
    `sparse` picks the decoder kernel (see `jsae.sparse.decode_matmul`); results are the same.
    """
    cfg = sae.cfg
    f = _check_latents(cfg, f).astype(cfg.jax_dtype)
    y = cfg_arch(cfg).decode(cfg, sae.params, f, sparse)
    if cfg_arch(cfg).is_transcoder:
        return y
    if x is None:
        if cfg.normalize_activations in NEEDS_INPUT_STATS:
            raise ConfigError(
                f"decode() of an SAE with normalize_activations={cfg.normalize_activations!r} "
                "needs the encoded input to undo the per-token normalisation: call "
                "sae.decode(f, x) or sae(x)."
            )
        return y
    _, stats, heads = _process_in(sae, x)
    return _finish_output(sae, y, stats, heads)


def forward_with_activations(
    sae: SAE,
    x: Any,
    *,
    use_error_term: bool = False,
    edit_features: Callable[[jax.Array], jax.Array] | None = None,
    sparse: Any = "auto",
) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, latents) for `x`.

    `edit_features(f) -> f'` intervenes on the latents before decoding (ablation, clamping,
    steering). With `use_error_term=True` the output is `decode(f') + stop_gradient(x -
    decode(f))`: equal to `x` without an edit, and the edit's exact effect with one; the error
    term is the clean reconstruction error and carries no gradient, as in SAELens.
    """
    cfg, arch = sae.cfg, cfg_arch(sae.cfg)
    x_in, stats, heads = _process_in(sae, x)
    f, _ = arch.encode(cfg, sae.params, x_in)
    f_used = f if edit_features is None else edit_features(f)
    y = arch.decode(cfg, sae.params, f_used, sparse)
    clean = None
    if edit_features is not None and use_error_term and not arch.is_transcoder:
        clean = _finish_output(sae, arch.decode(cfg, sae.params, f, sparse), stats, heads)
    return _finish_forward(sae, x, y, stats, heads, use_error_term, clean), f_used


def _finish_forward(
    sae: SAE,
    x: Any,
    y: jax.Array,
    stats: NormStats,
    heads: tuple[int, ...] | None,
    use_error_term: bool,
    clean: jax.Array | None = None,
) -> jax.Array:
    """From the decoder's output to forward()'s: skip path, de-normalisation, error term.

    `clean` is the unedited reconstruction when latents were edited (the error term is the
    clean reconstruction error); by default the reconstruction itself.
    """
    cfg, arch = sae.cfg, cfg_arch(sae.cfg)
    if arch.is_transcoder:
        if use_error_term:
            raise ConfigError(
                "transcoders have no error term: their output belongs to another hook than "
                "their input. Call without use_error_term."
            )
        skip = arch.skip(cfg, sae.params, jnp.asarray(x).astype(cfg.jax_dtype))
        return y if skip is None else y + skip
    out = _finish_output(sae, y, stats, heads)
    if use_error_term:
        # in the wider of the input's and the SAE's dtypes: a bf16 SAE with float32 input
        # returns float32, equal to x when nothing is edited (as SAELens)
        clean = out if clean is None else clean
        x = jnp.asarray(x)
        dtype = jnp.promote_types(x.dtype, out.dtype)
        error = x.astype(dtype) - clean.astype(dtype)
        out = out.astype(dtype) + jax.lax.stop_gradient(error)
    return out


# forward() materialises at most this many latent activations at once (64 MB in float32).
FORWARD_CHUNK_LATENTS = 1 << 24


def forward(
    sae: SAE,
    x: Any,
    *,
    use_error_term: bool = False,
    edit_features: Callable[[jax.Array], jax.Array] | None = None,
    sparse: Any = "auto",
) -> jax.Array:
    """Reconstruction of `x`; see `forward_with_activations` for the keyword arguments.

    Without a feature edit, rows are encoded and decoded in chunks of at most
    `FORWARD_CHUNK_LATENTS // d_sae` tokens, so the `[tokens, d_sae]` latents are never built
    whole: a 1M-latent SAE on 4096 tokens would otherwise need 16 GB for them, and on CPU the
    chunks stay in cache. Results equal the unchunked computation.
    """
    cfg, arch = sae.cfg, cfg_arch(sae.cfg)
    x_in, stats, heads = _process_in(sae, x)
    chunk = max(1, FORWARD_CHUNK_LATENTS // cfg.d_sae)
    n_rows = math.prod(x_in.shape[:-1])
    if edit_features is not None or not arch.row_independent or n_rows <= chunk:
        kwargs = dict(use_error_term=use_error_term, edit_features=edit_features, sparse=sparse)
        return forward_with_activations(sae, x, **kwargs)[0]

    def encode_decode(rows: jax.Array) -> jax.Array:  # [chunk, d_in] -> [chunk, d_out]
        return arch.decode(cfg, sae.params, arch.encode(cfg, sae.params, rows)[0], sparse)

    rows = x_in.reshape(n_rows, cfg.d_in)
    n_chunks = -(-n_rows // chunk)
    rows = jnp.pad(rows, ((0, n_chunks * chunk - n_rows), (0, 0)))
    y = jax.lax.map(encode_decode, rows.reshape(n_chunks, chunk, cfg.d_in))
    y = y.reshape(n_chunks * chunk, -1)[:n_rows].reshape(*x_in.shape[:-1], -1)
    return _finish_forward(sae, x, y, stats, heads, use_error_term)
