"""Hook points on Flax modules: read and replace activations through `nn.intercept_methods`.

A hook name (`blocks.3.hook_resid_post`) resolves to a `Site`: one module call's first input
or first output, plus how to turn that raw value into the activation TransformerLens users
expect (split heads, undo an embedding scale, fold flat token axes back into `[B, T]`).

`HookRun` is the interceptor for one forward pass. It records the requested activations,
applies replacement functions, and, when asked, stops the forward as soon as every requested
activation is recorded by raising `StopForward`: nothing after the deepest hook is traced, so
under `jit` nothing after it is computed either. All of this happens while tracing, so it
works unchanged inside `jax.jit`, `jax.grad` and `jax.vmap`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from jsae.errors import ShapeError

ModulePath = tuple[str, ...]


@dataclass(frozen=True)
class Site:
    """Where a hook lives: the first input (`port="in"`) or output of the module at `path`.

    The activation at the hook is `scale * raw`, reshaped to `[B, T, heads, -1]` when `heads`
    is set and to `[B, T, ...]` when the module sees flattened tokens (`flat`). With `plus`,
    the activation is `raw + value at plus` (TransformerLens's `resid_mid = resid_pre +
    attn_out`); a replacement then writes `new - value at plus` back into `raw`.
    """

    path: ModulePath
    port: str = "out"
    heads: int | None = None
    scale: float | None = None
    flat: bool = False
    plus: Site | None = None

    @property
    def key(self) -> tuple[ModulePath, str]:
        return (self.path, self.port)


class StopForward(Exception):
    """Raised inside the forward pass once every requested activation has been recorded."""


# --------------------------------------------------------------------------- value plumbing


def first_of(value: Any) -> Any:
    """The hidden state in a module's return value (first element of a tuple)."""
    return value[0] if isinstance(value, tuple) else value


def with_first(value: Any, new: Any) -> Any:
    """`value` with its hidden state replaced by `new`."""
    return (new, *value[1:]) if isinstance(value, tuple) else new


_FIRST_PARAM: dict[type, str | None] = {}


def _first_param_name(module: Any) -> str | None:
    cls = type(module)
    if cls not in _FIRST_PARAM:
        params = list(inspect.signature(cls.__call__).parameters)
        _FIRST_PARAM[cls] = params[1] if len(params) > 1 else None
    return _FIRST_PARAM[cls]


def get_input(module: Any, args: tuple, kwargs: dict) -> Any:
    """The first argument of a module call, passed positionally or by keyword."""
    if args:
        return args[0]
    return kwargs[_first_param_name(module)]


def set_input(module: Any, args: tuple, kwargs: dict, new: Any) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, _first_param_name(module): new}


# --------------------------------------------------------------------------- the interceptor


@dataclass
class _Action:
    """One thing to do at a site: record the activation, replace it, or stash it for `plus`."""

    order: int
    kind: str  # "hook" | "capture" | "stash"
    name: str
    site: Site
    fn: Callable[[jax.Array], jax.Array] | None = None


@dataclass
class HookRun:
    """Interceptor for one forward pass (a fresh one per trace)."""

    sites: Mapping[str, Site]
    capture: Sequence[str] = ()
    hooks: Mapping[str, Callable[[jax.Array], jax.Array]] = field(default_factory=dict)
    stop_early: bool = False
    tokens_shape: tuple[int, int] = (0, 0)
    patches: Sequence[Callable[..., Any]] = ()
    cache: dict[str, jax.Array] = field(default_factory=dict)
    _stash: dict[tuple[ModulePath, str], jax.Array] = field(default_factory=dict)
    _plan: dict[tuple[ModulePath, str], list[_Action]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = {name: i for i, name in enumerate(self.sites)}
        for name, fn in self.hooks.items():
            self._add(_Action(order[name], "hook", name, self.sites[name], fn))
        for name in self.capture:
            self._add(_Action(order[name], "capture", name, self.sites[name]))
        for actions in self._plan.values():
            # hooks before captures at one site, so the cache sees what flows downstream
            actions.sort(key=lambda a: (a.order, a.kind != "hook"))

    def _add(self, action: _Action) -> None:
        self._plan.setdefault(action.site.key, []).append(action)
        plus = action.site.plus
        if plus is not None and not any(a.kind == "stash" for a in self._plan.get(plus.key, [])):
            # stash after everything else at that site: the value that actually flows on
            self._plan.setdefault(plus.key, []).append(_Action(1 << 30, "stash", "", plus))

    # ------------------------------------------------------------------ reading and writing

    def _read(self, site: Site, raw: jax.Array) -> jax.Array:
        x = raw
        if site.flat and x.ndim == 2:
            x = x.reshape(*self.tokens_shape, x.shape[-1])
        if site.heads is not None:
            x = x.reshape(*x.shape[:-1], site.heads, x.shape[-1] // site.heads)
        if site.scale is not None:
            x = x * jnp.asarray(site.scale, x.dtype)
        if site.plus is not None:
            x = x + self._stash[site.plus.key]
        return x

    def _write(self, site: Site, raw: jax.Array, new: jax.Array, name: str) -> jax.Array:
        expected = jax.eval_shape(lambda r: self._read(site, r), raw).shape
        if new is None:
            raise ShapeError(
                f"the hook function for {name!r} returned None; it must return the new "
                "activation (JAX arrays are not edited in place: return e.g. x.at[...].set(v) "
                "or x + delta, or x itself to leave it unchanged)."
            )
        try:
            new = jnp.asarray(new)
        except (TypeError, ValueError) as exc:
            raise ShapeError(
                f"the hook function for {name!r} returned a {type(new).__name__}, not an array; "
                "it must return the new activation."
            ) from exc
        if new.shape != expected:
            raise ShapeError(
                f"the hook function for {name!r} returned shape {tuple(new.shape)}; "
                f"it must return the shape it was given, {tuple(expected)}."
            )
        if site.plus is not None:
            new = new - self._stash[site.plus.key]
        if site.scale is not None:
            new = new / jnp.asarray(site.scale, new.dtype)
        return new.reshape(raw.shape).astype(raw.dtype)

    def _apply(self, actions: list[_Action], raw: jax.Array) -> jax.Array:
        for action in actions:
            if action.kind == "stash":
                self._stash[action.site.key] = raw
            elif action.kind == "capture":
                self.cache[action.name] = self._read(action.site, raw)
            else:
                new = action.fn(self._read(action.site, raw))
                raw = self._write(action.site, raw, new, action.name)
        return raw

    def _maybe_stop(self) -> None:
        if self.stop_early and self.capture and len(self.cache) == len(self.capture):
            raise StopForward

    # ------------------------------------------------------------------ flax interceptor

    def __call__(self, next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        for patch in self.patches:
            patched = patch(next_fun, args, kwargs, context)
            if patched is not NotImplemented:
                return patched
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = tuple(context.module.scope.path)
        before = self._plan.get((path, "in"))
        after = self._plan.get((path, "out"))
        if before:
            x = self._apply(before, get_input(context.module, args, kwargs))
            args, kwargs = set_input(context.module, args, kwargs, x)
            self._maybe_stop()
        out = next_fun(*args, **kwargs)
        if after:
            out = with_first(out, self._apply(after, first_of(out)))
            self._maybe_stop()
        return out
