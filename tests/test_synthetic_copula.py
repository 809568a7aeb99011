"""The correlated synthetic source's sparse copula sampler has the Gaussian copula's law: given
the common factor each pair fires with probability Φ(t), on both sides of the own-noise cut."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from jsae.activations.copula import CopulaSampler, _bernoulli_positions, _normal_tail
from jsae.activations.synthetic import SyntheticActivations, SyntheticConfig

PHI = NormalDist()


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("correlation", [0.5, 0.0])
def test_each_pair_fires_with_its_conditional_probability(correlation: float) -> None:
    """Rows sharing one common factor u must fire feature j at rate Φ((κ_j - a·u·F_j) / b).
    The cut Φ(τ) = 0.08 is forced so that near pairs (drawn whole) and far pairs (drawn from
    the tail below τ) both occur: sampling either side from the wrong law, or letting a near
    pair also fire as a far candidate (+8%), fails the 5-sigma bounds."""
    gen = np.random.default_rng(0)
    n_features, reps = 12, 20000
    factor = _unit(gen.standard_normal((n_features, 2)))
    probabilities = np.geomspace(0.01, 0.3, n_features)
    sampler = CopulaSampler.plan(factor, probabilities, correlation, tail=PHI.inv_cdf(0.08))
    groups = np.array([[0.0, 0.0], [1.8, -0.6], [-1.2, -1.9]])  # [3, r] common factors
    rows, cols = sampler.fire(np.random.default_rng(1), np.repeat(groups, reps, axis=0))
    keys = rows * n_features + cols
    assert np.unique(keys).size == keys.size, "a pair fired twice"
    counts = np.zeros((len(groups), n_features))
    np.add.at(counts, (rows // reps, cols), 1)
    a, b = math.sqrt(correlation), math.sqrt(1 - correlation)
    cutoffs = np.array([PHI.inv_cdf(p) for p in probabilities])
    t = (cutoffs - a * groups @ factor.T) / b  # [3, n_features]
    expected = np.vectorize(PHI.cdf)(t)
    near = t > sampler.tail
    assert near.any() and (~near).any(), "both sides of the cut must be exercised"
    bound = 5 * np.sqrt(expected * (1 - expected) / reps) + 1e-4
    np.testing.assert_array_less(np.abs(counts / reps - expected), bound)


def test_chosen_cut_gives_the_dense_copulas_co_firing() -> None:
    """The source (cut chosen automatically) against the dense formulation of the same copula:
    same marginals, same pairwise co-firing rates, same spread of firings per row."""
    config = SyntheticConfig(d_in=8, n_features=16, structure="correlated", mean_active=2.0)
    source = SyntheticActivations(config, batch_size=1)
    n = 40000
    fired = source.sample(n)[2] > 0
    copula = source._copula
    gen = np.random.default_rng(7)
    z = copula.common_scale * gen.standard_normal((n, config.correlation_rank)) @ copula.factor.T
    z += copula.own_scale * gen.standard_normal((n, config.n_features))
    dense = z < copula.cutoffs
    fired, dense = fired.astype(float), dense.astype(float)
    joint, joint_dense = fired.T @ fired / n, dense.T @ dense / n  # [16, 16]
    bound = 5 * np.sqrt(joint_dense * (1 - joint_dense) * 2 / n) + 1e-3
    np.testing.assert_array_less(np.abs(joint - joint_dense), bound)
    assert abs(fired.sum(1).var() - dense.sum(1).var()) < 0.1 * dense.sum(1).var()


def test_certain_features_fire_in_every_row() -> None:
    """p = 1 (clipped when mean_active is large) used to fail building the copula."""
    config = SyntheticConfig(d_in=8, n_features=16, structure="correlated", mean_active=16.0)
    source = SyntheticActivations(config, batch_size=1)
    certain = source.probabilities == 1
    assert certain.any()
    fired = source.sample(2000)[2] > 0
    assert fired[:, certain].all()
    np.testing.assert_allclose(fired.mean(0), source.probabilities, atol=0.05)


def test_normal_tail_draws_follow_the_truncated_normal() -> None:
    start = 2.3
    x = _normal_tail(np.random.default_rng(0), start, 200000)
    assert x.min() >= start
    tail_mass = 1 - PHI.cdf(start)
    assert abs(x.mean() - PHI.pdf(start) / tail_mass) < 0.005  # inverse Mills ratio
    for q in (2.4, 2.6, 3.0):  # P(x < q | x >= start)
        expected = (PHI.cdf(q) - PHI.cdf(start)) / tail_mass
        assert abs((x < q).mean() - expected) < 0.005


def test_bernoulli_positions_are_a_bernoulli_process() -> None:
    """Sorted distinct positions, each in with probability p independently of the others."""
    gen = np.random.default_rng(0)
    size, p, runs = 40, 0.3, 5000
    hits, pair = np.zeros(size), 0
    for _ in range(runs):
        positions = _bernoulli_positions(gen, size, p)
        assert np.all(np.diff(positions) > 0) and positions.min(initial=0) >= 0
        assert positions.max(initial=0) < size
        hits[positions] += 1
        pair += (3 in positions) and (4 in positions)
    np.testing.assert_allclose(hits / runs, p, atol=0.03)
    assert abs(pair / runs - p * p) < 0.02
