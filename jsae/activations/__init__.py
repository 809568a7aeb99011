"""Activation sources: synthetic data, Flax-model-backed stores, tokenisation and packing, disk caches."""
