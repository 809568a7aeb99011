"""Reference worker for bench_inference: SAELens encode+decode on the same SAE file and inputs.

Started once with (sae_dir, inputs, outputs); then answers {"reps": n} requests on stdin with
the wall time of each of n encode+decode calls.
"""

import json
import sys
import time
import warnings

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
from sae_lens import SAE  # noqa: E402

sae_dir, inputs, out_file = sys.argv[1:4]
sae = SAE.load_from_disk(sae_dir)
x = load_file(inputs)["x"]
with torch.no_grad():
    out = sae.decode(sae.encode(x))  # warm-up
save_file({"out": out.contiguous()}, out_file)
print(
    json.dumps(
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "saelens_class": type(sae).__name__,
        }
    ),
    flush=True,
)
for line in sys.stdin:
    reps = json.loads(line)["reps"]
    times = []
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            sae.decode(sae.encode(x))
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}), flush=True)
