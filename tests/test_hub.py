"""from_pretrained through huggingface_hub's real download code, offline, against local caches.

Each test builds a Hugging Face cache in the hub's own layout
(`models--org--name/{blobs/<sha256>, snapshots/<commit>/<path> -> ../blobs, refs/<name>}`)
holding repos named like the real releases, with files in each release's layout. With
HF_HUB_OFFLINE=1 (set in conftest before huggingface_hub is imported), `hf_hub_download`
resolves refs and snapshots exactly as it does for a user's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import assert_close, run_reference
from reference import converter_layouts as L
from safetensors.numpy import load_file, save_file

import jsae
from jsae import converters, registry
from jsae.hub import HubError
from jsae.registry_build import build

D_IN, D_SAE = 16, 64


def add_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, Path | bytes | str],
    *,
    ref: str = "main",
    commit: str | None = None,
) -> str:
    """Put `files` ({path in repo: source}) into `cache` as huggingface_hub lays them out."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    contents = {}
    for rel, src in files.items():
        data = (
            src.read_bytes()
            if isinstance(src, Path)
            else src.encode()
            if isinstance(src, str)
            else src
        )
        contents[rel] = data
    commit = (
        commit
        or hashlib.sha1(
            repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in contents.items())).encode()
        ).hexdigest()
    )
    for rel, data in contents.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return commit


def folder_files(folder: Path, prefix: str) -> dict[str, Path]:
    return {f"{prefix}/{p.relative_to(folder)}": p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return L.reference_fixtures(tmp_path_factory)


@pytest.fixture(scope="module")
def hub(ref: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cache with one repo per layout, named as the registry's releases name them."""
    rng = np.random.default_rng(3)
    work = tmp_path_factory.mktemp("hub_src")
    cache = tmp_path_factory.mktemp("hf_cache")
    p: dict = {"cache": cache}

    gs = work / "gs"
    p["gemma"] = L.write_gemma_scope(gs, rng, D_IN, D_SAE)
    add_repo(
        cache, "google/gemma-scope-2b-pt-res", folder_files(gs, "layer_12/width_16k/average_l0_82")
    )

    gs2 = work / "gs2"
    p["gemma2"] = L.write_gemma_scope_2(gs2, rng, D_IN, D_SAE, d_out=12, affine=True)
    add_repo(
        cache,
        "google/gemma-scope-2-1b-pt",
        folder_files(gs2, "transcoder/layer_13_width_16k_l0_big_affine"),
    )

    saelens = work / "saelens"
    sae = jsae.SAE.from_params(
        jsae.SAEConfig(architecture="standard", d_in=D_IN, d_sae=D_SAE),
        {
            "W_enc": L.rand(rng, D_IN, D_SAE),
            "b_enc": L.rand(rng, D_SAE),
            "W_dec": L.rand(rng, D_SAE, D_IN),
            "b_dec": L.rand(rng, D_IN),
        },
    )
    sae.save(saelens, log_sparsity=np.linspace(-5, -1, D_SAE))
    legacy = {  # GPT2-Small-SAEs-Reformatted ships SAELens 2.x-era configs
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "context_size": 128,
        "dataset_path": "Skylion007/openwebtext",
        "apply_b_dec_to_input": True,
    }
    (saelens / "cfg.json").write_text(json.dumps(legacy))
    p["saelens"] = sae
    add_repo(
        cache,
        "jbloom/GPT2-Small-SAEs-Reformatted",
        folder_files(saelens, "blocks.8.hook_resid_pre"),
    )

    llama = work / "llama"
    p["llama"] = L.write_llama_scope(llama, rng, D_IN, D_SAE)
    add_repo(cache, "fnlp/Llama3_1-8B-Base-LXR-8x", folder_files(llama, "Llama3_1-8B-Base-L0R-8x"))

    r1 = work / "r1"
    p["r1"] = L.write_llama_scope_r1(r1, rng, D_IN, D_SAE, with_norms=False)
    add_repo(
        cache,
        "fnlp/Llama-Scope-R1-Distill",
        folder_files(r1, "800M-Slimpajama-0-OpenR1-Math-220k/L0R"),
    )

    topk = ref / "dictionary_learning" / "AutoEncoderTopK"
    add_repo(
        cache,
        "canrager/lm_sae",
        folder_files(topk, "pythia70m_sweep_topk_ctx128_0730/resid_post_layer_3/trainer_0"),
    )

    goodfire = ref / "pt_layouts" / "goodfire" / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    add_repo(cache, "Goodfire/Llama-3.1-8B-Instruct-SAE-l19", {goodfire.name: goodfire})

    ct = work / "ct" / "layer_0.safetensors"
    p["ct"] = L.write_circuit_tracer(ct, rng, D_IN, D_SAE, jump=False, skip=True)
    add_repo(
        cache,
        "mwhanna/qwen3-4b-transcoders",
        {"layer_0.safetensors": ct, "config.yaml": "model_name: Qwen/Qwen3-4B\n"},
    )

    clt = work / "clt"
    p["clt"] = L.write_mntss_clt(clt, rng, D_IN, D_SAE, layer=2, n_targets=3)
    add_repo(cache, "mntss/clt-gemma-2-2b-2.5M", {f.name: f for f in clt.iterdir()})

    qwen = ref / "pt_layouts" / "qwen_scope" / "layer3.sae.pt"
    add_repo(cache, "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", {"layer3.sae.pt": qwen})

    # raw repos, not in the registry: the format comes from the files
    run = ref / "sparsify" / "fp32" / "run"
    add_repo(
        cache,
        "someone/sparsify-run",
        {**folder_files(run / "layers.3", "layers.3"), "config.json": run / "config.json"},
    )
    openai = (
        ref
        / "pt_layouts"
        / "openai"
        / "gpt2-small"
        / "resid_post_mlp_v5_32k"
        / "autoencoders"
        / "5.pt"
    )
    add_repo(cache, "someone/openai-gpt2", {"resid_post_mlp_v5_32k/5.pt": openai})
    return p


def _get(hub: dict, *args, **kw) -> jsae.SAE:
    return jsae.from_pretrained(*args, cache_dir=hub["cache"], **kw)


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return (rng.normal(size=(11, D_IN)) * 1.5 + 0.3).astype(np.float32)


# ----------------------------------------------------------------------- one test per layout


def test_gemma_scope_canonical_release(hub: dict, x) -> None:
    for release in (
        "gemma-scope-2b-pt-res-canonical",
        "gemma-scope-2b-pt-res",
    ):  # canonical ids resolve via either
        sae = _get(hub, release, "layer_12/width_16k/canonical")
        f_ref, recon_ref = L.gemma_scope_ref(hub["gemma"], x)
        assert_close(sae.encode(x), f_ref)
        assert_close(sae(x), recon_ref)
        meta = sae.cfg.metadata
        assert (meta.model_name, meta.hook_name, meta.neuronpedia_id) == (
            "google/gemma-2-2b",
            "blocks.12.hook_resid_post",
            "gemma-2-2b/12-gemmascope-res-16k",
        )
        assert meta.context_size == 1024 and meta.dataset_path == "monology/pile-uncopyrighted"
        assert meta["source_path"] == "layer_12/width_16k/average_l0_82"
        assert len(meta["source_revision"]) == 40


def test_gemma_scope_2_affine_transcoder_release(hub: dict, x) -> None:
    sae = _get(
        hub, "gemma-scope-2-1b-pt-transcoders", "transcoder/layer_13_width_16k_l0_big_affine"
    )
    assert sae.cfg.architecture == "jumprelu_skip_transcoder"
    f_ref, out_ref = L.gemma_scope_2_ref(hub["gemma2"], x)
    assert_close(sae.encode(x), f_ref)
    assert_close(sae(x), out_ref)
    meta = sae.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.hook_name_out) == (
        "google/gemma-3-1b-pt",
        "blocks.13.ln2.hook_normalized",
        "blocks.13.hook_mlp_out",
    )


def test_saelens_release_with_legacy_config(hub: dict, x) -> None:
    sae = _get(hub, "gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert_close(sae(x), hub["saelens"](x))
    meta = sae.cfg.metadata
    assert (meta.model_name, meta["tl_model_name"]) == ("gpt2", "gpt2-small")
    assert (meta.hook_name, meta.context_size) == ("blocks.8.hook_resid_pre", 128)
    assert meta.neuronpedia_id == "gpt2-small/8-res-jb"
    assert dict(meta.model_from_pretrained_kwargs) == {"center_writing_weights": True}


def test_saelens_releases_fold_the_registry_norm_scaling_factor(tmp_path: Path, rng, x) -> None:
    """SAELens-format releases saved with normalize_activations="expected_average_only_in":
    SAELens's from_pretrained folds the registry's norm_scaling_factor into the weights (mode
    "none"), and with no factor listed warns and leaves the SAE as saved. jsae, on the same
    offline cache, must give SAELens's own outputs in both cases."""
    cases = {  # name: (release, sae_id, architecture); only the first lists a factor
        "tm": ("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out", "jumprelu"),
        "jb": ("gpt2-small-res-jb", "blocks.8.hook_resid_pre", "standard"),
    }
    cache = tmp_path / "cache"
    for name, (release, sae_id, arch) in cases.items():
        cfg = jsae.SAEConfig(
            architecture=arch,
            d_in=D_IN,
            d_sae=D_SAE,
            normalize_activations="expected_average_only_in",
        )
        sae = jsae.SAE.init(cfg, jax.random.key(7))
        noisy = {
            k: np.asarray(v) + L.rand(rng, *np.shape(v), scale=0.2) for k, v in sae.params.items()
        }
        if "threshold" in noisy:
            noisy["threshold"] = np.abs(noisy["threshold"])
        jsae.SAE.from_params(cfg, noisy).save(tmp_path / name)
        add_repo(
            cache,
            registry.get_release(release).repo_id,
            folder_files(tmp_path / name, registry.get_sae(release, sae_id)[1].path),
        )
    (tmp_path / "requests.json").write_text(
        json.dumps([{"name": n, "release": r, "sae_id": i} for n, (r, i, _) in cases.items()])
    )
    save_file({"x": x}, tmp_path / "inputs.safetensors")
    # fresh: the script points HF_HUB_CACHE at tmp_path before huggingface_hub is imported
    run_reference("converter_fixtures.py", "from_pretrained", tmp_path, fresh=True)

    factor = registry.get_sae("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out")[1].norm_scaling_factor
    assert factor is not None and abs(factor - 1) > 0.01  # folding it changes the outputs
    for name, (release, sae_id, _) in cases.items():
        theirs = load_file(tmp_path / f"{name}.safetensors")
        info = json.loads((tmp_path / f"{name}.json").read_text())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sae = jsae.from_pretrained(release, sae_id, cache_dir=cache)
        assert sae.cfg.normalize_activations == info["normalize_activations"], name
        assert_close(sae.encode(x), theirs["feature_acts"], what=f"{name} encode")
        assert_close(sae(x), theirs["forward"], what=f"{name} forward")
        warned = any("norm_scaling_factor" in str(w.message) for w in caught)
        assert warned == any("norm_scaling_factor" in w for w in info["warnings"]), name
    assert info["normalize_activations"] == "expected_average_only_in" and warned  # "jb"
    # `jsae convert` writes the folded SAE (mode "none"): readers need no registry to use it
    from jsae.cli import main as cli

    out = tmp_path / "converted"
    argv = ["convert", "gpt2-small-mlp-tm", str(out), "--sae-id", "blocks.0.hook_mlp_out"]
    assert cli([*argv, "--cache-dir", str(cache)]) == 0
    back = jsae.load(out)
    assert back.cfg.normalize_activations == "none"
    assert_close(back(x), load_file(tmp_path / "tm.safetensors")["forward"])


def test_llama_scope_releases(hub: dict, x) -> None:
    hp, state = hub["llama"]
    # the registry's scale (real release) disagrees with these made-up hyperparams: warned,
    # and the checkpoint's own dataset norms win
    with pytest.warns(UserWarning, match="using the checkpoint's own"):
        sae = _get(hub, "llama_scope_lxr_8x", "l0r_8x", dtype="float32")
    f_ref, out_ref = L.openmoss_ref(
        state,
        hp["jump_relu_threshold"],
        x,
        d_model=D_IN,
        avg_in=11.5,
        avg_out=11.5,
        include_decoder_norm=True,
    )
    assert_close(sae.encode(x), f_ref, atol=2e-5)
    assert_close(sae(x), out_ref, atol=2e-5)
    assert sae.cfg.metadata.neuronpedia_id == "llama3.1-8b/0-llamascope-res-32k"
    # R1 distill: its config has no dataset norms; the registry's norm_scaling_factor is used
    _, state = hub["r1"]
    sae = _get(hub, "llama_scope_r1_distill", "l0r_800m_slimpajama")
    s = registry.get_sae("llama_scope_r1_distill", "l0r_800m_slimpajama")[1].norm_scaling_factor
    avg = np.sqrt(D_IN) / s
    threshold = np.exp(state["log_jumprelu_threshold"].astype(np.float64))
    f_ref, out_ref = L.openmoss_ref(
        state, threshold, x * 30, d_model=D_IN, avg_in=avg, avg_out=avg, include_decoder_norm=True
    )
    assert_close(sae.encode(x * 30), f_ref, atol=1e-4)
    assert_close(sae(x * 30), out_ref, atol=1e-4)
    assert sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"


def test_dictionary_learning_goodfire_circuit_tracer_qwen_releases(hub: dict, ref: Path, x) -> None:
    io = load_file(ref / "dictionary_learning" / "AutoEncoderTopK" / "io.safetensors")
    sae = _get(
        hub, "sae_bench_pythia70m_sweep_topk_ctx128_0730", "blocks.3.hook_resid_post__trainer_0"
    )
    assert_close(sae.encode(io["x"]), io["feature_acts"])
    assert (
        sae.cfg.metadata.neuronpedia_id
        == "pythia-70m-deduped/3-sae_bench-topk-res-4k__trainer_0_step_final"
    )

    sae = _get(hub, "goodfire-llama-3.1-8b-instruct", "layer_19")
    assert (sae.cfg.architecture, sae.cfg.metadata.hook_name) == (
        "standard",
        "blocks.19.hook_resid_post",
    )
    assert sae.cfg.metadata.neuronpedia_id == "llama3.1-8b-it/19-resid-post-gf"

    sae = _get(hub, "mwhanna-qwen3-4b-transcoders", "layer_0")
    _, out_ref = L.circuit_tracer_ref(hub["ct"], x)
    assert_close(sae(x), out_ref)
    assert (sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name) == (
        "Qwen/Qwen3-4B",
        "blocks.0.mlp.hook_in",
    )

    sae = _get(hub, "mntss-gemma-2-2b-2.5m-clt-as-per-layer", "layer_2")
    clt = hub["clt"]
    assert_close(
        sae.encode(x), np.maximum(x.astype(np.float64) @ clt["W_enc_2"].T + clt["b_enc_2"], 0)
    )
    assert sae.cfg.metadata.neuronpedia_id == "gemma-2-2b/2-clt-hp"

    sae = _get(hub, "qwen-scope-3-1.7b-base-w32k-l50", "layer3")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.metadata.model_name) == (
        "topk",
        50,
        "Qwen/Qwen3-1.7B-Base",
    )


def test_raw_repos_are_detected_from_their_files(hub: dict, ref: Path) -> None:
    io = load_file(ref / "sparsify" / "fp32" / "io.safetensors")
    sae = _get(hub, "someone/sparsify-run", "layers.3")
    assert sae.cfg.metadata["source_format"] == "sparsify"
    assert sae.cfg.metadata.model_name == "EleutherAI/pythia-70m"  # from the run's config.json
    assert_close(sae.encode(io["x"]), io["feature_acts"])
    sae = _get(hub, "someone/openai-gpt2", "resid_post_mlp_v5_32k/5.pt")  # a .pt: its keys decide
    assert sae.cfg.metadata["source_format"] == "openai"
    assert sae.cfg.normalize_activations == "layer_norm"


# ----------------------------------------------------------------------- revisions, errors


def test_revisions_and_force_download(tmp_path: Path, rng, x) -> None:
    cache = tmp_path / "cache"
    old, new = tmp_path / "old", tmp_path / "new"
    p_old = L.write_gemma_scope(old, rng, D_IN, D_SAE)
    p_new = L.write_gemma_scope(new, rng, D_IN, D_SAE)
    commit_old = add_repo(cache, "someone/revisions", folder_files(old, "sae"), ref="v1")
    add_repo(cache, "someone/revisions", folder_files(new, "sae"))
    get = lambda **kw: jsae.from_pretrained("someone/revisions", "sae", cache_dir=cache, **kw)  # noqa: E731
    assert_close(get().encode(x), L.gemma_scope_ref(p_new, x)[0])
    assert_close(get(revision="v1").encode(x), L.gemma_scope_ref(p_old, x)[0])
    by_hash = get(revision=commit_old)
    assert_close(by_hash.encode(x), L.gemma_scope_ref(p_old, x)[0])
    assert by_hash.cfg.metadata["source_revision"] == commit_old
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        get(revision="v2")
    with pytest.raises(HubError, match="force_download=True needs the network"):
        get(force_download=True)


def test_missing_files_and_names_fail_clearly(hub: dict) -> None:
    with pytest.raises(jsae.ConfigError, match="Did you mean 'gemma-scope-2b-pt-res'"):
        _get(hub, "gemma-scope-2b-pt-rez", "layer_12/width_16k/canonical")
    with pytest.raises(jsae.ConfigError, match="Did you mean 'layer_12/width_16k/canonical'"):
        _get(hub, "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonicl")
    with pytest.raises(jsae.ConfigError, match="pass sae_id"):
        _get(hub, "gemma-scope-2b-pt-res-canonical")
    # a registry id whose files are not cached, offline
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1"):
        _get(hub, "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    # raw repos: a missing folder, an uncached repo
    with pytest.raises(HubError, match="no folder or file"):
        _get(hub, "someone/sparsify-run", "layers.9")
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        _get(hub, "nobody/nothing", "x")
    with pytest.raises(jsae.FormatError, match="temporal"):
        _get(hub, "temporal-sae-gemma-2-2b", "blocks.12.hook_resid_post")
    # a cached file that was deleted from the blob store (broken symlink)
    blob_repo = hub["cache"] / "models--Goodfire--Llama-3.1-8B-Instruct-SAE-l19"
    broken = hub["cache"].parent / "broken_cache"
    shutil.copytree(blob_repo, broken / blob_repo.name, symlinks=True)
    for blob in (broken / blob_repo.name / "blobs").iterdir():
        blob.write_bytes(b"garbage")
    with pytest.raises(jsae.FormatError, match="torch checkpoint"):
        jsae.from_pretrained("goodfire-llama-3.1-8b-instruct", "layer_19", cache_dir=broken)


def test_convert_of_a_missing_local_path_says_so(hub: dict, tmp_path: Path, capsys) -> None:
    """`jsae convert a/b` where a/b is a mistyped local path: the error names both readings
    (no such local path; not a usable release or hub repo), and nothing is written."""
    from jsae.cli import main as cli

    out = tmp_path / "out"
    for src in ("checkpionts/trainer_0", "checkpionts"):
        assert cli(["convert", src, str(out), "--cache-dir", str(hub["cache"])]) == 2
        err = capsys.readouterr().err
        assert f"no local file or directory {src!r} exists" in err, err
        assert ("Hugging Face cache" if "/" in src else "unknown release") in err, err
        assert not out.exists()
    # a known release keeps its own message (the sae_id is what is wrong)
    argv = ["convert", "gpt2-small-res-jb", str(out), "--sae-id", "blocks.8.hook_resid_prex"]
    assert cli([*argv, "--cache-dir", str(hub["cache"])]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'blocks.8.hook_resid_pre'" in err and "no local file" not in err, err


def test_from_pretrained_places_parameters_in_their_shards(hub: dict, x) -> None:
    base = _get(hub, "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    mesh = jsae.parallel.make_mesh(2, 4)
    sharded = _get(
        hub, "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", mesh=mesh
    )
    for name, value in sharded.params.items():
        assert value.sharding.spec == jsae.parallel.param_spec(name), name
        assert np.array_equal(np.asarray(value), np.asarray(base.params[name])), name
    assert sharded.W_enc.addressable_shards[0].data.shape == (D_IN, D_SAE // 4)
    assert len({s.device for s in sharded.W_dec.addressable_shards}) == 8
    assert_close(sharded(x), base(x))
    as_dict = _get(hub, "gpt2-small-res-jb", "blocks.8.hook_resid_pre", mesh={"model": 8})
    assert as_dict.W_dec.addressable_shards[0].data.shape == (D_SAE // 8, D_IN)


# ----------------------------------------------------------------------- the registry


def test_registry_matches_saelens_and_its_provenance(ref: Path) -> None:
    """Every SAELens release resolves to the same repo and folder; releases.json regenerates
    exactly from SAELens's YAML."""
    theirs = json.loads((ref / "saelens_registry.json").read_text())
    ours = registry.releases()
    for name, rel in theirs["directory"].items():
        mine = ours[name]
        assert mine.repo_id == rel["repo_id"] and mine.model == rel["model"], name
        assert mine.format == converters.SAELENS_LOADERS[rel["conversion_func"]], name
        assert {k: v.path for k, v in mine.saes.items()} == rel["saes_map"], name
        assert {k: v.neuronpedia for k, v in mine.saes.items()} == rel["neuronpedia_id"], name
        norms = {
            k: v.norm_scaling_factor
            for k, v in mine.saes.items()
            if v.norm_scaling_factor is not None
        }
        assert norms == rel["norm_scaling_factor"], name
        assert dict(mine.config_overrides) == (rel["config_overrides"] or {}), name
    prov = registry.provenance()
    assert prov["saelens_version"] == theirs["version"]
    shipped = json.loads((Path(jsae.__file__).parent / "releases.json").read_text())
    assert build(Path(theirs["yaml"]).read_text(), theirs["version"]) == shipped
    # jsae's own entries cover formats SAELens has no release for
    assert registry.get_release("llama_scope_lxtc_8x").format == "llama_scope"
    assert registry.get_release("sparsify-llama-3-8b-32x").saes["layers.10"].path == "layers.10"
    formats = {r.format for r in ours.values()}
    assert {
        "gemma_scope",
        "gemma_scope_2",
        "saelens",
        "llama_scope",
        "llama_scope_r1",
        "dictionary_learning",
        "goodfire",
        "sparsify",
        "circuit_tracer",
    } <= formats


def test_dtype_override_and_convert_from_the_hub(hub: dict, tmp_path: Path, x) -> None:
    """bf16 on request (thresholds stay fp32); `jsae convert` of a release through the cache."""
    from jsae.cli import main as cli

    sae = _get(
        hub, "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", dtype="bfloat16"
    )
    assert sae.cfg.dtype == "bfloat16" and str(sae.W_enc.dtype) == "bfloat16"
    assert str(sae.threshold.dtype) == "float32"
    assert np.array_equal(
        np.asarray(sae.W_enc, np.float32),
        hub["gemma"]["W_enc"].astype("bfloat16").astype(np.float32),
    )
    out = tmp_path / "converted"
    argv = [
        "convert",
        "gemma-scope-2b-pt-res-canonical",
        str(out),
        "--sae-id",
        "layer_12/width_16k/canonical",
        "--cache-dir",
        str(hub["cache"]),
    ]
    assert cli(argv) == 0
    back = jsae.load(out)
    assert back.cfg.metadata.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    assert back.cfg.metadata["release"] == "gemma-scope-2b-pt-res-canonical"
    assert_close(back(x), L.gemma_scope_ref(hub["gemma"], x)[1])


def test_convert_from_the_hub_keeps_the_sparsity_file(hub: dict, tmp_path: Path, x) -> None:
    """`jsae convert` of a SAELens-format release or raw repo writes the repo's
    sparsity.safetensors too, as it does for a local folder; formats without one write none."""
    from jsae.cli import main as cli

    expected = np.linspace(-5, -1, D_SAE).astype(np.float32)  # what the hub fixture saved
    sources = {
        "release": ["gpt2-small-res-jb", "--sae-id", "blocks.8.hook_resid_pre"],
        "raw_repo": ["jbloom/GPT2-Small-SAEs-Reformatted", "--sae-id", "blocks.8.hook_resid_pre"],
    }
    for name, (src, *rest) in sources.items():
        out = tmp_path / name
        assert cli(["convert", src, str(out), *rest, "--cache-dir", str(hub["cache"])]) == 0
        assert np.array_equal(jsae.load_log_sparsity(out), expected), name
        assert_close(jsae.load(out)(x), hub["saelens"](x), what=name)
    sae, log_sparsity = jsae.hub.from_pretrained_with_sparsity(
        "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", cache_dir=hub["cache"]
    )
    assert log_sparsity is None and sae.cfg.architecture == "jumprelu"
    out = tmp_path / "gemma"
    argv = ["convert", "gemma-scope-2b-pt-res-canonical", str(out)]
    assert (
        cli([*argv, "--sae-id", "layer_12/width_16k/canonical", "--cache-dir", str(hub["cache"])])
        == 0
    )
    assert not (out / "sparsity.safetensors").exists()


def test_metadata_feeds_the_activation_pipeline(hub: dict, tmp_path: Path) -> None:
    """load_model(sae.cfg.metadata.model_name), then hook at sae.cfg.metadata.hook_name."""
    from transformers import GPT2Config

    sae = _get(hub, "gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    config = GPT2Config(n_layer=9, n_embd=D_IN, n_head=2, vocab_size=64, n_positions=32)
    model_dir = jsae.HookedModel.from_config(config, seed=0).save_pretrained(tmp_path / "gpt2")
    add_repo(hub["cache"], "gpt2", {p.name: p for p in model_dir.iterdir()})
    model = jsae.load_model(sae.cfg.metadata.model_name, cache_dir=hub["cache"])
    tokens = np.arange(10).reshape(2, 5)
    _, acts = model.run_with_cache(tokens, [sae.cfg.metadata.hook_name])
    f = sae.encode(acts[sae.cfg.metadata.hook_name])
    assert f.shape == (2, 5, D_SAE)
    assert_close(
        sae(acts[sae.cfg.metadata.hook_name]), hub["saelens"](acts[sae.cfg.metadata.hook_name])
    )
