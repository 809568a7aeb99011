"""Host memory and time to load a Gemma-Scope-sized SAE: jsae vs SAELens, same file, same run.

    .venv/bin/python benchmarks/bench_load.py [--ref-python /tmp/envs/ref/bin/python] [--keep DIR]

Writes a Gemma Scope 16k `params.npz` (d_in 2304, d_sae 16384, float32: ~302 MB) into a
Hugging Face cache laid out as `google/gemma-scope-2b-pt-res`, then loads it in fresh
subprocesses, offline, through each library's `from_pretrained`:

    jsae          jsae.from_pretrained (lazy reads, chunked placement on one CPU device)
    jsae mesh     the same onto a 1x8 mesh of fake CPU devices (each device reads its shard)
    naive jax     np.load of every array, then jax.device_put (the obvious way)
    SAELens       sae_lens.SAE.from_pretrained in the reference environment (torch, CPU)

For each: peak RSS minus the RSS after imports (what loading itself costs), that delta as a
multiple of the file size (target: <= 1.5x), and wall time. Machine info is printed first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

D_IN, D_SAE = 2304, 16384
REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"

MEASURE = r"""
import json, os, resource, sys, time
import psutil
{imports}
proc = psutil.Process()
base = proc.memory_info().rss
t0 = time.perf_counter()
{load}
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"base": base, "peak": peak, "seconds": seconds, "check": check}}))
"""

CASES = {
    "jsae": (
        "import jax, jsae\njax.numpy.zeros(1).block_until_ready()",
        "sae = jsae.from_pretrained('gemma-scope-2b-pt-res', '{folder}', cache_dir='{cache}')\n"
        "jax.block_until_ready(sae.params)\ncheck = float(sae.W_dec[-1, -1])",
    ),
    "jsae mesh 1x8": (
        "import jax, jsae\njax.numpy.zeros(1).block_until_ready()",
        "sae = jsae.from_pretrained('gemma-scope-2b-pt-res', '{folder}', cache_dir='{cache}', "
        "mesh={{'model': 8}})\njax.block_until_ready(sae.params)\n"
        "check = float(sae.W_dec[-1, -1])",
    ),
    "naive jax": (
        "import jax, numpy as np\njax.numpy.zeros(1).block_until_ready()",
        "data = np.load('{file}')\nparams = {{k: jax.device_put(data[k]) for k in data.files}}\n"
        "jax.block_until_ready(params)\ncheck = float(params['W_dec'][-1, -1])",
    ),
}
SAELENS_CASE = (
    "import torch, sae_lens\nfrom sae_lens import SAE",
    "sae = SAE.from_pretrained('gemma-scope-2b-pt-res', '{folder}', device='cpu')\n"
    "check = float(sae.W_dec[-1, -1])",
)


def write_cache(root: Path) -> tuple[Path, Path, float]:
    """A Gemma Scope 16k params.npz inside an HF cache; returns (cache, file, last W_dec value)."""
    rng = np.random.default_rng(0)
    src = root / "params.npz"
    W_dec = rng.standard_normal((D_SAE, D_IN), dtype=np.float32) * 0.02
    np.savez(
        src,
        W_enc=rng.standard_normal((D_IN, D_SAE), dtype=np.float32) * 0.02,
        W_dec=W_dec,
        b_enc=np.zeros(D_SAE, np.float32),
        b_dec=np.zeros(D_IN, np.float32),
        threshold=np.full(D_SAE, 0.1, np.float32),
    )
    cache = root / "hf_cache"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    commit = hashlib.sha1(b"bench").hexdigest()
    blob = repo / "blobs" / "params-npz"
    blob.parent.mkdir(parents=True)
    os.replace(src, blob)
    link = repo / "snapshots" / commit / FOLDER / "params.npz"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache, link, float(W_dec[-1, -1])


def run_case(python: str, imports: str, load: str, env: dict) -> dict:
    script = MEASURE.format(imports=imports, load=load)
    out = subprocess.run(
        [python, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", default=os.environ.get("JSAE_REFERENCE_PYTHON"))
    parser.add_argument("--keep", type=Path, help="directory for the files (default: a temp dir)")
    args = parser.parse_args()

    # jax is only imported in the measured subprocesses: a parent that has initialised XLA
    # changes what its children measure (about +60 MB here), so the parent stays clean.
    info = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.__version__, jax.devices())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; jax {info}"
    )
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        cache, file, expected = write_cache(Path(tmp))
        size = file.resolve().stat().st_size
        print(f"file: Gemma Scope 16k params.npz, d_in={D_IN}, d_sae={D_SAE}, {size / 1e6:.1f} MB")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
        env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="2")
        rows = []
        for name, (imports, load) in CASES.items():
            case_env = dict(env)
            if "mesh" in name:
                case_env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
            load = load.format(folder=FOLDER, cache=cache, file=file)
            rows.append((name, run_case(sys.executable, imports, load, case_env)))
        if args.ref_python and Path(args.ref_python).exists():
            imports, load = SAELENS_CASE
            rows.append(
                ("SAELens", run_case(args.ref_python, imports, load.format(folder=FOLDER), env))
            )
        else:
            print("(SAELens row skipped: pass --ref-python or set JSAE_REFERENCE_PYTHON)")
        print(
            f"\n{'loader':16s} {'load RSS':>10s} {'x file':>7s} {'peak RSS':>10s} {'seconds':>8s}"
        )
        for name, r in rows:
            assert abs(r["check"] - expected) < 1e-6, f"{name} loaded wrong values"
            delta = r["peak"] - r["base"]
            print(
                f"{name:16s} {delta / 1e6:8.0f}MB {delta / size:7.2f} {r['peak'] / 1e6:8.0f}MB "
                f"{r['seconds']:8.2f}"
            )
        jsae_ratio = (rows[0][1]["peak"] - rows[0][1]["base"]) / size
        print(f"\njsae load memory / file size = {jsae_ratio:.2f} (target <= 1.5)")
        if rows[-1][0] == "SAELens":
            ours, theirs = rows[0][1], rows[-1][1]
            memory = (ours["peak"] - ours["base"]) / (theirs["peak"] - theirs["base"])
            speed = ours["seconds"] / theirs["seconds"]
            print(f"jsae / SAELens: load memory {memory:.2f}, time {speed:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
