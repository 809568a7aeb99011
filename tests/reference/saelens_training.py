"""Runs in the reference environment (torch + sae-lens 6.54): the oracle of the training tests.

    python saelens_training.py losses OUT_DIR      losses and gradients of training_forward_pass
    python saelens_training.py trainer OUT_DIR     SAETrainer runs: initial and final parameters
    python saelens_training.py schedules OUT_FILE  learning rates and coefficients per step
    python saelens_training.py all OUT_DIR         all three, under OUT_DIR

`losses` writes, per case, OUT_DIR/<case>/{case.json, params.safetensors, io.safetensors}:
the jsae settings of the case, SAELens's parameters (random, non-trivial), and the input, dead
mask, coefficients, every loss term, every parameter gradient of the total loss, and (BatchTopK)
the threshold after the pass.

`trainer` writes, per case, OUT_DIR/<case>/{case.json, params.safetensors, batches.safetensors,
final.safetensors}: an `SAETrainer.fit()` over fixed batches from fixed parameters, with warm-ups,
schedules, clipping and dead-latent windows small enough to matter.

`schedules` writes a JSON list of {settings, lrs, coefficients} for several schedules.
"""

import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
torch.manual_seed(0)

from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import (
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
)
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler
from sae_lens.training.sae_trainer import SAETrainer

D_IN, D_SAE, BATCH = 24, 96, 33
WIDE_D_SAE = 1024


def randomize(sae, *, threshold_scale=0.6):
    """Random parameters of a scale where latents fire, some do not, and STE windows are hit."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand_like(p) * threshold_scale)
            elif name == "r_mag":
                p.copy_(torch.randn_like(p) * 0.3)
            else:
                p.copy_(torch.randn_like(p) * (0.3 if name.startswith("W") else 0.2))
    return sae


def loss_cases():
    """name -> (SAELens training SAE, jsae settings, coefficients, dead mask or None)."""
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE)[:20]] = True
    many_dead = torch.zeros(D_SAE, dtype=torch.bool)
    many_dead[torch.randperm(D_SAE)[:40]] = True
    base = {"d_in": D_IN, "d_sae": D_SAE}
    cases = {}

    def add(name, sae, settings, coefficients, dead_mask):
        cases[name] = (randomize(sae), {**base, **settings}, coefficients, dead_mask)

    add(
        "standard",
        StandardTrainingSAE(StandardTrainingSAEConfig(**base, l1_coefficient=0.7)),
        {"architecture": "standard", "l1_coefficient": 0.7},
        {"l1": 0.7},
        None,
    )
    add(
        "standard_lp2",
        StandardTrainingSAE(StandardTrainingSAEConfig(**base, l1_coefficient=0.7, lp_norm=2.0)),
        {"architecture": "standard", "lp_norm": 2.0},
        {"l1": 0.7},
        None,
    )
    add(  # p < 1: the power's derivative is infinite at the latents that did not fire
        "standard_lp_half",
        StandardTrainingSAE(StandardTrainingSAEConfig(**base, l1_coefficient=0.7, lp_norm=0.5)),
        {"architecture": "standard", "lp_norm": 0.5},
        {"l1": 0.7},
        None,
    )
    add(
        "standard_no_bdec",
        StandardTrainingSAE(StandardTrainingSAEConfig(**base, apply_b_dec_to_input=False)),
        {"architecture": "standard", "apply_b_dec_to_input": False},
        {"l1": 0.3},
        None,
    )
    add(
        "standard_layer_norm",
        StandardTrainingSAE(StandardTrainingSAEConfig(**base, normalize_activations="layer_norm")),
        {"architecture": "standard", "normalize_activations": "layer_norm"},
        {"l1": 0.5},
        None,
    )
    add(
        "standard_constant_norm",
        StandardTrainingSAE(
            StandardTrainingSAEConfig(**base, normalize_activations="constant_norm_rescale")
        ),
        {"architecture": "standard", "normalize_activations": "constant_norm_rescale"},
        {"l1": 0.5},
        None,
    )
    add(
        "gated",
        GatedTrainingSAE(GatedTrainingSAEConfig(**base)),
        {"architecture": "gated", "gated_detach_aux_decoder": False},
        {"l1": 0.8},
        None,
    )
    jr = {"jumprelu_bandwidth": 0.3}
    add(
        "jumprelu_step",
        JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**base, **jr, pre_act_loss_coefficient=0.2)),
        {"architecture": "jumprelu", **jr, "pre_act_loss_coefficient": 0.2},
        {"l0": 0.9},
        dead,
    )
    add(
        "jumprelu_tanh",
        JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                **base, **jr, jumprelu_sparsity_loss_mode="tanh", jumprelu_tanh_scale=3.0
            )
        ),
        {
            "architecture": "jumprelu",
            **jr,
            "jumprelu_sparsity_loss_mode": "tanh",
            "jumprelu_tanh_scale": 3.0,
        },
        {"l0": 0.6},
        None,
    )
    add(
        "jumprelu_quadratic",
        JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                **base, **jr, jumprelu_sparsity_loss_mode="quadratic", target_l0=10.0
            )
        ),
        {
            "architecture": "jumprelu",
            **jr,
            "jumprelu_sparsity_loss_mode": "quadratic",
            "target_l0": 10.0,
        },
        {"l0": 0.4},
        None,
    )
    add(
        "jumprelu_ste_to_input",
        JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**base, **jr, jumprelu_ste_to_input=True)),
        {"architecture": "jumprelu", **jr, "jumprelu_ste_to_input": True},
        {"l0": 0.5},
        None,
    )
    add(
        "topk",
        TopKTrainingSAE(TopKTrainingSAEConfig(**base, k=5, aux_loss_coefficient=0.7)),
        {"architecture": "topk", "k": 5, "aux_loss_coefficient": 0.7},
        {},
        dead,
    )
    add(
        "topk_many_dead",
        TopKTrainingSAE(TopKTrainingSAEConfig(**base, k=5)),
        {"architecture": "topk", "k": 5},
        {},
        many_dead,
    )
    add(
        "topk_no_rescale",
        TopKTrainingSAE(TopKTrainingSAEConfig(**base, k=5, rescale_acts_by_decoder_norm=False)),
        {"architecture": "topk", "k": 5, "rescale_acts_by_decoder_norm": False},
        {},
        dead,
    )
    add(
        "topk_no_dead",
        TopKTrainingSAE(TopKTrainingSAEConfig(**base, k=7)),
        {"architecture": "topk", "k": 7},
        {},
        None,
    )
    add(
        "batchtopk",
        BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**base, k=6.0)),
        {"architecture": "batchtopk", "k": 6.0},
        {},
        dead,
    )
    widths = [16, 48, D_SAE]
    add(
        "matryoshka",
        MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(**base, k=6.0, matryoshka_widths=list(widths))
        ),
        {"architecture": "matryoshka_batchtopk", "k": 6.0, "matryoshka_widths": widths},
        {},
        dead,
    )
    add(
        "matryoshka_level_aux",
        MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                **base, k=6.0, matryoshka_widths=list(widths), use_matryoshka_aux_loss=True
            )
        ),
        {
            "architecture": "matryoshka_batchtopk",
            "k": 6.0,
            "matryoshka_widths": widths,
            "use_matryoshka_aux_loss": True,
        },
        {},
        dead,
    )
    # wide enough that jsae compacts the dead latents' columns before AuxK (d_sae/4 >= 256):
    # fewer dead latents than k_aux (all of them reconstruct), and more (each token's top k_aux)
    wide = {"d_in": D_IN, "d_sae": WIDE_D_SAE}
    for name, n_dead in (("topk_wide_few_dead", 9), ("topk_wide_dead", 200)):
        wide_dead = torch.zeros(WIDE_D_SAE, dtype=torch.bool)
        wide_dead[torch.randperm(WIDE_D_SAE)[:n_dead]] = True
        cases[name] = (
            randomize(TopKTrainingSAE(TopKTrainingSAEConfig(**wide, k=5))),
            {**wide, "architecture": "topk", "k": 5},
            {},
            wide_dead,
        )
    cases["batchtopk_wide_dead"] = (
        randomize(BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**wide, k=6.0))),
        {**wide, "architecture": "batchtopk", "k": 6.0},
        {},
        wide_dead,
    )
    return cases


def write_losses(out: Path):
    for name, (sae, settings, coefficients, dead_mask) in loss_cases().items():
        d = out / name
        d.mkdir(parents=True)
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = torch.tensor(0.25, dtype=torch.double)
        params = {k: v.detach().clone().contiguous() for k, v in sae.named_parameters()}
        buffers = (
            {"topk_threshold": sae.topk_threshold.float().reshape(())}
            if hasattr(sae, "topk_threshold")
            else {}
        )
        save_file({**params, **buffers}, d / "params.safetensors")
        x = torch.randn(BATCH, D_IN) * 1.3 + 0.2
        out_step = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=dead_mask,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        out_step.loss.backward()
        tensors = {"x": x, "loss": out_step.loss.detach().reshape(())}
        tensors["dead_mask"] = dead_mask.float() if dead_mask is not None else torch.zeros(D_SAE)
        for key, value in out_step.losses.items():
            tensors[f"loss_{key}"] = value.detach().reshape(()).float()
        for key, p in sae.named_parameters():
            tensors[f"grad_{key}"] = (
                p.grad.detach().clone() if p.grad is not None else (torch.zeros_like(p))
            )
        tensors["feature_acts"] = out_step.feature_acts.detach()
        if hasattr(sae, "topk_threshold"):
            tensors["topk_threshold_after"] = sae.topk_threshold.float().reshape(())
        save_file({k: v.contiguous() for k, v in tensors.items()}, d / "io.safetensors")
        (d / "case.json").write_text(
            json.dumps({"settings": settings, "coefficients": coefficients})
        )


# ------------------------------------------------------------------------------------ trainer

TRAIN_D_IN, TRAIN_D_SAE, TRAIN_B, TRAIN_STEPS = 12, 48, 32, 24


def trainer_cases():
    """name -> (training SAE, jsae flat config, SAETrainerConfig kwargs)."""
    base = {"d_in": TRAIN_D_IN, "d_sae": TRAIN_D_SAE}
    loop = {
        "lr": 3e-3,
        "adam_beta1": 0.8,
        "adam_beta2": 0.99,
        "lr_warm_up_steps": 4,
        "lr_decay_steps": 5,
        "lr_scheduler_name": "cosineannealing",
        "lr_end": 5e-4,
        "dead_feature_window": 3,
        "feature_sampling_window": 7,
    }
    cases = {
        "standard": (
            StandardTrainingSAE(
                StandardTrainingSAEConfig(**base, l1_coefficient=2.0, l1_warm_up_steps=6)
            ),
            {"architecture": "standard", "l1_coefficient": 2.0, "l1_warm_up_steps": 6},
            loop,
        ),
        "jumprelu": (
            JumpReLUTrainingSAE(
                JumpReLUTrainingSAEConfig(
                    **base,
                    jumprelu_bandwidth=0.2,
                    l0_coefficient=0.05,
                    l0_warm_up_steps=5,
                    pre_act_loss_coefficient=0.1,
                )
            ),
            {
                "architecture": "jumprelu",
                "jumprelu_bandwidth": 0.2,
                "l0_coefficient": 0.05,
                "l0_warm_up_steps": 5,
                "pre_act_loss_coefficient": 0.1,
            },
            {**loop, "lr_scheduler_name": "constant"},
        ),
        "topk": (
            TopKTrainingSAE(TopKTrainingSAEConfig(**base, k=4)),
            {"architecture": "topk", "k": 4},
            {**loop, "lr_scheduler_name": "cosineannealingwarmrestarts", "n_restart_cycles": 3},
        ),
        "batchtopk": (
            BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**base, k=4.0)),
            {"architecture": "batchtopk", "k": 4.0},
            loop,
        ),
        "gated": (
            GatedTrainingSAE(GatedTrainingSAEConfig(**base, l1_coefficient=1.5)),
            {"architecture": "gated", "l1_coefficient": 1.5, "gated_detach_aux_decoder": False},
            loop,
        ),
    }
    return cases


def write_trainer(out: Path):
    for name, (sae, sae_cfg, loop) in trainer_cases().items():
        d = out / name
        d.mkdir(parents=True)
        with torch.no_grad():  # make some latents dead from the start: AuxK / pre-act matter
            if hasattr(sae, "b_enc") and sae.b_enc is not None:
                sae.b_enc[:10] = -5.0
        init = {k: v.detach().clone().contiguous() for k, v in sae.named_parameters()}
        save_file(init, d / "params.safetensors")
        batches = [torch.randn(TRAIN_B, TRAIN_D_IN) * 1.5 + 0.1 for _ in range(TRAIN_STEPS)]
        save_file({f"b{i}": b for i, b in enumerate(batches)}, d / "batches.safetensors")
        cfg = SAETrainerConfig(
            total_training_samples=TRAIN_B * TRAIN_STEPS,
            train_batch_size_samples=TRAIN_B,
            logger=LoggingConfig(log_to_wandb=False),
            **loop,
        )
        trainer = SAETrainer(cfg, sae, iter(batches))
        trainer.fit()
        final = {k: v.detach().clone().contiguous() for k, v in sae.named_parameters()}
        if hasattr(sae, "topk_threshold"):
            final["topk_threshold"] = sae.topk_threshold.float().reshape(())
        final["act_freq_scores"] = trainer.act_freq_scores.float()
        final["n_forward_passes_since_fired"] = trainer.n_forward_passes_since_fired.float()
        save_file(final, d / "final.safetensors")
        config = {
            **sae_cfg,
            "d_in": TRAIN_D_IN,
            "d_sae": TRAIN_D_SAE,
            **loop,
            "train_batch_size_tokens": TRAIN_B,
            "training_tokens": TRAIN_B * TRAIN_STEPS,
        }
        (d / "case.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------------------ schedules

SCHEDULES = [
    {"lr_scheduler_name": "constant", "lr_warm_up_steps": 0, "lr_decay_steps": 0},
    {"lr_scheduler_name": "constant", "lr_warm_up_steps": 5, "lr_decay_steps": 7},
    {"lr_scheduler_name": "constant", "lr_warm_up_steps": 1, "lr_decay_steps": 1},
    {"lr_scheduler_name": "cosineannealing", "lr_warm_up_steps": 0, "lr_decay_steps": 0},
    {"lr_scheduler_name": "cosineannealing", "lr_warm_up_steps": 4, "lr_decay_steps": 6},
    {
        "lr_scheduler_name": "cosineannealingwarmrestarts",
        "lr_warm_up_steps": 3,
        "lr_decay_steps": 4,
        "n_restart_cycles": 3,
    },
    {
        "lr_scheduler_name": "cosineannealingwarmrestarts",
        "lr_warm_up_steps": 0,
        "lr_decay_steps": 0,
        "n_restart_cycles": 4,
    },
]


def write_schedules(out: Path):
    steps, lr = 40, 2e-3
    rows = []
    for spec in SCHEDULES:
        spec = {"n_restart_cycles": 1, "lr_end": lr / 10, **spec}
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = get_lr_scheduler(
            spec["lr_scheduler_name"],
            optimizer=opt,
            training_steps=steps,
            lr=lr,
            warm_up_steps=spec["lr_warm_up_steps"],
            decay_steps=spec["lr_decay_steps"],
            lr_end=spec["lr_end"],
            num_cycles=spec["n_restart_cycles"],
        )
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        rows.append(
            {
                "settings": {
                    **spec,
                    "lr": lr,
                    "training_tokens": steps,
                    "train_batch_size_tokens": 1,
                },
                "lrs": lrs,
            }
        )
    coefficients = []
    for warm in (0, 1, 6):
        sched = CoefficientScheduler(warm_up_steps=warm, final_value=0.8)
        values = []
        for _ in range(12):
            values.append(sched.value)
            sched.step()
        coefficients.append({"warm_up_steps": warm, "value": 0.8, "values": values})
    out.write_text(json.dumps({"lr": rows, "coefficients": coefficients}))


def write_all(out: Path):
    write_losses(out / "losses")
    write_trainer(out / "trainer")
    write_schedules(out / "schedules.json")


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    commands = {
        "losses": write_losses,
        "trainer": write_trainer,
        "schedules": write_schedules,
        "all": write_all,
    }
    commands[command](path)
