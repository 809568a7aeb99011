"""`jsae cache` on a real (tiny) model: content, a killed run resumed, training reads it back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jsae.models
from jsae.activations.cache import CachedActivations, read_manifest
from jsae.activations.config import LanguageModelSettings
from jsae.activations.pipeline import cache_activations, load_model_for, token_source
from jsae.activations.toy import make_corpus, make_model_dir, make_tokenizer, save_text_dataset
from jsae.errors import ConfigError

if not hasattr(jsae.models, "load_model"):
    pytest.skip("jsae.models.load_model is not available yet", allow_module_level=True)

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cachecmd")
    corpus = make_corpus(80, seed=7)
    tok = make_tokenizer(corpus, root / "tok")
    make_model_dir(root / "model", tok, d_model=32, n_positions=32)
    data = save_text_dataset(corpus, root / "corpus.jsonl", fmt="jsonl")
    settings = LanguageModelSettings(
        model_name=str(root / "model"),
        dataset_path=str(data),
        streaming=False,
        context_size=16,
        store_batch_size_prompts=2,
        hook_name=HOOKS[0],
    )
    model = load_model_for(settings)
    return root, settings, model


def _shards(path: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for shard in read_manifest(path)["shards"]:
        d = path / "shards" / shard["name"]
        out.append({f.name: np.load(f) for f in sorted(d.iterdir())})
    return out


def test_cache_holds_the_model_activations_in_order(setup, tmp_path) -> None:
    _, settings, model = setup
    out = cache_activations(
        settings,
        tmp_path / "c",
        n_tokens=200,
        shard_tokens=64,
        hook_names=HOOKS,
        model=model,
        log=None,
    )
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["n_tokens"] == 224  # 7 model batches of 32 tokens
    assert [s["n_tokens"] for s in manifest["shards"]] == [64, 64, 64, 32]
    tokens = token_source(settings, model.tokenizer, process_index=0, process_count=1).next_batch(
        14
    )
    _, cache = model.run_with_cache(tokens, HOOKS)
    shards = _shards(out)
    acts0 = np.concatenate([s["0.npy"] for s in shards])
    z = np.concatenate([s["1.npy"] for s in shards])
    np.testing.assert_allclose(acts0, np.asarray(cache[HOOKS[0]]).reshape(-1, 32), atol=1e-5)
    np.testing.assert_allclose(z, np.asarray(cache[HOOKS[1]]).reshape(-1, 32), atol=1e-5)
    assert np.array_equal(np.concatenate([s["token_ids.npy"] for s in shards]), tokens.reshape(-1))
    # reading back for training: shuffled across shards, every row once per epoch
    reader = CachedActivations(out, batch_size=32, hook_names=[HOOKS[0]], loop=False, prefetch=0)
    got = np.concatenate(list(reader))
    assert got.shape == (224, 32)
    assert not np.allclose(got, acts0)
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(acts0, axis=0), atol=0)


def test_a_killed_cache_run_resumes_where_it_stopped(setup, tmp_path) -> None:
    _, settings, model = setup
    kw = dict(n_tokens=32 * 150, shard_tokens=32)  # 150 shards of one model batch
    reference = cache_activations(settings, tmp_path / "ref", model=model, log=None, **kw)
    target = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "jsae.cli",
        "cache",
        "--out",
        str(target),
        "--n-tokens",
        str(kw["n_tokens"]),
        "--shard-tokens",
        "32",
        f"model_name={settings.model_name}",
        f"dataset_path={settings.dataset_path}",
        "streaming=false",
        "context_size=16",
        "store_batch_size_prompts=2",
        f"hook_name={HOOKS[0]}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (target / "manifest.json").exists() and read_manifest(target)["shards"]:
                break
            if proc.poll() is not None:
                pytest.fail(f"jsae cache exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = read_manifest(target)
    assert not partial["complete"] and 0 < len(partial["shards"]) < 150
    cache_activations(settings, target, model=model, log=None, **kw)  # the rerun resumes
    assert read_manifest(target)["complete"]
    ours, ref = _shards(target), _shards(reference)
    assert len(ours) == len(ref) == 150
    for a, b in zip(ours, ref, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6)
    leftovers = [p.name for p in (target / "shards").iterdir() if p.name.startswith(".")]
    assert not leftovers or all(".tmp-" in n for n in leftovers)


def test_cache_refuses_bad_settings_before_writing(setup, tmp_path) -> None:
    _, settings, model = setup
    with pytest.raises(ConfigError, match="exceeds the model's 32 positions"):
        cache_activations(
            settings.replace(context_size=64), tmp_path / "c", n_tokens=64, model=model, log=None
        )
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="unknown hook name"):
        cache_activations(
            settings.replace(hook_name="blocks.9.hook_resid_post"),
            tmp_path / "d",
            n_tokens=64,
            model=model,
            log=None,
        )
    assert not (tmp_path / "d").exists()
    cache_activations(settings, tmp_path / "e", n_tokens=64, model=model, log=None)
    with pytest.raises(ConfigError, match="different"):
        cache_activations(
            settings.replace(prepend_bos=False), tmp_path / "e", n_tokens=64, model=model, log=None
        )


def test_shard_tokens_round_up_to_whole_model_batches(setup, tmp_path) -> None:
    _, settings, model = setup  # a model batch is 2 contexts of 16 tokens
    kw = dict(model=model, log=None)
    out = cache_activations(settings, tmp_path / "c", n_tokens=100, shard_tokens=63, **kw)
    manifest = read_manifest(out)
    assert manifest["n_tokens"] == 128
    assert [s["n_tokens"] for s in manifest["shards"]] == [64, 64]
    out = cache_activations(settings, tmp_path / "d", n_tokens=64, shard_tokens=1, **kw)
    assert [s["n_tokens"] for s in read_manifest(out)["shards"]] == [32, 32]
    for bad in ({"shard_tokens": 0}, {"n_tokens": -5}):
        args = {"n_tokens": 64, "shard_tokens": 64, **bad}
        with pytest.raises(ConfigError, match="must be a positive integer"):
            cache_activations(settings, tmp_path / "e", **args, **kw)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("alias", "name"), [("torch.float32", "float32"), ("torch.bfloat16", "bfloat16")]
)
def test_cache_takes_the_dtype_aliases_settings_accept(setup, tmp_path, alias, name) -> None:
    _, settings, model = setup
    aliased = settings.replace(activation_dtype=alias)
    out = cache_activations(aliased, tmp_path / "c", n_tokens=32, model=model, log=None)
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["dtype"] == name
    assert manifest["settings"]["model_dtype"] == "float32"
    got = next(CachedActivations(out, 32, shuffle=False, prefetch=0))
    assert got.dtype.name == name
    # the plain spelling names the same cache: a rerun finds it complete
    plain = settings.replace(activation_dtype=name)
    cache_activations(plain, tmp_path / "c", n_tokens=32, model=model, log=None)


def test_overwrite_replaces_only_a_cache(setup, tmp_path) -> None:
    _, settings, model = setup
    kw = dict(n_tokens=32, model=model, log=None)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("important")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a jsae activation cache") as err:
            cache_activations(settings, project, overwrite=overwrite, **kw)
        assert "--overwrite" not in str(err.value) and "overwrite=True" not in str(err.value)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    cache_activations(settings, tmp_path / "c", **kw)
    old = read_manifest(tmp_path / "c")
    cache_activations(settings.replace(prepend_bos=False), tmp_path / "c", overwrite=True, **kw)
    new = read_manifest(tmp_path / "c")
    assert new["complete"] and new["settings"]["prepend_bos"] is False
    assert old["settings"]["prepend_bos"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "project"]


def test_a_hook_name_left_out_by_hook_options_is_named(setup, tmp_path, capsys) -> None:
    """`--hook` replaces hook_name (as its help says); a hook_name set in the settings and not
    among the --hook hooks is named, not dropped without a word."""
    from jsae.activations.cache import read_manifest
    from jsae.cli import main

    _, settings, _ = setup
    common = ["--n-tokens", "32", f"model_name={settings.model_name}",
              f"dataset_path={settings.dataset_path}", "streaming=false", "context_size=16",
              "store_batch_size_prompts=2", f"hook_name={HOOKS[0]}"]  # fmt: skip
    assert main(["cache", "--out", str(tmp_path / "c"), "--hook", HOOKS[1], *common]) == 0
    assert f"hook_name={HOOKS[0]} (from the settings) is not among them" in capsys.readouterr().err
    assert read_manifest(tmp_path / "c")["hook_names"] == [HOOKS[1]]
    assert main(["cache", "--out", str(tmp_path / "d"), "--hook", HOOKS[0], *common]) == 0
    assert "not among them" not in capsys.readouterr().err
