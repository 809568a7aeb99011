"""Hooked Hugging Face Flax language models, and Flax ports of families transformers lacks."""
