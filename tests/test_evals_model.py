"""run_evals end to end against SAELens: same GPT-2 weights, same SAE, same dataset.

The reference environment builds a random GPT-2 in PyTorch, saves it (safetensors), loads the
same weights into TransformerLens and runs SAELens's `run_evals` with every metric on;
jsae loads the saved model with `jsae.load_model`, packs the same dataset with
`TokenSource` and runs `jsae.evals.run_evals`. Every SAELens key must agree. Also: the
closed-form splice (an identity SAE recovers all of the CE loss) and bad input.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from helpers import assert_close, run_reference

import jsae
import jsae.models
from jsae import evals
from jsae.activations import TokenSource
from jsae.activations.toy import make_corpus, make_tokenizer, save_text_dataset
from jsae.errors import ConfigError, ShapeError

if not hasattr(jsae.models, "load_model"):
    pytest.skip("jsae.models.load_model is not available yet", allow_module_level=True)

CTX, BATCH, N_RECON, N_SPARSITY = 24, 4, 3, 2
CASES = [
    {
        "hook_name": "blocks.0.hook_resid_post",
        "hook_head_index": None,
        "d_in": 32,
        "d_sae": 64,
        "w_scale": 0.3,
    },
    {
        "hook_name": "blocks.1.attn.hook_z",
        "hook_head_index": None,
        "d_in": 32,
        "d_sae": 48,
        "w_scale": 0.3,
    },
    {
        "hook_name": "blocks.1.attn.hook_z",
        "hook_head_index": 2,
        "d_in": 8,
        "d_sae": 24,
        "w_scale": 0.5,
    },
]
EVERYTHING = evals.EvalConfig.everything(
    batch_size_prompts=BATCH,
    n_eval_reconstruction_batches=N_RECON,
    n_eval_sparsity_variance_batches=N_SPARSITY,
)
TRANSCODER_CASES = [  # input and output hooks as a transcoder reads and replaces them
    {
        "architecture": "transcoder",
        "hook_name": "blocks.1.hook_resid_mid",  # (TransformerLens's ln2.hook_normalized is
        "hook_head_index": None,  # jsae's before the gain: not the same value, models.md)
        "hook_name_out": "blocks.1.hook_mlp_out",
        "hook_head_index_out": None,
        "d_in": 32,
        "d_out": 32,
        "d_sae": 48,
        "w_scale": 0.3,
    },
    {
        "architecture": "skip_transcoder",
        "hook_name": "blocks.1.attn.hook_z",  # all heads, flattened
        "hook_head_index": None,
        "hook_name_out": "blocks.1.hook_attn_out",
        "hook_head_index_out": None,
        "d_in": 32,
        "d_out": 32,
        "d_sae": 24,
        "w_scale": 0.3,
    },
    {
        "architecture": "jumprelu_transcoder",
        "hook_name": "blocks.0.hook_resid_post",
        "hook_head_index": None,
        "hook_name_out": "blocks.1.attn.hook_z",  # one head replaced
        "hook_head_index_out": 2,
        "d_in": 32,
        "d_out": 8,
        "d_sae": 24,
        "w_scale": 0.4,
    },
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    corpus = make_corpus(60, seed=11, max_sentences=3)
    make_tokenizer(corpus, root / "tok", style="gpt2")
    data = save_text_dataset(corpus, root / "corpus.jsonl", fmt="jsonl")
    spec = {
        "tokenizer": str(root / "tok"),
        "data_files": str(data),
        "seed": 0,
        "d_model": 32,
        "n_positions": 32,
        "weight_scale": 4.0,
        "context_size": CTX,
        "batch_size_prompts": BATCH,
        "n_recon": N_RECON,
        "n_sparsity": N_SPARSITY,
        "cases": CASES,
        "transcoder_cases": TRANSCODER_CASES,
    }
    (root / "spec.json").write_text(json.dumps(spec))
    run_reference("saelens_evals.py", "end2end", root)
    return root, json.loads((root / "outputs.json").read_text())


@pytest.fixture(scope="module")
def transcoder_reference(reference):
    root, _ = reference
    run_reference("saelens_evals.py", "transcoders", root)
    return root, json.loads((root / "transcoder_outputs.json").read_text())


@pytest.fixture(scope="module")
def model(reference):
    root, _ = reference
    return jsae.models.load_model(root / "model")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_run_evals_matches_saelens(reference, model, case: int) -> None:
    root, outputs = reference
    ref = outputs[case]
    sae = jsae.load(root / f"sae_{case}")
    source = TokenSource(
        root / "corpus.jsonl", model.tokenizer, context_size=CTX, process_index=0, process_count=1
    )
    tokens = source.next_batch(BATCH * (N_RECON + N_SPARSITY))
    assert tokens.tolist() == [row for b in ref["batches"] for row in b], "same token batches"
    source.restore({"epoch": 0, "doc": 0, "offset": 0, "doc_start": True})
    metrics, features = evals.run_evals(sae, model, source, EVERYTHING)
    _assert_metrics_match(metrics, features, ref)


def _assert_metrics_match(metrics, features, ref) -> None:
    assert set(ref["metrics"]) == set(metrics)
    for group, values in ref["metrics"].items():
        assert set(values) <= set(metrics[group]), group  # jsae adds sparsity counts
        for key, expected in values.items():
            assert_close(metrics[group][key], expected, rtol=2e-4, atol=2e-5, what=f"{group}/{key}")
    assert set(ref["features"]) == set(features)
    for key, expected in ref["features"].items():
        ours, theirs = np.asarray(features[key], float), np.asarray(expected, float)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), key
        assert_close(np.nan_to_num(ours), np.nan_to_num(theirs), rtol=2e-4, atol=2e-5, what=key)
    perf = metrics["model_performance_preservation"]  # the ablation baseline is informative
    assert perf["ce_loss_with_ablation"] != pytest.approx(perf["ce_loss_without_sae"], rel=1e-3)


@pytest.mark.parametrize("case", range(len(TRANSCODER_CASES)))
def test_transcoder_evals_match_saelens_at_the_output_hook(
    transcoder_reference, model, case: int
) -> None:
    """A transcoder is scored against, spliced in at and ablated at its output hook, fed from
    its input hook in the same forward pass: SAELens's `run_evals` computes the same metrics
    for an SAE of the output hook that encodes the transcoder's input (see the reference)."""
    root, outputs = transcoder_reference
    ref = outputs[case]
    sae = jsae.load(root / f"transcoder_{case}")
    assert sae.cfg.architecture == TRANSCODER_CASES[case]["architecture"]
    tokens = [np.asarray(b, np.int32) for b in ref["batches"]]
    assert len(tokens) == N_RECON + N_SPARSITY
    metrics, features = evals.run_evals(sae, model, tokens, EVERYTHING)
    _assert_metrics_match(metrics, features, ref)
    assert 0 < metrics["sparsity"]["l0"] < sae.cfg.d_sae


def test_identity_sae_recovers_all_the_loss(model) -> None:
    from test_evals import identity_sae

    sae = identity_sae(32)
    sae = jsae.SAE(sae.cfg.replace(metadata={"hook_name": "blocks.1.hook_resid_mid"}), sae.params)
    tokens = np.random.default_rng(0).integers(0, 300, (2, BATCH, 16))
    metrics, _ = evals.run_evals(
        sae,
        model,
        list(tokens),
        evals.EvalConfig.everything(
            batch_size_prompts=BATCH,
            n_eval_reconstruction_batches=1,
            n_eval_sparsity_variance_batches=1,
        ),
        exclude_special_tokens=False,
    )
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert metrics["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(1.0, abs=1e-5)


def test_bad_eval_input_through_a_model(model) -> None:
    from test_evals import identity_sae

    tokens = [np.zeros((2, 8), np.int32)]
    sae = identity_sae(32)
    bad_hook = jsae.SAE(
        sae.cfg.replace(metadata={"hook_name": "blocks.1.hook_resid_psot"}), sae.params
    )
    with pytest.raises(ConfigError, match=r"unknown hook name.*blocks\.L\.hook_resid_post"):
        evals.run_evals(bad_hook, model, tokens)
    wrong_width = jsae.SAE(
        sae.cfg.replace(metadata={"hook_name": "blocks.1.attn.hook_z"}), sae.params
    )
    with pytest.raises(ShapeError, match="hook_head_index"):
        evals.run_evals(wrong_width, model, tokens, hook_head_index=0)
    # a head index out of range, or on a hook without heads, would read a clamped head and
    # drop the writes (JAX indexing): refused, naming the setting
    with pytest.raises(ShapeError, match=r"hook_head_index=7, but blocks\.1\.attn\.hook_z has 4 h"):
        evals.run_evals(identity_sae(8), model, tokens, hook_name="blocks.1.attn.hook_z",
                        hook_head_index=7)  # fmt: skip
    with pytest.raises(ShapeError, match=r"hook_head_index=0, but .* has no head axis"):
        evals.run_evals(sae, model, tokens, hook_name="blocks.1.hook_resid_pre", hook_head_index=0)
    ok = jsae.SAE(sae.cfg.replace(metadata={"hook_name": "blocks.0.hook_resid_post"}), sae.params)
    rows = datasets.Dataset.from_dict({"input_ids": np.zeros((4, 40), np.int32).tolist()})
    long_source = TokenSource(rows, context_size=40, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="exceeds the model's 32 positions"):
        evals.run_evals(ok, model, long_source)
    with pytest.raises(ConfigError, match="ran out"):
        evals.run_evals(
            ok, model, tokens, evals.EvalConfig.everything(n_eval_reconstruction_batches=2)
        )
    rows = datasets.Dataset.from_dict({"input_ids": np.zeros((4, 16), np.int32).tolist()})
    finite = TokenSource(rows, context_size=16, process_index=0, process_count=1, loop=False)
    cfg = evals.EvalConfig.everything(batch_size_prompts=2, n_eval_reconstruction_batches=100)
    with pytest.raises(ConfigError, match="ran out after 2 of the 100"):  # 4 rows, 2 per batch
        evals.run_evals(ok, model, finite, cfg)


def test_token_counts_are_the_tokens_evaluated(model) -> None:
    """Batches of any size are counted as given (a last partial batch, another batch size)."""
    from test_evals import identity_sae

    sae = identity_sae(32)
    sae = jsae.SAE(sae.cfg.replace(metadata={"hook_name": "blocks.0.hook_resid_post"}), sae.params)
    rng = np.random.default_rng(0)
    tokens = [rng.integers(1, 300, shape) for shape in [(4, 16), (3, 16), (1, 16)]]
    cfg = evals.EvalConfig.everything(
        batch_size_prompts=4, n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=1
    )
    metrics, _ = evals.run_evals(sae, model, tokens, cfg, exclude_special_tokens=False)
    assert metrics["token_stats"] == {
        "total_tokens_eval_reconstruction": 7 * 16,
        "total_tokens_eval_sparsity_variance": 1 * 16,
    }


def test_jsae_eval_command(reference, tmp_path, capsys) -> None:
    from jsae.cli import main

    root, outputs = reference
    sae_dir = tmp_path / "sae"
    meta = {
        "model_name": str(root / "model"),
        "hook_name": CASES[0]["hook_name"],
        "context_size": CTX,
        "prepend_bos": True,
    }
    sae = jsae.load(root / "sae_0")
    jsae.SAE(sae.cfg.replace(metadata=meta), sae.params).save(sae_dir)
    out = tmp_path / "results.json"
    args = [
        "eval",
        str(sae_dir),
        f"dataset_path={root / 'corpus.jsonl'}",
        "--batch-size-prompts",
        "2",
        "streaming=false",  # an override after an option is an override too
        "--n-eval-reconstruction-batches",
        "2",
        "--output",
        str(out),
        "--features",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ce_loss_score" in printed and "feature_density" in printed
    result = json.loads(out.read_text())
    assert set(result) == {"metrics", "feature_metrics", "sae_cfg", "eval_cfg"}
    assert set(result["metrics"]) == set(outputs[0]["metrics"])
    assert result["eval_cfg"]["context_size"] == CTX
    assert result["metrics"]["token_stats"]["total_tokens_eval_reconstruction"] == 2 * 2 * CTX
    # a nested `jsae train` config's settings win over the SAE's metadata
    nested = tmp_path / "run.yaml"
    nested.write_text(f"model:\n  context_size: {CTX // 2}\n")
    assert main([*args, "--config", str(nested)]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["eval_cfg"]["context_size"] == CTX // 2
    stats = result["metrics"]["token_stats"]
    assert stats["total_tokens_eval_reconstruction"] == 2 * 2 * (CTX // 2)
    with pytest.raises(SystemExit):  # anything else argparse does not know is still refused
        main([*args, "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    # nothing to evaluate on: the error names the missing setting
    assert main(["eval", str(sae_dir)]) == 2
    assert "dataset_path" in capsys.readouterr().err


def test_jsae_eval_command_on_a_transcoder(transcoder_reference, model, tmp_path, capsys) -> None:
    """`jsae eval` takes both hooks (and the output head) from a transcoder's metadata and
    prints what run_evals computes for it over the same token stream."""
    from jsae.activations.config import LanguageModelSettings
    from jsae.activations.pipeline import token_source
    from jsae.cli import main

    root, _ = transcoder_reference
    tc = jsae.load(root / "transcoder_2")  # resid_post -> one head of the next layer's hook_z
    assert tc.cfg.metadata.hook_head_index_out == 2
    meta = tc.cfg.metadata.replace(model_name=str(root / "model"))
    jsae.SAE(tc.cfg.replace(metadata=meta), tc.params).save(tmp_path / "tc")
    out = tmp_path / "results.json"
    data = root / "corpus.jsonl"
    args = ["eval", str(tmp_path / "tc"), f"dataset_path={data}", "streaming=false",
            "--batch-size-prompts", "2", "--n-eval-reconstruction-batches", "2",
            "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "ce_loss_score" in capsys.readouterr().out
    result = json.loads(out.read_text())["metrics"]
    settings = LanguageModelSettings(
        model_name=str(root / "model"), dataset_path=str(data), streaming=False, context_size=CTX
    )
    cfg = evals.EvalConfig.everything(batch_size_prompts=2, n_eval_reconstruction_batches=2)
    tokens = token_source(settings, model.tokenizer, shuffle_seed=42)
    direct, _ = evals.run_evals(tc, model, tokens, cfg)
    assert evals.flatten_metrics(result) == pytest.approx(evals.flatten_metrics(direct))
    # an output hook of another width is refused, naming the settings to check
    assert main([*args, "hook_name_out=blocks.1.hook_attn_out"]) == 2
    assert "d_out is 8; check hook_name_out and hook_head_index_out" in capsys.readouterr().err


def test_a_transcoder_that_writes_before_it_reads(model) -> None:
    """An output hook the model computes before the input hook cannot be spliced: CE and KL are
    refused with what to do, and the reconstruction and sparsity metrics still work."""
    meta = {"hook_name": "blocks.1.hook_mlp_out", "hook_name_out": "blocks.0.hook_mlp_out"}
    cfg = jsae.SAEConfig(architecture="transcoder", d_in=32, d_sae=16, d_out=32, metadata=meta)
    tc = jsae.SAE.init(cfg, 0)
    assert not evals.transcoder_spliceable(model, "blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out")
    assert evals.transcoder_spliceable(model, "blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out")
    assert evals.transcoder_spliceable(model, "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_in")
    tokens = [np.random.default_rng(0).integers(1, 300, (2, 12)) for _ in range(2)]
    cfg = evals.EvalConfig.everything(
        batch_size_prompts=2, n_eval_reconstruction_batches=1, n_eval_sparsity_variance_batches=1
    )
    with pytest.raises(ConfigError, match=r"computes before its input blocks\.1\.hook_mlp_out"):
        evals.run_evals(tc, model, tokens, cfg)
    metrics, _ = evals.run_evals(
        tc, model, tokens, cfg.replace(compute_kl=False, compute_ce_loss=False)
    )
    assert "model_performance_preservation" not in metrics
    assert np.isfinite(metrics["reconstruction_quality"]["explained_variance"])
