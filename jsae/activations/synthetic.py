"""Synthetic activations with known sparse features in superposition, and a recovery score.

    source = SyntheticActivations(SyntheticConfig(d_in=64, n_features=256), batch_size=1024)
    sae = jsae.train(config, source)
    feature_recovery(source.features, sae.W_dec)   # mean max cosine, 1.0 = every feature found

Each activation is `x = Σ_i a_i · F_i (+ noise)`: `F` holds `n_features` random unit vectors in
`R^d_in` (more features than dimensions: superposition), `a_i = fire_i · m_i` with magnitudes
`m_i = |N(1, magnitude_std)|`. Feature i fires with its own probability p_i (spread log-uniformly
over a factor of 4, scaled so that `mean_active` features fire per activation on average), by
one of three structures:

* `independent`: each feature fires on its own.
* `correlated`: firing is thresholded from Gaussians sharing a low-rank factor (a Gaussian
  copula), so features co-occur; each keeps its marginal p_i. Sampled sparsely and exactly
  (`jsae.activations.copula`).
* `hierarchical`: the first `n_parents` features are parents; every other feature is the child
  of one parent and fires only when its parent fires: then exactly one of that parent's children
  fires, with probability `child_probability` (siblings are mutually exclusive, the setting in
  which SAEs absorb features).

For transcoders (`d_out`), a second dictionary `G` in `R^d_out` gives targets `y = Σ_i a_i · G_i`.
The source is resumable: its position is its random generator's state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jsae.activations.copula import CopulaSampler
from jsae.errors import ConfigError, choices_hint

STRUCTURES = ("independent", "correlated", "hierarchical")


@dataclass(frozen=True)
class SyntheticConfig:
    """The ground truth of a synthetic activation source."""

    d_in: int  # activation width
    n_features: int  # true features (> d_in: superposition)
    structure: str = "independent"  # independent | correlated | hierarchical
    mean_active: float = 3.0  # expected number of firing features per activation
    magnitude_std: float = 0.2  # firing magnitudes ~ |N(1, magnitude_std)|
    correlation: float = 0.5  # correlated: share of each feature's firing noise that is common
    correlation_rank: int = 4  # correlated: rank of the common factor
    n_parents: int = 8  # hierarchical: parent features
    child_probability: float = 0.7  # hierarchical: P(one child fires | parent fires)
    noise_std: float = 0.0  # isotropic Gaussian noise added to x (and y)
    d_out: int | None = None  # transcoders: target width (targets from a second dictionary)
    seed: int = 0  # the dictionary, the probabilities and the stream

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ConfigError(
                f"unknown structure {self.structure!r}; choose one of "
                f"{list(STRUCTURES)}." + choices_hint(self.structure, STRUCTURES)
            )
        if self.d_in < 1 or self.n_features < 1:
            raise ConfigError("d_in and n_features must be positive.")
        if not self.noise_std >= 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}.")
        if not 0 < self.mean_active <= self.n_features:
            raise ConfigError(f"mean_active must be in (0, n_features], got {self.mean_active}.")
        if not 0 <= self.correlation < 1:
            raise ConfigError(f"correlation must be in [0, 1), got {self.correlation}.")
        if self.structure == "correlated" and self.correlation_rank < 1:
            raise ConfigError(
                f"correlation_rank must be at least 1, got {self.correlation_rank} "
                "(use structure='independent' for no common factor)."
            )
        if self.structure == "hierarchical" and not 0 < self.n_parents < self.n_features:
            raise ConfigError("hierarchical needs 0 < n_parents < n_features.")


class SyntheticActivations:
    """An endless, seeded, resumable stream of `[batch_size, d_in]` synthetic activations.

    With `num_shards > 1` (one per host), every shard draws the same global batch and yields
    its own `batch_size / num_shards` rows, so the global stream is the same on any number of
    hosts.
    """

    def __init__(
        self,
        config: SyntheticConfig,
        *,
        batch_size: int,
        shard_index: int = 0,
        num_shards: int = 1,
        dtype: Any = np.float32,
    ):
        if batch_size % num_shards:
            raise ConfigError(f"batch_size={batch_size} must divide over {num_shards} shards.")
        self.config = config
        self.batch_size = batch_size
        self.shard_index, self.num_shards = shard_index, num_shards
        self.dtype = dtype
        c = config
        setup = np.random.default_rng([c.seed, 0])
        self.features = _unit_rows(setup.standard_normal((c.n_features, c.d_in)))  # [n, d_in]
        self.output_features = (
            _unit_rows(setup.standard_normal((c.n_features, c.d_out))) if c.d_out else None
        )
        self.probabilities = self._probabilities(setup)  # [n]
        # float32 sums for float32 output (a few terms each: exact to float32 rounding)
        work = np.float64 if np.dtype(dtype).itemsize > 4 else np.float32
        self._padded_features = _with_zero_row(self.features, work)
        if self.output_features is not None:
            self._padded_output_features = _with_zero_row(self.output_features, work)
        if c.structure == "correlated":
            factor = _unit_rows(setup.standard_normal((c.n_features, c.correlation_rank)))
            self._copula = CopulaSampler.plan(factor, self.probabilities, c.correlation)
        if c.structure == "hierarchical":
            children = np.arange(c.n_parents, c.n_features)
            self.parent_of = np.full(c.n_features, -1)
            self.parent_of[children] = children % c.n_parents
        self._rng = np.random.default_rng([c.seed, 1])
        self.batches_drawn = 0

    # ---------------------------------------------------------------- ground truth

    def _probabilities(self, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if c.structure == "hierarchical":
            p = np.zeros(c.n_features)
            p[: c.n_parents] = c.mean_active / (c.n_parents * (1 + c.child_probability))
            return np.clip(p, 0, 1)
        spread = np.exp(rng.uniform(0, math.log(4.0), c.n_features))
        p = spread / spread.sum() * c.mean_active
        return np.clip(p, 0, 1)

    def _firing(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Which features fire: (rows [nnz], features [nnz]), each pair at most once.

        Sparse where the structure allows it: drawing a dense [n, n_features] array per batch
        made a 4096 x 16384-feature batch cost seconds of host time, more than a training step.
        """
        c, rng = self.config, self._rng
        if c.structure == "independent":
            return _bernoulli_pairs(rng, n, self.probabilities)
        if c.structure == "correlated":  # a Gaussian copula, sampled sparsely (copula.py)
            return self._copula.fire(rng, rng.standard_normal((n, c.correlation_rank)))
        parents = rng.random((n, c.n_parents)) < self.probabilities[: c.n_parents]  # [n, P]
        parent_rows, parent_cols = np.nonzero(parents)
        rows, cols = [parent_rows], [parent_cols]
        # each firing parent picks one of its children (siblings exclude each other)
        pick = rng.integers(0, 1 << 30, (n, c.n_parents))
        child_fires = rng.random((n, c.n_parents)) < c.child_probability
        for parent in range(c.n_parents):
            kids = np.arange(c.n_parents + parent, c.n_features, c.n_parents)
            if not len(kids):
                continue
            fired = np.nonzero(parents[:, parent] & child_fires[:, parent])[0]
            rows.append(fired)
            cols.append(kids[pick[fired, parent] % len(kids)])
        return np.concatenate(rows), np.concatenate(cols)

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray | None, tuple[np.ndarray, ...]]:
        """(x [n, d_in], y [n, d_out] or None, in the source's dtype; (rows, features,
        magnitudes) [nnz])."""
        c = self.config
        rows, cols = self._firing(n)
        magnitudes = np.abs(1.0 + c.magnitude_std * self._rng.standard_normal(rows.size))
        x = _superpose(n, rows, cols, magnitudes, self._padded_features)
        y = None
        if self.output_features is not None:
            y = _superpose(n, rows, cols, magnitudes, self._padded_output_features)
        if c.noise_std:
            x = x + c.noise_std * self._rng.standard_normal(x.shape)
            if y is not None:
                y = y + c.noise_std * self._rng.standard_normal(y.shape)
        x, y = x.astype(self.dtype), (None if y is None else y.astype(self.dtype))
        return x, y, (rows, cols, magnitudes)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(x [n, d_in], y [n, d_out] or None, feature activations [n, n_features])."""
        x, y, (rows, cols, magnitudes) = self._draw(n)
        acts = np.zeros((n, self.config.n_features))
        acts[rows, cols] = magnitudes
        return x, y, acts

    # ---------------------------------------------------------------- stream

    def __iter__(self) -> Iterator[Any]:
        local = self.batch_size // self.num_shards
        lo = self.shard_index * local
        while True:
            x, y, _ = self._draw(self.batch_size)
            self.batches_drawn += 1
            if y is None:
                yield x[lo : lo + local]
            else:
                yield x[lo : lo + local], y[lo : lo + local]

    # Every process draws the whole global batch and keeps its slice: the position is global.
    position_is_global = True

    def state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "batches_drawn": self.batches_drawn}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._rng.bit_generator.state = dict(state["rng"])
        self.batches_drawn = int(state["batches_drawn"])


def feature_recovery(true_features: Any, W_dec: Any) -> float:
    """Mean over true features of the best cosine similarity with any decoder row.

    `true_features` [n, d], `W_dec` [d_sae, d]; 1.0 means every true direction has a decoder
    row pointing exactly along it.
    """
    true = _unit_rows(np.asarray(true_features, np.float64))
    dec = _unit_rows(np.asarray(W_dec, np.float64))
    return float(np.mean(np.max(true @ dec.T, axis=1)))


def mapping_recovery(respond: Any, source: SyntheticActivations) -> float:
    """Mean cosine between a transcoder's response to each true input feature and its true output.

    `respond(x [n, d_in]) -> [n, d_out]` (e.g. `sae.forward`). Feature i's response is
    `respond(F_i) - respond(0)`. Decoder rows of a transcoder with a linear skip connection need
    not point along the output features (the skip carries part of every feature), so this
    functional score is the meaningful one there; a feature with no response scores 0.
    """
    if source.output_features is None:
        raise ConfigError("mapping_recovery needs a source with output features (d_out).")
    features = np.asarray(source.features, np.float32)
    response = np.asarray(respond(features), np.float64) - np.asarray(
        respond(np.zeros_like(features)), np.float64
    )
    true = _unit_rows(np.asarray(source.output_features, np.float64))
    return float(np.mean(np.sum(_unit_rows(response) * true, axis=-1)))


def _bernoulli_pairs(
    rng: np.random.Generator, n: int, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Independent Bernoulli(p_j) draws for n rows, as the (rows, columns) of the ones.

    Column j fires in Binomial(n, p_j) rows, a uniformly random subset of that size: random
    rows, with repeats within a column redrawn until none is left (row-symmetric, so the subset
    is uniform). Columns firing in over a quarter of the rows draw a permutation instead.
    """
    counts = rng.binomial(n, p)  # [n_cols]
    frequent = counts > n // 4
    dense = np.nonzero(frequent)[0]
    sparse_counts = np.where(frequent, 0, counts)
    cols = np.repeat(np.arange(p.size), sparse_counts)  # [nnz]
    rows = rng.integers(0, n, cols.size)
    while True:
        _, first = np.unique(cols * np.int64(n) + rows, return_index=True)
        repeat = np.ones(rows.size, bool)
        repeat[first] = False
        if not repeat.any():
            break
        rows[repeat] = rng.integers(0, n, int(repeat.sum()))
    rows_dense = [rng.permutation(n)[: counts[j]] for j in dense]
    cols_dense = [np.full(counts[j], j) for j in dense]
    return np.concatenate([rows, *rows_dense]), np.concatenate([cols, *cols_dense])


def _with_zero_row(dictionary: np.ndarray, dtype: Any) -> np.ndarray:
    """The dictionary [n_features, d] plus a zero row, the padding target of `_superpose`."""
    zero = np.zeros((1, dictionary.shape[1]), dtype)
    return np.concatenate([dictionary.astype(dtype), zero])  # [n_features + 1, d]


def _superpose(
    n: int, rows: np.ndarray, cols: np.ndarray, magnitudes: np.ndarray, padded: np.ndarray
) -> np.ndarray:
    """Σ magnitude · dictionary[col] into each row: the sparse product acts @ dictionary.

    `padded` is the dictionary with a zero row last (`_with_zero_row`). A row's pairs are cut
    into segments of K (the mean pairs per row, rounded up), laid out in a [segments, K] table
    padded with that zero row, and contracted a block at a time; segment sums are then added
    into their rows, one segment index at a time (no row written twice in one go). O(nnz · d)
    however skewed the rows (correlated firing), where the dense product costs
    O(n · n_features · d). [n, d] in the dictionary's dtype."""
    d = padded.shape[1]
    out = np.zeros((n, d), padded.dtype)
    if not rows.size:
        return out
    order = np.argsort(rows, kind="stable")
    rows, cols, magnitudes = rows[order], cols[order], magnitudes[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)  # position within its row
    width = -(-rows.size // n)  # K
    # segments sorted by (segment index, row): [S] keys, and each pair's segment
    keys, segment = np.unique((rank // width) * np.int64(n) + rows, return_inverse=True)
    table = np.full((keys.size, width), padded.shape[0] - 1)  # [S, K] dictionary rows
    weights = np.zeros((keys.size, width), padded.dtype)  # [S, K]
    table[segment, rank % width], weights[segment, rank % width] = cols, magnitudes
    sums = np.empty((keys.size, d), padded.dtype)  # [S, d]
    block = max(1, (1 << 24) // (width * d))  # segments per block: a gather of ≤ 16M values
    for lo in range(0, keys.size, block):
        hi = lo + block
        sums[lo:hi] = np.einsum("sk,skd->sd", weights[lo:hi], padded[table[lo:hi]])
    index, row = keys // n, keys % n
    bounds = np.searchsorted(index, np.arange(index[-1] + 2))
    for lo, hi in itertools.pairwise(bounds):
        out[row[lo:hi]] += sums[lo:hi]
    return out


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


__all__ = [
    "STRUCTURES",
    "SyntheticActivations",
    "SyntheticConfig",
    "feature_recovery",
    "mapping_recovery",
]
