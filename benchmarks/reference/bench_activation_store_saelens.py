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
from transformer_lens import HookedTransformer  # noqa: E402
from transformer_lens import loading_from_pretrained as loading  # noqa: E402

model_dir, tokenizer_dir, corpus, settings_file = map(Path, sys.argv[1:5])
settings = json.loads(settings_file.read_text())
torch.manual_seed(0)
hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # gpt2-small shape
hf.save_pretrained(model_dir)
config = json.loads((model_dir / "config.json").read_text())
(model_dir / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))
cfg = loading.get_pretrained_model_config(
    str(model_dir), device="cpu", fold_ln=False, dtype=torch.float32
)
cfg.tokenizer_name = None
tl = HookedTransformer(cfg, move_to_device=False)
tl.load_and_process_state_dict(
    loading.get_pretrained_state_dict(str(model_dir), cfg, hf_model=hf),
    fold_ln=False,
    center_writing_weights=False,
    center_unembed=False,
    fold_value_biases=False,
)
tl.eval()
tl.set_tokenizer(transformers.AutoTokenizer.from_pretrained(tokenizer_dir))
del hf
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
