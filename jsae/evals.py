"""Evaluate an SAE: reconstruction, sparsity, and the model's behaviour with the SAE spliced in.

    metrics, feature_metrics = jsae.evals.run_evals(sae, model, tokens, EvalConfig.everything())
    metrics["model_performance_preservation"]["ce_loss_score"]       # "CE loss recovered"
    metrics["reconstruction_quality"]["explained_variance"]

Groups and key names are SAELens's (`sae_lens.evals.run_evals`), so results compare directly:

    model_behavior_preservation     kl_div_score, kl_div_with_ablation, kl_div_with_sae
    model_performance_preservation  ce_loss_score, ce_loss_with_ablation, ce_loss_with_sae,
                                    ce_loss_without_sae
    reconstruction_quality          explained_variance, explained_variance_legacy, mse, cossim
    shrinkage                       l2_norm_in, l2_norm_out, l2_ratio, relative_reconstruction_bias
    sparsity                        l0, l1 (+ jsae: dead_features, dense_features,
                                    mean_log10_feature_sparsity, below_1e-5, below_1e-6)
    token_stats                     total_tokens_eval_reconstruction,
                                    total_tokens_eval_sparsity_variance

Formulas (x the SAE input, x̂ its reconstruction, f the latents, per unmasked token t):

* `explained_variance = 1 - E_t ||x - x̂||² / (E_t ||x||² - ||E_t x||²)`: the fraction of the
  activations' total variance (summed over dimensions) that the SAE reconstructs, pooled over
  every evaluated token. This is the correct formula (SAELens >= 6.19, issue #659 / PR #665).
* `explained_variance_legacy = mean_t (1 - ||x_t - x̂_t||² / ||x_t - mean_batch x||²)`:
  SAELens's older per-token average of ratios (kept under this name by SAELens too).
* `explained_variance_saelens_6_18` (function only): what SAELens 6.18 reported as
  `explained_variance`; it subtracts the squared mean of x² rather than ||E x||², so its
  "total variance" is nearly the variance about zero. Use it only to compare with old numbers.
* `mse = mean_t ||x_t - x̂_t||²` (summed over dimensions, as SAELens >= 6.19; 6.18 divided
  each token's sum by the batch's token count instead, see `mse_saelens_6_18`).
* `cossim`, `l2_ratio = ||x̂||/||x||` (a norm below 1e-4 counts as 1),
  `relative_reconstruction_bias = E||x̂||² / E<x, x̂>` per batch, averaged over batches.
* `l0 = #(f != 0)`, `l1 = Σ|f|` per token.
* CE per position predicts the next token; `ce_loss_score = (CE_ablation - CE_sae) /
  (CE_ablation - CE_clean)`; `kl_div_score = (KL_ablation - KL_sae) / KL_ablation` with
  `KL(p_clean || p_new)` per token. "Ablation" replaces the activation by zeros.

A transcoder is measured where it stands in: x is the activation at its `hook_name_out`, x̂ its
output from the input at `hook_name`, and the splice and the ablation act on `hook_name_out`.

Tokens listed in `exclude_special_tokens` (default: the tokenizer's BOS/EOS/PAD/SEP) are left
out of every metric and keep their original activation when the SAE is spliced in.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.activations.tokenization import resolve_exclude_special_tokens
from jsae.errors import ConfigError, ShapeError

GROUPS = (
    "model_behavior_preservation",
    "model_performance_preservation",
    "reconstruction_quality",
    "shrinkage",
    "sparsity",
    "token_stats",
)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Which metrics to compute and on how many batches (SAELens's EvalConfig fields)."""

    batch_size_prompts: int | None = None  # contexts per batch (default: 8)
    n_eval_reconstruction_batches: int = 10  # batches for CE / KL with the SAE spliced in
    compute_kl: bool = False
    compute_ce_loss: bool = False
    n_eval_sparsity_variance_batches: int = 1  # batches for reconstruction and sparsity
    compute_l2_norms: bool = False
    compute_sparsity_metrics: bool = False
    compute_variance_metrics: bool = False
    compute_featurewise_density_statistics: bool = False
    compute_featurewise_weight_based_metrics: bool = False
    dense_threshold: float = 0.1  # jsae: a latent firing on more than this fraction is "dense"

    @classmethod
    def everything(cls, **overrides: Any) -> EvalConfig:
        """Every metric on (SAELens's `get_eval_everything_config`)."""
        on = {f.name: True for f in fields(cls) if f.name.startswith("compute_")}
        return cls(**{**on, **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown eval options {unknown}; valid: {sorted(known)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> EvalConfig:
        return dataclasses.replace(self, **changes)

    @property
    def downstream(self) -> bool:
        return self.compute_kl or self.compute_ce_loss

    @property
    def activations_based(self) -> bool:
        return (
            self.compute_l2_norms
            or self.compute_sparsity_metrics
            or self.compute_variance_metrics
            or self.compute_featurewise_density_statistics
        )


# ---------------------------------------------------------------------------- pure formulas


def explained_variance(x: Any, x_hat: Any) -> float:
    """1 - E||x - x̂||² / (E||x||² - ||E x||²) over the rows of `x [N, d]` (float64)."""
    acc = ExplainedVariance()
    acc.add(x, x_hat)
    return acc.compute()


def explained_variance_legacy(x: Any, x_hat: Any) -> np.ndarray:
    """Per-row 1 - ||x - x̂||² / ||x - mean_rows x||² (SAELens's `explained_variance_legacy`)."""
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    sse = ((x - x_hat) ** 2).sum(-1)
    return 1.0 - sse / ((x - x.mean(0)) ** 2).sum(-1)


def explained_variance_saelens_6_18(batches: Iterable[tuple[Any, Any]]) -> float:
    """The `explained_variance` SAELens 6.18 reported (a bug, fixed in SAELens PR #665).

    Per batch it kept `mean_t ||x_t||²` and the per-dimension `mean_t x_t²`, then computed
    `total = mean_b(mean_t ||x||²) - mean(concat_b(mean_t x²))²`: the squared mean of x²
    (a scalar) where the mean of x should be, so `total` is close to the variance about
    zero, not about the mean. Reproduced here only to compare with numbers from that version.
    """
    sums, per_dim, resid = [], [], []
    for x, x_hat in batches:
        x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        sums.append((x**2).sum(-1).mean())
        per_dim.append((x**2).mean(0))
        resid.append(((x - x_hat) ** 2).sum(-1).mean())
    total = np.mean(sums) - np.concatenate(per_dim).mean() ** 2
    return float(1.0 - np.mean(resid) / total)


def mse_saelens_6_18(batches: Iterable[tuple[Any, Any]]) -> float:
    """SAELens 6.18's `mse`: each token's ||x - x̂||² divided by its batch's token count."""
    values = []
    for x, x_hat in batches:
        x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        values.append(((x - x_hat) ** 2).sum(-1) / len(x))
    return float(np.concatenate(values).mean())


def per_token_ce(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Cross-entropy of predicting token t+1 at position t: `[B, T-1]`."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def per_token_kl(clean_logits: jax.Array, new_logits: jax.Array) -> jax.Array:
    """KL(p_clean || p_new) per position: `[B, T]`."""
    logp = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(new_logits.astype(jnp.float32), axis=-1)
    return (jnp.exp(logp) * (logp - logq)).sum(-1)


class ExplainedVariance:
    """Streaming explained variance over batches of rows, summed in float64 on the host."""

    def __init__(self) -> None:
        self.sum_x: np.ndarray | None = None
        self.sum_sq = 0.0
        self.sum_resid = 0.0
        self.n = 0

    def add(self, x: Any, x_hat: Any) -> None:
        x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        self.add_sums(x.sum(0), float((x**2).sum()), float(((x - x_hat) ** 2).sum()), len(x))

    def add_sums(self, sum_x: np.ndarray, sum_sq: float, sum_resid: float, n: int) -> None:
        sum_x = np.asarray(sum_x, np.float64)
        self.sum_x = sum_x if self.sum_x is None else self.sum_x + sum_x
        self.sum_sq += float(sum_sq)
        self.sum_resid += float(sum_resid)
        self.n += int(n)

    def compute(self) -> float:
        if self.n == 0 or self.sum_x is None:
            return float("nan")
        mean_x = self.sum_x / self.n
        total = self.sum_sq / self.n - float((mean_x**2).sum())
        mse = self.sum_resid / self.n
        if total < 1e-10:
            return 1.0 if mse < 1e-10 else 0.0
        return 1.0 - mse / total


# ---------------------------------------------------------------------------- per-batch stats


def _token_stats(x: jax.Array, x_hat: jax.Array, f: jax.Array, mask: jax.Array) -> dict[str, Any]:
    """Per-token statistics and masked sums of one batch (x, x̂ `[N, d]`, f `[N, d_sae]`)."""
    x = x.astype(jnp.float32)
    x_hat = x_hat.astype(jnp.float32)
    m = mask.astype(jnp.float32)
    n = m.sum()
    l2_in = jnp.linalg.norm(x, axis=-1)
    l2_out = jnp.linalg.norm(x_hat, axis=-1)
    dot = (x * x_hat).sum(-1)
    sse = ((x - x_hat) ** 2).sum(-1)
    mean_x = (x * m[:, None]).sum(0) / jnp.maximum(n, 1.0)
    var_t = ((x - mean_x) ** 2).sum(-1)
    fired = (f != 0) & mask[:, None]
    return {
        "l2_norm_in": l2_in,
        "l2_norm_out": l2_out,
        "l2_ratio": l2_out / jnp.where(jnp.abs(l2_in) < 1e-4, 1.0, l2_in),
        "x_hat_sq": l2_out**2,
        "dot": dot,
        "sse": sse,
        "explained_variance_legacy": 1.0 - sse / var_t,
        "cossim": dot / (l2_in * l2_out),
        "l0": (f != 0).sum(-1).astype(jnp.float32),
        "l1": jnp.abs(f).sum(-1).astype(jnp.float32),
        "sum_x": (x * m[:, None]).sum(0),
        "sum_sq": ((x**2).sum(-1) * m).sum(),
        "fired": fired.sum(0),
    }


class _Accumulator:
    """Collects masked per-token values over batches; means are taken over all tokens."""

    def __init__(self, d_sae: int) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.rrb: list[float] = []
        self.ev = ExplainedVariance()
        self.fired = np.zeros(d_sae, np.float64)
        self.prompts_fired = np.zeros(d_sae, np.float64)
        self.n_tokens = 0

    def add(self, stats: Mapping[str, Any], mask: np.ndarray, prompts_fired: np.ndarray) -> None:
        mask = np.asarray(mask, bool).reshape(-1)
        for key in (
            "l2_norm_in",
            "l2_norm_out",
            "l2_ratio",
            "sse",
            "explained_variance_legacy",
            "cossim",
            "l0",
            "l1",
        ):
            self.values.setdefault(key, []).append(np.asarray(stats[key], np.float64)[mask])
        x_hat_sq = np.asarray(stats["x_hat_sq"], np.float64)[mask]
        dot = np.asarray(stats["dot"], np.float64)[mask]
        self.rrb.append(float(x_hat_sq.mean() / dot.mean()) if mask.any() else float("nan"))
        sse = np.asarray(stats["sse"], np.float64)[mask]
        self.ev.add_sums(stats["sum_x"], float(stats["sum_sq"]), float(sse.sum()), int(mask.sum()))
        self.fired += np.asarray(stats["fired"], np.float64)
        self.prompts_fired += np.asarray(prompts_fired, np.float64)
        self.n_tokens += int(mask.sum())

    def mean(self, key: str) -> float:
        vals = np.concatenate(self.values[key]) if self.values.get(key) else np.zeros(0)
        return float(vals.mean()) if len(vals) else float("nan")


# ---------------------------------------------------------------------------- model plumbing


def _head_mode(head_index: int | None, shape: tuple[int, ...]) -> str:
    """How the SAE input is cut from a hook's per-token `shape`: one head, all heads, as is."""
    if head_index is not None:
        return "head"
    return "flatten" if len(shape) > 1 else "plain"


def _sae_input(acts: jax.Array, mode: str, head_index: int | None) -> jax.Array:
    """[B, T, *shape] -> [B, T, d] as the SAE sees it."""
    if mode == "head":
        return acts[:, :, head_index]
    if mode == "flatten":
        return acts.reshape(*acts.shape[:2], -1)
    return acts


@dataclass(frozen=True)
class _Site:
    """Where an SAE reads (or a transcoder writes): a hook, cut to one head, all heads, or as is."""

    hook: str
    mode: str
    head: int | None

    def read(self, acts: jax.Array) -> jax.Array:
        return _sae_input(acts, self.mode, self.head)  # [B, T, d]

    def write(self, acts: jax.Array, value: jax.Array) -> jax.Array:
        """`acts` with the site replaced by `value [B, T, d]`."""
        value = value.astype(acts.dtype)
        if self.mode == "head":
            return acts.at[:, :, self.head].set(value)
        return value.reshape(acts.shape)


def _site(model: Any, hook: str, head: int | None, width: int, *, output: bool = False) -> _Site:
    """The site of `hook` on `model`, checked to hold `width` numbers per token (the SAE's
    d_in, or a transcoder's d_out when `output`)."""
    shape = tuple(model.hook_shape(hook))  # an unknown hook raises, listing the valid names
    mode = _head_mode(head, shape)
    dim, knobs = ("d_out", "_out") if output else ("d_in", "")
    if mode == "head" and (len(shape) != 2 or not -shape[0] <= head < shape[0]):
        has = f"{shape[0]} heads" if len(shape) == 2 else f"no head axis (shape {shape})"
        raise ShapeError(
            f"hook_head_index{knobs}={head}, but {hook} has {has}; use an index in range, or "
            f"leave hook_head_index{knobs} unset for a hook without heads."
        )
    d = shape[-1] if mode == "head" else math.prod(shape)
    if d != width:
        raise ShapeError(
            f"the activations at {hook} have {d} numbers per token, but the SAE's {dim} is "
            f"{width}; check hook_name{knobs} and hook_head_index{knobs}."
        )
    return _Site(hook, mode, head)


def transcoder_spliceable(model: Any, hook: str, hook_out: str) -> bool:
    """Whether `model` computes `hook` no later than `hook_out` (a transcoder reading `hook`
    can then replace `hook_out` in the same forward pass); found by tracing, not by names."""
    if hook == hook_out:
        return True
    return _cached(model, ("order", hook, hook_out), lambda: _traced_order(model, hook, hook_out))


def _traced_order(model: Any, hook: str, hook_out: str) -> bool:
    """`transcoder_spliceable` by tracing the model once (no compilation) with both hooks."""
    seen: list[str] = []

    def note(name: str) -> Callable[[jax.Array], jax.Array]:
        def fn(acts: jax.Array) -> jax.Array:
            seen.append(name)
            return acts

        return fn

    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    hooks = {hook: note(hook), hook_out: note(hook_out)}
    jax.eval_shape(lambda p, t: model.apply_with_hooks(p, t, hooks), model.params, ids)
    return seen.index(hook) < seen.index(hook_out)


def _score(ablated: float, with_sae: float, clean: float = 0.0) -> float:
    """(ablated - with_sae) / (ablated - clean): NaN where ablating changes nothing."""
    gap = ablated - clean
    return (ablated - with_sae) / gap if gap != 0 else float("nan")


def _reconstruct(sae: Any, x: jax.Array, scale: float | None) -> tuple[jax.Array, jax.Array]:
    """(x̂, f) for `x [..., d]`, scaling into and out of the SAE's training scale."""
    xs = x if scale is None else x * scale
    x_hat, f = sae.forward_with_activations(xs)
    if scale is not None:
        x_hat = x_hat / scale
    return x_hat.astype(x.dtype), f


# Compiled functions per model and settings, so repeated evaluations (every few thousand
# training steps) reuse them.
_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(model: Any, key: tuple, build: Callable[[], Callable]) -> Callable:
    per_model = _FNS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _acts_fn(model: Any, site: _Site, target: _Site | None) -> Callable:
    """Jitted: token batch -> (SAE inputs `[B, T, d_in]`, transcoder targets `[B, T, d_out]`
    or None); one forward that stops at the deeper hook."""
    names = list(dict.fromkeys([site.hook] + ([target.hook] if target else [])))

    def fn(params, tokens):
        _, cache = model.apply_with_cache(params, tokens, names, stop_at_layer=True)
        return site.read(cache[site.hook]), target.read(cache[target.hook]) if target else None

    return jax.jit(fn)


def _downstream_fn(model: Any, site: _Site, target: _Site | None, scale: float | None) -> Callable:
    """Jitted: per-token CE (clean, spliced, ablated) and KL (spliced, ablated) of a batch.

    An SAE replaces its input by its reconstruction; a transcoder (`target` set) reads its
    input at `site` and replaces the activation at `target`. Ablation zeroes what is replaced.
    """
    out_site = target or site

    def spliced_hooks(sae, mask):
        carried: list[jax.Array] = []  # the transcoder's input, from its read hook (one trace)

        def read(acts):
            carried.append(site.read(acts))
            return acts

        def write(acts):
            if out_site.hook == site.hook:
                x = site.read(acts)
            elif carried:
                x = carried.pop()
            else:
                raise ConfigError(
                    f"the transcoder writes {out_site.hook}, which the model computes before its "
                    f"input {site.hook}: hook_name must come before hook_name_out."
                )
            y = out_site.read(acts)
            y_hat, _ = _reconstruct(sae, x, scale)
            y_hat = jnp.where(mask[..., None], y_hat, y)  # excluded tokens stay untouched
            return out_site.write(acts, y_hat)

        hooks = {out_site.hook: write}
        if out_site.hook != site.hook:
            hooks[site.hook] = read
        return hooks

    def ablate(acts):
        return out_site.write(acts, jnp.zeros_like(out_site.read(acts)))

    def fn(params, sae, tokens, mask):
        clean = model.apply(params, tokens)
        spliced = model.apply_with_hooks(params, tokens, spliced_hooks(sae, mask))
        ablated = model.apply_with_hooks(params, tokens, {out_site.hook: ablate})
        return {
            "ce_loss_without_sae": per_token_ce(clean, tokens),
            "ce_loss_with_sae": per_token_ce(spliced, tokens),
            "ce_loss_with_ablation": per_token_ce(ablated, tokens),
            "kl_div_with_sae": per_token_kl(clean, spliced),
            "kl_div_with_ablation": per_token_kl(clean, ablated),
        }

    return jax.jit(fn)


@partial(jax.jit, static_argnames="scale")
def _batch_stats(
    sae: Any, x: jax.Array, y: jax.Array | None, mask: jax.Array, scale: float | None
) -> tuple:
    """Per-token statistics of one batch `x [B, T, d_in]` against its target (`y [B, T, d_out]`
    for a transcoder, else x itself), and per-latent prompt counts."""
    target = x if y is None else y
    y_hat, f = _reconstruct(sae, x, scale)
    B, T = mask.shape
    stats = _token_stats(
        target.reshape(B * T, -1), y_hat.reshape(B * T, -1), f.reshape(B * T, -1), mask.reshape(-1)
    )
    prompts = (((f != 0) & mask[..., None]).sum(1) > 0).sum(0)  # [d_sae]
    return stats, prompts


def _token_batches(tokens: Any, batch_size: int) -> Iterator[np.ndarray]:
    if hasattr(tokens, "next_batch"):
        while True:
            try:
                batch = tokens.next_batch(batch_size)
            except StopIteration:  # a finite source ran out (inside a generator it must return)
                return
            yield batch
    for batch in tokens:
        arr = np.asarray(batch)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ShapeError(
                f"token batches must be integer arrays [batch, seq], got {arr.shape} {arr.dtype}."
            )
        yield arr.astype(np.int32)


def _take(batches: Iterator[np.ndarray], n: int, what: str) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        try:
            out.append(next(batches))
        except StopIteration:
            raise ConfigError(
                f"the token source ran out after {len(out)} of the {n} {what} batches."
            ) from None
    return out


# ---------------------------------------------------------------------------- entry points


def run_evals(
    sae: Any,
    model: Any,
    tokens: Any,
    eval_config: EvalConfig | None = None,
    *,
    exclude_special_tokens: Any = True,
    activation_scale: float | None = None,
    hook_name: str | None = None,
    hook_head_index: int | None = None,
    hook_name_out: str | None = None,
    hook_head_index_out: int | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """(metrics by group, per-latent metrics), as SAELens's `run_evals` returns them.

    `tokens` is a `TokenSource` (batches of `batch_size_prompts` contexts are drawn from it)
    or an iterable of token batches `[B, T]`. The first `n_eval_reconstruction_batches`
    batches feed the CE/KL metrics, the next `n_eval_sparsity_variance_batches` the rest.
    `activation_scale` multiplies activations on their way into the SAE (and divides its
    output), for SAEs trained on scaled activations whose scale was not folded in.

    A transcoder reads `hook_name` and is measured against, and spliced in at, `hook_name_out`:
    the reconstruction metrics compare its output with the output hook's activations, and the
    ablation baseline zeroes the output hook. Hooks default to the SAE's metadata, and the
    metadata's head indices apply where the hooks are the metadata's.
    """
    cfg = eval_config or EvalConfig.everything()
    if not (
        cfg.downstream or cfg.activations_based or cfg.compute_featurewise_weight_based_metrics
    ):
        raise ConfigError("no metric selected: turn on at least one compute_* option.")
    if cfg.downstream and cfg.n_eval_reconstruction_batches <= 0:
        raise ConfigError(
            "n_eval_reconstruction_batches must be > 0 for compute_kl / compute_ce_loss."
        )
    if cfg.activations_based and cfg.n_eval_sparsity_variance_batches <= 0:
        raise ConfigError("n_eval_sparsity_variance_batches must be > 0 for these metrics.")
    from jsae.sae import cfg_arch

    meta = sae.cfg.metadata
    hook = hook_name or meta.hook_name
    if hook is None:
        raise ConfigError("the SAE's metadata has no hook_name; pass hook_name=...")
    # the metadata's head index belongs to the metadata's hook
    head = hook_head_index
    if head is None and hook == meta.hook_name:
        head = meta.hook_head_index
    site = _site(model, hook, head, sae.cfg.d_in)
    target = None
    if cfg_arch(sae.cfg).is_transcoder:
        hook_out = hook_name_out or meta.hook_name_out
        if hook_out is None:
            raise ConfigError(
                "this transcoder's metadata has no hook_name_out; pass hook_name_out=... (the "
                "hook its output replaces, e.g. 'blocks.L.hook_mlp_out')."
            )
        head_out = hook_head_index_out
        if head_out is None and hook_out == meta.hook_name_out:
            head_out = meta.hook_head_index_out
        target = _site(model, hook_out, head_out, sae.cfg.output_dim, output=True)
        if cfg.downstream and not transcoder_spliceable(model, hook, hook_out):
            raise ConfigError(
                f"this transcoder writes {hook_out}, which the model computes before its input "
                f"{hook}, so it cannot be spliced in (compute_kl / compute_ce_loss). Turn those "
                "off for its reconstruction and sparsity metrics."
            )
    elif hook_name_out is not None or hook_head_index_out is not None:
        raise ConfigError(
            "hook_name_out / hook_head_index_out are for transcoders; this SAE reconstructs "
            f"its own input at {hook}."
        )
    context_size = getattr(tokens, "context_size", None)
    if context_size is not None:
        from jsae.activations.store import check_context_size

        check_context_size(model, int(context_size))
    ignore = resolve_exclude_special_tokens(
        exclude_special_tokens, getattr(model, "tokenizer", None)
    )
    batch_size = cfg.batch_size_prompts or 8
    batches = _token_batches(tokens, batch_size)
    scale = None if activation_scale is None else float(activation_scale)

    def mask_of(t: np.ndarray) -> np.ndarray:
        return np.ones(t.shape, bool) if ignore is None or not len(ignore) else ~np.isin(t, ignore)

    metrics: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    feature_metrics: dict[str, list[float]] = {}
    n_tokens = {"reconstruction": 0, "sparsity_variance": 0}

    if cfg.downstream:
        fn = _cached(
            model, ("down", site, target, scale), lambda: _downstream_fn(model, site, target, scale)
        )
        values: dict[str, list[np.ndarray]] = {}
        for t in _take(batches, cfg.n_eval_reconstruction_batches, "reconstruction"):
            n_tokens["reconstruction"] += t.size
            mask = mask_of(t)
            out = fn(model.params, sae, jnp.asarray(t), jnp.asarray(mask))
            for key, v in out.items():
                v = np.asarray(v, np.float64)
                m = mask[:, :-1] if v.shape[1] != mask.shape[1] else mask  # CE has T-1 positions
                values.setdefault(key, []).append(v[m])
        means = {k: float(np.concatenate(v).mean()) for k, v in values.items()}
        if cfg.compute_kl:
            abl, with_sae = means["kl_div_with_ablation"], means["kl_div_with_sae"]
            metrics["model_behavior_preservation"] = {
                "kl_div_score": _score(abl, with_sae),
                "kl_div_with_ablation": abl,
                "kl_div_with_sae": with_sae,
            }
        if cfg.compute_ce_loss:
            abl, with_sae = means["ce_loss_with_ablation"], means["ce_loss_with_sae"]
            clean = means["ce_loss_without_sae"]
            metrics["model_performance_preservation"] = {
                "ce_loss_score": _score(abl, with_sae, clean),
                "ce_loss_with_ablation": abl,
                "ce_loss_with_sae": with_sae,
                "ce_loss_without_sae": clean,
            }

    if cfg.activations_based:
        acts = _cached(model, ("acts", site, target), lambda: _acts_fn(model, site, target))
        token_batches = _take(batches, cfg.n_eval_sparsity_variance_batches, "sparsity/variance")
        n_tokens["sparsity_variance"] = sum(t.size for t in token_batches)

        def items():
            for t in token_batches:
                x, y = acts(model.params, jnp.asarray(t))
                yield (x, mask_of(t)) if target is None else (x, y, mask_of(t))

        groups, features = activation_metrics(
            sae,
            items(),
            cfg.replace(compute_featurewise_weight_based_metrics=False),
            activation_scale=scale,
        )
        metrics.update(groups)
        feature_metrics.update(features)

    if cfg.compute_featurewise_weight_based_metrics:
        feature_metrics.update(weight_based_metrics(sae))

    metrics["token_stats"] = {  # tokens in the batches evaluated, masked ones included
        "total_tokens_eval_reconstruction": n_tokens["reconstruction"],
        "total_tokens_eval_sparsity_variance": n_tokens["sparsity_variance"],
    }
    return {k: v for k, v in metrics.items() if v}, feature_metrics


def activation_metrics(
    sae: Any,
    batches: Iterable[tuple[Any, ...]],
    eval_config: EvalConfig | None = None,
    *,
    activation_scale: float | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Reconstruction, shrinkage and sparsity metrics from `(x [B, T, d_in], mask [B, T])` pairs,
    or for a transcoder `(x, y [B, T, d_out], mask)` triples (its output is compared with y).

    The part of `run_evals` that needs no model: `mask` marks the tokens that count (False
    for excluded special tokens); each of the B rows is one prompt.
    """
    from jsae.sae import cfg_arch

    cfg = eval_config or EvalConfig.everything()
    scale = None if activation_scale is None else float(activation_scale)
    transcoder = cfg_arch(sae.cfg).is_transcoder
    d_in, d_out = sae.cfg.d_in, sae.cfg.output_dim
    acc = _Accumulator(sae.cfg.d_sae)
    for item in batches:
        if len(item) != (3 if transcoder else 2):
            raise ShapeError(
                "a transcoder is measured on (x, y, mask) triples: inputs, the targets at its "
                f"output hook, and the mask; got a tuple of {len(item)}."
                if transcoder
                else f"expected (x, mask) pairs, got a tuple of {len(item)}."
            )
        x, mask = jnp.asarray(item[0]), np.asarray(item[-1], bool)
        y = jnp.asarray(item[1]) if transcoder else None
        if x.ndim != 3 or x.shape[-1] != d_in or mask.shape != x.shape[:2]:
            raise ShapeError(
                f"expected x [B, T, d_in={d_in}] and mask [B, T], got {tuple(x.shape)} "
                f"and {mask.shape}."
            )
        if y is not None and y.shape != (*x.shape[:2], d_out):
            raise ShapeError(
                f"expected transcoder targets y [B, T, d_out={d_out}] beside x {tuple(x.shape)}, "
                f"got {tuple(y.shape)}."
            )
        stats, prompts = _batch_stats(sae, x, y, jnp.asarray(mask), scale)
        acc.add(jax.device_get(stats), mask, np.asarray(prompts))
    if acc.n_tokens == 0:
        raise ConfigError("no (unmasked) tokens to evaluate.")
    metrics = _activation_groups(acc, cfg)
    features: dict[str, list[float]] = {}
    if cfg.compute_featurewise_density_statistics:
        features.update(_density_metrics(acc))
    if cfg.compute_featurewise_weight_based_metrics:
        features.update(weight_based_metrics(sae))
    return metrics, features


def evaluate_activations(
    sae: Any,
    activations: Iterable[Any],
    eval_config: EvalConfig | None = None,
    *,
    n_batches: int = 1,
    activation_scale: float | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """`activation_metrics` on plain activation batches `[N, d_in]` (cache, synthetic, held out);
    for a transcoder, `(x [N, d_in], y [N, d_out])` pairs, as its training source yields them.

    Every row counts, and each row is its own prompt for the consistent-activation heuristic.
    """
    from jsae.sae import cfg_arch

    transcoder = cfg_arch(sae.cfg).is_transcoder
    it = iter(activations)
    items = []
    for _ in range(n_batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        if transcoder and not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ShapeError(
                "a transcoder is evaluated on (x, y) pairs: inputs [N, d_in] and the targets "
                "[N, d_out] at its output hook."
            )
        arrays = [jnp.asarray(a) for a in (batch if transcoder else [batch])]
        widths = [sae.cfg.d_in, sae.cfg.output_dim]
        for name, a, width in zip(("x", "y"), arrays, widths, strict=False):
            if a.ndim != 2 or a.shape[1] != width:
                what = f"a transcoder's {name}" if transcoder else "activation batches"
                dim = "d_in" if name == "x" else "d_out"
                raise ShapeError(f"{what} must be [N, {dim}={width}], got {tuple(a.shape)}.")
        if transcoder and arrays[0].shape[0] != arrays[1].shape[0]:
            raise ShapeError(
                f"x has {arrays[0].shape[0]} rows but y has {arrays[1].shape[0]}; a "
                "transcoder's pairs must have equal rows."
            )
        mask = np.ones((arrays[0].shape[0], 1), bool)
        items.append((*(a[:, None, :] for a in arrays), mask))
    if not items:
        raise ConfigError("no activation batches to evaluate.")
    cfg = eval_config or EvalConfig.everything(compute_kl=False, compute_ce_loss=False)
    return activation_metrics(sae, items, cfg, activation_scale=activation_scale)


def _activation_groups(acc: _Accumulator, cfg: EvalConfig) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if cfg.compute_l2_norms:
        out["shrinkage"] = {
            "l2_norm_in": acc.mean("l2_norm_in"),
            "l2_norm_out": acc.mean("l2_norm_out"),
            "l2_ratio": acc.mean("l2_ratio"),
            "relative_reconstruction_bias": float(np.mean(acc.rrb)),
        }
    if cfg.compute_sparsity_metrics:
        density = acc.fired / max(acc.n_tokens, 1)
        out["sparsity"] = {
            "l0": acc.mean("l0"),
            "l1": acc.mean("l1"),
            "dead_features": int((acc.fired == 0).sum()),
            "dense_features": int((density > cfg.dense_threshold).sum()),
            "mean_log10_feature_sparsity": float(np.log10(density + 1e-10).mean()),
            "below_1e-5": int((density < 1e-5).sum()),
            "below_1e-6": int((density < 1e-6).sum()),
        }
    if cfg.compute_variance_metrics:
        out["reconstruction_quality"] = {
            "explained_variance": acc.ev.compute(),
            "explained_variance_legacy": acc.mean("explained_variance_legacy"),
            "mse": acc.mean("sse"),
            "cossim": acc.mean("cossim"),
        }
    return out


def _density_metrics(acc: _Accumulator) -> dict[str, list[float]]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "feature_density": (acc.fired / acc.n_tokens).tolist(),
            "consistent_activation_heuristic": (acc.fired / acc.prompts_fired).tolist(),
        }


def weight_based_metrics(sae: Any) -> dict[str, list[float]]:
    """Per latent: encoder column norm, cosine(encoder column, decoder row), encoder bias.

    The cosine is left out for a transcoder whose d_out differs from d_in (its encoder and
    decoder live in different spaces; SAELens fails there).
    """
    W_enc = np.asarray(sae.params["W_enc"], np.float64)  # [d_in, d_sae]
    W_dec = np.asarray(sae.params["W_dec"], np.float64)  # [d_sae, d_out]
    enc_norm = np.linalg.norm(W_enc, axis=0)
    out = {"encoder_norm": enc_norm.tolist()}
    if W_dec.shape[1] == W_enc.shape[0]:
        dec_norm = np.linalg.norm(W_dec, axis=1)
        cos = (W_enc.T * W_dec).sum(-1) / (enc_norm * dec_norm)
        out["encoder_decoder_cosine_sim"] = cos.tolist()
    if "b_enc" in sae.params:
        out["encoder_bias"] = np.asarray(sae.params["b_enc"], np.float64).tolist()
    return out


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"group": {"key": v}} -> {"group/key": v} (the form logged to wandb)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def format_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The nested metrics as an aligned two-column table, group by group."""
    lines = []
    width = max((len(k) for g in metrics.values() for k in g), default=0)
    for group, values in metrics.items():
        lines.append(group)
        for key, value in values.items():
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


def nan_to_none(obj: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None (SAELens writes -1 for NaN)."""
    if isinstance(obj, Mapping):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
