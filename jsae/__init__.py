"""jsae: sparse autoencoders on language-model activations, in JAX.

import jsae
sae = jsae.load("path/to/sae")                 # any supported format, detected from its files
sae = jsae.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
f = sae.encode(x); x_hat = sae.decode(f)       # jittable, x: [..., d_in]
sae.save("out/")                               # SAELens loads it back
"""

from jsae.architectures import architecture_names, get_architecture, register_architecture
from jsae.config import SAEConfig, SAEMetadata
from jsae.errors import (
    ConfigError,
    FormatError,
    JsaeError,
    NonFiniteError,
    ShapeError,
    UnsafePickleError,
)
from jsae.host_memory import keep_freed_memory
from jsae.hub import from_pretrained, load
from jsae.io import load_log_sparsity, save
from jsae.models import HookedModel, load_model
from jsae.sae import SAE, decode, encode, encode_with_hidden_pre, forward, forward_with_activations
from jsae.training import TrainConfig, Trainer, train

__version__ = "0.1.0"

# Before JAX's backends start their threads (importing jsae does not start them): glibc keeps
# freed host memory for XLA's CPU temporaries to reuse. See jsae.host_memory.
keep_freed_memory()

__all__ = [
    "SAE",
    "ConfigError",
    "FormatError",
    "HookedModel",
    "JsaeError",
    "NonFiniteError",
    "SAEConfig",
    "SAEMetadata",
    "ShapeError",
    "TrainConfig",
    "Trainer",
    "UnsafePickleError",
    "architecture_names",
    "decode",
    "encode",
    "encode_with_hidden_pre",
    "forward",
    "forward_with_activations",
    "from_pretrained",
    "get_architecture",
    "load",
    "load_log_sparsity",
    "load_model",
    "register_architecture",
    "save",
    "train",
]
