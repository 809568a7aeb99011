"""Runs in the reference environment (sae-lens 6.54): the runner configs SAELens saves.

    python saelens_runner_configs.py OUT_FILE

Writes a JSON list of `LanguageModelSAERunnerConfig(...).to_dict()` (what SAELens writes as a
run's config), one per trainable architecture, each with non-default values, so the tests can
check that jsae reads every field SAELens saves with SAELens's meaning.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.saes import (
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)

COMMON = {"d_in": 64, "d_sae": 256, "dtype": "float32", "decoder_init_norm": 0.05}
SAES = [
    StandardTrainingSAEConfig(**COMMON, l1_coefficient=3.0, lp_norm=1.5, l1_warm_up_steps=7),
    GatedTrainingSAEConfig(**COMMON, l1_coefficient=2.0, l1_warm_up_steps=3),
    JumpReLUTrainingSAEConfig(
        **COMMON,
        l0_coefficient=0.7,
        l0_warm_up_steps=5,
        jumprelu_bandwidth=0.02,
        jumprelu_init_threshold=0.03,
        jumprelu_sparsity_loss_mode="tanh",
        jumprelu_tanh_scale=3.0,
        pre_act_loss_coefficient=3e-6,
    ),
    TopKTrainingSAEConfig(**COMMON, k=16, aux_loss_coefficient=0.5),
    BatchTopKTrainingSAEConfig(**COMMON, k=12.5, topk_threshold_lr=0.02),
    MatryoshkaBatchTopKTrainingSAEConfig(**COMMON, k=8, matryoshka_widths=[32, 128, 256]),
]


def main(out: str) -> None:
    configs = []
    for sae in SAES:
        runner = LanguageModelSAERunnerConfig(
            sae=sae,
            model_name="gpt2",
            hook_name="blocks.3.hook_resid_post",
            dataset_path="some/dataset",
            is_dataset_tokenized=True,
            context_size=64,
            streaming=False,
            lr=2e-4,
            lr_scheduler_name="cosineannealing",
            lr_warm_up_steps=10,
            lr_decay_steps=20,
            adam_beta1=0.0,
            adam_beta2=0.99,
            train_batch_size_tokens=1024,
            training_tokens=1024 * 200,
            n_checkpoints=2,
            checkpoint_path="ckpts",
            dead_feature_window=50,
            feature_sampling_window=100,
            store_batch_size_prompts=4,
            n_batches_in_buffer=8,
            dtype="bfloat16",  # the activation store's dtype (sae.dtype is the SAE's)
            autocast=True,  # bfloat16 mixed precision for the SAE
            seed=11,
            logger=LoggingConfig(
                log_to_wandb=False, wandb_project="proj", wandb_log_frequency=5, run_name="r"
            ),
        )
        configs.append(runner.to_dict())
    with open(out, "w") as fh:
        json.dump(configs, fh, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
