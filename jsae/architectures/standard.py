"""`standard`: ReLU SAE, `f = relu((x - b_dec) @ W_enc + b_enc)`; everything is the base class's."""

from __future__ import annotations

from jsae.architectures.base import Architecture


class Standard(Architecture):
    """The ReLU SAE (SAELens `StandardSAE`)."""

    name = "standard"
