"""Activation sources: Flax-model-backed stores, token packing, disk caches, synthetic data.

source = TokenSource("dataset", tokenizer, context_size=128)   # packed as SAELens packs
store = ActivationStore(model, source, hook_names=["blocks.4.hook_resid_post"], batch_size=4096)
for x in store: ...                                              # [4096, d_in] on device
"""

from jsae.activations.cache import (
    CachedActivations,
    CacheWriter,
    export_saelens_cache,
    import_saelens_cache,
)
from jsae.activations.config import LanguageModelSettings
from jsae.activations.data import TokenSource, detect_column, load_dataset_any
from jsae.activations.pretokenize import pretokenize_dataset
from jsae.activations.store import ActivationStore
from jsae.activations.tokenization import (
    PackingConfig,
    PackPosition,
    concat_and_batch_sequences,
    pack_documents,
    special_token_ids,
    tokenize_texts,
)

__all__ = [
    "ActivationStore",
    "CacheWriter",
    "CachedActivations",
    "LanguageModelSettings",
    "PackPosition",
    "PackingConfig",
    "TokenSource",
    "concat_and_batch_sequences",
    "detect_column",
    "export_saelens_cache",
    "import_saelens_cache",
    "load_dataset_any",
    "pack_documents",
    "pretokenize_dataset",
    "special_token_ids",
    "tokenize_texts",
]
