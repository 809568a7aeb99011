"""Runs in the reference environment: SAELens's own token packing, on inputs jsae also packs.

    python saelens_packing.py DIR
    python saelens_packing.py cache DIR

DIR/inputs.json holds the cases (written by the test):
  "raw":        {"docs": [[ids...], ...], "configs": [{name, context_size, begin_batch_token_id,
                 begin_sequence_token_id, sequence_separator_token_id, disable_concat_sequences}]}
  "pretokenize": {"tokenizer": dir, "data_files": jsonl path, "configs": [{name, context_size,
                 begin_batch_token, begin_sequence_token, sequence_separator_token,
                 disable_concat_sequences, pretokenize_batch_size}]}
  "store":      {"tokenizers": {style: dir}, "data_files": jsonl path,
                 "tokens_data_files": jsonl path with a "tokens" column,
                 "configs": [{name, tokenizer (a style), context_size, prepend_bos,
                 sequence_separator_token, disable_concat_sequences, pretokenized}]}
  "special":    {"tokenizers": [dirs]}

Writes DIR/outputs.npz: "<section>/<name>" -> int64 array [n_contexts, context_size], plus
"special/<i>" -> the ids SAELens excludes with exclude_special_tokens=True.

`cache`: the packed contexts' activations in SAELens's cache format. DIR/cache_inputs.npz holds
`acts` [n_contexts, context, d_in] and `token_ids` [n_contexts, context]; SAELens's own
CacheActivationsRunner shard writer and consolidation write them to DIR/saelens_cache (hook
DIR/cache_hook.txt). Then SAELens's ActivationsStore reads DIR/jsae_export (a cache exported by
jsae) with `cached_activations_path`, and its raw batches are written to DIR/read_back.npz.
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from datasets import load_dataset
from sae_lens.config import PretokenizeRunnerConfig
from sae_lens.pretokenize_runner import PretokenizeRunner
from sae_lens.tokenization_and_batching import concat_and_batch_sequences
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import get_special_token_ids
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer


def stack(contexts, context_size):
    if not contexts:
        return np.zeros((0, context_size), np.int64)
    return np.stack([np.asarray(c, np.int64) for c in contexts])


def raw_cases(spec, out):
    docs = [torch.tensor(d, dtype=torch.long) for d in spec["docs"]]
    for cfg in spec["configs"]:
        contexts = concat_and_batch_sequences(
            iter(docs),
            context_size=cfg["context_size"],
            begin_batch_token_id=cfg["begin_batch_token_id"],
            begin_sequence_token_id=cfg["begin_sequence_token_id"],
            sequence_separator_token_id=cfg["sequence_separator_token_id"],
            disable_concat_sequences=cfg["disable_concat_sequences"],
        )
        out[f"raw/{cfg['name']}"] = stack(list(contexts), cfg["context_size"])


def pretokenize_cases(spec, out):
    for cfg in spec["configs"]:
        runner = PretokenizeRunner(
            PretokenizeRunnerConfig(
                tokenizer_name=spec["tokenizer"],
                dataset_path="json",
                data_files=[spec["data_files"]],
                split="train",
                num_proc=1,
                context_size=cfg["context_size"],
                column_name="text",
                shuffle=False,
                streaming=False,
                pretokenize_batch_size=cfg["pretokenize_batch_size"],
                begin_batch_token=cfg["begin_batch_token"],
                begin_sequence_token=cfg["begin_sequence_token"],
                sequence_separator_token=cfg["sequence_separator_token"],
                disable_concat_sequences=cfg["disable_concat_sequences"],
            )
        )
        ds = runner.run()
        out[f"pretokenize/{cfg['name']}"] = stack(
            [row["input_ids"] for row in ds], cfg["context_size"]
        )


def tiny_model(tokenizer, n_ctx):
    cfg = HookedTransformerConfig(
        d_model=8,
        d_head=4,
        n_layers=1,
        n_ctx=n_ctx,
        n_heads=2,
        d_vocab=len(tokenizer),
        act_fn="relu",
        device="cpu",
    )
    return HookedTransformer(cfg, tokenizer=tokenizer)


def store_cases(spec, out):
    tokenizers = {k: AutoTokenizer.from_pretrained(v) for k, v in spec["tokenizers"].items()}
    text_ds = load_dataset("json", data_files=spec["data_files"], split="train")
    tokens_ds = load_dataset("json", data_files=spec["tokens_data_files"], split="train")
    for cfg in spec["configs"]:
        tokenizer = tokenizers[cfg["tokenizer"]]
        model = tiny_model(tokenizer, max(cfg["context_size"], 8))
        dataset = tokens_ds if cfg["pretokenized"] else text_ds
        store = ActivationsStore(
            model=model,
            dataset=dataset,
            streaming=False,
            hook_name="blocks.0.hook_resid_post",
            hook_head_index=None,
            context_size=cfg["context_size"],
            d_in=8,
            n_batches_in_buffer=2,
            total_training_tokens=10**6,
            store_batch_size_prompts=1,
            train_batch_size_tokens=4,
            prepend_bos=cfg["prepend_bos"],
            normalize_activations="none",
            device=torch.device("cpu"),
            dtype="float32",
            sequence_separator_token=cfg["sequence_separator_token"],
            disable_concat_sequences=cfg["disable_concat_sequences"],
        )
        contexts = []
        while True:
            try:
                contexts.append(store.get_batch_tokens(1, raise_at_epoch_end=True)[0])
            except StopIteration:
                break
        out[f"store/{cfg['name']}"] = stack(contexts, cfg["context_size"])
        out[f"store_rows/{cfg['name']}"] = np.asarray(store.n_dataset_processed, np.int64)


def special_cases(spec, out):
    for i, path in enumerate(spec["tokenizers"]):
        tokenizer = AutoTokenizer.from_pretrained(path)
        out[f"special/{i}"] = np.asarray(sorted(get_special_token_ids(tokenizer)), np.int64)


def main(directory):
    directory = Path(directory)
    spec = json.loads((directory / "inputs.json").read_text())
    out = {}
    raw_cases(spec["raw"], out)
    pretokenize_cases(spec["pretokenize"], out)
    store_cases(spec["store"], out)
    special_cases(spec["special"], out)
    np.savez(directory / "outputs.npz", **out)


def cache(directory):
    from datasets import Array2D, Features, Sequence, Value
    from sae_lens.cache_activations_runner import CacheActivationsRunner
    from sae_lens.config import CacheActivationsRunnerConfig

    directory = Path(directory)
    data = np.load(directory / "cache_inputs.npz")
    hook = (directory / "cache_hook.txt").read_text().strip()
    acts, ids = torch.as_tensor(data["acts"]), torch.as_tensor(data["token_ids"])
    n, ctx, d_in = acts.shape
    half = n // 2
    cfg = CacheActivationsRunnerConfig(  # sized so that one buffer is `half` contexts
        dataset_path="unused",
        model_name="unused",
        model_batch_size=half,
        hook_name=hook,
        d_in=d_in,
        training_tokens=n * ctx,
        context_size=ctx,
        device="cpu",
        shuffle=False,
        new_cached_activations_path=str(directory / "saelens_cache"),
        buffer_size_gb=(half * ctx * d_in * 4 + 0.5) / 1e9,
    )
    assert cfg.n_seq_in_buffer == half and cfg.n_buffers == 2
    # SAELens's own shard writer and consolidation, without loading a model
    runner = object.__new__(CacheActivationsRunner)
    runner.cfg, runner.context_size = cfg, ctx
    runner.features = Features(
        {
            hook: Array2D(shape=(ctx, d_in), dtype="float32"),
            "token_ids": Sequence(Value(dtype="int32"), length=ctx),
        }
    )
    tmp = directory / "saelens_cache" / ".tmp_shards"
    tmp.mkdir(parents=True)
    for i in range(2):
        rows = slice(i * half, (i + 1) * half)
        shard = runner._create_shard((acts[rows].reshape(-1, d_in), ids[rows].reshape(-1)))
        shard.save_to_disk(f"{tmp}/shard_{i:05d}", num_shards=1)
    runner._consolidate_shards(tmp, directory / "saelens_cache", copy_files=False)

    store = ActivationsStore(
        model=None,
        dataset=None,
        streaming=False,
        hook_name=hook,
        hook_head_index=None,
        context_size=ctx,
        d_in=d_in,
        n_batches_in_buffer=1,
        total_training_tokens=n * ctx,
        store_batch_size_prompts=2,
        train_batch_size_tokens=ctx,
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        cached_activations_path=str(directory / "jsae_export"),
    )
    batches = [store.get_raw_llm_batch(raise_on_epoch_end=True) for _ in range(n // 2)]
    np.savez(
        directory / "read_back.npz",
        acts=torch.cat([b[0] for b in batches]).numpy(),
        token_ids=torch.cat([b[1] for b in batches]).numpy(),
    )


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache(sys.argv[2])
    else:
        main(sys.argv[1])
