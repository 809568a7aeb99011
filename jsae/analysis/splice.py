"""Interventions as data: hooks that splice SAEs into a model, edit features, steer, ablate.

Every hook here is a small pytree (its arrays are traced, its settings static), so
`model.run_with_hooks(tokens, hooks)` compiles once and reuses the compiled forward for new
SAE weights, vectors or feature indices of the same shapes. Python numbers in them are static:
pass `jnp.asarray(...)` for values you will vary.

    hooks = splice_sae(sae)                                   # x -> sae(x) at its hook
    hooks = splice_sae(sae, use_error_term=True, edit=SetFeatures([12], 0.0))  # ablate latent 12
    hooks = {"blocks.6.hook_resid_post": Steer(4.0 * sae.W_dec[12])}          # steering
    logits = model.run_with_hooks(tokens, hooks)

With `use_error_term=True` the SAE's reconstruction error is added back, so the spliced model
is the original model exactly, except for what `edit` changes (SAELens's semantics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from jsae.errors import ConfigError
from jsae.sae import SAE, cfg_arch

Hook = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------- feature edits


@dataclass(frozen=True)
class SetFeatures:
    """Set latents `indices` to `values` (0 ablates them; a positive value clamps them on)."""

    indices: Any
    values: Any = 0.0

    def __call__(self, f: jax.Array) -> jax.Array:
        idx = jnp.asarray(self.indices, jnp.int32)
        return f.at[..., idx].set(jnp.asarray(self.values, f.dtype))


@dataclass(frozen=True)
class ScaleFeatures:
    """Multiply latents `indices` by `factor`."""

    indices: Any
    factor: Any

    def __call__(self, f: jax.Array) -> jax.Array:
        idx = jnp.asarray(self.indices, jnp.int32)
        return f.at[..., idx].multiply(jnp.asarray(self.factor, f.dtype))


jax.tree_util.register_dataclass(SetFeatures, data_fields=["indices", "values"], meta_fields=[])
jax.tree_util.register_dataclass(ScaleFeatures, data_fields=["indices", "factor"], meta_fields=[])


# --------------------------------------------------------------------------- activation hooks


@dataclass(frozen=True)
class SAESplice:
    """Replace the activation by the SAE's reconstruction of it.

    `edit(f) -> f'` changes the latents before decoding. `head_index` (SAELens's
    `hook_head_index`) applies the SAE to one attention head of a `[..., n_heads, d_head]` hook.
    """

    sae: SAE
    edit: Any = None
    use_error_term: bool = False
    head_index: int | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.head_index is not None:
            _check_head_axis(x, self.head_index, "SAE")
            head = self.sae.forward(
                x[..., self.head_index, :],
                use_error_term=self.use_error_term,
                edit_features=self.edit,
            )
            return x.at[..., self.head_index, :].set(head.astype(x.dtype))
        out = self.sae.forward(x, use_error_term=self.use_error_term, edit_features=self.edit)
        return out.astype(x.dtype)


@dataclass(frozen=True)
class Steer:
    """Add `scale * vector` to the activation (at every position, or only at `positions`).

    On an attention hook `[B, T, n_heads, d_head]`: `head_index` adds a `[d_head]` vector to
    that head only; `flat_heads` reads a `[n_heads * d_head]` vector (a hook_z SAE's decoder
    row) as one `[d_head]` piece per head. `per_token_shape` reshapes the vector to whatever
    the activation's per-token shape is (a transcoder's decoder row, flat whatever it writes).
    """

    vector: Any
    scale: Any = 1.0
    positions: Any = None
    head_index: int | None = None
    flat_heads: bool = False
    per_token_shape: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        delta = (jnp.asarray(self.scale) * jnp.asarray(self.vector)).astype(x.dtype)
        pos = slice(None) if self.positions is None else jnp.asarray(self.positions, jnp.int32)
        if self.head_index is not None:
            _check_head_axis(x, self.head_index, "steering vector")
            return x.at[:, pos, self.head_index, :].add(delta)
        if self.flat_heads:
            _check_head_axis(x, None, "steering vector")
            delta = delta.reshape(x.shape[-2:])  # [n_heads, d_head]
        elif self.per_token_shape:
            delta = delta.reshape(x.shape[2:])
        if self.positions is None:
            return x + delta
        return x.at[:, pos].add(delta)


def _check_head_axis(x: jax.Array, head_index: int | None, what: str) -> None:
    """Refuse a per-head intervention on an activation without a head axis (indexing
    `[B, T, d]` at a head index would silently edit a sequence position instead)."""
    if x.ndim == 4 and head_index is not None and not -x.shape[2] <= head_index < x.shape[2]:
        raise ConfigError(
            f"this {what} acts on attention head {head_index}, but the hook has {x.shape[2]} "
            f"heads: use a head index in 0..{x.shape[2] - 1}."
        )
    if x.ndim != 4:
        where = "" if head_index is None else f" (head {head_index})"
        raise ConfigError(
            f"this {what} acts per attention head{where}, but the hook's activation has shape "
            f"{tuple(x.shape)}, not [batch, pos, n_heads, d_head]: use an attention hook such "
            "as 'blocks.L.attn.hook_z', or an SAE without hook_head_index."
        )


@dataclass(frozen=True)
class Ablate:
    """Replace the activation by `value` (zeros by default; pass a mean for mean-ablation)."""

    value: Any = 0.0

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.value, x.dtype), x.shape)


jax.tree_util.register_dataclass(
    SAESplice, data_fields=["sae", "edit"], meta_fields=["use_error_term", "head_index"]
)
jax.tree_util.register_dataclass(
    Steer,
    data_fields=["vector", "scale", "positions"],
    meta_fields=["head_index", "flat_heads", "per_token_shape"],
)
jax.tree_util.register_dataclass(Ablate, data_fields=["value"], meta_fields=[])


# --------------------------------------------------------------------------- transcoders


@dataclass(eq=False)
class _Carry:
    """Passes the transcoder's input from its read hook to its write hook within one trace.

    It is a static field of both hooks, so it is part of the compile-cache key. Carries compare
    by `link`, the (input, output) views they connect, not by identity (they hold nothing
    between traces): a new `splice_sae` call reuses the compiled forward, while hooks that
    pair their inputs and outputs differently compile their own.
    """

    link: tuple = ()
    value: Any = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Carry) and other.link == self.link

    def __hash__(self) -> int:
        return hash((_Carry, self.link))


def _cut(acts: jax.Array, head_index: int | None) -> jax.Array:
    """A transcoder's view of a hook: one head, all heads flattened, or the activation as is."""
    if head_index is not None:
        _check_head_axis(acts, head_index, "transcoder")
        return acts[..., head_index, :]
    return acts.reshape(*acts.shape[:2], -1) if acts.ndim == 4 else acts


def _paste(acts: jax.Array, value: jax.Array, head_index: int | None) -> jax.Array:
    """`acts` with the transcoder's view of it replaced by `value`."""
    value = value.astype(acts.dtype)
    if head_index is not None:
        return acts.at[..., head_index, :].set(value)
    return value.reshape(acts.shape)


@dataclass(frozen=True)
class _TranscoderRead:
    carry: _Carry = field(default_factory=_Carry)
    head_index: int | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        self.carry.value = _cut(x, self.head_index)
        return x


@dataclass(frozen=True)
class _TranscoderWrite:
    sae: SAE
    edit: Any = None
    carry: _Carry = field(default_factory=_Carry)
    use_error_term: bool = False
    head_index: int | None = None  # of the output hook

    def __call__(self, acts: jax.Array) -> jax.Array:
        x, self.carry.value = self.carry.value, None
        if x is None:
            raise ConfigError(
                f"transcoder output hook {self.sae.cfg.metadata.hook_name_out!r} ran before its "
                f"input hook {self.sae.cfg.metadata.hook_name!r}: the input must come first."
            )
        y = _cut(acts, self.head_index)
        out = self.sae.forward(x, edit_features=self.edit)
        if self.use_error_term:
            clean = out if self.edit is None else self.sae.forward(x)
            out = out + jax.lax.stop_gradient(y - clean.astype(y.dtype))
        return _paste(acts, out, self.head_index)


@dataclass(frozen=True)
class _TranscoderReadWrite:
    """A transcoder whose input and output are views of the same hook."""

    read: _TranscoderRead
    write: _TranscoderWrite

    def __call__(self, acts: jax.Array) -> jax.Array:
        return self.write(self.read(acts))


jax.tree_util.register_dataclass(
    _TranscoderRead, data_fields=[], meta_fields=["carry", "head_index"]
)
jax.tree_util.register_dataclass(
    _TranscoderWrite,
    data_fields=["sae", "edit"],
    meta_fields=["carry", "use_error_term", "head_index"],
)
jax.tree_util.register_dataclass(
    _TranscoderReadWrite, data_fields=["read", "write"], meta_fields=[]
)


# --------------------------------------------------------------------------- builders


def splice_sae(
    sae: SAE,
    *,
    use_error_term: bool = False,
    edit: Any = None,
    hook_name: str | None = None,
) -> dict[str, Hook]:
    """Hooks that splice `sae` in at `hook_name` (default: the SAE's `metadata.hook_name`).

    A transcoder reads its input at `hook_name` and replaces the activation at
    `metadata.hook_name_out` with its output (one head of either where `hook_head_index` /
    `hook_head_index_out` say so; a head-shaped hook's heads are otherwise flattened, as the
    transcoder was trained).
    """
    meta = sae.cfg.metadata
    name = hook_name or meta.hook_name
    if not name:
        raise ConfigError(
            "this SAE's metadata has no hook_name: pass hook_name='blocks.L.hook_...' to say "
            "where it belongs."
        )
    if cfg_arch(sae.cfg).is_transcoder:
        if not meta.hook_name_out:
            raise ConfigError(
                "this transcoder's metadata has no hook_name_out: set it to the hook its "
                "output replaces (e.g. 'blocks.L.hook_mlp_out')."
            )
        carry = _Carry((name, meta.hook_head_index, meta.hook_name_out, meta.hook_head_index_out))
        read = _TranscoderRead(carry, meta.hook_head_index)
        write = _TranscoderWrite(sae, edit, carry, use_error_term, meta.hook_head_index_out)
        if meta.hook_name_out == name:
            return {name: _TranscoderReadWrite(read, write)}
        return {name: read, meta.hook_name_out: write}
    head = getattr(meta, "hook_head_index", None)
    return {name: SAESplice(sae, edit, use_error_term, head)}


def sae_hooks(saes: SAE | Iterable[SAE], *, use_error_term: bool = False) -> dict[str, Hook]:
    """Hooks splicing one or several SAEs in at their own hook points."""
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    hooks: dict[str, Hook] = {}
    for sae in saes:
        for name, hook in splice_sae(sae, use_error_term=use_error_term).items():
            if name in hooks:
                raise ConfigError(
                    f"two SAEs hook {name!r}; splice them one at a time or compose them yourself."
                )
            hooks[name] = hook
    return hooks


def ablate_features(sae: SAE, indices: Any) -> dict[str, Hook]:
    """Zero SAE latents `indices` and keep everything else exact (error term on)."""
    return splice_sae(sae, use_error_term=True, edit=SetFeatures(jnp.asarray(indices), 0.0))


def clamp_features(sae: SAE, indices: Any, values: Any) -> dict[str, Hook]:
    """Fix SAE latents `indices` at `values` and keep everything else exact (error term on)."""
    return splice_sae(
        sae, use_error_term=True, edit=SetFeatures(jnp.asarray(indices), jnp.asarray(values))
    )


def feature_steering(
    sae: SAE, indices: Any, coefficients: Any, *, hook_name: str | None = None
) -> dict[str, Hook]:
    """Add `sum_i coefficients[i] * W_dec[indices[i]]` at the SAE's hook (steering vectors).

    The vector goes where the SAE writes: its hook (one head for an SAE with
    `hook_head_index`, every head's slice for a `hook_z` SAE over all heads), or a
    transcoder's output hook `hook_name_out` (its decoder rows live there, not at its input).
    """
    idx = jnp.atleast_1d(jnp.asarray(indices, jnp.int32))
    coef = jnp.broadcast_to(jnp.asarray(coefficients, sae.W_dec.dtype), idx.shape)
    vector = coef @ sae.W_dec[idx]  # [d_out]
    meta = sae.cfg.metadata
    transcoder = cfg_arch(sae.cfg).is_transcoder
    name = hook_name or (meta.hook_name_out if transcoder else meta.hook_name)
    if not name:
        key = "hook_name_out" if transcoder else "hook_name"
        raise ConfigError(
            f"this {'transcoder' if transcoder else 'SAE'}'s metadata has no {key}: pass "
            "hook_name=... (the hook its decoder writes)."
        )
    if transcoder:  # a head-shaped output hook without a head index: its heads, flattened
        return {name: Steer(vector, head_index=meta.hook_head_index_out, per_token_shape=True)}
    head = meta.hook_head_index
    flat_heads = sae.cfg.reshape_activations == "hook_z"
    return {name: Steer(vector, head_index=head, flat_heads=flat_heads)}


def merge_hooks(*hook_dicts: Mapping[str, Hook]) -> dict[str, Hook]:
    """Several hook dicts as one; the same hook name twice is refused."""
    merged: dict[str, Hook] = {}
    for hooks in hook_dicts:
        for name, hook in hooks.items():
            if name in merged:
                raise ConfigError(f"hook {name!r} is set twice; compose the functions yourself.")
            merged[name] = hook
    return merged
