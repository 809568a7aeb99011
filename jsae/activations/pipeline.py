"""From settings to running parts: model, token source, activation store, cache, evaluator.

    settings = LanguageModelSettings(model_name=..., hook_name=..., dataset_path=...)
    model = load_model_for(settings)
    store = activation_store(settings, model, batch_size=4096)     # for jsae.train
    cache_activations(settings, "cache/", n_tokens=10_000_000)     # `jsae cache`
    evaluator = spliced_evaluator(settings, model)                  # evals during training

These are what `jsae train`, `jsae cache` and `jsae eval` run; each is usable on its own.
"""

from __future__ import annotations

import numbers
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jsae.activations.cache import CachedActivations, CacheWriter
from jsae.activations.config import LanguageModelSettings
from jsae.activations.data import TokenSource
from jsae.activations.prefetch import Prefetcher
from jsae.activations.store import (
    ActivationStore,
    check_context_size,
    hook_width,
    rows_fn,
    seqpos_to_slice,
    sliced_length,
)
from jsae.activations.tokenization import resolve_exclude_special_tokens
from jsae.config import unfreeze
from jsae.errors import ConfigError, TrainingInterrupted


def load_model_for(settings: LanguageModelSettings) -> Any:
    """`jsae.load_model(settings.model_name)` in the configured dtype and revision."""
    from jsae.config import jax_dtype
    from jsae.models import load_model

    settings.require("model_name")
    kwargs: dict[str, Any] = {"dtype": jax_dtype(settings.model_dtype)}
    if settings.model_revision is not None:
        kwargs["revision"] = settings.model_revision
    return load_model(settings.model_name, **kwargs)


def hook_names_of(settings: LanguageModelSettings, hook_names: Sequence[str] | None) -> list[str]:
    names = list(hook_names) if hook_names else ([settings.hook_name] if settings.hook_name else [])
    if not names:
        raise ConfigError("no hook given: set hook_name (e.g. blocks.0.hook_resid_post).")
    return names


def token_source(
    settings: LanguageModelSettings,
    tokenizer: Any,
    *,
    loop: bool = True,
    shuffle_seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TokenSource:
    """The packed token stream the settings describe."""
    settings.require("dataset_path")
    return TokenSource(
        settings.dataset_path,
        tokenizer,
        context_size=settings.context_size,
        prepend_bos=settings.prepend_bos,
        sequence_separator_token=settings.sequence_separator_token,
        disable_concat_sequences=settings.disable_concat_sequences,
        column_name=settings.dataset_column,
        split=settings.dataset_split,
        streaming=settings.streaming,
        dataset_name=settings.dataset_name,
        trust_remote_code=settings.dataset_trust_remote_code,
        shuffle_seed=shuffle_seed,
        process_index=process_index,
        process_count=process_count,
        loop=loop,
    )


def activation_store(
    settings: LanguageModelSettings,
    model: Any,
    *,
    batch_size: int,
    seed: int = 0,
    hook_names: Sequence[str] | None = None,
    d_in: int | Mapping[str, int] | None = None,
    sharding: Any = None,
) -> ActivationStore:
    """An `ActivationStore` over the settings' dataset, checked before any data is read."""
    names = hook_names_of(settings, hook_names)
    check_context_size(model, settings.context_size)  # before opening the dataset
    for name in names:
        model.hook_shape(name)  # unknown hooks raise here, listing the valid names
    source = token_source(settings, getattr(model, "tokenizer", None))
    heads: Any = settings.hook_head_index  # one head index for every hook, or per hook:
    out = settings.hook_name_out
    if out is not None and out in names and out != settings.hook_name:  # a transcoder's target
        heads = {h: settings.hook_head_index_out if h == out else heads for h in names}
    return ActivationStore(
        model,
        source,
        hook_names=names,
        batch_size=batch_size,
        store_batch_size_prompts=settings.store_batch_size_prompts,
        n_batches_in_buffer=settings.n_batches_in_buffer,
        activations_mixing_fraction=settings.activations_mixing_fraction,
        seqpos_slice=settings.seqpos_slice,
        hook_head_index=heads,
        exclude_special_tokens=settings.exclude_special_tokens,
        dtype=settings.activation_dtype,
        seed=seed,
        prefetch=settings.prefetch_batches,
        d_in=d_in,
        sharding=sharding,
    )


def cached_source(
    settings: LanguageModelSettings,
    *,
    batch_size: int,
    seed: int = 0,
    tokenizer: Any = None,
    hook_names: Sequence[str] | None = None,
) -> CachedActivations:
    """Batches read back from `settings.cached_activations_path`, shuffled across all shards."""
    settings.require("cached_activations_path")
    if tokenizer is None and settings.exclude_special_tokens is True and settings.model_name:
        from jsae.models.loading import tokenizer_of  # the ids come from the cache's model

        tokenizer = tokenizer_of(settings.model_name, revision=settings.model_revision)
    exclude = resolve_exclude_special_tokens(settings.exclude_special_tokens, tokenizer)
    return CachedActivations(
        settings.cached_activations_path,
        batch_size,
        hook_names=hook_names or ([settings.hook_name] if settings.hook_name else None),
        seed=seed,
        exclude_token_ids=None if exclude is None else exclude.tolist(),
    )


def transcoder_hooks(config: Any) -> list[str] | None:
    """[hook_name, hook_name_out] when `config` trains a transcoder on a model or cache (None
    for an SAE); refused, before any work, when hook_name_out is missing."""
    sae, lm = config.sae, config.model
    if not sae.is_transcoder:
        return None
    if not lm.hook_name_out:
        raise ConfigError(
            f"a {sae.architecture} learns one hook's activations from another's: set "
            "hook_name_out to the hook it writes (e.g. blocks.0.hook_mlp_out, with hook_name "
            "blocks.0.ln2.hook_normalized), or pass (x, y) pairs to jsae.train."
        )
    if lm.hook_name_out == lm.hook_name and lm.hook_head_index_out != lm.hook_head_index:
        raise ConfigError(
            f"hook_name and hook_name_out are both {lm.hook_name} with different heads "
            f"({lm.hook_head_index} in, {lm.hook_head_index_out} out): training reads one view "
            "of a hook once, so it would learn the input from itself. Cache the hook with all "
            "heads and pass the (x, y) head pairs to jsae.train instead."
        )
    return [lm.hook_name, lm.hook_name_out]


def training_source(config: Any, model: Any = None, *, tokenizer: Any = None) -> Any:
    """The activations of a run that reads a language model (or its `jsae cache`): `[B, d_in]`
    batches of `hook_name`, or for a transcoder `(x, y)` pairs of `hook_name` and
    `hook_name_out` at the same tokens. `config` is a `TrainConfig`."""
    import jax

    from jsae.activations.pairs import HookPairs

    lm, tr, sae = config.model, config.training, config.sae
    hooks = transcoder_hooks(config)
    transcoder = hooks is not None
    if lm.use_cached_activations:
        source: Any = cached_source(
            lm,
            batch_size=tr.train_batch_size_tokens // jax.process_count(),
            seed=tr.seed,
            tokenizer=tokenizer,
            hook_names=hooks,
        )
    else:
        if model is None:
            raise ConfigError("set model_name (or use_cached_activations) to train on a model.")
        widths: Any = sae.d_in
        if transcoder and lm.hook_name_out != lm.hook_name:
            widths = {lm.hook_name: sae.d_in, lm.hook_name_out: sae.output_dim}
        source = activation_store(
            lm,
            model,
            batch_size=tr.train_batch_size_tokens,
            seed=tr.seed,
            d_in=widths,
            hook_names=hooks,
        )
    return HookPairs(source, lm.hook_name, lm.hook_name_out) if transcoder else source


# The settings a cache records that describe its activations (and so the SAE trained on them).
CACHE_DESCRIBES = (
    "model_name",
    "hook_head_index",
    "dataset_path",
    "dataset_name",
    "dataset_split",
    "dataset_column",
    "context_size",
    "prepend_bos",
    "sequence_separator_token",
    "disable_concat_sequences",
    "seqpos_slice",
)


def with_cache_settings(config: Any) -> Any:
    """The training config with the model/data settings a `jsae cache` recorded, when training
    reads that cache: they describe the activations, so they become the SAE's metadata.

    A setting left at its default takes the cache's value; one set to something else is
    refused by name (training on a context-16 cache while saying context 32 would mislabel the
    SAE). `model_name` is never filled in (it would load the model for evals); caches imported
    from elsewhere record no settings and are taken as they are.
    """
    import json

    from jsae.activations.cache import read_manifest

    lm = config.model
    if not lm.use_cached_activations or not lm.cached_activations_path:
        return config
    recorded = read_manifest(lm.cached_activations_path).get("settings") or {}
    plain = lambda d: json.loads(json.dumps(d))  # noqa: E731 - tuples vs lists
    current, default = plain(lm.to_dict()), plain(type(lm)().to_dict())
    changes, conflicts = {}, []
    for key in CACHE_DESCRIBES:
        if key not in recorded or current[key] == recorded[key]:
            continue
        if current[key] != default[key]:
            conflicts.append(f"{key}={current[key]!r} (the cache's: {recorded[key]!r})")
        elif key != "model_name":
            changes[key] = recorded[key]
    if conflicts:
        raise ConfigError(
            f"the cache at {lm.cached_activations_path} was written with other settings than "
            f"this config gives: {', '.join(conflicts)}. Remove them (the cache's values are "
            "used) or train from a cache written with them."
        )
    return config.replace(**changes) if changes else config


# ------------------------------------------------------------------------------ caching


def cache_settings_record(settings: LanguageModelSettings, hook_names: Sequence[str]) -> dict:
    """What identifies a cache's content (a resumed run must match it)."""
    keep = (*CACHE_DESCRIBES, "model_revision", "model_dtype", "store_batch_size_prompts")
    data = settings.to_dict()
    return {"hook_names": list(hook_names), **{k: data[k] for k in keep}}


def cache_activations(
    settings: LanguageModelSettings,
    path: str | Path,
    *,
    n_tokens: int,
    shard_tokens: int = 1 << 20,
    hook_names: Sequence[str] | None = None,
    model: Any = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write the activations of `n_tokens` tokens to a cache directory; resumes a killed run.

    Shards hold whole model batches (`store_batch_size_prompts` contexts), in dataset order,
    with their token ids; `n_tokens` and `shard_tokens` are rounded up to whole model batches.
    A rerun with the same settings continues after the last complete shard, reproducing
    exactly what an uninterrupted run writes; a finished cache is left as is. `overwrite`
    replaces an existing cache (only a cache) once the new one is complete.
    """
    for name, value in (("n_tokens", n_tokens), ("shard_tokens", shard_tokens)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    names = hook_names_of(settings, hook_names)
    if model is None:
        model = load_model_for(settings)
    check_context_size(model, settings.context_size)
    heads = {h: settings.hook_head_index for h in names}
    d_in = {h: hook_width(model.hook_shape(h), heads[h], h) for h in names}
    positions = sliced_length(settings.context_size, settings.seqpos_slice)
    prompts = settings.store_batch_size_prompts
    batch_tokens = prompts * positions
    batches_per_shard = -(-int(shard_tokens) // batch_tokens)  # rounded up, like n_tokens
    total_batches = -(-int(n_tokens) // batch_tokens)
    writer = CacheWriter(
        path,
        hook_names=names,
        d_in=d_in,
        dtype=settings.activation_dtype,
        context_size=positions,
        settings=cache_settings_record(settings, names),
        overwrite=overwrite,
    )
    if writer.complete:
        if log:
            log(f"{path}: cache already complete ({writer.n_tokens} tokens); nothing to do.")
        return Path(path)
    source = token_source(
        settings, getattr(model, "tokenizer", None), process_index=0, process_count=1
    )
    if writer.source_state is not None:
        source.restore(writer.source_state)
        if log:
            log(f"{path}: resuming after {writer.n_shards} shards ({writer.n_tokens} tokens).")
    fn = rows_fn(
        model,
        names,
        seqpos_slice=settings.seqpos_slice,
        hook_head_index=settings.hook_head_index,
        dtype=settings.activation_dtype,
    )
    seqpos = seqpos_to_slice(settings.seqpos_slice)
    done_batches = writer.n_tokens // batch_tokens

    def token_batches():  # runs in a background thread, ahead of the model
        while True:
            tokens = source.next_batch(prompts)
            yield tokens, source.state()

    reader = Prefetcher(token_batches, depth=max(1, settings.prefetch_batches))
    t0, written = time.perf_counter(), 0
    try:
        while done_batches < total_batches:
            n = min(batches_per_shard, total_batches - done_batches)
            parts: dict[str, list[np.ndarray]] = {h: [] for h in names}
            ids, state = [], None
            pending = None
            for _ in range(n + 1):
                if pending is not None:  # collect the previous batch while this one computes
                    rows, tokens = pending
                    for h in names:
                        parts[h].append(np.asarray(rows[h]))
                    ids.append(tokens[:, seqpos].reshape(-1))
                    pending = None
                if len(ids) + (pending is not None) < n:
                    tokens, state = reader.get()
                    pending = (fn(model.params, jnp.asarray(tokens)), tokens)
            writer.add_shard(
                {h: np.concatenate(v) for h, v in parts.items()}, np.concatenate(ids), state
            )
            done_batches += n
            written += n * batch_tokens
            if log:
                rate = written / max(time.perf_counter() - t0, 1e-9)
                log(
                    f"shard {writer.n_shards - 1}: {writer.n_tokens:,} / "
                    f"{total_batches * batch_tokens:,} tokens ({rate:,.0f} tokens/s)"
                )
    finally:
        reader.close()
    writer.finish()
    return Path(path)


# ------------------------------------------------------------------------------ evaluation


def eval_hooks(settings: LanguageModelSettings, sae: Any) -> dict[str, Any]:
    """The hook arguments of `run_evals` for `sae` from the settings (the output hook only
    for a transcoder)."""
    from jsae.sae import cfg_arch

    hooks = {"hook_name": settings.hook_name, "hook_head_index": settings.hook_head_index}
    if cfg_arch(sae.cfg).is_transcoder and settings.hook_name_out is not None:
        hooks["hook_name_out"] = settings.hook_name_out
        hooks["hook_head_index_out"] = settings.hook_head_index_out
    return hooks


def spliced_evaluator(
    settings: LanguageModelSettings,
    model: Any,
    *,
    eval_config: Any = None,
    activation_scale: Callable[[], float | None] | float | None = None,
    downstream: bool = True,
) -> Callable[[Any, int], dict[str, Any]]:
    """`evaluator(sae, step) -> {"group/key": value}`: run_evals on the next eval batches.

    Batches come from the settings' dataset through a separately shuffled stream (the
    training stream is untouched; it is not a held-out split). `activation_scale` (a number
    or a callable giving it) scales activations into the SAE while a training-time scale is
    not yet folded in. `downstream=False` leaves out CE loss and KL (the spliced forwards)
    from the default `eval_config`.
    """
    from jsae import evals

    prompts = settings.eval_batch_size_prompts or settings.store_batch_size_prompts
    cfg = eval_config or evals.EvalConfig(
        batch_size_prompts=prompts,
        n_eval_reconstruction_batches=settings.n_eval_batches,
        n_eval_sparsity_variance_batches=settings.n_eval_batches,
        compute_kl=downstream,
        compute_ce_loss=downstream,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    source = token_source(settings, getattr(model, "tokenizer", None), shuffle_seed=1234)
    exclude = settings.exclude_special_tokens if settings.exclude_special_tokens else True

    def evaluate(sae: Any, step: int) -> dict[str, Any]:
        scale = activation_scale() if callable(activation_scale) else activation_scale
        metrics, _ = evals.run_evals(
            sae,
            model,
            source,
            cfg,
            exclude_special_tokens=exclude,
            activation_scale=scale,
            **eval_hooks(settings, sae),
        )
        return evals.flatten_metrics(metrics)

    return evaluate


# ------------------------------------------------------------------------------ training


def train_language_model_sae(
    config: Any,
    *,
    model: Any = None,
    init: Any = None,
    final_evals: bool = True,
    eval_config: Any = None,
    log: Callable[[str], None] | None = print,
) -> tuple[Any, dict[str, Any] | None]:
    """model -> activations -> training -> evals -> save: what `jsae train` runs for a model.

    `config` is a `TrainConfig` (or a dict / YAML path, as `jsae.train` takes) whose `model`
    concern names the model, hook and dataset (or a cache with `use_cached_activations`).
    Returns the trained SAE and the final eval metrics (written next to the SAE as
    `eval_results.json` when `output_path` is set). `init` starts from an existing SAE
    (fine-tuning).
    """
    import jax

    from jsae import evals
    from jsae.training import Trainer
    from jsae.training.config import TrainConfig
    from jsae.training.trainer import initialize_distributed

    config = TrainConfig.coerce(config)
    initialize_distributed(config.training)  # before the model or jax.process_count()
    config = with_cache_settings(config).with_model_metadata()
    lm, tr = config.model, config.training
    transcoder_hooks(config)  # a transcoder without hook_name_out: refused before the model
    if model is None and lm.model_name is not None:
        model = load_model_for(lm)
    source = training_source(config, model, tokenizer=getattr(model, "tokenizer", None))
    trainer = Trainer(config, source, init=init)
    splice = model is None or not config.sae.is_transcoder
    if not splice:
        splice = evals.transcoder_spliceable(model, lm.hook_name, lm.hook_name_out)
        if not splice and log:
            log(
                f"evals without CE loss and KL: the transcoder writes {lm.hook_name_out}, which "
                f"the model computes before its input {lm.hook_name}, so it cannot be spliced in"
            )
    if model is not None:
        trainer.evaluator = spliced_evaluator(
            lm, model, activation_scale=lambda: trainer.scale, downstream=splice
        )
    t0 = time.perf_counter()
    sae = trainer.fit()
    if log:
        log(f"trained for {trainer.steps_done} steps ({time.perf_counter() - t0:.1f} s)")
    if hasattr(source, "close"):
        source.close()
    results = None
    if final_evals and model is not None:
        prompts = lm.eval_batch_size_prompts or lm.store_batch_size_prompts
        cfg = eval_config or evals.EvalConfig.everything(
            batch_size_prompts=prompts,
            n_eval_reconstruction_batches=lm.n_eval_batches,
            n_eval_sparsity_variance_batches=lm.n_eval_batches,
            compute_kl=splice,
            compute_ce_loss=splice,
        )
        held_out = token_source(lm, model.tokenizer, shuffle_seed=4321)
        metrics, features = evals.run_evals(
            sae,
            model,
            held_out,
            cfg,
            exclude_special_tokens=lm.exclude_special_tokens or True,
            **eval_hooks(lm, sae),
        )
        results = {
            "metrics": metrics,
            "feature_metrics": features,
            "eval_cfg": {
                **cfg.to_dict(),
                "dataset": lm.dataset_path,
                "context_size": lm.context_size,
            },
        }
        if tr.output_path and jax.process_index() == 0:
            import json

            from jsae.fsutil import atomic_write_bytes

            atomic_write_bytes(
                Path(tr.output_path) / "eval_results.json",
                json.dumps(evals.nan_to_none(results), indent=2).encode(),
            )
        if log:
            log(evals.format_metrics(metrics))
    return sae, results


def train_saes(
    configs: Mapping[str, Any],
    store: ActivationStore,
    *,
    settings: LanguageModelSettings | None = None,
    max_lag: int = 4,
) -> dict[str, Any]:
    """Train one SAE per hook of a multi-hook store; every model forward feeds all of them.

    `configs` maps each of the store's hook names to its training config (a `TrainConfig` or a
    dict of SAELens field names). Each SAE trains in its own thread with the full trainer
    (logging, checkpoints, output), consuming its hook's batches in lockstep with the others.
    A transcoder's config, under its input hook, names its target with `hook_name_out` (also
    a hook of the store); it trains on `(x, y)` pairs of the same rows, so per-layer
    transcoders train from one forward too. Every store hook must be read by some config.
    Each SAE's metadata names its hook(s), and, given the store's `settings`, the model,
    context and dataset too (as SAELens's multi-SAE runner records them). To resume after an
    interrupt, call it again with `resume_from_checkpoint: auto` in the configs and a new store
    built with the same settings: each SAE continues where it stopped.
    """
    import threading

    import jax

    from jsae.training import TrainConfig, Trainer

    if jax.process_count() > 1:
        raise ConfigError(
            "train_saes trains each SAE in a thread of its own, and on several processes the "
            "SAEs' collectives would pair up in a different order on each process. Cache the "
            "hooks' activations once (jsae cache --hook A --hook B ...) and train each SAE from "
            "the cache in its own multi-process run (use_cached_activations, hook_name)."
        )
    coerced = {h: TrainConfig.coerce(c) for h, c in configs.items()}
    targets = {h: _target_hook(h, c, store) for h, c in coerced.items() if c.sae.is_transcoder}
    unknown = sorted(set(coerced) - set(store.hook_names))
    missing = sorted(set(store.hook_names) - set(coerced) - set(targets.values()))
    if unknown or missing:
        raise ConfigError(
            f"train_saes needs a config for each hook of the store {store.hook_names} (a hook a "
            f"transcoder writes counts as read): missing {missing}, not in the store {unknown}."
        )
    configs = {
        h: _with_hook_metadata(c, h, settings, target=targets.get(h), store=store)
        for h, c in coerced.items()
    }
    reads = {h: (h, targets[h]) if h in targets else (h,) for h in configs}
    views = store.hook_iterators(max_lag, reads)
    trainers = {h: Trainer(cfg, views[h]) for h, cfg in configs.items()}
    for h, trainer in trainers.items():
        widths = [("d_in", trainer.cfg.d_in, h)]
        if h in targets:
            widths.append(("d_out", trainer.cfg.output_dim, targets[h]))
        for dim, width, hook in widths:
            if width != store.d_in[hook]:
                raise ConfigError(
                    f"the SAE for {h} has {dim}={width} but the activations of {hook} have "
                    f"{store.d_in[hook]}."
                )
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    done = {h: threading.Event() for h in trainers}  # not Thread.join: a Ctrl-C inside it
    # can leave the thread looking finished while it still runs (CPython 3.11)

    def fit(hook: str) -> None:
        try:
            results[hook] = trainers[hook].fit()
        except BaseException as exc:  # re-raised in the caller below
            errors[hook] = exc
        finally:
            views[hook].close()
            done[hook].set()

    def wait_all() -> None:
        for event in done.values():
            while not event.wait(0.25):
                pass

    for h in trainers:
        threading.Thread(target=fit, args=(h,), daemon=True, name=f"jsae-train {h}").start()
    try:
        wait_all()
    except KeyboardInterrupt:  # Ctrl-C: every SAE stops after its step, as fit() alone does
        print(
            "\njsae: SIGINT; every SAE stops after its current step (send it again to stop at "
            "once).",
            file=sys.stderr,
        )
        for trainer in trainers.values():
            trainer.request_stop("SIGINT")
        wait_all()  # a second Ctrl-C raises here, leaving them to stop
    failed = {h: e for h, e in errors.items() if not isinstance(e, TrainingInterrupted)}
    if failed:
        hook, exc = next(iter(failed.items()))
        raise RuntimeError(f"training the SAE for {hook} failed: {exc}") from exc
    if errors:  # every SAE that stopped early was interrupted
        raise TrainingInterrupted(
            "; ".join(f"{h}: {str(errors[h]).rstrip('.')}" for h in trainers if h in errors) + "."
        )
    return results


def _target_hook(hook: str, config: Any, store: ActivationStore) -> str:
    """The store hook a transcoder's config under `hook` writes (its `hook_name_out`)."""
    out = config.model.hook_name_out or unfreeze(config.sae.metadata).get("hook_name_out")
    if not out or out == hook or out not in store.hook_names:
        raise ConfigError(
            f"the transcoder for {hook} needs hook_name_out, another hook of the store "
            f"{store.hook_names} (its target); it has {out!r}."
        )
    return out


def _with_hook_metadata(
    config: Any,
    hook: str,
    settings: LanguageModelSettings | None,
    *,
    target: str | None = None,
    store: ActivationStore | None = None,
) -> Any:
    """`config` with the metadata of an SAE on `hook` of a store built from `settings` (and,
    for a transcoder, of its `target` hook)."""
    given = unfreeze(config.sae.metadata)
    if given.get("hook_name") not in (None, hook):
        raise ConfigError(
            f"the config for {hook} names hook_name={given['hook_name']!r} in its metadata; "
            "remove it (train_saes fills it in) or give the config to its own hook."
        )
    implied = {} if settings is None else settings.sae_metadata()
    hooks: dict[str, Any] = {"hook_name": hook}
    if target is not None:
        heads = getattr(store, "head_index", {}) or {}
        hooks.update(hook_name_out=target, hook_head_index_out=heads.get(target))
    return config.with_metadata_defaults({**implied, **hooks})
