"""Sparse sampling of a Gaussian copula's firing: which (row, feature) pairs fall below their
thresholds, without drawing a Gaussian for every pair.

Feature j fires in row i when `a·s_ij + b·e_ij < κ_j`, where `s_ij = u_i · F_j` is the common
part (`u_i ~ N(0, I_r)`, `F_j` a unit row of the low-rank factor, so `s_ij ~ N(0, 1)`),
`e_ij ~ N(0, 1)` the feature's own noise, `a = √correlation`, `b = √(1 - correlation)` and
`κ_j = Φ⁻¹(p_j)`. Given `u_i`, the pair fires with probability `Φ(t_ij)`,
`t_ij = (κ_j - a·s_ij) / b`.

Drawing every `e_ij` costs a Gaussian per feature and row (seconds per 4096 x 16384 batch).
Instead, with a cut `τ` on the own noise:

* pairs with `t_ij > τ` ("near" pairs, found from the common part alone, a rank-r product)
  draw their `e_ij` and fire when it is below `t_ij`;
* every other pair can fire only when `e_ij < τ`: those pairs are a Bernoulli(`Φ(τ)`) subset
  of the grid, drawn sparsely, and each draws `e_ij` from the normal tail below `τ`.

Both halves are exact, so the firing has the copula's law; `τ` only sets the cost, and is
chosen once per source to minimise the expected number of draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()
# Own-noise cuts considered: Φ(τ) from 1e-8 to 1/4 (denser candidates are no cheaper than near
# pairs, and the tail sampler needs τ < 0).
_TAIL_GRID = np.array([_NORMAL.inv_cdf(q) for q in np.geomspace(1e-8, 0.25, 64)])
# Near pairs are decided from float32 common parts: widen their set by more than its rounding.
_NEAR_MARGIN = 1e-3


@dataclass(frozen=True)
class CopulaSampler:
    """A Gaussian copula's threshold events for fixed features; build with `CopulaSampler.plan`."""

    factor: np.ndarray  # [n_features, r] unit rows
    cutoffs: np.ndarray  # [n_features] κ_j = Φ⁻¹(p_j), ±inf where p_j is 0 or 1
    common_scale: float  # a = √correlation
    own_scale: float  # b = √(1 - correlation)
    tail: float  # τ < 0: the own-noise cut below which far pairs can fire
    near_below: np.ndarray  # [n_features] float32: s_ij < near_below[j] marks a near pair

    @classmethod
    def plan(
        cls,
        factor: np.ndarray,
        probabilities: np.ndarray,
        correlation: float,
        tail: float | None = None,
    ) -> CopulaSampler:
        """The sampler for `probabilities` [n_features], with the cut `tail` (τ) that
        minimises the expected draws per row unless one is given."""
        cutoffs = np.array(
            [
                -math.inf if p <= 0 else math.inf if p >= 1 else _NORMAL.inv_cdf(p)
                for p in np.asarray(probabilities, np.float64)
            ]
        )
        a, b = math.sqrt(correlation), math.sqrt(1 - correlation)
        if tail is None:
            tail = _cheapest_tail(cutoffs, a, b)
        if not tail < 0:
            raise ValueError(f"the own-noise cut must be negative, got {tail}")
        return cls(
            factor=np.asarray(factor, np.float64),
            cutoffs=cutoffs,
            common_scale=a,
            own_scale=b,
            tail=float(tail),
            near_below=(_near_bound(cutoffs, a, b, tail) + _NEAR_MARGIN).astype(np.float32),
        )

    def fire(self, rng: np.random.Generator, common: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The firing (rows [nnz], features [nnz]) given each row's common factor
        `common` [n, r], each pair at most once, in no particular order."""
        n, n_features = common.shape[0], self.factor.shape[0]
        near_keys = self._near_keys(common)  # sorted
        near_rows, near_cols = near_keys // n_features, near_keys % n_features
        near_fires = rng.standard_normal(near_rows.size) < self._threshold(
            common, near_rows, near_cols
        )
        # far pairs below the cut: a Bernoulli(Φ(τ)) subset of the grid, minus the near pairs
        keys = _bernoulli_positions(rng, n * n_features, _NORMAL.cdf(self.tail))
        if near_keys.size:
            at = np.minimum(np.searchsorted(near_keys, keys), near_keys.size - 1)
            keys = keys[near_keys[at] != keys]
        far_rows, far_cols = keys // n_features, keys % n_features
        own = -_normal_tail(rng, -self.tail, keys.size)  # e | e < τ
        far_fires = own < self._threshold(common, far_rows, far_cols)
        return (
            np.concatenate([near_rows[near_fires], far_rows[far_fires]]),
            np.concatenate([near_cols[near_fires], far_cols[far_fires]]),
        )

    def _near_keys(self, common: np.ndarray) -> np.ndarray:
        """Row-major grid positions `i·n_features + j` of the pairs with `t_ij > τ` (and a few
        just below), sorted, from the common parts in blocks of ~1M values (kept in cache)."""
        factor_t = np.ascontiguousarray(self.factor.T, np.float32)  # [r, n_features]
        n_features = factor_t.shape[1]
        block = max(1, (1 << 20) // n_features)
        found = [np.zeros(0, np.int64)]
        for lo in range(0, common.shape[0], block):
            s = common[lo : lo + block].astype(np.float32) @ factor_t  # [block, n_features]
            found.append(np.flatnonzero(s < self.near_below) + lo * np.int64(n_features))
        return np.concatenate(found)

    def _threshold(self, common: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """t_ij = (κ_j - a·s_ij) / b for the given pairs, in float64. [nnz]"""
        s = np.einsum("pr,pr->p", common[rows], self.factor[cols])
        with np.errstate(invalid="ignore"):  # κ = ±inf: t = ±inf
            return (self.cutoffs[cols] - self.common_scale * s) / self.own_scale


def _near_bound(cutoffs: np.ndarray, a: float, b: float, tail: float) -> np.ndarray:
    """σ_j: a pair is near (t_ij > τ) exactly when s_ij < σ_j. [n_features]"""
    gap = cutoffs - b * tail
    if a == 0:  # no common part: a feature's pairs are all near or all far
        return np.where(gap > 0, np.inf, -np.inf)
    return gap / a


def _cheapest_tail(cutoffs: np.ndarray, a: float, b: float) -> float:
    """The cut τ on the grid with the fewest expected draws per row: far candidates
    `n_features·Φ(τ)` plus near pairs `Σ_j Φ(σ_j)` (s is standard normal). The sum runs over
    at most 64 evenly spaced quantiles of the cutoffs, scaled up: it only steers the cost."""
    ordered = np.sort(cutoffs)
    sample = ordered[np.linspace(0, ordered.size - 1, min(64, ordered.size)).astype(int)]
    cdf = np.vectorize(
        lambda v: 0.0 if v == -math.inf else 1.0 if v == math.inf else _NORMAL.cdf(v)
    )
    costs = [
        cutoffs.size * _NORMAL.cdf(tail)
        + cdf(_near_bound(sample, a, b, tail)).mean() * cutoffs.size
        for tail in _TAIL_GRID
    ]
    return float(_TAIL_GRID[int(np.argmin(costs))])


def _bernoulli_positions(rng: np.random.Generator, size: int, p: float) -> np.ndarray:
    """The positions in [0, size) of a Bernoulli(p) process, sorted: gaps between successes
    are Geometric(p), so no sort or repeat check is needed. [~size·p]"""
    chunk = int(size * p + 4 * math.sqrt(size * p) + 16)
    parts, end = [], -1
    while end < size:
        steps = np.cumsum(rng.geometric(p, chunk)) + end
        parts.append(steps)
        end = int(steps[-1])
    positions = np.concatenate(parts)
    return positions[: np.searchsorted(positions, size)]


def _normal_tail(rng: np.random.Generator, start: float, size: int) -> np.ndarray:
    """Standard normal draws conditioned on `x >= start > 0` (Marsaglia's tail method: propose
    `√(start² + 2·Exp(1))`, accept with probability `start / x`). [size]"""
    out = np.empty(size)
    todo = np.arange(size)
    while todo.size:
        x = np.sqrt(start * start + 2 * rng.standard_exponential(todo.size))
        accept = rng.random(todo.size) * x < start
        out[todo[accept]] = x[accept]
        todo = todo[~accept]
    return out


__all__ = ["CopulaSampler"]
