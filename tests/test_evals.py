"""Eval metrics: SAELens parity on identical inputs, closed-form cases, bad input."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, run_reference

import jsae
from jsae import evals
from jsae.errors import ConfigError, ShapeError

HOOK = "blocks.1.hook_resid_post"


def _sae(
    d_in: int = 12, d_sae: int = 40, seed: int = 0, architecture: str = "standard"
) -> jsae.SAE:
    rng = np.random.default_rng(seed)
    cfg = jsae.SAEConfig(
        architecture=architecture, d_in=d_in, d_sae=d_sae, metadata={"hook_name": HOOK}
    )
    params = {
        "W_enc": rng.normal(0, 0.4, (d_in, d_sae)),
        "W_dec": rng.normal(0, 0.4, (d_sae, d_in)),
        "b_enc": rng.normal(-0.3, 0.3, d_sae),
        "b_dec": rng.normal(0, 0.2, d_in),
    }
    params["b_enc"][:5] = -50.0  # some latents never fire
    if architecture == "jumprelu":
        params["threshold"] = np.abs(rng.normal(0.2, 0.1, d_sae))
    return jsae.SAE.from_params(cfg, params)


def identity_sae(d: int) -> jsae.SAE:
    """W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    eye = np.eye(d, dtype=np.float32)
    cfg = jsae.SAEConfig(architecture="standard", d_in=d, d_sae=2 * d, metadata={"hook_name": HOOK})
    return jsae.SAE.from_params(
        cfg,
        {
            "W_enc": np.concatenate([eye, -eye], 1),
            "W_dec": np.concatenate([eye, -eye], 0),
            "b_enc": np.zeros(2 * d),
            "b_dec": np.zeros(d),
        },
    )


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Inputs evaluated by jsae and, in the reference environment, by SAELens."""
    root = tmp_path_factory.mktemp("evals")
    rng = np.random.default_rng(1)
    sae = _sae()
    sae.save(root / "sae")
    nb, B, T, d = 3, 4, 10, 12
    acts = (rng.normal(0, 1, (nb, B, T, d)) + rng.normal(2.0, 1.0, d)).astype(
        np.float32
    )  # mean != 0
    tokens = rng.integers(0, 20, (nb, B, T))
    tokens[:, :, 0] = 0  # BOS at every context start
    ignore = np.array([0, 3])
    clean = rng.normal(0, 2, (B, T, 30)).astype(np.float32)
    new = (clean + rng.normal(0, 1, clean.shape)).astype(np.float32)
    ce_tokens = rng.integers(0, 30, (B, T))
    np.savez(
        root / "inputs.npz",
        acts=acts,
        tokens=tokens,
        ignore=ignore,
        clean_logits=clean,
        new_logits=new,
        ce_tokens=ce_tokens,
    )
    run_reference("saelens_evals.py", "metrics", root)
    ref = json.loads((root / "outputs.json").read_text())
    with np.load(root / "outputs.npz") as f:
        ref_arrays = {k: f[k] for k in f.files}
    ours = evals.activation_metrics(
        sae,
        [(acts[i], ~np.isin(tokens[i], ignore)) for i in range(nb)],
        evals.EvalConfig.everything(),
    )
    return sae, ours, ref, ref_arrays, (clean, new, ce_tokens)


SCALARS = {
    "shrinkage": ["l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"],
    "sparsity": ["l0", "l1"],
    "reconstruction_quality": ["explained_variance", "explained_variance_legacy", "mse", "cossim"],
}


@pytest.mark.parametrize("key", [k for keys in SCALARS.values() for k in keys])
def test_scalar_metrics_match_saelens(parity, key: str) -> None:
    _, (metrics, _), ref, _, _ = parity
    group = next(g for g, keys in SCALARS.items() if key in keys)
    assert_close(metrics[group][key], ref["scalars"][key], rtol=1e-5, atol=1e-6, what=key)


@pytest.mark.parametrize(
    "key",
    [
        "feature_density",
        "consistent_activation_heuristic",
        "encoder_norm",
        "encoder_decoder_cosine_sim",
        "encoder_bias",
    ],
)
def test_feature_metrics_match_saelens(parity, key: str) -> None:
    _, (_, features), ref, _, _ = parity
    ours, theirs = np.asarray(features[key], float), np.asarray(ref["features"][key], float)
    assert ours.shape == theirs.shape
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))  # latents that never fire: 0/0
    assert_close(np.nan_to_num(ours), np.nan_to_num(theirs), rtol=1e-5, atol=1e-6, what=key)
    if key == "feature_density":
        assert (ours == 0).sum() >= 5 and (ours > 0).sum() > 10


def test_kl_and_cross_entropy_match_saelens(parity) -> None:
    _, _, _, ref_arrays, (clean, new, ce_tokens) = parity
    assert_close(
        evals.per_token_kl(jnp.asarray(clean), jnp.asarray(new)),
        ref_arrays["kl"],
        rtol=1e-4,
        atol=1e-6,
    )
    assert_close(
        evals.per_token_ce(jnp.asarray(clean), jnp.asarray(ce_tokens)),
        ref_arrays["ce"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_jsae_only_sparsity_keys(parity) -> None:
    _, (metrics, features), _, _, _ = parity
    density = np.asarray(features["feature_density"])
    s = metrics["sparsity"]
    assert s["dead_features"] == int((density == 0).sum()) >= 5
    assert s["dense_features"] == int((density > 0.1).sum())
    assert s["below_1e-5"] == int((density < 1e-5).sum())


# ------------------------------------------------------------------------------ closed forms


def test_identity_sae_reconstructs_exactly() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, (2, 7, 6)).astype(np.float32)
    metrics, _ = evals.activation_metrics(identity_sae(6), [(x, np.ones((2, 7), bool))])
    rq, sh = metrics["reconstruction_quality"], metrics["shrinkage"]
    assert rq["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert rq["explained_variance_legacy"] == pytest.approx(1.0, abs=1e-6)
    assert rq["mse"] == pytest.approx(0.0, abs=1e-10)
    assert rq["cossim"] == pytest.approx(1.0, abs=1e-6)
    assert sh["l2_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert sh["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["sparsity"]["l0"] == pytest.approx(6.0)  # exactly one of ±x_i fires


def test_explained_variance_formulas_on_a_known_case() -> None:
    """x̂ = the mean of x explains none of the variance; SAELens 6.18's formula said otherwise."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (500, 8)) + 5.0
    x_hat = np.broadcast_to(x.mean(0), x.shape)
    assert evals.explained_variance(x, x_hat) == pytest.approx(0.0, abs=1e-9)
    buggy = evals.explained_variance_saelens_6_18([(x, x_hat)])
    total = (x**2).sum(-1).mean() - ((x**2).mean()) ** 2
    assert buggy == pytest.approx(1.0 - ((x - x_hat) ** 2).sum(-1).mean() / total)
    assert buggy > 0.5  # mostly the mean "explained"
    # legacy: per-token ratios against the batch mean, averaged
    legacy = evals.explained_variance_legacy(x, x_hat)
    assert np.allclose(legacy, 0.0)
    assert evals.mse_saelens_6_18([(x, x_hat)]) == pytest.approx(
        ((x - x_hat) ** 2).sum(-1).mean() / 500
    )


def test_evaluate_activations_without_a_model() -> None:
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(32, 6)).astype(np.float32) for _ in range(3)]
    metrics, features = evals.evaluate_activations(identity_sae(6), batches, n_batches=3)
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert len(features["feature_density"]) == 12
    with pytest.raises(ConfigError, match="no activation batches"):
        evals.evaluate_activations(identity_sae(6), [])


def _linear_transcoder(A: np.ndarray, b: np.ndarray) -> jsae.SAE:
    """A skip transcoder whose output is exactly x @ A.T + b (no latent ever fires)."""
    d_out, d_in = A.shape
    cfg = jsae.SAEConfig(architecture="skip_transcoder", d_in=d_in, d_sae=8, d_out=d_out)
    return jsae.SAE.from_params(
        cfg,
        {
            "W_enc": np.zeros((d_in, 8)),
            "b_enc": -np.ones(8),
            "W_dec": np.ones((8, d_out)),
            "b_dec": b,
            "W_skip": A,
        },
    )


def test_a_transcoder_is_scored_against_its_target() -> None:
    """The metrics compare the transcoder's output with y, the activation it stands in for:
    exact where y is its output, and the closed-form explained variance where y is not."""
    rng = np.random.default_rng(5)
    A, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    tc = _linear_transcoder(A, b)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x @ A.T + b).astype(np.float32)
    metrics, features = evals.evaluate_activations(tc, [(x, y)])
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(1, abs=1e-6)
    assert metrics["reconstruction_quality"]["mse"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["sparsity"]["l0"] == 0.0
    assert metrics["shrinkage"]["l2_norm_in"] == pytest.approx(np.linalg.norm(y, axis=1).mean())
    assert "encoder_decoder_cosine_sim" not in features  # d_out != d_in: no shared space
    assert len(features["encoder_norm"]) == 8
    noisy = y + rng.normal(0, 0.5, y.shape).astype(np.float32)
    metrics, _ = evals.evaluate_activations(tc, [(x, noisy)])
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(
        evals.explained_variance(noisy, y), rel=1e-5
    )
    triples = [(x[None], noisy[None], np.ones((1, 64), bool))]  # [B=1, T=64, d]
    same, _ = evals.activation_metrics(tc, triples)
    assert evals.flatten_metrics(same) == pytest.approx(evals.flatten_metrics(metrics))

    with pytest.raises(ShapeError, match=r"\(x, y\) pairs"):
        evals.evaluate_activations(tc, [x])
    with pytest.raises(ShapeError, match="equal rows"):
        evals.evaluate_activations(tc, [(x, y[:10])])
    with pytest.raises(ShapeError, match="d_out=4"):
        evals.evaluate_activations(tc, [(x, x)])
    with pytest.raises(ShapeError, match=r"\(x, y, mask\) triples"):
        evals.activation_metrics(tc, [(x[None], np.ones((1, 64), bool))])
    with pytest.raises(ShapeError, match=r"\(x, mask\) pairs"):
        evals.activation_metrics(identity_sae(6), triples)


def test_bad_eval_input() -> None:
    with pytest.raises(ConfigError, match="unknown eval options"):
        evals.EvalConfig.from_dict({"compute_kll": True})
    with pytest.raises(ShapeError, match="expected x"):
        evals.activation_metrics(identity_sae(6), [(np.zeros((2, 3, 5)), np.ones((2, 3), bool))])
    with pytest.raises(ConfigError, match="no \\(unmasked\\) tokens"):
        evals.activation_metrics(identity_sae(6), [(np.zeros((2, 3, 6)), np.zeros((2, 3), bool))])
    assert evals.flatten_metrics({"a": {"b": 1}, "c": 2}) == {"a/b": 1, "c": 2}
    # a score whose ablation changes nothing is undefined (it raised ZeroDivisionError)
    assert np.isnan(evals._score(0.0, 0.1)) and np.isnan(evals._score(2.0, 2.5, 2.0))
    assert evals._score(3.0, 2.5, 2.0) == 0.5
