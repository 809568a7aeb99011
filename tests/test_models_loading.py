"""`jsae.load_model` from local directories and from the Hugging Face hub cache, and bad input.

Hub loading runs the real huggingface_hub download path against a cache this test builds in
the hub's own layout (models--org--name/{blobs,snapshots/<commit>,refs/<ref>}), with
HF_HUB_OFFLINE=1 (set by conftest.py): nothing is patched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from models_helpers import expected, torch_reference_models
from safetensors.numpy import load_file, save_file

import jsae

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory):
    return torch_reference_models(tmp_path_factory)


def tiny_tokenizer_files(out: Path) -> dict[str, bytes]:
    """A word-level tokenizer over the reference models' 128-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 128)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in out.iterdir()}


def add_snapshot(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ()
) -> None:
    """Put files into a hub cache exactly as huggingface_hub lays them out."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / digest)
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def model_files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir()}


@pytest.fixture(scope="module")
def hub_cache(torch_models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    tokenizer = tiny_tokenizer_files(tmp_path_factory.mktemp("tok"))
    gpt2 = model_files(torch_models / "gpt2" / "model")
    add_snapshot(cache, "jsae-test/tiny", COMMIT_A, {**gpt2, **tokenizer}, refs=("main",))
    add_snapshot(
        cache,
        "jsae-test/tiny",
        COMMIT_B,
        model_files(torch_models / "gpt_neo" / "model"),
        refs=("v0",),
    )

    # the same GPT-2 weights as two safetensors shards with an index, as large models ship
    state = load_file(str(torch_models / "gpt2" / "model" / "model.safetensors"))
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    sharded = {"config.json": gpt2["config.json"]}
    tmp = tmp_path_factory.mktemp("shards")
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp / shard), metadata={"format": "pt"})
        sharded[shard] = (tmp / shard).read_bytes()
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    sharded["model.safetensors.index.json"] = json.dumps(index).encode()
    add_snapshot(cache, "jsae-test/sharded", COMMIT_A, sharded, refs=("main",))
    add_snapshot(
        cache,
        "jsae-test/no-weights",
        COMMIT_A,
        {"config.json": gpt2["config.json"]},
        refs=("main",),
    )
    add_snapshot(
        cache,
        "jsae-test/tokenizer-only",
        COMMIT_A,
        {"config.json": gpt2["config.json"], **tokenizer},
        refs=("main",),
    )
    return cache


def test_hub_cache_offline(hub_cache, torch_models):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, (
        "conftest.py must set HF_HUB_OFFLINE=1 before huggingface_hub loads"
    )
    ref = expected(torch_models, "gpt2")
    model = jsae.load_model("jsae-test/tiny", cache_dir=hub_cache)
    assert model.family == "gpt2"
    np.testing.assert_allclose(model(ref["input_ids"]), ref["logits"], atol=5e-5, rtol=1e-5)
    assert model.tokenizer is not None
    assert model.tokenizer("w5 w7 w9")["input_ids"] == [5, 7, 9]

    # a tag and a commit hash select other snapshots
    assert jsae.load_model("jsae-test/tiny", revision="v0", cache_dir=hub_cache).family == "gpt_neo"
    by_hash = jsae.load_model("jsae-test/tiny", revision=COMMIT_A, cache_dir=hub_cache)
    assert by_hash.family == "gpt2"


def test_hub_sharded_safetensors(hub_cache, torch_models):
    ref = expected(torch_models, "gpt2")
    model = jsae.load_model("jsae-test/sharded", cache_dir=hub_cache)
    np.testing.assert_allclose(model(ref["input_ids"]), ref["logits"], atol=5e-5, rtol=1e-5)
    assert model.tokenizer is None


def test_hub_missing_repo_and_weights(hub_cache):
    with pytest.raises(
        jsae.ConfigError, match=r"no config.json in the local Hugging Face cache \(HF_HUB_OFFLINE=1"
    ):
        jsae.load_model("jsae-test/absent", cache_dir=hub_cache)
    with pytest.raises(jsae.ConfigError, match="revision nope"):
        jsae.load_model("jsae-test/tiny", revision="nope", cache_dir=hub_cache)
    with pytest.raises(jsae.FormatError, match=r"has no model.safetensors"):
        jsae.load_model("jsae-test/no-weights", cache_dir=hub_cache)


def test_a_tokenizer_is_fetched_without_the_weights(hub_cache):
    """What a cache's `exclude_special_tokens` needs of its model: the tokenizer files only."""
    from jsae.models.loading import tokenizer_of

    tokenizer = tokenizer_of("jsae-test/tokenizer-only", cache_dir=hub_cache)
    assert tokenizer("w5 w7 w9")["input_ids"] == [5, 7, 9]
    with pytest.raises(jsae.FormatError, match=r"has no model.safetensors"):
        jsae.load_model("jsae-test/tokenizer-only", cache_dir=hub_cache)  # the weights are not
    assert tokenizer_of("jsae-test/no-weights", cache_dir=hub_cache) is None


# ------------------------------------------------------------------------- local bad input


@pytest.fixture
def gpt2_copy(torch_models, tmp_path):
    out = tmp_path / "gpt2"
    shutil.copytree(torch_models / "gpt2" / "model", out)
    return out


def edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_paths_and_files(gpt2_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        jsae.load_model(tmp_path / "nowhere")
    with pytest.raises(jsae.ConfigError, match="applies to hub repos"):
        jsae.load_model(gpt2_copy, revision="main")
    (gpt2_copy / "model.safetensors").rename(gpt2_copy / "pytorch_model.bin")
    with pytest.raises(jsae.FormatError, match=r"no model weights.*safe_serialization=True"):
        jsae.load_model(gpt2_copy)
    (gpt2_copy / "config.json").unlink()
    with pytest.raises(jsae.FormatError, match=r"no config.json"):
        jsae.load_model(gpt2_copy)


def test_corrupt_weights_and_config(gpt2_copy):
    weights = gpt2_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(jsae.FormatError, match=r"cannot read .*model.safetensors"):
        jsae.load_model(gpt2_copy)
    weights.write_bytes(data)
    (gpt2_copy / "config.json").write_text("{not json")
    with pytest.raises(jsae.FormatError, match="not valid JSON"):
        jsae.load_model(gpt2_copy)


def test_weights_that_do_not_fit_the_config(gpt2_copy):
    edit_config(gpt2_copy, n_inner=128)  # the checkpoint's MLP is 4 * 64 = 256 wide
    with pytest.raises(jsae.FormatError, match=r"mlp/c_fc/\w+ has shape \(256,?.*config implies"):
        jsae.load_model(gpt2_copy)
    edit_config(gpt2_copy, n_inner=None, n_layer=3)
    with pytest.raises(jsae.FormatError, match="lacks 12 parameter"):
        jsae.load_model(gpt2_copy)


def test_unsupported_architectures_and_settings(torch_models, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(jsae.ConfigError, match=r"'bert' is not supported.*gemma2.*gpt2.*llama"):
        jsae.load_model(bert)

    gpt2 = tmp_path / "gpt2"  # attention scaled per layer (Stanford CRFM GPT-2s)
    shutil.copytree(torch_models / "gpt2" / "model", gpt2)
    edit_config(gpt2, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(jsae.ConfigError, match="scale_attn_by_inverse_layer_idx"):
        jsae.load_model(gpt2)
    edit_config(gpt2, scale_attn_by_inverse_layer_idx=False, scale_attn_weights=False)
    with pytest.raises(jsae.ConfigError, match="scale_attn_weights=False"):
        jsae.load_model(gpt2)

    llama = tmp_path / "llama"
    shutil.copytree(torch_models / "llama" / "model", llama)
    edit_config(llama, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(jsae.ConfigError, match="rotary scaling 'yarn' is not supported"):
        jsae.load_model(llama)
    edit_config(llama, rope_parameters={"rope_type": "default", "rope_theta": 500.0}, head_dim=8)
    with pytest.raises(jsae.ConfigError, match="head_dim=8 differs"):
        jsae.load_model(llama)


def test_sharded_index_naming_a_missing_shard(gpt2_copy):
    state = load_file(str(gpt2_copy / "model.safetensors"))
    (gpt2_copy / "model.safetensors").unlink()
    save_file(state, str(gpt2_copy / "model-00001-of-00002.safetensors"))
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (gpt2_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(jsae.FormatError, match=r"model-00002-of-00002.safetensors is missing"):
        jsae.load_model(gpt2_copy)


def test_local_directory_with_tokenizer(gpt2_copy):
    tiny_tokenizer_files(gpt2_copy)
    model = jsae.load_model(gpt2_copy)
    ids = model.tokenizer("w1 w2 w3", return_tensors="np")["input_ids"]
    assert model(ids).shape == (1, 3, 128)
    assert model(jnp.asarray(ids)).dtype == jnp.float32
