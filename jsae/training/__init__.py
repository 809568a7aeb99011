"""Training: configs, the jitted and sharded train step, schedules, the loop, checkpoints, logs.

    import jsae
    sae = jsae.train({"architecture": "topk", "d_in": 768, "d_sae": 16384, "k": 32}, activations)

See docs/training.md.
"""

from jsae.training.config import (
    DataSettings,
    LoggingSettings,
    SAESettings,
    TrainConfig,
    TrainingSettings,
)
from jsae.training.sources import (
    Feeder,
    NpyDirectorySource,
    ResumableSource,
    make_source,
    register_source,
)
from jsae.training.trainer import Trainer, is_checkpoint_dir, load_checkpoint, train

__all__ = [
    "DataSettings",
    "Feeder",
    "LoggingSettings",
    "NpyDirectorySource",
    "ResumableSource",
    "SAESettings",
    "TrainConfig",
    "Trainer",
    "TrainingSettings",
    "is_checkpoint_dir",
    "load_checkpoint",
    "make_source",
    "register_source",
    "train",
]
