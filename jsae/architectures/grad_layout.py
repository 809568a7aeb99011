"""Which orientation a dense training step computes its two weight gradients in.

Both weight gradients of a dense SAE step are contractions over the batch: W_enc's is
`xᵀ g` ([d_in, d_sae]) and W_dec's is `fᵀ e` ([d_sae, d_out]). Either can be formed as the
other orientation's product plus a row-major copy (`jsae.sparse.transposed`), and on XLA's CPU
backend the two orientations can differ by 20-30% depending on the machine: measured at
B 4096, d 768, d_sae 16384, a `[d_sae, d]` output ran ~20% faster than `[d, d_sae]` on an Intel
Xeon and ~25% slower on an AMD EPYC (benchmarks/README.md, "Two machines"). A layout is:

* "direct": each gradient in its parameter's orientation (what autodiff does; no copy);
* "latent_rows": both as `[d_sae, d]` products, W_enc's copied into `[d_in, d_sae]`;
* "latent_columns": both as `[d, d_sae]` products, W_dec's copied into `[d_sae, d_out]`.

`choose_layout` times the orientations and copies at a run's shapes once; the trainer keeps
the choice for the run and records it in checkpoints, so a resumed run computes (and rounds)
exactly as the uninterrupted one did. The layouts give the same gradients up to rounding.
They apply to the training encoder (`affine_encoder`) and the dense training decoder
(`Architecture.decode` with `sparse=False`); Matryoshka's banded decoder and gated's auxiliary
decode keep autodiff's orientation, and the sparse paths form their gradients by scatter-add.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.sparse import transposed

LAYOUTS = ("direct", "latent_rows", "latent_columns")

# Below this many multiply-adds per weight gradient (B · d · d_sae) a GEMM takes a few
# milliseconds, timing is noise next to the step's fixed costs, and "auto" keeps "direct".
MIN_TIMED_MACS = 2**28


def encoder_weight_grad(x: jax.Array, g: jax.Array, layout: str, dtype: Any) -> jax.Array:
    """W_enc's gradient xᵀ g in `dtype`. x [N, d], g [N, n] -> [d, n]"""
    if layout == "latent_rows":
        return transposed((g.T @ x).astype(dtype))
    return (x.T @ g).astype(dtype)


def decoder_weight_grad(f: jax.Array, e: jax.Array, layout: str, dtype: Any) -> jax.Array:
    """W_dec's gradient fᵀ e in `dtype`. f [N, n], e [N, d] -> [n, d]"""
    if layout == "latent_columns":
        return transposed((e.T @ f).astype(dtype))
    return (f.T @ e).astype(dtype)


def dense_decode(f: jax.Array, W_dec: jax.Array, layout: str) -> jax.Array:
    """f @ W_dec, with W_dec's gradient formed in `layout`. [..., n] @ [n, d] -> [..., d]"""
    if layout == "latent_columns":
        return _decode_with_columns_grad(f, W_dec)
    return f @ W_dec  # autodiff forms fᵀ e in W_dec's own orientation


@jax.custom_vjp
def _decode_with_columns_grad(f: jax.Array, W_dec: jax.Array) -> jax.Array:
    return f @ W_dec


def _decode_fwd(f: jax.Array, W_dec: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    return f @ W_dec, (f, W_dec)


def _decode_bwd(residuals: tuple[jax.Array, ...], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    f, W_dec = residuals
    df = jax.lax.dot_general(g, W_dec, (((g.ndim - 1,), (1,)), ((), ())))  # g @ W_decᵀ
    f2, g2 = f.reshape(-1, f.shape[-1]), g.reshape(-1, g.shape[-1])  # [N, n], [N, d]
    return df.astype(f.dtype), decoder_weight_grad(f2, g2, "latent_columns", W_dec.dtype)


_decode_with_columns_grad.defvjp(_decode_fwd, _decode_bwd)


def _best_seconds(fn: Callable[..., jax.Array], args: tuple[jax.Array, ...], repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def time_layouts(
    rows: int, d_in: int, d_out: int, d_sae: int, dtype: Any, repeats: int = 3
) -> dict[str, float]:
    """Seconds each layout spends on the two weight gradients of a [rows]-token step on the
    default device (the fastest of `repeats` runs of each GEMM, copy included)."""
    rng = np.random.default_rng(0)

    def array(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)

    def seconds(weight_grad: Callable[..., jax.Array], *args: jax.Array, layout: str) -> float:
        grad = jax.jit(functools.partial(weight_grad, layout=layout, dtype=dtype))
        return _best_seconds(grad, args, repeats)

    g, x, e = array(rows, d_sae), array(rows, d_in), array(rows, d_out)
    enc = {lay: seconds(encoder_weight_grad, x, g, layout=lay) for lay in ("direct", "latent_rows")}
    dec = {
        lay: seconds(decoder_weight_grad, g, e, layout=lay) for lay in ("direct", "latent_columns")
    }
    return {
        "direct": enc["direct"] + dec["direct"],
        "latent_rows": enc["latent_rows"] + dec["direct"],
        "latent_columns": enc["direct"] + dec["latent_columns"],
    }


# choose_layout's answers in this process: one timing per shape, however many trainers
_CHOSEN: dict[tuple[Any, ...], str] = {}


def choose_layout(
    rows: int, d_in: int, d_out: int, d_sae: int, dtype: Any
) -> tuple[str, dict[str, float] | None]:
    """(the fastest layout at these shapes on the default device, the timings when this call
    measured them, else None). Timed on CPU when the GEMMs are large enough to tell apart, once
    per process and shape; "direct" untimed otherwise (GPUs' and TPUs' GEMMs take either
    operand transposed at no cost, so a copy could only add time)."""
    if jax.default_backend() != "cpu" or rows * max(d_in, d_out) * d_sae < MIN_TIMED_MACS:
        return "direct", None
    key = (rows, d_in, d_out, d_sae, jnp.dtype(dtype).name)
    if key in _CHOSEN:
        return _CHOSEN[key], None
    times = time_layouts(rows, d_in, d_out, d_sae, jnp.dtype(dtype))
    _CHOSEN[key] = min(times, key=times.get)
    return _CHOSEN[key], times
