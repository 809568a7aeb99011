"""Training-step throughput: every architecture against the machine's matmul peak, jsae against
SAELens's trainer, and TopK's sparse (value, index) path against its own dense path.

    python benchmarks/bench_train.py                       # everything (several minutes on CPU)
    python benchmarks/bench_train.py --parts peak,archs --steps 3
    python benchmarks/bench_train.py --parts saelens       # needs JSAE_REFERENCE_PYTHON
    python benchmarks/bench_train.py --parts sparse
    python benchmarks/bench_train.py --parts select
    python benchmarks/bench_train.py --parts dead
    python benchmarks/bench_train.py --parts l0           # needs JSAE_REFERENCE_PYTHON
    python benchmarks/bench_train.py --parts saelens-archs # needs JSAE_REFERENCE_PYTHON

All parts run in one process and print ratios measured in that same run:

* peak:    fp32 matmul [B, d_in] @ [d_in, d_sae], the machine's achievable FLOP/s.
* archs:   one full training step (forward, backward, clipping, Adam, statistics, metrics) per
           architecture at d_in 768, d_sae 16384, batch 4096, fp32; achieved FLOP/s counts the
           10·B·d_in·d_sae FLOPs a dense SAE step needs (encoder and decoder forward, the two
           weight gradients and the latent gradient; the conventional "6 × params × tokens" is
           12·B·d·n) and is shown as a fraction of the measured peak. The TopK family also runs
           its sparse (value, index) path, shown as a speed-up over its own dense path.
* saelens: SAELens 6.54's `SAETrainer.step` (training_forward_pass + backward + clip + Adam +
           schedulers) on the same config (standard, same sizes, fp32, torch on this CPU),
           against the jsae step: the ratio of step rates. SAELens is timed as it comes and
           again with the glibc malloc settings that `import jsae` applies to its own process
           (`jsae.host_memory`), which speed torch up too.
* saelens-archs: every architecture's step at initialisation against SAELens's (gated,
           JumpReLU, TopK, BatchTopK, Matryoshka BatchTopK at k 32; SAELens's defaults
           otherwise), jsae on its default paths (the sparse paths for the TopK family).
* l0:      the standard step at initialisation and at L0 16 / 32 / 64 / 128 / 160 / 192 (b_enc
           lowered until that many latents fire): jsae's default path (the active (token,
           latent) pairs once they fit, `jsae.architectures.relu_pairs`), its dense path, and
           SAELens's step with the same b_enc (dense at every L0).
* select:  BatchTopK's selection of the batch's k·B largest pre-activations (k 32, same sizes),
           float32 and bfloat16: the cut found by counting passes (`jsae.training.cut`, what
           training uses) against `lax.top_k` over the flat batch (what it used before).
* topk:    the per-row top-k of TopK (k 16 and 32, d_sae 16384 and 65536) and AuxK (k
           d_in/2): `lax.top_k` against the two-stage `jsae.ranking.blocked_top_k` by block
           width and `jsae.ranking.peeled_top_k` in passes of 8 and 16, and torch.topk on the
           same device (when the reference environment is there), after a line saying how
           this backend compiles `lax.top_k` at each k (its own top-k kernel, or a sort); then
           the mask of TopK's selection (what its dense path needs) from those indices against
           `jsae.ranking.counting_top_k_mask` (radix select, 1-4 bits per pass).
           `--counting-mask` makes the dense TopK steps of every part count their mask;
           `--topk-peel W` makes every part's top-k rank in passes of W.
* dead:    TopK and BatchTopK steps (dense and sparse) with 0, 1%, 10% and 60% of the latents
           dead, so AuxK runs (on the dead latents' columns, `jsae.architectures.auxk`),
           against the same step with no dead latent.
* sparse:  TopK k 32, d_sae 65536: the decoder forward + backward on (value, index) pairs
           (gather / scatter-add, `jsae.sparse.gather_decode`) against the dense matmuls, and
           the whole training step with `use_sparse_activations` on and off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, reference_python

import jsae
from jsae import host_memory, ranking
from jsae.architectures.relu_pairs import pair_capacity
from jsae.ranking import counting_top_k_mask, peeled_top_k, top_k, top_k_mask
from jsae.sparse import gather_decode

D_IN, D_SAE, BATCH = 768, 16384, 4096  # --d-in, --d-sae, --batch change them
COMPUTE_DTYPE = "float32"  # --compute-dtype: jsae's compute_dtype, SAELens's autocast
PRECISION: str | None = None  # --matmul-precision: float32 matmuls on both sides
ARCHS = {
    "standard": {"l1_coefficient": 5.0},
    "gated": {"l1_coefficient": 5.0},
    "jumprelu": {"l0_coefficient": 1.0},
    "topk (dense)": {"architecture": "topk", "k": 32, "use_sparse_activations": False},
    "topk (sparse)": {"architecture": "topk", "k": 32, "use_sparse_activations": True},
    "batchtopk (dense)": {"architecture": "batchtopk", "k": 32, "use_sparse_activations": False},
    "batchtopk (sparse)": {"architecture": "batchtopk", "k": 32, "use_sparse_activations": True},
    "matryoshka (dense)": {
        "architecture": "matryoshka_batchtopk", "k": 32, "matryoshka_widths": [1024, 4096],
        "use_sparse_activations": False,
    },
    "matryoshka (sparse)": {
        "architecture": "matryoshka_batchtopk", "k": 32, "matryoshka_widths": [1024, 4096],
        "use_sparse_activations": True,
    },
}  # fmt: skip


# Matmul work each step needs, in units of B·d_in·d_sae multiply-adds (2 FLOPs each): a dense
# SAE needs 5 (encoder, decoder, decoder-weight, latent and encoder-weight gradients); gated adds
# the gate path and its auxiliary reconstruction (4 more plus a second encoder-weight gradient);
# Matryoshka decodes its latents in bands whose cumulative sums are its levels (one decoder);
# the sparse (value, index) paths need the dense encoder forward (1) and O(k/d_sae) for the rest.
def matmuls(label: str) -> float:
    """Matmul work of one step of `label`, in units of B·d_in·d_sae multiply-adds."""
    sparse = 1 + 4 * 32 / D_SAE
    dense = {"standard": 5, "gated": 10, "jumprelu": 5}
    return dense.get(label, sparse if "(sparse)" in label else 5)


def dur(seconds: float) -> str:
    """A duration for the tables: seconds on a CPU, milliseconds on an accelerator."""
    return f"{seconds:5.2f} s" if seconds >= 1 else f"{seconds * 1e3:6.2f} ms"


def timed(fn, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak(reps: int, dtype: str = "float32") -> float:
    """The machine's rate for the encoder-shaped matmul in `dtype` (FLOP/s)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((BATCH, D_IN), dtype=np.float32), dtype)
    b = jnp.asarray(rng.standard_normal((D_IN, D_SAE), dtype=np.float32), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, b))
    best = min(timed(lambda: jax.block_until_ready(mm(a, b)), reps))
    return 2 * BATCH * D_IN * D_SAE / best


def trainer_step_time(
    arch: dict,
    steps: int,
    d_sae: int | None = None,
    batch: int | None = None,
    dead: tuple[int, ...] = (0,),
) -> list[float]:
    """Fastest of `steps` Trainer.steps on a device-resident batch, after one compiling step
    (the minimum is the least disturbed by other processes on a shared machine), for each
    count of dead latents in `dead` (the first that many latents are marked as not having
    fired for longer than `dead_feature_window` before every step)."""
    name = arch.get("architecture")
    d_sae, batch = d_sae or D_SAE, batch or BATCH
    config = {
        "d_in": D_IN, "d_sae": d_sae, "train_batch_size_tokens": batch,
        "training_tokens": batch * (len(dead) * steps + 2), "log_to_wandb": False,
        "checkpoint_path": None, "output_path": None, "progress_bar": False,
        "dead_feature_window": 1000, **arch, "architecture": name,
    }  # fmt: skip
    if COMPUTE_DTYPE != "float32":
        config["compute_dtype"] = COMPUTE_DTYPE
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((batch, D_IN), dtype=np.float32))
    trainer = jsae.Trainer(config, [])
    jax.block_until_ready(trainer.step(x))
    times = []
    for n_dead in dead:
        since = np.zeros(d_sae, np.int32)
        since[:n_dead] = 10**6

        def one(since=since):  # a fresh buffer each step: the step donates its state
            placed = jax.device_put(since, trainer.state.since_fired.sharding)
            trainer.state = dataclasses.replace(trainer.state, since_fired=placed)
            metrics = trainer.step(x)
            jax.block_until_ready((trainer.state.params, metrics))

        times.append(min(timed(one, steps)))
    return times


SAELENS_STEP = r"""
import ctypes, importlib, json, sys, time
d_in, d_sae, batch, steps = map(int, sys.argv[1:5])
spec = json.loads(sys.argv[5])  # {"module", "name", "kwargs", "b_enc", "mallopt", "autocast",
                                #  "precision"}
if spec["mallopt"]:  # the glibc malloc settings jsae applies (jsae.host_memory.SETTINGS)
    libc = ctypes.CDLL("libc.so.6")
    assert all(libc.mallopt(p, v) == 1 for p, v in spec["mallopt"])
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
device = "cuda" if torch.cuda.is_available() else "cpu"
if spec["precision"]:  # float32 matmuls: "highest" = IEEE float32, "high" = TF32 on NVIDIA
    torch.set_float32_matmul_precision(spec["precision"])
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
module = importlib.import_module("sae_lens.saes." + spec["module"])
torch.manual_seed(0)
config = getattr(module, spec["name"] + "TrainingSAEConfig")(d_in=d_in, d_sae=d_sae,
                                                             device=device, **spec["kwargs"])
sae = getattr(module, spec["name"] + "TrainingSAE")(config)
if spec["b_enc"]:
    with torch.no_grad():
        sae.b_enc.fill_(spec["b_enc"])
x = torch.randn(batch, d_in, device=device)
with torch.no_grad():
    l0 = (sae.encode(x) > 0).sum(-1).float().mean().item()
cfg = SAETrainerConfig(total_training_samples=batch * (steps + 2), train_batch_size_samples=batch,
                       lr_end=3e-5, device=device, autocast=spec["autocast"],
                       logger=LoggingConfig(log_to_wandb=False))
trainer = SAETrainer(cfg, sae, iter([]))
trainer.step(x)
trainer.step(x)
times = []
for _ in range(steps):
    sync(); t0 = time.perf_counter(); trainer.step(x); sync()
    times.append(time.perf_counter() - t0)
dtype = torch.bfloat16 if spec["autocast"] else torch.float32
a = torch.randn(batch, d_in, device=device, dtype=dtype)
b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
a @ b
mm = []
for _ in range(10):
    sync(); t0 = time.perf_counter(); a @ b; sync(); mm.append(time.perf_counter() - t0)
name = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
print(json.dumps({"seconds": min(times), "matmul_flops": 2 * batch * d_in * d_sae / min(mm),
                  "l0": l0, "threads": name, "torch": torch.__version__}))
"""
# SAELens's training SAEs for the `saelens-archs` part: (module, class prefix, config kwargs),
# each against the jsae configuration of the same name in ARCHS (jsae's default path).
SAELENS_STANDARD = ("standard_sae", "Standard", {"l1_coefficient": 5.0})
SAELENS_ARCHS = {
    "standard": SAELENS_STANDARD,
    "gated": ("gated_sae", "Gated", {"l1_coefficient": 5.0}),
    "jumprelu": ("jumprelu_sae", "JumpReLU", {"l0_coefficient": 1.0}),
    "topk": ("topk_sae", "TopK", {"k": 32}),
    "batchtopk": ("batchtopk_sae", "BatchTopK", {"k": 32}),
    "matryoshka": (
        "matryoshka_batchtopk_sae", "MatryoshkaBatchTopK",
        {"k": 32, "matryoshka_widths": [1024, 4096, D_SAE]},
    ),
}  # fmt: skip
JSAE_DEFAULT = {
    **{name: {"architecture": name, **ARCHS[name]} for name in ("standard", "gated", "jumprelu")},
    "topk": {"architecture": "topk", "k": 32},
    "batchtopk": {"architecture": "batchtopk", "k": 32},
    "matryoshka": {
        "architecture": "matryoshka_batchtopk", "k": 32, "matryoshka_widths": [1024, 4096],
    },
}  # fmt: skip


# jax_default_matmul_precision -> torch.set_float32_matmul_precision (float32 matmuls)
TORCH_PRECISION = {"highest": "highest", "float32": "highest", "tensorfloat32": "high",
                   "high": "high", "bfloat16": "medium"}  # fmt: skip


def saelens_step_time(
    steps: int,
    b_enc: float = 0.0,
    sae: tuple[str, str, dict] = SAELENS_STANDARD,
    keep_freed_memory: bool = False,
) -> dict:
    """SAELens's fastest `SAETrainer.step` at initialisation, b_enc filled with `b_enc`; with
    `keep_freed_memory`, its process gets the glibc malloc settings jsae applies to its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    module, name, kwargs = sae
    spec = json.dumps(
        {"module": module, "name": name, "kwargs": kwargs, "b_enc": b_enc,
         "mallopt": host_memory.SETTINGS if keep_freed_memory else [],
         "autocast": COMPUTE_DTYPE == "bfloat16", "precision": TORCH_PRECISION.get(PRECISION)}
    )  # fmt: skip
    args = [str(D_IN), str(D_SAE), str(BATCH), str(steps), spec]
    proc = subprocess.run(
        [reference_python(), "-c", SAELENS_STEP, *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"SAELens step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def saelens_by_architecture(steps: int, rounds: int, names: list[str]) -> None:
    """Print each architecture's step, SAELens's (its default, dense activations) against
    jsae's default path, alternating `rounds` times and keeping each side's fastest step."""
    print(f"\nstep by architecture vs SAELens's SAETrainer.step (d_in {D_IN}, d_sae {D_SAE}, "
          f"batch {BATCH}, fp32, at initialisation; jsae's default paths):")  # fmt: skip
    for name in names:
        theirs, ours = [], []
        for _ in range(rounds):
            theirs.append(saelens_step_time(steps, sae=SAELENS_ARCHS[name])["seconds"])
            ours.extend(trainer_step_time(JSAE_DEFAULT[name], steps))
        print(f"  {name:11s} SAELens {dur(min(theirs))}, jsae {dur(min(ours))} "
              f"-> jsae/SAELens step rate {min(theirs) / min(ours):.2f}x", flush=True)  # fmt: skip


def decode_fwd_bwd(k: int, d_sae: int, batch: int, reps: int) -> tuple[float, float, float]:
    """(sparse s, dense s, max |difference| of grads) for decoding k-of-d_sae latents + backward."""
    rng = np.random.default_rng(0)
    W_dec = jnp.asarray(rng.standard_normal((d_sae, D_IN), dtype=np.float32) / np.sqrt(D_IN))
    idx = jnp.asarray(np.argsort(rng.random((batch, d_sae)), axis=1)[:, :k].astype(np.int32))
    vals = jnp.asarray(rng.random((batch, k), dtype=np.float32))
    target = jnp.asarray(rng.standard_normal((batch, D_IN), dtype=np.float32))

    def sparse_loss(vals, W):
        return jnp.sum((gather_decode(vals, idx, W) - target) ** 2)

    def dense_loss(vals, W):
        rows = jnp.arange(batch)[:, None]
        f = jnp.zeros((batch, d_sae), vals.dtype).at[rows, idx].set(vals)
        return jnp.sum((f @ W - target) ** 2)

    sparse = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))
    dense = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))
    gs, gd = jax.block_until_ready(sparse(vals, W_dec)), jax.block_until_ready(dense(vals, W_dec))
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(gs, gd, strict=True))
    t_sparse = min(timed(lambda: jax.block_until_ready(sparse(vals, W_dec)), reps))
    t_dense = min(timed(lambda: jax.block_until_ready(dense(vals, W_dec)), reps))
    return t_sparse, t_dense, err


def batch_selection(reps: int) -> None:
    """Print the counting cut against the flat top-k on an SAE's pre-activations at init."""
    from jsae.training.cut import nth_largest, settled_float32
    from jsae.training.selection import _flat_topk_mask, batch_topk_mask

    rng = np.random.default_rng(0)
    k, n_keep = 32, 32 * BATCH
    x = rng.standard_normal((BATCH, D_IN), dtype=np.float32)
    x *= np.exp(rng.normal(0, 0.5, (BATCH, 1))).astype(np.float32)  # varied token norms
    W = rng.standard_normal((D_SAE, D_IN), dtype=np.float32)
    W *= 0.1 / np.linalg.norm(W, axis=1, keepdims=True)
    pre = jnp.asarray(x @ W.T)  # [B, d_sae]
    print(f"\nBatchTopK selection: the {n_keep} largest of [{BATCH}, {D_SAE}] pre-activations "
          f"(k {k}, token norms log-normal sigma 0.5):")  # fmt: skip
    cut_mask = jax.jit(lambda s: batch_topk_mask(s, n_keep))
    top_k_mask = jax.jit(lambda s: _flat_topk_mask(s, n_keep))
    passes = jax.jit(lambda s: nth_largest(settled_float32(s), n_keep).passes)  # as selected
    for dtype in ("float32", "bfloat16"):
        scores = pre.astype(dtype)
        same = bool(jnp.array_equal(cut_mask(scores), top_k_mask(scores)))
        t_cut = min(timed(lambda s=scores: jax.block_until_ready(cut_mask(s)), reps))
        t_top = min(timed(lambda s=scores: jax.block_until_ready(top_k_mask(s)), reps))
        print(f"  {dtype:9s} counting cut {dur(t_cut)} ({int(passes(scores))} passes) "
              f"vs flat top-k {dur(t_top)} -> {t_top / t_cut:5.1f}x; "
              f"same selection: {same}")  # fmt: skip


TORCH_TOPK = r"""
import json, sys, time, torch
shapes, reps = json.loads(sys.argv[1]), int(sys.argv[2])
device = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
out = []
for rows, width, k, dtype in shapes:
    x = torch.randn(rows, width, device=device).to(getattr(torch, dtype))
    torch.topk(x, k)
    times = []
    for _ in range(reps):
        sync(); t0 = time.perf_counter(); torch.topk(x, k); sync()
        times.append(time.perf_counter() - t0)
    out.append(min(times))
print(json.dumps(out))
"""
TOPK_BLOCKS = (0, 128, 256, 512, 1024, 2048, 4096)
TOPK_PEELS = (8, 16)


def compiled_top_k(width: int, k: int, dtype: str) -> str:
    """How this backend compiles `lax.top_k` of a [BATCH, width] row batch: the custom calls
    in its optimised HLO (a backend's own top-k kernel) and whether it sorts."""
    x = jax.ShapeDtypeStruct((BATCH, width), jnp.dtype(dtype))
    hlo = jax.jit(lambda x: jax.lax.top_k(x, k)).lower(x).compile().as_text()
    calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
    sorts = len(re.findall(r"\bsort\(", hlo))
    return ", ".join([*calls, *(["sort"] if sorts else [])]) or "neither a custom call nor a sort"


def per_row_top_k(reps: int) -> None:
    """Print the per-row top-k that TopK and AuxK rank with: `lax.top_k` against the
    two-stage `jsae.ranking.blocked_top_k` at several block widths, and torch.topk on the
    same device when the reference environment is there."""
    shapes = [(BATCH, D_SAE, 16), (BATCH, D_SAE, 32), (BATCH, 65536, 32), (BATCH, D_SAE, D_IN // 2)]
    cases = [(*shape, dtype) for dtype in ("float32", "bfloat16") for shape in shapes]
    try:
        proc = subprocess.run(
            [reference_python(), "-c", TORCH_TOPK, json.dumps(cases), str(reps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        torch_times = json.loads(proc.stdout.strip().splitlines()[-1])
    except (SystemExit, subprocess.CalledProcessError):
        torch_times = [None] * len(cases)
    print(f"\nlax.top_k of [{BATCH}, {D_SAE}] compiles to (float32): " + "; ".join(
        f"k {k}: {compiled_top_k(D_SAE, k, 'float32')}" for k in (8, 16, 17, 32, 128, D_IN // 2)
    ))  # fmt: skip
    print("\nper-row top-k (TopK's selection, AuxK's at k = d_in / 2), jsae.ranking.top_k:")
    rng = np.random.default_rng(0)
    for (rows, width, k, dtype), torch_t in zip(cases, torch_times, strict=True):
        x = jnp.asarray(rng.standard_normal((rows, width), dtype=np.float32), dtype)
        cells, reference = [], None
        for block in TOPK_BLOCKS:
            if block and not (k <= block < width):
                continue
            fn = jax.jit(lambda x, k=k, block=block: top_k(x, k, block))
            out = jax.block_until_ready(fn(x))
            reference = out if reference is None else reference
            same = all(bool(jnp.array_equal(a, b)) for a, b in zip(out, reference, strict=True))
            t = min(timed(lambda fn=fn, x=x: jax.block_until_ready(fn(x)), reps))
            cells.append(f"{block or 'one stage'} {dur(t)}{'' if same else ' (DIFFERS)'}")
        for peel in TOPK_PEELS:
            if not peel < k <= ranking.MAX_PEELS * peel:
                continue
            fn = jax.jit(lambda x, k=k, peel=peel: peeled_top_k(x.astype(jnp.float32), k, peel))
            out = jax.block_until_ready(fn(x))
            same = bool(jnp.array_equal(out[1], reference[1]))
            t = min(timed(lambda fn=fn, x=x: jax.block_until_ready(fn(x)), reps))
            cells.append(f"passes of {peel} {dur(t)}{'' if same else ' (DIFFERS)'}")
        line = f"  top-{k} of [{rows}, {width}] {dtype}: " + ", ".join(cells)
        if torch_t is not None:
            line += f"; torch.topk {dur(torch_t)}"
        print(line, flush=True)
    print("\nmask of the per-row top-k (TopK's dense path), jsae.ranking.top_k_mask:")
    for rows, width, k, dtype in cases:
        if k > 128:
            continue
        x = jnp.asarray(rng.standard_normal((rows, width), dtype=np.float32), dtype)
        ranked = jax.jit(lambda x, k=k: top_k_mask(x, k, counting=False))
        want = jax.block_until_ready(ranked(x))
        t = min(timed(lambda ranked=ranked, x=x: ranked(x).block_until_ready(), reps))
        cells = [f"from top_k's indices {dur(t)}"]
        for bits in (1, 2, 3, 4):
            counted = jax.jit(lambda x, k=k, bits=bits: counting_top_k_mask(x, k, bits))
            same = bool(jnp.array_equal(counted(x), want))
            t = min(timed(lambda counted=counted, x=x: counted(x).block_until_ready(), reps))
            cells.append(f"counted {bits} bit{'s' if bits > 1 else ''}/pass {dur(t)}"
                         f"{'' if same else ' (DIFFERS)'}")  # fmt: skip
        print(f"  top-{k} of [{rows}, {width}] {dtype}: " + ", ".join(cells), flush=True)


DEAD_FRACTIONS = (0.0, 0.01, 0.1, 0.6)


def standard_steps_at_sparsity(steps: int) -> None:
    """Print standard-SAE steps at initialisation and at trained-like L0s (b_enc lowered until
    that many latents fire per token): jsae's default (active pairs when they fit) and dense
    paths, and SAELens's step on the same b_enc."""
    print(f"\nstandard step by L0 (d_sae {D_SAE}, batch {BATCH}, fp32; b_enc set so that about "
          f"L0 latents fire per token; active-pair capacity L0 "
          f"{pair_capacity(BATCH, D_SAE) // BATCH}):")  # fmt: skip
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((BATCH, D_IN), dtype=np.float32))
    base = {
        "architecture": "standard", "l1_coefficient": 5.0, "d_in": D_IN, "d_sae": D_SAE,
        "train_batch_size_tokens": BATCH, "training_tokens": BATCH * 100,
        "log_to_wandb": False, "checkpoint_path": None, "output_path": None,
        "progress_bar": False,
    }  # fmt: skip
    if COMPUTE_DTYPE != "float32":
        base["compute_dtype"] = COMPUTE_DTYPE
    trainers = {
        "jsae (default)": jsae.Trainer({**base, "use_sparse_activations": None}, []),
        "jsae (dense)": jsae.Trainer({**base, "use_sparse_activations": False}, []),
    }
    init = jax.tree.map(np.asarray, trainers["jsae (dense)"].state)
    pre = np.asarray(x @ init.params["W_enc"])[::7].reshape(-1)  # [B/7 · d_sae] sample
    for target in (None, 16, 32, 64, 128, 160, 192):
        b_enc = 0.0 if target is None else -float(np.quantile(pre, 1 - target / D_SAE))
        cells, times = [], {}
        for label, trainer in trainers.items():
            runs = []
            for _ in range(steps + 1):  # the first compiles (or warms up)
                state = jax.tree.map(jnp.asarray, init)
                state.params["b_enc"] = jnp.full((D_SAE,), b_enc, jnp.float32)
                trainer.state = state
                t0 = time.perf_counter()
                metrics = trainer.step(x)
                jax.block_until_ready((trainer.state.params, metrics))
                runs.append(time.perf_counter() - t0)
            times[label] = min(runs[1:])
            cells.append(f"{label} {dur(times[label])}")
        l0 = float(metrics["metrics/l0"])
        line = f"  L0 {l0:7.1f}: " + ", ".join(cells)
        ref = saelens_step_time(steps, b_enc)
        line += (f", SAELens {dur(ref['seconds'])} (L0 {ref['l0']:.1f}) -> jsae/SAELens "
                 f"step rate {ref['seconds'] / times['jsae (default)']:.2f}x")  # fmt: skip
        print(line, flush=True)


def steps_with_dead_latents(steps: int) -> None:
    """Print TopK-family steps with dead latents (AuxK runs) against the same step with none."""
    print(f"\nsteps with dead latents (AuxK, k_aux {D_IN // 2}), d_sae {D_SAE}, batch {BATCH}; "
          "ratio = step time / the same step with no dead latent:")  # fmt: skip
    counts = tuple(round(f * D_SAE) for f in DEAD_FRACTIONS)
    per_level = {"use_matryoshka_aux_loss": True}  # Matryoshka's AuxK within each level
    archs = {
        **{label: ARCHS[label] for label in ("topk (dense)", "topk (sparse)")},
        **{label: ARCHS[label] for label in ("batchtopk (dense)", "batchtopk (sparse)")},
        "matryoshka, AuxK per level (dense)": {**ARCHS["matryoshka (dense)"], **per_level},
        "matryoshka, AuxK per level (sparse)": {**ARCHS["matryoshka (sparse)"], **per_level},
    }
    for label, arch in archs.items():
        times = trainer_step_time(arch, steps, dead=counts)
        cells = [
            f"{n:5d} dead {dur(t)} ({t / times[0]:4.2f})"
            for n, t in zip(counts, times, strict=True)
        ]
        print(f"  {label:36s} " + " | ".join(cells))


def main() -> None:
    global D_IN, D_SAE, BATCH, COMPUTE_DTYPE, PRECISION
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="peak,archs,saelens,saelens-archs,l0,select,dead,sparse")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--saelens-archs", default=",".join(SAELENS_ARCHS))
    parser.add_argument("--sparse-batch", type=int, default=None, help="default: --batch")
    parser.add_argument("--rounds", type=int, default=2, help="alternations with SAELens")
    parser.add_argument(
        "--topk-block",
        type=int,
        default=None,
        help="the per-row top-k's block width on this platform (jsae.ranking.BLOCK_BY_PLATFORM; "
        "0 = one stage); default: jsae's",
    )
    parser.add_argument(
        "--topk-peel",
        type=int,
        default=None,
        help="rank each row's top-k in passes of this width where at most "
        "jsae.ranking.MAX_PEELS are needed (jsae.ranking.PEEL_BY_PLATFORM; 0 = never); "
        "default: jsae's",
    )
    parser.add_argument(
        "--counting-mask",
        action="store_true",
        help="TopK's dense path counts its mask (jsae.ranking.COUNTING_MASK_PLATFORMS gets "
        "this platform); default: jsae's choice",
    )
    parser.add_argument("--d-in", type=int, default=D_IN)
    parser.add_argument("--d-sae", type=int, default=D_SAE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument(
        "--compute-dtype",
        default="float32",
        help="the steps' compute dtype (bfloat16 = mixed precision with float32 masters; "
        "SAELens then runs under its `autocast`); the peak is measured in that dtype too",
    )
    parser.add_argument(
        "--matmul-precision",
        default=None,
        help="float32 matmul precision on both sides (highest = IEEE float32, tensorfloat32 = "
        "TF32 on NVIDIA GPUs); default: each library's own default",
    )
    args = parser.parse_args()
    D_IN, D_SAE, BATCH = args.d_in, args.d_sae, args.batch
    COMPUTE_DTYPE, PRECISION = args.compute_dtype, args.matmul_precision
    if PRECISION is not None:
        jax.config.update("jax_default_matmul_precision", PRECISION)
    on_cpu = jax.default_backend() == "cpu"
    if args.topk_block is not None:
        ranking.BLOCK_BY_PLATFORM[jax.default_backend()] = args.topk_block
    if args.topk_peel is not None:
        ranking.PEEL_BY_PLATFORM[jax.default_backend()] = args.topk_peel
    if args.counting_mask:
        ranking.COUNTING_MASK_PLATFORMS = (jax.default_backend(),)
    parts = set(args.parts.split(","))
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/bench_train.py {' '.join(sys.argv[1:])}")
    block = ranking.BLOCK_BY_PLATFORM.get(jax.default_backend(), 0)
    peel = ranking.PEEL_BY_PLATFORM.get(jax.default_backend(), 0)
    counted = jax.default_backend() in ranking.COUNTING_MASK_PLATFORMS
    print(f"per-row top-k: {f'two stages, blocks of max({block}, 4k)' if block else 'one stage'}"
          f"{f'; in passes of {peel} up to k {ranking.MAX_PEELS * peel}' if peel else ''}"
          f"; TopK's dense mask {'counted' if counted else 'from its indices'}")  # fmt: skip
    compute = args.compute_dtype
    peak = matmul_peak(5, compute)
    print(f"matmul peak ({compute} [{BATCH},{D_IN}]@[{D_IN},{D_SAE}], precision "
          f"{PRECISION or 'default'}): {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    needed = 10 * BATCH * D_IN * D_SAE
    jsae_standard = None
    if "archs" in parts:
        print(f"\ntraining step, d_in {D_IN}, d_sae {D_SAE}, batch {BATCH}, compute {compute}, "
              "float32 parameters; achieved = the "
              "architecture's needed matmul FLOPs / step time:")  # fmt: skip
        print("  (peak: the matmul rate measured just before each timing; the machine is shared)")
        step_seconds: dict[str, float] = {}
        for label in args.archs.split(","):
            arch = dict(ARCHS[label])
            arch.setdefault("architecture", label)
            local_peak = matmul_peak(3, compute)
            (seconds,) = trainer_step_time(arch, args.steps)
            if label == "standard":
                jsae_standard = seconds
            step_seconds[label] = seconds
            rate = matmuls(label) * needed / 5 / seconds
            line = (f"  {label:22s} {dur(seconds)}/step  {BATCH / seconds:9.0f} tok/s  "
                    f"{matmuls(label):5.2f} matmuls  {rate / 1e9:7.1f} GFLOP/s = "
                    f"{rate / local_peak:5.1%} of peak ({local_peak / 1e9:.0f})")  # fmt: skip
            dense_label = label.replace("(sparse)", "(dense)")
            if dense_label != label and dense_label in step_seconds:
                line += f"; {step_seconds[dense_label] / seconds:.2f}x its dense path"
            print(line, flush=True)
    if "saelens" in parts:
        # Alternate the two, `rounds` times, and keep each one's fastest step: on a shared
        # machine this compares both at their least disturbed.
        standard = {"architecture": "standard", "l1_coefficient": 5.0}
        ours, theirs, theirs_reusing, peaks = [], [], [], []
        for _ in range(args.rounds):
            theirs.append(saelens_step_time(args.steps))
            if on_cpu:
                theirs_reusing.append(saelens_step_time(args.steps, keep_freed_memory=True))
            peaks.append(matmul_peak(3, compute))
            ours.extend(trainer_step_time(standard, args.steps))
        ref = min(theirs, key=lambda r: r["seconds"])
        jsae_standard = min(ours)
        torch_peak = max(r["matmul_flops"] for r in theirs)
        peak = max(peaks)
        print(
            f"\nSAELens SAETrainer.step, standard, same config (torch {ref['torch']}, "
            f"{ref['threads']}, autocast {COMPUTE_DTYPE == 'bfloat16'}, torch matmul "
            f"{torch_peak / 1e9:.0f} GFLOP/s): {dur(ref['seconds'])}/step; jsae "
            f"{dur(jsae_standard)}/step -> jsae/SAELens step rate = "
            f"{ref['seconds'] / jsae_standard:.2f}x"
        )
        if theirs_reusing:
            ref_reusing = min(theirs_reusing, key=lambda r: r["seconds"])
            print(
                f"  SAELens with jsae's glibc malloc settings in its process too "
                f"(`jsae.host_memory`; torch matmul {ref_reusing['matmul_flops'] / 1e9:.0f} "
                f"GFLOP/s): {dur(ref_reusing['seconds'])}/step "
                f"-> jsae/SAELens step rate = {ref_reusing['seconds'] / jsae_standard:.2f}x"
            )
        unit = 2 * BATCH * D_IN * D_SAE  # FLOPs of one encoder-sized matmul
        print(
            f"  the same step in units of each library's own matmul time: SAELens "
            f"{ref['seconds'] * torch_peak / unit:.2f}, jsae {jsae_standard * peak / unit:.2f} "
            "(a dense step needs 5)"
        )
    if "saelens-archs" in parts:
        saelens_by_architecture(args.steps, args.rounds, args.saelens_archs.split(","))
    if "select" in parts:
        batch_selection(args.steps)
    if "topk" in parts:
        per_row_top_k(args.steps)
    if "dead" in parts:
        steps_with_dead_latents(args.steps)
    if "l0" in parts:
        standard_steps_at_sparsity(args.steps)
    if "sparse" in parts:
        k, d_sae, batch = 32, 65536, args.sparse_batch or BATCH
        t_sparse, t_dense, err = decode_fwd_bwd(k, d_sae, batch, args.steps)
        print(f"\nTopK k {k}, d_sae {d_sae}, batch {batch}: decoder forward+backward "
              f"gather/scatter-add {dur(t_sparse)} vs dense {dur(t_dense)} "
              f"-> {t_dense / t_sparse:.1f}x (max grad difference {err:.1e})")  # fmt: skip
        (sparse_step,) = trainer_step_time(
            {"architecture": "topk", "k": k, "use_sparse_activations": True},
            args.steps,
            d_sae,
            batch,
        )
        (dense_step,) = trainer_step_time(
            {"architecture": "topk", "k": k, "use_sparse_activations": False},
            args.steps,
            d_sae,
            batch,
        )
        print(f"  whole training step: sparse {dur(sparse_step)} vs dense {dur(dense_step)} "
              f"-> {dense_step / sparse_step:.1f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # nothing the Trainer writes lands in the repository
        main()
