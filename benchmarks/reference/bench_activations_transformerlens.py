"""Reference worker for bench_activations: TransformerLens activation generation, SAELens-style.

Started with (model_dir, tokens.npy, out.npz): builds a GPT-2-small-shaped PyTorch model with
random weights, saves it to model_dir (for jsae to load the very same weights), loads it into
a HookedTransformer without weight processing, and writes its activations at the benchmark's
hooks to out.npz. Then answers {"mode": ..., "reps": n} requests on stdin with the wall time
of each of n calls. Modes: "blocks.L.hook_resid_post" runs `run_with_cache(tokens,
names_filter=[hook], stop_at_layer=L + 1)` as SAELens's ActivationsStore does; "full" runs
the whole forward to logits.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
from tl_gpt2 import random_gpt2  # noqa: E402

model_dir, tokens_file, out_file = map(Path, sys.argv[1:4])
tl = random_gpt2(model_dir)
tokens = torch.from_numpy(np.load(tokens_file)).long()


def run(mode: str) -> torch.Tensor:
    with torch.no_grad():
        if mode == "full":
            return tl(tokens)
        layer = int(mode.split(".")[1])
        _, cache = tl.run_with_cache(tokens, names_filter=[mode], stop_at_layer=layer + 1)
        return cache[mode]


outputs = {m: run(m).numpy() for m in ("blocks.2.hook_resid_post", "blocks.11.hook_resid_post")}
np.savez(out_file, **outputs)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    times = []
    for _ in range(request["reps"]):
        t0 = time.perf_counter()
        run(request["mode"])
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}), flush=True)
