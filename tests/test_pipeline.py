"""The whole flow: `jsae train --config` from a model, a cache, several hooks; `jsae eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import matching_rows

import jsae
import jsae.models
import jsae.training
from jsae.activations.toy import make_corpus, make_model_dir, make_tokenizer, save_text_dataset
from jsae.cli import main

if not hasattr(jsae.models, "load_model") or not hasattr(jsae.training, "TrainConfig"):
    pytest.skip("jsae.models / jsae.training are not available yet", allow_module_level=True)

HOOK = "blocks.0.hook_resid_post"
TWO_HOOKS = [HOOK, "blocks.1.hook_mlp_out"]  # what _two_hook_store serves
GROUPS = {
    "model_behavior_preservation",
    "model_performance_preservation",
    "reconstruction_quality",
    "shrinkage",
    "sparsity",
    "token_stats",
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    corpus = make_corpus(150, seed=2)
    tok = make_tokenizer(corpus, root / "tok")
    make_model_dir(root / "model", tok, d_model=32, n_positions=32)
    save_text_dataset(corpus, root / "corpus.jsonl", fmt="jsonl")
    return {"root": root, "model": root / "model", "data": root / "corpus.jsonl"}


def _config(assets, out: Path, **changes) -> dict:
    cfg = {
        "model_name": str(assets["model"]),
        "hook_name": HOOK,
        "dataset_path": str(assets["data"]),
        "streaming": False,
        "context_size": 16,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 4,
        "n_eval_batches": 1,
        "eval_batch_size_prompts": 2,
        "architecture": "standard",
        "d_in": 32,
        "d_sae": 64,
        "l1_coefficient": 0.1,
        "lr": 1e-3,
        "train_batch_size_tokens": 32,
        "training_tokens": 32 * 12,
        "output_path": str(out),
        "checkpoint_path": None,
        "log_to_wandb": False,
        "progress_bar": False,
    }
    cfg.update(changes)
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_jsae_train_config_runs_model_to_evaluated_saved_sae(assets, tmp_path, capsys) -> None:
    out = tmp_path / "sae"
    config = _write(tmp_path / "run.yaml", _config(assets, out))
    assert main(["train", "--config", str(config), "lr=2e-3"]) == 0
    sae = jsae.load(out)
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.model_name, meta.context_size, meta.prepend_bos) == (
        HOOK,
        str(assets["model"]),
        16,
        True,
    )
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["metrics"]) == GROUPS
    assert 0 < results["metrics"]["sparsity"]["l0"] <= 64
    assert len(results["feature_metrics"]["feature_density"]) == 64
    assert "ce_loss_score" in capsys.readouterr().out
    # the saved SAE evaluates from its own metadata: model, hook and context need no flags
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(out),
                f"dataset_path={assets['data']}",
                "streaming=false",
                "--batch-size-prompts",
                "2",
                "--n-eval-reconstruction-batches",
                "1",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    evaluated = json.loads(report.read_text())
    assert set(evaluated["metrics"]) == GROUPS
    assert evaluated["eval_cfg"]["context_size"] == 16
    assert evaluated["sae_cfg"]["metadata"]["hook_name"] == HOOK


def test_train_from_a_jsae_cache(assets, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache",
                "--out",
                str(cache),
                "--n-tokens",
                "512",
                "--shard-tokens",
                "128",
                f"model_name={assets['model']}",
                f"hook_name={HOOK}",
                f"dataset_path={assets['data']}",
                "streaming=false",
                "context_size=16",
                "store_batch_size_prompts=4",
            ]
        )
        == 0
    )
    out = tmp_path / "sae"
    cfg = _config(assets, out, use_cached_activations=True, cached_activations_path=str(cache))
    assert main(["train", "--config", str(_write(tmp_path / "run.yaml", cfg))]) == 0
    assert jsae.load(out).cfg.d_sae == 64
    assert (out / "eval_results.json").exists()  # the model is known, so evals ran too

    # The cache's settings describe its activations: a default takes the cache's value, a
    # contradicting one is refused (it would mislabel the SAE and its evals).
    unset = {k: v for k, v in cfg.items() if k != "context_size"}
    trainer = jsae.Trainer({**unset, "output_path": None, "training_tokens": 64})
    assert trainer.config.model.context_size == 16
    assert trainer.fit().cfg.metadata.context_size == 16
    # The step-level Trainer reads the special-token ids from the cache's model's tokenizer,
    # as `jsae train` does (it used to refuse: "needs the model's tokenizer").
    from jsae.activations.tokenization import special_token_ids

    excluding = jsae.Trainer({**unset, "output_path": None, "exclude_special_tokens": True})
    tokenizer = jsae.models.load_model(str(assets["model"])).tokenizer
    assert sorted(excluding.feeder.source.exclude.tolist()) == sorted(special_token_ids(tokenizer))
    excluding.close()
    with pytest.raises(jsae.ConfigError, match=r"context_size=32 \(the cache's: 16\)"):
        jsae.train({**cfg, "context_size": 32, "output_path": None})

    # What `jsae train` runs takes the same dict as jsae.train does.
    from jsae.activations.pipeline import train_language_model_sae

    sae, results = train_language_model_sae(
        {**cfg, "output_path": None, "training_tokens": 64}, final_evals=False, log=None
    )
    assert sae.cfg.d_sae == 64 and results is None


MLP_IN, MLP_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def test_a_transcoder_trains_on_a_model_hook_to_hook(assets, tmp_path, capsys) -> None:
    """hook_name -> hook_name_out: every (x, y) row pair is one token's MLP input and output
    (checked against the model run over the same contexts); `jsae train` saves a transcoder
    labelled with both hooks, and a resumed run ends as an uninterrupted one."""
    from jsae.activations.pipeline import load_model_for, token_source, training_source
    from jsae.training import TrainConfig, Trainer

    cfg = _config(assets, tmp_path / "tc", architecture="skip_transcoder", hook_name=MLP_IN,
                  hook_name_out=MLP_OUT, training_tokens=32 * 8)  # fmt: skip
    config = TrainConfig.coerce(cfg).with_model_metadata()
    model = load_model_for(config.model)
    pairs = training_source(config, model)
    got = [tuple(np.asarray(a) for a in next(pairs)) for _ in range(4)]
    x, y = (np.concatenate(part) for part in zip(*got, strict=True))
    tokens = token_source(config.model, model.tokenizer).next_batch(4 * 8)  # >= the buffer
    _, cache = model.run_with_cache(tokens, [MLP_IN, MLP_OUT])
    idx = matching_rows(x, np.asarray(cache[MLP_IN]).reshape(-1, 32))
    np.testing.assert_allclose(y, np.asarray(cache[MLP_OUT]).reshape(-1, 32)[idx], atol=1e-5)
    assert not np.allclose(x, y)
    pairs.close()

    logged = tmp_path / "tc-metrics.jsonl"
    during = {"wandb_log_frequency": 4, "eval_every_n_wandb_logs": 1, "metrics_path": str(logged)}
    assert main(["train", "--config", str(_write(tmp_path / "tc.yaml", {**cfg, **during}))]) == 0
    assert "ce_loss_score" in capsys.readouterr().out
    sae = jsae.load(tmp_path / "tc")
    meta = sae.cfg.metadata
    assert (sae.cfg.architecture, sae.cfg.d_out, meta.hook_name, meta.hook_name_out) == (
        "skip_transcoder",
        32,
        MLP_IN,
        MLP_OUT,
    )
    # Evals during and after training measure the transcoder at its output hook.
    rows = [json.loads(line) for line in logged.read_text().splitlines()]
    evaluated_at = [r["step"] for r in rows if "model_performance_preservation/ce_loss_score" in r]
    assert evaluated_at == [3, 7]  # every 4 steps (steps count from 0)
    results = json.loads((tmp_path / "tc" / "eval_results.json").read_text())
    from jsae import evals
    from jsae.activations.pipeline import token_source as tokens_of

    eval_cfg = evals.EvalConfig.from_dict(
        {k: v for k, v in results["eval_cfg"].items() if k not in ("dataset", "context_size")}
    )
    direct, _ = evals.run_evals(sae, model, tokens_of(config.model, model.tokenizer,
                                                      shuffle_seed=4321), eval_cfg)  # fmt: skip
    assert evals.flatten_metrics(direct) == pytest.approx(evals.flatten_metrics(results["metrics"]))
    assert results["metrics"]["shrinkage"]["l2_norm_in"] == pytest.approx(
        float(np.linalg.norm(np.asarray(cache[MLP_OUT]), axis=-1).mean()), rel=0.2
    )  # the output hook's norm (~0.07 here), not the input's (layer-normed: ~sqrt(32) * gain)

    ckpt = tmp_path / "ckpt"
    stepped = {**cfg, "output_path": None, "checkpoint_path": str(ckpt)}
    whole = Trainer({**stepped, "checkpoint_path": None})
    first = Trainer(stepped)
    for _ in range(3):
        first.step()
    first.save_checkpoint()
    first.close()
    resumed = Trainer({**stepped, "resume_from_checkpoint": str(ckpt)})
    for trainer, steps in ((whole, 8), (resumed, 5)):
        for _ in range(steps):
            trainer.step()
    for name, value in whole.final_sae().params.items():
        assert np.array_equal(np.asarray(resumed.final_sae().params[name]), np.asarray(value))

    with pytest.raises(jsae.ConfigError, match="set hook_name_out to the hook it writes"):
        jsae.train({**cfg, "hook_name_out": None, "output_path": None})
    z = {"hook_name": "blocks.1.attn.hook_z", "hook_name_out": "blocks.1.attn.hook_z"}
    with pytest.raises(jsae.ConfigError, match=r"different heads \(0 in, 1 out\)"):
        jsae.train({**cfg, **z, "hook_head_index": 0, "hook_head_index_out": 1, "d_in": 8,
                    "d_out": 8, "output_path": None})  # fmt: skip
    with pytest.raises(jsae.ConfigError, match="hook_name_out is the hook a transcoder writes"):
        jsae.train({**cfg, "architecture": "standard", "output_path": None})


def test_a_transcoder_that_writes_before_it_reads_trains_with_the_evals_it_can_have(
    assets, tmp_path, capsys
) -> None:
    """Predicting an earlier hook from a later one trains (the pairs need no order), and its
    evals leave out CE loss and KL, which would splice it in where its input is not yet known."""
    from jsae.activations.pipeline import train_language_model_sae

    cfg = _config(assets, tmp_path / "tc", architecture="transcoder", hook_name=MLP_OUT,
                  hook_name_out="blocks.0.hook_mlp_out", training_tokens=32 * 4,
                  wandb_log_frequency=2, eval_every_n_wandb_logs=1)  # fmt: skip
    _, results = train_language_model_sae(cfg)
    assert "evals without CE loss and KL" in capsys.readouterr().out
    assert "model_performance_preservation" not in results["metrics"]
    assert np.isfinite(results["metrics"]["reconstruction_quality"]["mse"])


def test_a_transcoder_trains_from_a_cache_of_both_hooks(assets, tmp_path) -> None:
    """From `jsae cache --hook IN --hook OUT`: each (x, y) pair is one cached token's rows."""
    from jsae.activations.cache import read_manifest
    from jsae.activations.pipeline import training_source
    from jsae.training import TrainConfig

    cache = tmp_path / "cache"
    args = ["--out", str(cache), "--n-tokens", "256", "--hook", MLP_IN, "--hook", MLP_OUT,
            f"model_name={assets['model']}", f"dataset_path={assets['data']}",
            "streaming=false", "context_size=16", "store_batch_size_prompts=4"]  # fmt: skip
    assert main(["cache", *args]) == 0
    cfg = _config(assets, tmp_path / "tc", architecture="transcoder", hook_name=MLP_IN,
                  hook_name_out=MLP_OUT, use_cached_activations=True,
                  cached_activations_path=str(cache), training_tokens=32 * 4)  # fmt: skip
    pairs = training_source(TrainConfig.coerce(cfg))
    x, y = (np.asarray(a) for a in next(pairs))
    shards = [cache / "shards" / s["name"] for s in read_manifest(cache)["shards"]]
    cached_in = np.concatenate([np.load(d / "0.npy") for d in shards])
    cached_out = np.concatenate([np.load(d / "1.npy") for d in shards])
    idx = matching_rows(x, cached_in)
    np.testing.assert_allclose(y, cached_out[idx], atol=1e-6)
    sae = jsae.train({**cfg, "output_path": None})
    assert sae.cfg.metadata.hook_name_out == MLP_OUT and sae.cfg.d_out == 32


def _two_hook_store(assets, hooks=TWO_HOOKS):
    """(settings, store, hooks): one activation store serving two (or `hooks`) hooks of the
    test model."""
    from jsae.activations.config import LanguageModelSettings
    from jsae.activations.pipeline import activation_store, load_model_for

    settings = LanguageModelSettings(
        model_name=str(assets["model"]),
        dataset_path=str(assets["data"]),
        streaming=False,
        context_size=16,
        store_batch_size_prompts=4,
        n_batches_in_buffer=4,
    )
    store = activation_store(settings, load_model_for(settings), batch_size=32, hook_names=hooks)
    return settings, store, hooks


MID = "blocks.1.hook_resid_mid"
WITH_TRANSCODER = [HOOK, MLP_OUT, MID]  # an SAE on HOOK and a transcoder MID -> MLP_OUT


def _hook_configs(root: Path, steps: int, transcoder: bool = False, **extra) -> dict[str, dict]:
    """A small standard SAE's config for each hook of `_two_hook_store`, writing under root;
    with `transcoder`, an SAE on HOOK and a transcoder from MID to MLP_OUT instead."""
    configs = {
        h: {
            "architecture": "standard",
            "d_in": 32,
            "d_sae": 48,
            "train_batch_size_tokens": 32,
            "training_tokens": 32 * steps,
            "log_to_wandb": False,
            "progress_bar": False,
            "checkpoint_path": str(root / f"ckpt{i}"),
            "output_path": str(root / f"sae{i}"),
            **extra,
        }
        for i, h in enumerate([HOOK, MID] if transcoder else TWO_HOOKS)
    }
    if transcoder:
        configs[MID].update(architecture="transcoder", hook_name_out=MLP_OUT)
    return configs


def _ctrl_c_at_step(monkeypatch, n: int) -> None:
    """The user presses Ctrl-C (SIGINT to this process) as HOOK's SAE takes step n + 1."""
    import os
    import signal

    from jsae.training import Trainer

    step = Trainer.step

    def pressing(self, *args):
        if self.steps_done == n and self.cfg.metadata.hook_name == HOOK:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "step", pressing)


def test_several_saes_from_one_forward(assets, tmp_path) -> None:
    from jsae.activations.pipeline import train_saes

    settings, store, hooks = _two_hook_store(assets)
    base = {
        "architecture": "standard",
        "d_in": 32,
        "d_sae": 48,
        "train_batch_size_tokens": 32,
        "training_tokens": 32 * 20,
        "log_to_wandb": False,
        "progress_bar": False,
        "checkpoint_path": None,
    }
    configs = {h: {**base, "output_path": str(tmp_path / f"sae{i}")} for i, h in enumerate(hooks)}
    with pytest.raises(jsae.ConfigError, match=r"names hook_name='blocks\.9\.hook_z'"):
        train_saes({**configs, HOOK: {**base, "metadata": {"hook_name": "blocks.9.hook_z"}}}, store)
    tc = {**base, "architecture": "transcoder", "output_path": None}
    with pytest.raises(
        jsae.ConfigError, match=r"transcoder for blocks\.0\.hook_resid_post needs h"
    ):
        train_saes({**configs, HOOK: tc}, store)
    with pytest.raises(jsae.ConfigError, match=r"missing \['blocks\.1\.hook_mlp_out'\]"):
        train_saes({HOOK: base}, store)
    saes = train_saes(configs, store, settings=settings)
    assert set(saes) == set(hooks)
    assert not np.allclose(np.asarray(saes[hooks[0]].W_dec), np.asarray(saes[hooks[1]].W_dec))
    served_per_shuffle = store.layout.n_serve // store.layout.batch_size
    assert store.buffer.draws == -(-20 // served_per_shuffle), "one model pass feeds both SAEs"
    for i, h in enumerate(hooks):
        meta = jsae.load(tmp_path / f"sae{i}").cfg.metadata
        assert (meta.hook_name, meta.model_name, meta.context_size) == (h, settings.model_name, 16)
    store.close()


def test_ctrl_c_stops_every_sae_of_train_saes(assets, tmp_path, monkeypatch) -> None:
    """Ctrl-C while train_saes waits: every SAE stops after its current step and checkpoints,
    as fit() alone does, and the caller gets one TrainingInterrupted naming them all (the
    training threads used to go on to the end in the background)."""
    import threading

    from jsae.activations.pipeline import train_saes
    from jsae.errors import TrainingInterrupted

    settings, store, hooks = _two_hook_store(assets)
    total = 100_000  # steps: far more than run before the interrupt
    configs = _hook_configs(tmp_path, total)
    _ctrl_c_at_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted, match=r"hook_resid_post: .*SIGINT.*; .*hook_mlp_out"):
        train_saes(configs, store, settings=settings)
    assert not [t for t in threading.enumerate() if t.name.startswith("jsae-train")]
    for i in range(len(hooks)):
        steps = sorted(int(p.name) for p in (tmp_path / f"ckpt{i}" / "state").iterdir())
        assert len(steps) == 1 and (3 if i == 0 else 0) <= steps[0] < total  # within the lag
        assert not (tmp_path / f"sae{i}").exists()
    store.close()


@pytest.mark.parametrize("transcoder", [False, True], ids=["saes", "sae+transcoder"])
def test_train_saes_resumes_each_sae_as_if_uninterrupted(
    assets, tmp_path, monkeypatch, transcoder
) -> None:
    """After Ctrl-C, train_saes on a new store with resume_from_checkpoint='auto' ends with
    the parameters of an uninterrupted run for every SAE, though they stopped at different
    steps; so does a resume in which one hook's SAE starts again from nothing. Also with a
    transcoder among them (its view yields (x, y) pairs of two of the store's hooks)."""
    import shutil

    from jsae.activations.pipeline import train_saes
    from jsae.errors import TrainingInterrupted

    hooks = WITH_TRANSCODER if transcoder else TWO_HOOKS

    def run(root, **extra):
        settings, store, _ = _two_hook_store(assets, hooks)
        try:
            configs = _hook_configs(root, 14, transcoder=transcoder, **extra)
            return train_saes(configs, store, settings=settings)
        finally:
            store.close()

    expected = run(tmp_path / "whole")
    _ctrl_c_at_step(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "cut")
    monkeypatch.undo()
    shutil.copytree(tmp_path / "cut" / "ckpt0", tmp_path / "half" / "ckpt0")

    resumed = run(tmp_path / "cut", resume_from_checkpoint="auto")
    half = run(tmp_path / "half", resume_from_checkpoint="auto")  # hook 1 starts afresh
    if transcoder:
        meta = jsae.load(tmp_path / "whole" / "sae1").cfg.metadata
        assert (meta.hook_name, meta.hook_name_out) == (MID, MLP_OUT)
    for h in expected:
        want = np.asarray(expected[h].W_dec)
        assert np.array_equal(np.asarray(resumed[h].W_dec), want)
        assert np.array_equal(np.asarray(half[h].W_dec), want)


def test_jsae_train_refuses_bad_model_settings(assets, tmp_path, capsys) -> None:
    out = tmp_path / "sae"
    bad_hook = _write(
        tmp_path / "a.yaml", _config(assets, out, hook_name="blocks.0.hook_resid_psot")
    )
    assert main(["train", "--config", str(bad_hook)]) == 2
    err = capsys.readouterr().err
    assert "unknown hook name 'blocks.0.hook_resid_psot'" in err and "hook_resid_post" in err
    too_long = _write(tmp_path / "b.yaml", _config(assets, out, context_size=64))
    assert main(["train", "--config", str(too_long)]) == 2
    assert "exceeds the model's 32 positions" in capsys.readouterr().err
    wrong_width = _write(tmp_path / "c.yaml", _config(assets, out, d_in=16))
    assert main(["train", "--config", str(wrong_width)]) == 2
    assert "d_in=32 but 16 was expected" in capsys.readouterr().err
    assert not out.exists()


def test_model_settings_route_from_flat_nested_and_saelens_configs(tmp_path) -> None:
    from jsae.training import TrainConfig

    flat = TrainConfig.from_dict(
        {
            "architecture": "standard",
            "d_in": 32,
            "d_sae": 64,
            "model_name": "gpt2",
            "hook_name": HOOK,
            "dataset_path": "x",
            "seqpos_slice": [1, None],
            "exclude_special_tokens": [0, 1],
            "sequence_separator_token": "eos",
            "model_class_name": "HookedTransformer",
            "is_dataset_tokenized": False,
        }
    )
    assert flat.model.model_name == "gpt2" and flat.model.seqpos_slice == (1, None)
    assert flat.model.exclude_special_tokens == (0, 1)
    assert flat.data.activation_source == "model"  # chosen because a model is named
    nested = TrainConfig.from_dict(
        {"sae": {"d_in": 32, "d_sae": 64}, "model": {"model_name": "gpt2", "hook_name": HOOK}}
    )
    assert nested.model.hook_name == HOOK
    cached = TrainConfig.from_dict(
        {
            "d_in": 32,
            "d_sae": 64,
            "use_cached_activations": True,
            "cached_activations_path": str(tmp_path),
        }
    )
    assert cached.data.activation_source == "cache"
    assert TrainConfig.from_dict({"d_in": 32, "d_sae": 64}).data.activation_source == "synthetic"
    round_trip = TrainConfig.from_yaml(_write(tmp_path / "c.yaml", flat.to_dict()))
    assert round_trip.model == flat.model
    with pytest.raises(jsae.ConfigError, match=r"unknown config key 'hook_nme'.*hook_name"):
        TrainConfig.from_dict({"d_in": 32, "d_sae": 64, "hook_nme": HOOK})


def test_training_on_attention_hook_z_saves_a_head_shaped_sae(assets, tmp_path) -> None:
    """`attn.hook_z` yields [..., n_heads, d_head]: training flattens it to rows of d_in, and
    `jsae.train` saves an SAE (reshape_activations "hook_z", chosen by `auto`) that takes the
    hook's own shape, flattened in the order the rows were, and evaluates spliced at the hook."""
    out = tmp_path / "z"
    hook = "blocks.0.attn.hook_z"
    config = _config(
        assets, out, hook_name=hook, training_tokens=32 * 60, l1_coefficient=1e-3, lr=5e-3
    )
    returned = jsae.train(config)
    sae = jsae.load(out)
    assert np.array_equal(np.asarray(returned.params["W_dec"]), np.asarray(sae.params["W_dec"]))
    assert sae.cfg.reshape_activations == "hook_z"
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name) == (hook, str(assets["model"]))

    model = jsae.models.load_model(str(assets["model"]))
    z = np.asarray(model.run_with_cache(np.arange(1, 9)[None], [hook])[1][hook])  # [1, 8, H, dh]
    assert z.ndim == 4 and z.shape[-2] * z.shape[-1] == 32

    def explained(acts: np.ndarray) -> float:
        recon = np.asarray(sae.forward(acts))
        assert recon.shape == acts.shape
        return float(1 - ((recon - acts) ** 2).sum() / ((acts - acts.mean((0, 1))) ** 2).sum())

    # heads flattened in the wrong order would reconstruct far worse than the right order
    swapped = z.transpose(0, 1, 3, 2).reshape(z.shape)
    assert explained(z) > 0.25 and explained(z) > explained(swapped) + 0.3
    results = json.loads((out / "eval_results.json").read_text())["metrics"]
    assert results["reconstruction_quality"]["explained_variance"] > 0.5
    assert np.isfinite(results["model_performance_preservation"]["ce_loss_score"])


def test_trainer_on_a_model_source_names_the_model_and_hook(assets, tmp_path) -> None:
    """A Trainer building the model source itself fills the SAE metadata, as `jsae train` does;
    activations passed in keep the metadata as given (a model's defaults would misdescribe them)."""
    trainer = jsae.Trainer(_config(assets, None, training_tokens=32 * 2))
    sae = trainer.fit()
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.context_size) == (HOOK, 16)
    rows = [np.ones((32, 32), np.float32)] * 2
    given = jsae.Trainer(
        _config(assets, None, training_tokens=32 * 2, metadata={"hook_name": "mine"}), rows
    )
    assert given.fit().cfg.metadata.hook_name == "mine"
    assert given.config.sae.metadata.get("context_size") is None


def test_a_model_source_run_resumes_to_the_uninterrupted_result(assets, tmp_path) -> None:
    """The activation store's buffered and shuffled-but-unserved rows go into the checkpoint, so
    the resumed run trains on the very batches the uninterrupted one did."""
    config = _config(assets, None, training_tokens=32 * 12, checkpoint_path=str(tmp_path / "c"))
    first = jsae.Trainer(config)
    for _ in range(5):  # mid-buffer: 256 rows are shuffled, then served 32 at a time
        first.step()
    first.save_checkpoint()
    host = tmp_path / "c" / "host"
    assert any(host.glob("5.p0.npz")), "the store's buffer is saved beside the host state"
    resumed = jsae.Trainer({**config, "resume_from_checkpoint": str(tmp_path / "c")})
    assert resumed.steps_done == 5
    resumed.fit()
    plain = jsae.Trainer({**config, "checkpoint_path": None})
    plain.fit()
    for name, value in plain.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name
