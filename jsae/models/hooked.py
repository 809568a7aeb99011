"""`HookedModel`: a Flax causal LM whose activations can be read and replaced by hook name.

    model = jsae.load_model("gpt2")
    logits = model(tokens)                                            # [B, T, V]
    _, cache = model.run_with_cache(tokens, ["blocks.5.hook_resid_post"])  # stops after block 5
    logits = model.run_with_hooks(tokens, {"blocks.5.hook_resid_post": lambda x: x * 0})

The methods use `model.params` and compile once per distinct set of hook names (and hook
functions). The `apply*` functions take the params explicitly and are pure: call them inside
your own `jax.jit`, `grad` or `vmap`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jsae.errors import ConfigError, JsaeError, ShapeError, choices_hint
from jsae.models.families import Family, flax_module, hook_sites
from jsae.models.hooks import HookRun, ModulePath, Site, StopForward
from jsae.models.rope import rotary_patch

Hook = Callable[[jax.Array], jax.Array]

_JIT_CACHE_SIZE = 64


def module_paths(params: Mapping[str, Any]) -> list[ModulePath]:
    """Every module path that owns parameters (the parameter tree minus its leaves)."""
    paths: set[ModulePath] = set()
    for key_path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(str(getattr(k, "key", k)) for k in key_path)
        for i in range(1, len(keys)):
            paths.add(keys[:i])
    return sorted(paths)


class HookedModel:
    """A language model with TransformerLens-style hook points (see `hook_names()`)."""

    def __init__(
        self,
        module: nn.Module,
        params: Mapping[str, Any],
        config: Any,
        family: Family,
        tokenizer: Any = None,
        name_or_path: str | None = None,
    ):
        self.module = module
        self.params = params
        self.config = config
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self._family = family
        self.family: str = family.name
        self.n_layers: int = int(config.num_hidden_layers)
        self.d_model: int = int(config.hidden_size)
        self.n_heads: int = int(config.num_attention_heads)
        self.n_ctx: int | None = (
            None if family.positions == "none" else int(config.max_position_embeddings)
        )
        self.dtype = getattr(module, "dtype", jnp.float32)
        sites = hook_sites(family, config)
        self._standard_names = list(sites)
        for path in module_paths(params):
            sites.setdefault(".".join(path), Site(path))
        self._sites: dict[str, Site] = sites
        self._patches = family_patches(family, config)
        self._jitted: collections.OrderedDict[Any, Callable] = collections.OrderedDict()
        self._shapes: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, config: Any, *, seed: int = 0, dtype: Any = jnp.float32, tokenizer: Any = None
    ) -> HookedModel:
        """A randomly initialised model of a Hugging Face config (for tests, demos, benchmarks)."""
        from jsae.models.families import family_for
        from jsae.models.loading import normalize_config

        config = normalize_config(config)
        family = family_for(config)
        module = flax_module(family, config, dtype)
        # jitted: some Flax classes build [max_positions, max_positions] masks at setup, which
        # XLA fuses away under jit but eager execution would materialise
        params = jax.jit(lambda key: init_params(module, family, config, key))(jax.random.key(seed))
        if getattr(config, "tie_word_embeddings", False):  # a head of its own: make it the tie
            from flax.traverse_util import flatten_dict, unflatten_dict

            from jsae.models.weights import tie_lm_head

            flat = flatten_dict(params)
            shapes = dict(flat)
            flat = {k: v for k, v in flat.items() if k[-2:] != ("lm_head", "kernel")}
            tie_lm_head(flat, shapes)
            params = unflatten_dict(flat)
        return cls(module, params, config, family, tokenizer=tokenizer)

    # ------------------------------------------------------------------ hook names

    def hook_names(self) -> list[str]:
        """Every valid hook name: TransformerLens names in forward order, then module paths."""
        return list(self._sites)

    def hook_shape(self, name: str) -> tuple[int, ...]:
        """Per-token shape of the activation at `name`, e.g. `(d_model,)` or `(n_heads, d_head)`."""
        self._check_names([name])
        if name not in self._shapes:
            ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
            _, cache = jax.eval_shape(
                lambda p, x: self.apply_with_cache(p, x, [name]), self.params, ids
            )
            self._shapes[name] = tuple(cache[name].shape[2:])
        return self._shapes[name]

    def _check_names(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._sites:
                raise ConfigError(
                    f"unknown hook name {name!r} for this {self.family} model."
                    + choices_hint(name, self._sites)
                    + f" Valid names: {self._describe_names()}; or any module path such as "
                    f"{'.'.join(module_paths(self.params)[-1])!r}."
                )

    def _describe_names(self) -> str:
        top = [n for n in self._standard_names if not n.startswith("blocks.")]
        per_block = [
            n.removeprefix("blocks.0.") for n in self._standard_names if n.startswith("blocks.0.")
        ]
        last = self.n_layers - 1
        return ", ".join(top + [f"blocks.L.{n}" for n in per_block]) + f" with L in 0..{last}"

    # ------------------------------------------------------------------ pure functions

    def run(
        self,
        params: Mapping[str, Any],
        input_ids: Any,
        *,
        attention_mask: Any = None,
        names: Sequence[str] = (),
        hooks: Mapping[str, Hook] | None = None,
        stop_at_layer: bool = False,
    ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """The one forward pass everything else calls: hooks applied, `names` recorded.

        Returns `(logits [B, T, V], {name: [B, T, *hook_shape]})`; with `stop_at_layer` the
        forward ends right after the last of `names` is recorded and logits are None.
        """
        names = list(dict.fromkeys(names))
        hooks = dict(hooks or {})
        self._check_names([*names, *hooks])
        input_ids, attention_mask = self._check_inputs(input_ids, attention_mask)
        run = HookRun(
            sites=self._sites,
            capture=names,
            hooks=hooks,
            stop_early=stop_at_layer and bool(names),
            tokens_shape=tuple(input_ids.shape),
            patches=self._patches,
        )
        logits = None
        try:
            with nn.intercept_methods(run):
                out = self.module.apply(
                    {"params": params},
                    input_ids,
                    **_call_kwargs(self._family, input_ids, attention_mask),
                )
            logits = out[0]
        except StopForward:
            pass
        missing = [n for n in names if n not in run.cache]
        if missing:
            raise JsaeError(f"hook(s) {missing} were never reached in the forward pass.")
        if stop_at_layer and names:
            logits = None
        return logits, {n: run.cache[n] for n in names}

    def apply(
        self, params: Mapping[str, Any], input_ids: Any, attention_mask: Any = None
    ) -> jax.Array:
        """Logits `[B, T, V]`."""
        return self.run(params, input_ids, attention_mask=attention_mask)[0]

    def apply_with_cache(
        self,
        params: Mapping[str, Any],
        input_ids: Any,
        names: Sequence[str],
        *,
        attention_mask: Any = None,
        stop_at_layer: bool = True,
    ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """(logits or None, {name: activation}); see `run_with_cache`."""
        return self.run(
            params,
            input_ids,
            attention_mask=attention_mask,
            names=names,
            stop_at_layer=stop_at_layer,
        )

    def apply_with_hooks(
        self,
        params: Mapping[str, Any],
        input_ids: Any,
        hooks: Mapping[str, Hook],
        *,
        attention_mask: Any = None,
    ) -> jax.Array:
        """Logits with each hook's activation replaced by `hooks[name](activation)`."""
        return self.run(params, input_ids, attention_mask=attention_mask, hooks=hooks)[0]

    # ------------------------------------------------------------------ jitted methods

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> jax.Array:
        """Logits `[B, T, V]` (jitted)."""
        inputs = self._check_inputs(input_ids, attention_mask)
        return self._jit(("logits",), lambda: jax.jit(self.apply))(self.params, *inputs)

    def run_with_cache(
        self,
        input_ids: Any,
        names: Sequence[str] | str,
        *,
        attention_mask: Any = None,
        stop_at_layer: bool = True,
    ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """Activations at `names`, `{name: [B, T, *hook_shape(name)]}` (jitted).

        With `stop_at_layer=True` (default) the forward pass ends at the deepest requested hook,
        so the cost grows with that hook's depth, and the logits returned are None. With
        `stop_at_layer=False` the full forward runs and its logits are returned too.
        """
        names = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
        self._check_names(names)
        inputs = self._check_inputs(input_ids, attention_mask)
        key = ("cache", names, bool(stop_at_layer))

        def build() -> Callable:
            return jax.jit(
                lambda p, x, m: self.run(
                    p, x, attention_mask=m, names=names, stop_at_layer=stop_at_layer
                )
            )

        return self._jit(key, build)(self.params, *inputs)

    def run_with_hooks(
        self, input_ids: Any, hooks: Mapping[str, Hook], *, attention_mask: Any = None
    ) -> jax.Array:
        """Logits with activations replaced: `hooks[name](activation) -> new activation` (jitted).

        Arrays inside pytree hooks (jsae's splice helpers, `jax.tree_util.Partial`) are traced
        arguments: new values reuse the compiled function. Plain Python functions are compiled
        in; a new function object compiles anew.
        """
        self._check_names(hooks)
        inputs = self._check_inputs(input_ids, attention_mask)
        leaves, treedef = jax.tree_util.tree_flatten(dict(hooks))
        is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
        dynamic = [x for x, a in zip(leaves, is_array, strict=True) if a]
        static = tuple(_StaticKey(x) for x, a in zip(leaves, is_array, strict=True) if not a)
        key = ("hooks", treedef, tuple(is_array), static)

        def build() -> Callable:
            def fn(p: Any, x: Any, m: Any, dyn: list) -> jax.Array:
                it_dyn, it_static = iter(dyn), iter(s.value for s in static)
                rebuilt = [next(it_dyn) if a else next(it_static) for a in is_array]
                return self.apply_with_hooks(
                    p, x, jax.tree_util.tree_unflatten(treedef, rebuilt), attention_mask=m
                )

            return jax.jit(fn)

        return self._jit(key, build)(self.params, *inputs, dynamic)

    def run_with_saes(
        self,
        input_ids: Any,
        saes: Any,
        *,
        use_error_term: bool = False,
        attention_mask: Any = None,
    ) -> jax.Array:
        """Logits with each SAE spliced in at its `cfg.metadata.hook_name`.

        See `jsae.analysis.splice` for transcoders, head-indexed SAEs and feature edits.
        """
        from jsae.analysis.splice import sae_hooks

        return self.run_with_hooks(
            input_ids, sae_hooks(saes, use_error_term=use_error_term), attention_mask=attention_mask
        )

    def _jit(self, key: Any, build: Callable[[], Callable]) -> Callable:
        fn = self._jitted.get(key)
        if fn is None:
            fn = self._jitted[key] = build()
            if len(self._jitted) > _JIT_CACHE_SIZE:
                self._jitted.popitem(last=False)
        else:
            self._jitted.move_to_end(key)
        return fn

    # ------------------------------------------------------------------ inputs

    def _check_inputs(self, input_ids: Any, attention_mask: Any) -> tuple[jax.Array, Any]:
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ShapeError(
                f"input_ids must be integer token ids of shape [batch, seq], got "
                f"{input_ids.dtype} {tuple(input_ids.shape)}; add a batch axis with x[None]."
            )
        check_token_ids(input_ids, getattr(self.config, "vocab_size", None))
        seq = input_ids.shape[1]
        if self.n_ctx is not None and seq > self.n_ctx:
            raise ConfigError(
                f"sequence length {seq} exceeds this model's {self.n_ctx} positions "
                f"(config.max_position_embeddings); use a context of at most {self.n_ctx} tokens."
            )
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ShapeError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                    f"{tuple(input_ids.shape)}; they must match."
                )
        return input_ids, attention_mask

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write `config.json` + `flax_model.msgpack` (+ tokenizer); `jsae.load_model` reads it."""
        from flax.serialization import msgpack_serialize

        from jsae.fsutil import atomic_output_dir

        with atomic_output_dir(path, overwrite=overwrite) as tmp:
            self.config.to_json_file(str(Path(tmp) / "config.json"))
            host = jax.tree.map(np.asarray, self.params)
            (Path(tmp) / "flax_model.msgpack").write_bytes(msgpack_serialize({"params": host}))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
        return Path(path)

    def __repr__(self) -> str:
        return (
            f"HookedModel(family={self.family!r}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, n_ctx={self.n_ctx}, dtype={jnp.dtype(self.dtype).name}, "
            f"name_or_path={self.name_or_path!r})"
        )


class _StaticKey:
    """Hashable stand-in for a non-array hook leaf (by value when hashable, else by identity)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def _key(self) -> Any:
        try:
            hash(self.value)
            return (0, self.value)
        except TypeError:
            return (1, id(self.value))

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticKey) and self._key() == other._key()


def family_patches(family: Family, config: Any) -> tuple[Callable[..., Any], ...]:
    """Interceptor pieces that correct what the family's Flax class gets wrong (rotary)."""
    if not family.rope:
        return ()
    head_dim = getattr(config, "head_dim", None)
    head_dim = head_dim or config.hidden_size // config.num_attention_heads
    return (rotary_patch(config, head_dim),)


def check_token_ids(ids: Any, vocab_size: int | None) -> None:
    """Refuse token ids outside `[0, vocab_size)`: an embedding lookup would turn them into NaN
    (every later position too, through attention) or wrap negative ids silently. Traced ids
    (under the caller's jit) cannot be checked and pass."""
    if vocab_size is None or not np.size(ids):
        return
    try:
        low, high = int(np.min(ids)), int(np.max(ids))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ConfigError(
            f"token id {bad} is outside this model's vocabulary [0, {vocab_size}); are the "
            "tokens from this model's tokenizer?"
        )


def init_params(module: nn.Module, family: Family, config: Any, key: jax.Array) -> Any:
    """Random parameters for the module (under `jax.eval_shape`: their shapes only)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    with nn.intercept_methods(HookRun(sites={}, patches=family_patches(family, config))):
        return module.init(key, ids, **_call_kwargs(family, ids, None))["params"]


def _call_kwargs(family: Family, input_ids: jax.Array, attention_mask: Any) -> dict[str, Any]:
    """Keyword arguments of the family's module call for these tokens."""
    mask = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
    kwargs: dict[str, Any] = {"attention_mask": mask, "deterministic": True, "return_dict": False}
    if family.positions == "arange":
        kwargs["position_ids"] = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    elif family.positions == "cumsum":  # OPT: positions count real tokens only
        kwargs["position_ids"] = jnp.cumsum(mask, axis=1) * mask - 1
    return kwargs
