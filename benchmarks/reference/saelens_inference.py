"""Reference side of bench_inference: SAELens encode+decode on the same SAE file and inputs."""

import json
import statistics
import sys
import time
import warnings

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
from sae_lens import SAE  # noqa: E402

sae_dir, inputs, out_file, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sae = SAE.load_from_disk(sae_dir)
x = load_file(inputs)["x"]
with torch.no_grad():
    out = sae.decode(sae.encode(x))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = sae.decode(sae.encode(x))
        times.append(time.perf_counter() - t0)
save_file({"out": out.contiguous()}, out_file)
print(
    json.dumps(
        {
            "seconds": statistics.median(times),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "saelens_class": type(sae).__name__,
        }
    )
)
