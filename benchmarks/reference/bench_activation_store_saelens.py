"""Reference worker for bench_activation_store: SAELens's ActivationsStore, timed per batch.

Started with (model_dir, tokenizer_dir, corpus.jsonl, settings.json): builds a GPT-2-small-
shaped PyTorch model with random weights, saves it to model_dir (jsae loads the very same
weights), loads it into a HookedTransformer without weight processing, and builds an
ActivationsStore over the text dataset with the given settings. Then answers {"batches": n}
requests on stdin with the wall time of n `next_batch()` calls (training batches).
"""

import json
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

warnings.filterwarnings("ignore")
from datasets import load_dataset  # noqa: E402
from sae_lens.training.activations_store import ActivationsStore  # noqa: E402
from tl_gpt2 import random_gpt2  # noqa: E402

model_dir, tokenizer_dir, corpus, settings_file = map(Path, sys.argv[1:5])
settings = json.loads(settings_file.read_text())
tl = random_gpt2(model_dir)
tl.set_tokenizer(transformers.AutoTokenizer.from_pretrained(tokenizer_dir))
store = ActivationsStore(
    model=tl,
    dataset=load_dataset("json", data_files=str(corpus), split="train"),
    streaming=False,
    hook_name=settings["hook_name"],
    hook_head_index=None,
    context_size=settings["context_size"],
    d_in=768,
    # SAELens sizes its mixing buffer as n_batches_in_buffer * context_size tokens (not times
    # store_batch_size_prompts); this value gives it the same token capacity as jsae's buffer.
    n_batches_in_buffer=settings["n_batches_in_buffer"] * settings["store_batch_size_prompts"],
    total_training_tokens=10**9,
    store_batch_size_prompts=settings["store_batch_size_prompts"],
    train_batch_size_tokens=settings["batch_size"],
    prepend_bos=True,
    normalize_activations="none",
    device=torch.device("cpu"),
    dtype="float32",
)
with torch.no_grad():
    store.next_batch()  # fills the buffer
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(request["batches"]):
            store.next_batch()
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
