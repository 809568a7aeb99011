"""A tiny, fully offline language-modelling setup: corpus, tokenizer, datasets.

Used by `jsae demo` and the tests, so the whole pipeline runs with no download: a corpus
generated from a small grammar (so a small model can learn something in seconds), a
byte-level BPE tokenizer trained on it with `tokenizers` and saved as a Hugging Face
tokenizer directory, and helpers that write the corpus as datasets in the formats
`datasets` reads (save_to_disk directories, JSON lines, parquet).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_SUBJECTS = [
    "the cat",
    "a dog",
    "the old man",
    "my sister",
    "the robot",
    "a small bird",
    "the teacher",
    "our neighbour",
    "the river",
    "a quiet child",
]
_VERBS = ["sees", "likes", "follows", "paints", "finds", "remembers", "carries", "watches"]
_OBJECTS = [
    "the red ball",
    "a green house",
    "the long road",
    "an open window",
    "the moon",
    "a wooden box",
    "the morning train",
    "a blue kite",
    "the tall tree",
    "some bread",
]
_ENDINGS = [
    "today",
    "again",
    "in the rain",
    "at night",
    "every morning",
    "with care",
    "near the sea",
    "for a while",
]


def make_corpus(n_docs: int = 200, *, seed: int = 0, max_sentences: int = 12) -> list[str]:
    """`n_docs` short documents of grammatical sentences with learnable structure.

    Lengths vary from one sentence to `max_sentences`, so packing sees short documents,
    documents longer than a context, and everything between.
    """
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(int(rng.integers(1, max_sentences + 1))):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            if rng.random() < 0.5:
                s += f" {rng.choice(_ENDINGS)}"
            sentences.append(s.capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def make_tokenizer(
    texts: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int = 512,
    style: str = "gpt2",
) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, as a `PreTrainedTokenizerFast`.

    style "gpt2": one special token `<|endoftext|>` serving as BOS, EOS and PAD; encoding adds
    nothing. style "llama": `<s>`, `</s>`, `<pad>`; encoding prepends `<s>` by itself.
    Saved with `save_pretrained(out_dir)` when `out_dir` is given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "gpt2":
        specials = {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        }
    elif style == "llama":
        specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        raise ValueError(f"style must be 'gpt2' or 'llama', got {style!r}")
    special_list = list(dict.fromkeys(specials.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if style == "llama":
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    wrapped.model_max_length = 10**9  # never truncate; contexts are cut by the packer
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


def save_text_dataset(
    texts: Sequence[str], path: str | Path, *, fmt: str = "disk", column: str = "text"
) -> Path:
    """Write `texts` as a dataset `datasets` can load: "disk" (save_to_disk), "jsonl", "parquet"."""
    import datasets

    path = Path(path)
    ds = datasets.Dataset.from_dict({column: list(texts)})
    if fmt == "disk":
        ds.save_to_disk(str(path))
    elif fmt == "jsonl":
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(path), lines=True)
    elif fmt == "parquet":
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(path))
    else:
        raise ValueError(f"fmt must be 'disk', 'jsonl' or 'parquet', got {fmt!r}")
    return path


def make_model_dir(
    out_dir: str | Path,
    tokenizer: Any,
    *,
    n_layer: int = 2,
    d_model: int = 64,
    n_head: int = 4,
    n_positions: int = 128,
    seed: int = 0,
) -> Path:
    """A randomly initialised GPT-2 saved with its tokenizer, loadable by `jsae.load_model`."""
    from transformers import GPT2Config

    from jsae.models import HookedModel

    config = GPT2Config(
        n_layer=n_layer,
        n_embd=d_model,
        n_head=n_head,
        n_positions=n_positions,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = HookedModel.from_config(config, seed=seed, tokenizer=tokenizer)
    return model.save_pretrained(out_dir, overwrite=True)
