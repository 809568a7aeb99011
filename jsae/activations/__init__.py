"""Activation sources: synthetic data, Flax-model-backed stores, token packing, disk caches."""
