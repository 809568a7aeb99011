"""`jsae.ranking.top_k` equals `lax.top_k` (values, indices, ties) while ranking in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.ranking import top_k


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_top_k_equals_lax_top_k_ties_included(dtype: str) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-4, 5, (6, 300)) / 4 + rng.integers(0, 3, (6, 300)) / 64, dtype)
    assert int(jnp.sum(x[0] == x[0, 0])) > 1, "the case has ties"
    got_vals, got_idx = top_k(x, 40)
    want_vals, want_idx = jax.lax.top_k(x, 40)
    assert got_vals.dtype == x.dtype
    assert np.array_equal(np.asarray(got_idx), np.asarray(want_idx))
    assert np.array_equal(np.asarray(got_vals), np.asarray(want_vals))


def test_narrow_floats_are_ranked_in_float32() -> None:
    jaxpr = jax.make_jaxpr(lambda x: top_k(x, 3))(jnp.zeros((4, 8), jnp.bfloat16))
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "top_k"]
    assert eqn.invars[0].aval.dtype == jnp.float32
