"""Hooked language models: Hugging Face Flax causal LMs, and jsae's Flax Gemma 2.

model = jsae.load_model("gpt2")                     # HF directory or hub repo id
_, cache = model.run_with_cache(tokens, ["blocks.5.hook_resid_post"])
logits = model.run_with_hooks(tokens, {"blocks.5.hook_resid_post": fn})
"""

from jsae.models.families import FAMILIES, Family, supported_model_types
from jsae.models.hooked import HookedModel
from jsae.models.loading import load_model, normalize_config

__all__ = [
    "FAMILIES",
    "Family",
    "HookedModel",
    "load_model",
    "normalize_config",
    "supported_model_types",
]
