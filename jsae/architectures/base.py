"""The interface every architecture implements, with the behaviour most of them share.

An architecture is a class of classmethods over `(cfg, params)`; it holds no state. The
`SAE` pytree in `jsae.sae` does the input/output plumbing (dtype cast, hook_z reshape,
run-time normalisation, b_dec subtraction, error term) and calls into these for the parts
that differ: parameters, encoder, decoder, folding and conversion to the inference form.

Shapes: `x [..., d_in]`, `hidden_pre`/`f [..., d_sae]`, reconstruction `[..., d_out]`.
Parameter names and orientations are SAELens's: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jsae.architectures.grad_layout import dense_decode, encoder_weight_grad
from jsae.errors import ConfigError
from jsae.sparse import center_gradient, decode_matmul

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


# ------------------------------------------------------------------------------ training types
#
# The loss terms of each architecture follow SAELens 6.54's `training_forward_pass` math. They
# take a `TrainContext` (static: the SAE training settings and the device mesh) and per-step
# `TrainInputs` (sparsity coefficients after warm-up, the dead-latent mask) and return a
# `TrainOutput`, whose `loss` the trainer (`jsae.training`) differentiates.


@dataclass(frozen=True)
class TrainContext:
    """Static training context: the SAE settings (`jsae.training.SAESettings`), the mesh and
    the orientation of the dense weight gradients (`jsae.architectures.grad_layout`)."""

    settings: Any
    mesh: Any = None  # jax.sharding.Mesh or None
    grad_layout: str = "direct"  # one of grad_layout.LAYOUTS; the trainer picks it

    @property
    def weight_grad_layout(self) -> str:
        """`grad_layout` where latents are unsplit; "direct" where the mesh's "model" axis
        splits them, since the copies between orientations loop over blocks of latents."""
        unsplit = self.mesh is None or int(self.mesh.shape["model"]) == 1
        return self.grad_layout if unsplit else "direct"


class TrainInputs(NamedTuple):
    """Per-step inputs to the losses."""

    coefficients: dict[str, jax.Array]  # e.g. {"l1": ...}, after warm-up
    dead_mask: jax.Array  # [d_sae] bool: latents that have not fired for dead_feature_window


class ForwardPass(NamedTuple):
    """Intermediate values of one training forward pass, for the auxiliary losses."""

    x: jax.Array  # [B, d_in] the (scaled) input
    x_in: jax.Array  # [B, d_in] the encoder's input (normalised, b_dec subtracted)
    x_norm: jax.Array  # [B, d_in] the normalised input, before b_dec is subtracted
    center: jax.Array | None  # b_dec when it is subtracted from the input, else None
    target: jax.Array  # [B, d_out] what is reconstructed (x for SAEs)
    hidden_pre: jax.Array  # [B, d_sae]
    f: jax.Array  # [B, d_sae]
    x_hat: jax.Array  # [B, d_out]
    stats: Any  # NormStats of the run-time normalisation
    encoded: dict[str, jax.Array]  # other intermediates (gated's gate path, Matryoshka's prefixes)


class TrainOutput(NamedTuple):
    """What the trainer needs from a forward pass."""

    loss: jax.Array  # scalar: Σ losses
    losses: dict[str, jax.Array]  # "mse_loss" and the architecture's terms
    x_hat: jax.Array  # [B, d_out] reconstruction
    fire_counts: jax.Array  # [d_sae] int32: tokens on which each latent fired
    l0: jax.Array  # scalar: mean active latents per token
    extras: dict[str, jax.Array]  # architecture-specific values for `update_buffers`


def column_sum(a: jax.Array) -> jax.Array:
    """Σ over the rows of `a`, in float32, as a vector-matrix product. [N, n] -> [n]

    XLA's CPU backend reduces a [4096, 16384] float32 array over its rows in ~54 ms, and
    computes `ones @ a` in ~10 ms (measured on CPU only; on an accelerator, compare both).
    """
    ones = jnp.ones((a.shape[0],), a.dtype)
    return jnp.dot(ones, a, preferred_element_type=jnp.float32)


def _encoder_input(x: jax.Array, center: jax.Array | None) -> jax.Array:
    return x if center is None else x - center


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def affine_encoder(
    x: jax.Array, center: jax.Array | None, W: jax.Array, b: jax.Array, grad_layout: str
) -> jax.Array:
    """(x - center) @ W + b for training, x being data (it gets no gradient); no centering
    when `center` is None. [..., d] @ [d, n] -> [..., n]

    Autodiff would compute d(x - center) = g @ Wᵀ, a batch-sized matmul, only to sum it over
    the batch for d center. Here d center = -W @ db, where db = Σ_rows g is one vector-matrix
    product (`column_sum`) serving both biases: a dense SAE step is one matmul (of six) and
    one [B, d_sae] reduction cheaper. `grad_layout` (static; see
    `jsae.architectures.grad_layout`) picks how dW = (x - center)ᵀ g is computed.
    """
    return _encoder_input(x, center) @ W + b


def _affine_encoder_fwd(x, center, W, b, grad_layout):
    return _encoder_input(x, center) @ W + b, (x, center, W, b)


def _affine_encoder_bwd(grad_layout, residuals, g):
    x, center, W, b = residuals
    g2 = g.reshape(-1, g.shape[-1])  # [N, n]
    x2 = _encoder_input(x, center).reshape(-1, x.shape[-1])  # [N, d]
    db = column_sum(g2)  # [n] float32
    dW = encoder_weight_grad(x2, g2, grad_layout, W.dtype)  # [d, n]
    dcenter = None if center is None else center_gradient(W, db, center)  # W @ v: no Wᵀ copy
    return None, dcenter, dW, db.astype(b.dtype)


affine_encoder.defvjp(_affine_encoder_fwd, _affine_encoder_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def computed_affine_encoder(
    value: jax.Array,
    x: jax.Array,
    center: jax.Array | None,
    W: jax.Array,
    b: jax.Array,
    grad_layout: str,
) -> jax.Array:
    """`affine_encoder(x, center, W, b, grad_layout)` whose matmul `(x - center) @ W` was
    computed already (passed in as `value`, not differentiated): returns `value + b`, with
    `affine_encoder`'s gradients. Lets a step that needs the pre-activation before choosing how
    to differentiate the loss (see `Architecture.train_losses`) skip a second encoder matmul.
    [B, d_sae]"""
    return value + b


def _computed_affine_encoder_fwd(value, x, center, W, b, grad_layout):
    return value + b, (x, center, W, b)


def _computed_affine_encoder_bwd(grad_layout, residuals, g):
    return (None, *_affine_encoder_bwd(grad_layout, residuals, g))


computed_affine_encoder.defvjp(_computed_affine_encoder_fwd, _computed_affine_encoder_bwd)


def nonzero_indicator(f: jax.Array) -> jax.Array:
    """1.0 where f != 0, else 0.0 (float32), in arithmetic form.

    |f| · 2**126 is at least 1 for every nonzero float32 but subnormals, which `ceil` lifts to
    1 (XLA's CPU backend flushes subnormals to zero, in `f != 0` too). That backend vectorises
    this; it runs `f != 0` reductions ~3x slower.
    """
    scaled = jnp.minimum(jnp.abs(f.astype(jnp.float32)) * jnp.float32(2.0**126), 1)
    return jnp.ceil(scaled)


def firing_stats(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tokens each latent fired on [d_sae] int32, mean latents fired per token). f [B, d_sae]"""
    if f.shape[0] >= 2**24:  # float32 column sums would no longer be exact
        fired = f != 0
        return jnp.sum(fired, axis=0, dtype=jnp.int32), jnp.mean(jnp.sum(fired, -1, jnp.float32))
    counts = column_sum(nonzero_indicator(f)).astype(jnp.int32)  # [d_sae]
    # The mean of the rows' counts is the columns' total / B: no second pass over [B, d_sae].
    return counts, jnp.sum(counts).astype(jnp.float32) / f.shape[0]


def mean_sq_error(x_hat: jax.Array, target: jax.Array) -> jax.Array:
    """Σ over features, mean over tokens (SAELens's mse_loss; not normalised by ||x||).

    Computed in float32 whatever the inputs' dtype (bf16 compute keeps losses exact enough).
    """
    diff = x_hat.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.sum(diff**2, axis=-1))


def lp_norm(v: jax.Array, p: float) -> jax.Array:
    """(Σ |v|^p)^(1/p) over the last axis, in float32, with torch.norm's zero gradient at 0."""
    v = v.astype(jnp.float32)
    if p == 1:
        return jnp.sum(jnp.abs(v), axis=-1)
    return lp_root(jnp.sum(abs_power(v, p), axis=-1), p)


def abs_power(v: jax.Array, p: float) -> jax.Array:
    """|v|^p with a zero gradient where v is 0, as torch.norm's backward has: for p < 1 the
    power's own derivative there is infinite, and a latent that did not fire would put inf·0 =
    NaN into W_dec's gradient."""
    nonzero = v != 0
    return jnp.where(nonzero, jnp.abs(jnp.where(nonzero, v, 1.0)) ** p, 0.0)


def lp_root(total: jax.Array, p: float) -> jax.Array:
    """total^(1/p) (Σ |v|^p to the Lp norm), with torch.norm's zero gradient at 0."""
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, safe ** (1.0 / p), 0.0)


class Architecture:
    """Base class: a ReLU SAE with W_enc, b_enc, W_dec, b_dec; subclasses override what differs."""

    name: ClassVar[str] = ""
    is_transcoder: ClassVar[bool] = False
    # Keys written to cfg.json beyond the common SAELens fields.
    extra_cfg_keys: ClassVar[tuple[str, ...]] = ()
    # Parameters kept in float32 whatever the SAE dtype (comparisons sensitive to rounding).
    fp32_params: ClassVar[frozenset[str]] = frozenset({"threshold"})
    # Whether a token's latents depend on that token alone (not BatchTopK's batch-wide
    # selection): then a batch can be processed in independent chunks of rows.
    row_independent: ClassVar[bool] = True

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
        cls,
        cfg: SAEConfig,
        params: Params,
        f: jax.Array,
        sparse: Any = "auto",
        grad_layout: str = "direct",
    ) -> jax.Array:
        """f @ W_dec + b_dec, before output de-normalisation. [..., d_out]

        `sparse`: see `jsae.sparse.decode_matmul`; with `sparse=False` (training),
        `grad_layout` picks how W_dec's gradient is formed (`jsae.architectures.grad_layout`).
        """
        if sparse is False:
            return dense_decode(f, params["W_dec"], grad_layout) + params["b_dec"]
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

    @classmethod
    def from_inference(cls, cfg: SAEConfig, saved: SAEConfig, params: Params) -> Params | None:
        """Training parameters for `cfg` from an SAE saved as `saved` (the inverse of
        `to_inference`, for fine-tuning), or None when this architecture cannot start there."""
        return params if saved.architecture == cfg.architecture else None

    # ---------------------------------------------------------------- training

    @classmethod
    def buffer_names(cls) -> tuple[str, ...]:
        """Parameters that are state but not trained (BatchTopK's threshold)."""
        return ()

    @classmethod
    def train_init_params(cls, cfg: SAEConfig, settings: Any, key: jax.Array) -> Params:
        """SAELens's training init: decoder rows rescaled to `decoder_init_norm`, W_enc = W_dec.T.

        Transcoders keep their independent encoder (input and output spaces differ). Buffers
        are not included (see `init_buffers`).
        """
        params = dict(cls.init_params(cfg, key))
        norm = settings.decoder_init_norm
        if norm is not None:
            W = params["W_dec"].astype(jnp.float32)
            W = W / jnp.linalg.norm(W, axis=-1, keepdims=True) * norm
            params["W_dec"] = W.astype(params["W_dec"].dtype)
            if not cls.is_transcoder:
                params["W_enc"] = params["W_dec"].T
        for name in cls.buffer_names():
            params.pop(name, None)
        return params

    @classmethod
    def init_buffers(cls, cfg: SAEConfig, settings: Any) -> Params:
        """Initial values of the buffers."""
        return {}

    @classmethod
    def coefficients(cls, settings: Any) -> dict[str, tuple[float, int]]:
        """Sparsity coefficients: name -> (final value, warm-up steps)."""
        return {"l1": (settings.l1_coefficient, settings.l1_warm_up_steps)}

    @classmethod
    def forms_dense_weight_grads(cls, cfg: SAEConfig, ctx: TrainContext, n_tokens: int) -> bool:
        """Whether the training step computes dense weight gradients, whose orientation
        `ctx.weight_grad_layout` picks (False: the trainer does not time the layouts)."""
        return True

    @classmethod
    def train_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        cast: Any,
        buffers: Params,
        x: jax.Array,
        target: jax.Array,
        inputs: TrainInputs,
    ) -> tuple[jax.Array | int, tuple[Any, ...]]:
        """(which, losses): ways to compute the step's loss, `loss(params) -> (loss,
        TrainOutput)` on `cast(params)` (the compute-dtype copy), and the index of the one to
        run. The step runs each way's gradient and update as a branch of a `lax.switch`, so
        each is differentiated and laid out on its own. One way (`train_forward`) by default;
        the standard SAE adds its active-pair loss for steps where few latents fire."""

        def loss(p: Params) -> tuple[jax.Array, TrainOutput]:
            out = cls.train_forward(cfg, ctx, cast(p), buffers, x, target, inputs)
            return out.loss, out

        return 0, (loss,)

    @classmethod
    def train_forward(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        buffers: Params,
        x: jax.Array,
        target: jax.Array,
        inputs: TrainInputs,
    ) -> TrainOutput:
        """MSE plus the architecture's auxiliary losses (SAELens `training_forward_pass`)."""
        return cls.train_forward_with(cls.train_encode, cfg, ctx, params, x, target, inputs)

    @classmethod
    def train_forward_with(
        cls,
        encode: Any,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x: jax.Array,
        target: jax.Array,
        inputs: TrainInputs,
    ) -> TrainOutput:
        """`train_forward` with `encode` (`train_encode`'s signature) producing the latents."""
        from jsae.normalization import normalize_in

        x = x.astype(cfg.jax_dtype)
        target = target.astype(cfg.jax_dtype)
        x_norm, stats = normalize_in(cfg.normalize_activations, x)
        center = params["b_dec"] if cfg.apply_b_dec_to_input else None
        x_in = x_norm if center is None else x_norm - center
        hidden_pre, f, encoded = encode(cfg, ctx, params, x_norm, center, x_in)
        x_hat, decoded = cls.train_reconstruct(cfg, ctx, params, f, x, stats)  # [B, d_out]
        fwd = ForwardPass(
            x, x_in, x_norm, center, target, hidden_pre, f, x_hat, stats, {**encoded, **decoded}
        )
        losses = {"mse_loss": mean_sq_error(x_hat, target)}
        losses.update(cls.aux_losses(cfg, ctx, params, fwd, inputs))
        fire_counts, l0 = firing_stats(jax.lax.stop_gradient(f))
        return TrainOutput(
            loss=sum(losses.values()),
            losses=losses,
            x_hat=x_hat,
            fire_counts=fire_counts,
            l0=l0,
            extras=cls.train_extras(cfg, ctx, fwd),
        )

    @classmethod
    def train_encode(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x_norm: jax.Array,
        center: jax.Array | None,
        x_in: jax.Array,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """(hidden_pre [B, d_sae], f [B, d_sae], other intermediates) in training."""
        hidden_pre = cls.train_pre_activation(cfg, ctx, params, x_norm, center)
        return hidden_pre, cls.train_activation(cfg, ctx, params, hidden_pre, x_in), {}

    @classmethod
    def train_pre_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        x: jax.Array,
        center: jax.Array | None,
    ) -> jax.Array:
        """`pre_activation` of `x - center` (see `affine_encoder`). [B, d_sae]"""
        return affine_encoder(x, center, params["W_enc"], params["b_enc"], ctx.weight_grad_layout)

    @classmethod
    def train_activation(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        hidden_pre: jax.Array,
        x: jax.Array,
    ) -> jax.Array:
        """Latents in training (straight-through estimators, sharded top-k). [B, d_sae]"""
        return cls.activation(cfg, params, hidden_pre, x)

    @classmethod
    def train_reconstruct(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        f: jax.Array,
        x: jax.Array,
        stats: Any,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(reconstruction [B, d_out], intermediates the auxiliary losses reuse)."""
        return cls.train_output(cfg, ctx, params, f, x, stats), {}

    @classmethod
    def train_output(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        f: jax.Array,
        x: jax.Array,
        stats: Any,
    ) -> jax.Array:
        """Reconstruction from latents: decode, skip connection, output de-normalisation."""
        from jsae.normalization import normalize_out

        y = cls.decode(cfg, params, f, False, ctx.weight_grad_layout)
        if cls.is_transcoder:
            skip = cls.skip(cfg, params, x)
            return y if skip is None else y + skip
        return normalize_out(cfg.normalize_activations, y, stats)

    @classmethod
    def aux_losses(
        cls,
        cfg: SAEConfig,
        ctx: TrainContext,
        params: Params,
        fwd: ForwardPass,
        inputs: TrainInputs,
    ) -> dict[str, jax.Array]:
        """Standard SAE sparsity: l1 · mean_b ||f ⊙ ||W_dec rows|| ||_p."""
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)  # [d_sae]
        if ctx.settings.lp_norm == 1:
            # f is this class's ReLU output (>= 0; other activations override aux_losses), so
            # mean_b Σ_i |f_bi| n_i = Σ_i n_i mean_b f_bi: no [B, d_sae] product, abs or sign.
            f = fwd.f.reshape(-1, fwd.f.shape[-1])  # [B, d_sae]
            mean_f = column_sum(f) / f.shape[0]  # [d_sae]
            return {"l1_loss": inputs.coefficients["l1"] * jnp.dot(mean_f, norms)}
        sparsity = lp_norm(fwd.f * norms, ctx.settings.lp_norm)  # [B]
        return {"l1_loss": jnp.mean(inputs.coefficients["l1"] * sparsity)}

    @classmethod
    def train_extras(cls, cfg: SAEConfig, ctx: TrainContext, fwd: ForwardPass) -> Params:
        """Values `update_buffers` needs from the forward pass."""
        return {}

    @classmethod
    def update_buffers(
        cls, cfg: SAEConfig, ctx: TrainContext, buffers: Params, extras: Params
    ) -> Params:
        """Buffers after a step (BatchTopK's threshold EMA)."""
        return buffers

    @classmethod
    def project_params(cls, cfg: SAEConfig, ctx: TrainContext, params: Params) -> Params:
        """Constraints applied after each optimiser update (JumpReLU keeps thresholds >= 0)."""
        return params
