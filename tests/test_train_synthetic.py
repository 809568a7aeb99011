"""Synthetic ground truth: the source has the structure it claims, and every architecture
trained on it finds the true features (mean max cosine >= 0.9)."""

from __future__ import annotations

import numpy as np
import pytest

import jsae
from jsae.activations.synthetic import (
    SyntheticActivations,
    SyntheticConfig,
    feature_recovery,
    mapping_recovery,
)


def test_independent_firing_matches_the_probabilities() -> None:
    source = SyntheticActivations(
        SyntheticConfig(d_in=8, n_features=24, mean_active=3.0), batch_size=1
    )
    x, _, acts = source.sample(20000)
    fired = acts > 0
    np.testing.assert_allclose(fired.mean(0), source.probabilities, atol=0.01)
    assert abs(fired.sum(1).mean() - 3.0) < 0.05
    np.testing.assert_allclose(x, acts @ source.features, rtol=1e-5, atol=1e-5)
    assert np.allclose(np.linalg.norm(source.features, axis=1), 1)


def test_independent_firing_is_independent_uniform_over_rows_and_has_the_magnitudes() -> None:
    """The sparse sampler (a Binomial count per feature, then that many distinct random rows)
    must give i.i.d. Bernoulli firing: no co-firing beyond chance, no favoured rows, at most one
    firing per (row, feature), and magnitudes |N(1, magnitude_std)|."""
    source = SyntheticActivations(
        SyntheticConfig(d_in=8, n_features=24, mean_active=3.0, magnitude_std=0.2, seed=5),
        batch_size=1,
    )
    acts = source.sample(20000)[2]
    fired = acts > 0
    c = np.corrcoef(fired.T.astype(float))
    assert np.abs(c[~np.eye(24, dtype=bool)]).max() < 0.04  # 20000 rows: sd of r ~0.007
    half = fired.reshape(4, 5000, 24).mean(1)  # firing rates by quarter of the rows
    np.testing.assert_allclose(half, np.broadcast_to(source.probabilities, half.shape), atol=0.02)
    per_row = fired.sum(1)
    p = source.probabilities
    assert abs(per_row.var() - np.sum(p * (1 - p))) < 0.15  # Poisson-binomial variance
    m = acts[fired]
    folded = np.abs(1 + 0.2 * np.random.default_rng(0).standard_normal(10**6))
    assert abs(m.mean() - folded.mean()) < 0.01 and abs(m.std() - folded.std()) < 0.01


@pytest.mark.parametrize("mean_active", [8.0, 16.0])  # p > 1/4 (permutations); some p = 1
def test_frequent_features_fire_with_their_probability(mean_active: float) -> None:
    source = SyntheticActivations(
        SyntheticConfig(d_in=8, n_features=16, mean_active=mean_active), batch_size=1
    )
    x, _, acts = source.sample(4000)
    np.testing.assert_allclose((acts > 0).mean(0), source.probabilities, atol=0.03)
    np.testing.assert_allclose(x, acts @ source.features, rtol=1e-5, atol=1e-5)
    certain = source.probabilities == 1  # clipped: must fire in every row
    assert certain.any() == (mean_active == 16.0)
    assert (acts[:, certain] > 0).all()


def test_correlated_firing_keeps_marginals_and_correlates() -> None:
    cfg = dict(d_in=8, n_features=24, mean_active=3.0)
    indep = SyntheticActivations(SyntheticConfig(**cfg), batch_size=1).sample(20000)[2] > 0
    source = SyntheticActivations(
        SyntheticConfig(**cfg, structure="correlated", correlation=0.6), batch_size=1
    )
    x, _, acts = source.sample(20000)
    corr = acts > 0
    np.testing.assert_allclose(corr.mean(0), source.probabilities, atol=0.015)
    # rows fire very different numbers of features here: the sparse sum must still be exact
    assert corr.sum(1).max() > 3 * corr.sum(1).mean()
    np.testing.assert_allclose(x, acts @ source.features, rtol=1e-5, atol=1e-5)

    def mean_abs_offdiag(fired):
        c = np.corrcoef(fired.T.astype(float))
        return np.abs(c[~np.eye(len(c), dtype=bool)]).mean()

    assert mean_abs_offdiag(corr) > 3 * mean_abs_offdiag(indep)


def test_hierarchical_children_fire_only_with_their_parent_one_at_a_time() -> None:
    source = SyntheticActivations(
        SyntheticConfig(d_in=8, n_features=20, structure="hierarchical", n_parents=4), batch_size=1
    )
    x, _, acts = source.sample(5000)
    fired = acts > 0
    np.testing.assert_allclose(x, acts @ source.features, rtol=1e-5, atol=1e-5)
    for parent in range(4):
        kids = np.arange(4 + parent, 20, 4)
        assert not np.any(fired[:, kids].any(1) & ~fired[:, parent]), "child without its parent"
        assert fired[:, kids].sum(1).max() == 1, "siblings must exclude each other"
        assert fired[:, kids].any(1).sum() > 0


def test_stream_is_seeded_sharded_and_resumable() -> None:
    cfg = SyntheticConfig(d_in=8, n_features=16, d_out=5, seed=3)
    a = iter(SyntheticActivations(cfg, batch_size=8))
    source = SyntheticActivations(cfg, batch_size=8)
    b = iter(source)
    for _ in range(3):
        xa, ya = next(a)
        xb, yb = next(b)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and ya.shape == (8, 5)
    _, y, acts = SyntheticActivations(cfg, batch_size=8).sample(64)  # transcoder targets
    np.testing.assert_allclose(
        y, acts @ SyntheticActivations(cfg, batch_size=8).output_features, rtol=1e-5, atol=1e-5
    )
    state = source.state()
    after = next(b)
    source.restore(state)
    assert np.array_equal(next(iter(source))[0], after[0])
    halves = [
        iter(SyntheticActivations(cfg, batch_size=8, shard_index=i, num_shards=2)) for i in (0, 1)
    ]
    whole = next(iter(SyntheticActivations(cfg, batch_size=8)))[0]
    assert np.array_equal(np.concatenate([next(h)[0] for h in halves]), whole)


def test_feature_recovery_scores() -> None:
    features = np.random.default_rng(0).normal(size=(10, 6))
    assert feature_recovery(features, np.concatenate([features * 3, -features])) == pytest.approx(1)
    assert feature_recovery(features, np.random.default_rng(1).normal(size=(20, 6))) < 0.9


# Settings per architecture (steps default to 700 batches of 256; the data has 2 active
# features per activation on average, so TopK-family SAEs get k = 2). Step counts leave margin
# over source seeds, not just the seed used: over seeds 0-5 the lowest recovery measured was
# standard 0.952, gated 0.925, jumprelu 0.978, topk 0.939, batchtopk 0.929, matryoshka 0.903,
# the transcoders 0.974 (TopK family at 700-1200 steps: 0.887-0.905, seed-dependent).
RECOVERY_CASES = {
    "standard": {"l1_coefficient": 0.3},
    "gated": {"l1_coefficient": 0.3, "steps": 1000},
    "jumprelu": {"l0_coefficient": 0.3, "jumprelu_init_threshold": 0.1},
    "topk": {"k": 2, "steps": 1600},
    "batchtopk": {"k": 2, "steps": 2400},
    "matryoshka_batchtopk": {"k": 2, "matryoshka_widths": [16, 32], "lr": 1e-2, "steps": 2400},
    "transcoder": {"l1_coefficient": 0.3, "d_out": 12},
    "skip_transcoder": {"l1_coefficient": 0.3, "d_out": 12},
    "jumprelu_transcoder": {"l0_coefficient": 0.3, "jumprelu_init_threshold": 0.1, "d_out": 12},
}


@pytest.mark.parametrize("architecture", list(RECOVERY_CASES))
def test_every_architecture_recovers_the_true_features(architecture: str) -> None:
    extra = dict(RECOVERY_CASES[architecture])
    steps = extra.pop("steps", 700)
    d_out = extra.get("d_out")
    source = SyntheticActivations(
        SyntheticConfig(d_in=16, n_features=32, mean_active=2.0, d_out=d_out, seed=0),
        batch_size=256,
    )
    config = {
        "architecture": architecture, "d_in": 16, "d_sae": 64, "lr": 3e-3,
        "train_batch_size_tokens": 256, "training_tokens": 256 * steps, "log_to_wandb": False,
        "checkpoint_path": None, "output_path": None, "progress_bar": False, **extra,
    }  # fmt: skip
    sae = jsae.train(config, source)
    if architecture == "skip_transcoder":
        # the linear skip carries part of every feature, so decoder rows need not align with the
        # true output features; score the map itself: each input feature -> its output feature
        score = mapping_recovery(sae.forward, source)
    else:
        truth = source.output_features if d_out else source.features
        score = feature_recovery(truth, sae.W_dec)
    assert score >= 0.9, f"{architecture}: recovery {score:.3f}"
    x = source.sample(1024)[0]
    l0 = float((np.asarray(sae.encode(x)) > 0).sum(-1).mean())
    assert l0 < 12, f"{architecture}: L0 {l0:.1f} is not sparse"


def _topk_on(structure: str) -> tuple[SyntheticActivations, jsae.SAE]:
    source = SyntheticActivations(
        SyntheticConfig(
            d_in=16, n_features=32, mean_active=2.0, structure=structure, n_parents=8, seed=1
        ),
        batch_size=256,
    )
    config = {
        "architecture": "topk", "k": 2, "d_in": 16, "d_sae": 64, "lr": 3e-3,
        "train_batch_size_tokens": 256, "training_tokens": 256 * 1600, "log_to_wandb": False,
        "checkpoint_path": None, "output_path": None, "progress_bar": False,
    }  # fmt: skip
    return source, jsae.train(config, source)


# Measured over source seeds 0-11 at 1600 steps: correlated recovery 0.93-0.97 (0.927-0.963 with
# the sparse copula sampler, jsae.activations.copula); hierarchical
# parents 0.864-0.948, children 0.741-0.779 (at 800 steps: correlated 0.877-0.955, parents
# 0.841-0.939, so the thresholds below would have depended on the seed).


def test_recovery_on_correlated_data() -> None:
    source, sae = _topk_on("correlated")
    assert feature_recovery(source.features, sae.W_dec) >= 0.9


def test_hierarchical_data_shows_feature_absorption() -> None:
    """Parents are recovered; children, which always fire with their parent, are partly absorbed
    (learned as parent + child), which is what the hierarchical structure exists to exhibit."""
    source, sae = _topk_on("hierarchical")
    parents = feature_recovery(source.features[:8], sae.W_dec)
    children = feature_recovery(source.features[8:], sae.W_dec)
    assert parents >= 0.85
    assert children < parents - 0.05


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"structure": "clustered"}, r"unknown structure 'clustered'.*'correlated'"),
        ({"mean_active": 0.0}, r"mean_active must be in \(0, n_features\]"),
        ({"correlation": 1.0}, r"correlation must be in \[0, 1\)"),
        ({"structure": "correlated", "correlation_rank": 0}, "structure='independent'"),
        ({"structure": "hierarchical", "n_parents": 16}, "0 < n_parents < n_features"),
    ],
)
def test_invalid_synthetic_configs_are_refused(bad: dict, message: str) -> None:
    with pytest.raises(jsae.ConfigError, match=message):
        SyntheticConfig(d_in=8, n_features=16, **bad)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"synthetic_mean_active": 0.0}, r"synthetic_mean_active must be in \(0, synthetic_n_f"),
        ({"synthetic_correlation": 1.5}, "synthetic_correlation must be in"),
        ({"synthetic_noise_std": -1.0}, "synthetic_noise_std must be >= 0"),
        ({"synthetic_structure": "tree"}, "unknown synthetic_structure 'tree'"),
    ],
)
def test_the_trainer_names_the_synthetic_config_keys(setting: dict, message: str) -> None:
    """Errors from the synthetic source built for a config name the keys a user sets."""
    config = {"architecture": "standard", "d_in": 8, "d_sae": 16, "log_to_wandb": False,
              "checkpoint_path": None, "output_path": None, **setting}  # fmt: skip
    with pytest.raises(jsae.ConfigError, match=f"activation_source synthetic: .*{message}"):
        jsae.Trainer(config)
