"""`jsae demo`: an offline end-to-end run on an embedded default.

Current scope: the inference path (build an SAE, encode/decode, splice with the error term,
save in SAELens format, reload, check the reload is exact).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="directory to save the SAE in (default: temp)")


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import jsae

    t0 = time.perf_counter()
    cfg = jsae.SAEConfig(
        architecture="jumprelu",
        d_in=256,
        d_sae=4096,
        metadata={"model_name": "demo", "hook_name": "blocks.0.hook_resid_post"},
    )
    sae = jsae.SAE.init(cfg, key=0)
    sae = jsae.SAE.from_params(cfg, {**sae.params, "threshold": np.full(4096, 0.5, np.float32)})
    x = jax.random.normal(jax.random.key(1), (1024, 256))
    forward = jax.jit(lambda s, x: s.forward_with_activations(x))
    x_hat, f = forward(sae, x)
    spliced = sae(x, use_error_term=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="jsae-demo-")) / "sae"
    sae.save(out, overwrite=True, log_sparsity=np.log10(np.asarray((f > 0).mean(0)) + 1e-10))
    back = jsae.load(out)
    same = all(bool((back.params[k] == v).all()) for k, v in sae.params.items())
    rows = [
        ("architecture", cfg.architecture),
        ("d_in x d_sae", f"{cfg.d_in} x {cfg.d_sae}"),
        ("mean L0", f"{float((f > 0).sum(-1).mean()):.1f}"),
        ("relative MSE", f"{float(((x_hat - x) ** 2).sum() / (x**2).sum()):.4f}"),
        ("error-term splice max |out - x|", f"{float(abs(spliced - x).max()):.2e}"),
        ("saved to", str(out)),
        ("reload identical", str(same)),
        ("wall time", f"{time.perf_counter() - t0:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if same else 1
