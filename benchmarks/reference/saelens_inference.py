"""Reference worker for bench_inference: SAELens's forward (encode then decode) on the same
SAE file and inputs.

Started once with (sae_dir, inputs, outputs); then answers {"reps": n} requests on stdin with
the wall time of each of n `sae(x)` calls.
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
    out = sae(x)  # warm-up; SAE.forward = decode(encode(x)) without the error term
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
    request = json.loads(line)
    # "gemm": time the encoder's matmul alone (torch's BLAS), else the SAE's forward
    fn = (lambda: x @ sae.W_enc) if request.get("gemm") else (lambda: sae(x))
    times = []
    with torch.no_grad():
        fn()
        for _ in range(request["reps"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}), flush=True)
