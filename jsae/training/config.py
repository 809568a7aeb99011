"""Training configuration: one frozen dataclass per concern, YAML in and out, flat SAELens keys.

    config = jsae.TrainConfig.from_dict({"architecture": "topk", "d_in": 768, "d_sae": 16384,
                                         "k": 32, "lr": 3e-4, "training_tokens": 10_000_000})
    config.sae.k, config.training.lr, config.logging.log_to_wandb, config.data.activation_source

Concerns: `sae` (what SAE is trained and its loss terms), `training` (optimiser, schedules,
batching, mesh, checkpoints, outputs), `logging` (progress bar, JSONL metrics, wandb) and
`data` (which activation source feeds the trainer). Every field name is unique across the
concerns, so a flat dict of SAELens field names (`l1_coefficient`, `lr`, `wandb_project`, ...)
routes each key to its concern; nested dicts (`{"sae": {...}, "training": {...}}`, or SAELens's
`logger`) work too. Unknown keys are refused with the valid ones listed.

Every field carries its documentation (`help`), shown by `jsae train --list-options`. Adding a
concern is one dataclass here plus one field of `TrainConfig`; routing picks it up.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from jsae.activations.config import LanguageModelSettings
from jsae.architectures.grad_layout import LAYOUTS
from jsae.config import (
    NORMALIZE_MODES,
    RESHAPE_MODES,
    canonical_dtype,
    freeze,
    refuse_nulls,
    unfreeze,
)
from jsae.errors import ConfigError, choices_hint

MODEL_SOURCES = ("model", "cache")  # activation sources that run (or cached) a language model

# Architectures the trainer can train (every registered one has loss terms).
TRAINABLE_ARCHITECTURES = (
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
)
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
JUMPRELU_FAMILY = ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")
SPARSITY_LOSS_MODES = ("step", "tanh", "quadratic")

# SAELens runner keys that mean nothing here (torch devices, compilation, version stamps).
# They are accepted so SAELens configs load, and dropped with one warning naming them.
IGNORED_SAELENS_KEYS = frozenset(
    {
        "device",
        "act_store_device",
        "llm_device",
        "compile_llm",
        "llm_compilation_mode",
        "compile_sae",
        "sae_compilation_mode",
        "verbose",
        "dead_feature_threshold",
        "hook_eval",
        "sae_lens_version",
        "sae_lens_training_version",
        "log_activations_store_to_wandb",
        "log_optimizer_state_to_wandb",
        "prefetch_llm_batches",
    }
)


# SAELens runner keys that every saved SAELens config carries, for features jsae does not have:
# accepted at SAELens's default (so `runner_cfg.json` files load), refused otherwise.
SAELENS_DEFAULT_ONLY_KEYS: dict[str, tuple[Any, str]] = {
    "use_chat_formatting": (
        False,
        "chat templates are not applied by jsae's activation store; tokenize the dataset with "
        "the template yourself (is_dataset_tokenized: true)",
    ),
    "model_kwargs": (
        {},
        "extra keyword arguments to the model's forward pass are not supported (jsae runs Flax "
        "models); remove model_kwargs",
    ),
}

# SAELens's mixed-precision switches, and the jsae option each one sets when true.
SAELENS_AUTOCAST_KEYS = {"autocast": "compute_dtype", "autocast_lm": "model_dtype"}

# Names people reach for that jsae (and SAELens) spell differently: named in the error.
KEY_ALIASES = {
    "learning_rate": "lr",
    "batch_size": "train_batch_size_tokens",
    "train_batch_size": "train_batch_size_tokens",
    "total_training_tokens": "training_tokens",
    "num_tokens": "training_tokens",
    "l1_coeff": "l1_coefficient",
    "l0_coeff": "l0_coefficient",
    "topk": "k",
    "num_latents": "d_sae",
    "n_latents": "d_sae",
    "dict_size": "d_sae",
    "expansion_factor": "d_sae (d_in times the expansion factor)",
    "activation_fn": "architecture",
    "arch": "architecture",
    "warmup_steps": "lr_warm_up_steps",
    "lr_warmup_steps": "lr_warm_up_steps",
    "l1_warmup_steps": "l1_warm_up_steps",
    "scheduler": "lr_scheduler_name",
    "lr_scheduler": "lr_scheduler_name",
    "beta1": "adam_beta1",
    "beta2": "adam_beta2",
    "eps": "adam_epsilon",
    "grad_clip": "max_grad_norm",
    "hook_point": "hook_name",
    "layer": "hook_name (e.g. blocks.8.hook_resid_pre)",
    "model": "model_name",
    "dataset": "dataset_path",
    "wandb": "log_to_wandb",
    "l1": "l1_coefficient",
    "l0": "l0_coefficient",
    "epochs": "training_tokens (a run's length is counted in tokens, not epochs)",
    "num_epochs": "training_tokens (a run's length is counted in tokens, not epochs)",
    "steps": "training_tokens (steps = training_tokens / train_batch_size_tokens)",
    "num_steps": "training_tokens (steps = training_tokens / train_batch_size_tokens)",
}

# Options of other trainers that jsae (like SAELens) has no counterpart for: said so, instead of
# suggesting a similarly spelled option.
KEYS_WITHOUT_COUNTERPART = {
    "weight_decay": "jsae trains with Adam without weight decay, as SAELens does",
    "momentum": "jsae trains with Adam (adam_beta1 sets its momentum)",
    "optimizer": "jsae trains with Adam (adam_beta1, adam_beta2, adam_epsilon set it)",
}

# Loss-term settings and the architectures whose losses read them: set to anything but the
# default for another architecture, they would be ignored, so they are refused instead.
_STANDARD_L1 = ("standard", "gated", "transcoder", "skip_transcoder")
_JUMPRELU = ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")
_TOPK = ("topk", "batchtopk", "matryoshka_batchtopk")
ARCHITECTURE_SETTINGS: dict[str, tuple[str, ...]] = {
    "l1_coefficient": _STANDARD_L1,
    "l1_warm_up_steps": _STANDARD_L1,
    "lp_norm": ("standard", "transcoder", "skip_transcoder"),
    "gated_detach_aux_decoder": ("gated",),
    "l0_coefficient": _JUMPRELU,
    "l0_warm_up_steps": _JUMPRELU,
    "jumprelu_init_threshold": _JUMPRELU,
    "jumprelu_bandwidth": _JUMPRELU,
    "jumprelu_sparsity_loss_mode": _JUMPRELU,
    "jumprelu_tanh_scale": _JUMPRELU,
    "jumprelu_ste_to_input": _JUMPRELU,
    "pre_act_loss_coefficient": _JUMPRELU,
    "target_l0": _JUMPRELU,
    "rescale_acts_by_decoder_norm": _TOPK,
    "aux_loss_coefficient": _TOPK,
    "topk_threshold_lr": ("batchtopk", "matryoshka_batchtopk"),
    "use_matryoshka_aux_loss": ("matryoshka_batchtopk",),
    "use_sparse_activations": (*_TOPK, "standard"),
}
# What to use instead, for the settings people carry over between architectures.
_SETTING_INSTEAD = {
    ("l1_coefficient", _JUMPRELU): "its sparsity coefficient is l0_coefficient",
    ("l1_warm_up_steps", _JUMPRELU): "its sparsity warm-up is l0_warm_up_steps",
    ("l0_coefficient", _STANDARD_L1): "its sparsity coefficient is l1_coefficient",
    ("l0_warm_up_steps", _STANDARD_L1): "its sparsity warm-up is l1_warm_up_steps",
    ("l1_coefficient", _TOPK): "k sets its sparsity; it has no sparsity coefficient",
    ("l0_coefficient", _TOPK): "k sets its sparsity; it has no sparsity coefficient",
}


def option(default: Any, help: str) -> Any:
    """A dataclass field with its documentation attached (mutable defaults copied)."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ------------------------------------------------------------------------------------ sections


@dataclass(frozen=True, kw_only=True)
class SAESettings:
    """What SAE is trained: architecture, sizes, input handling and every loss-term knob."""

    architecture: str = option("standard", f"one of {list(TRAINABLE_ARCHITECTURES)}")
    d_in: int | None = option(None, "input width (the hooked activation's size); required")
    d_sae: int | None = option(None, "number of latents; required")
    d_out: int | None = option(None, "transcoders: output width (defaults to d_in)")
    dtype: str = option("float32", "parameter dtype; JumpReLU thresholds always stay float32")
    apply_b_dec_to_input: bool | None = option(
        None, "subtract b_dec before encoding (default: True for SAEs, False for transcoders)"
    )
    normalize_activations: str = option(
        "none",
        f"one of {list(NORMALIZE_MODES)}; expected_average_only_in scales inputs to "
        "E||x|| = sqrt(d_in) during training and folds the scale into the weights at the end",
    )
    reshape_activations: str = option(
        "auto",
        f"one of {['auto', *RESHAPE_MODES]}: what the saved SAE takes as input; 'hook_z' takes "
        "attn.hook_z activations [..., n_heads, d_head] (and flat [..., d_in]), 'none' takes "
        "[..., d_in]; training always sees flat [B, d_in] rows. 'auto': 'hook_z' when the hook "
        "(metadata or model hook_name) is an attn.hook_z over all heads, else 'none'",
    )
    decoder_init_norm: float | None = option(
        0.1, "initial L2 norm of each decoder row, with W_enc = W_dec.T (None: kaiming only)"
    )
    # standard / gated / transcoder
    l1_coefficient: float = option(1.0, "standard, gated, transcoders: sparsity coefficient")
    lp_norm: float = option(1.0, "standard, transcoders: p of the decoder-weighted Lp penalty")
    l1_warm_up_steps: int = option(0, "steps over which l1_coefficient ramps up from 0")
    gated_detach_aux_decoder: bool = option(
        False,
        "gated: the auxiliary gate-path reconstruction uses a stop-gradient copy of W_dec and "
        "b_dec, as the Gated SAE paper does (which also keeps decoder rows at unit norm); the "
        "default trains the decoder on it too, as SAELens does, because without the norm "
        "constraint the detached version lets the two paths drift apart",
    )
    # jumprelu
    l0_coefficient: float = option(1.0, "jumprelu: coefficient of the sparsity (L0) loss")
    l0_warm_up_steps: int = option(0, "steps over which l0_coefficient ramps up from 0")
    jumprelu_init_threshold: float = option(0.01, "jumprelu: initial threshold of every latent")
    jumprelu_bandwidth: float = option(
        0.05, "jumprelu: width ε of the rectangle kernel of the straight-through estimators"
    )
    jumprelu_sparsity_loss_mode: str = option(
        "step",
        f"jumprelu: one of {list(SPARSITY_LOSS_MODES)} (DeepMind's L0, Anthropic's tanh, "
        "Gemma Scope 2's quadratic penalty around target_l0)",
    )
    jumprelu_tanh_scale: float = option(4.0, "jumprelu tanh mode: c in tanh(c · f · ||W_dec||)")
    jumprelu_ste_to_input: bool = option(
        False,
        "jumprelu: the straight-through estimators also pass gradient to the pre-activations "
        "(Anthropic), not only to the threshold (DeepMind)",
    )
    pre_act_loss_coefficient: float | None = option(
        None, "jumprelu: coefficient of the pre-activation loss on dead latents (Anthropic: 3e-6)"
    )
    target_l0: float | None = option(None, "jumprelu quadratic mode: the target L0")
    # topk family
    k: float | None = option(
        None, "topk: active latents per token; batchtopk: mean active latents per token"
    )
    rescale_acts_by_decoder_norm: bool | None = option(
        None,
        "topk family: rank latents by pre-activation · ||W_dec row|| (default True in "
        "training, as in SAELens); the saved SAE has unit-norm decoder rows",
    )
    aux_loss_coefficient: float = option(
        1.0, "topk family: coefficient of the AuxK loss (dead latents reconstruct the residual)"
    )
    topk_threshold_lr: float = option(
        0.01, "batchtopk: EMA rate of the threshold exported to the saved JumpReLU SAE"
    )
    matryoshka_widths: tuple[int, ...] = option(
        (), "matryoshka_batchtopk: nested prefix widths (d_sae is appended when missing)"
    )
    use_matryoshka_aux_loss: bool = option(
        False, "matryoshka_batchtopk: dead latents reconstruct the residual of their own level"
    )
    use_sparse_activations: bool | None = option(
        None,
        "topk, batchtopk, matryoshka_batchtopk: decode and backpropagate through the kept "
        "(value, index) pairs (gather / scatter-add) instead of dense [B, d_sae] matrices; "
        "standard: the same on the active (token, latent) pairs in every step where at most "
        "B·d_sae/96 pre-activations are positive (the dense step otherwise); None picks it on "
        "CPU when d_sae >= 4096 and, for topk, latents are not split over the mesh's model "
        "axis; for the batch-wide selections and standard, on one device (on GPUs and TPUs, "
        "where it is not yet measured, None keeps the dense path)",
    )
    metadata: dict = field(
        default_factory=dict,
        metadata={"help": "SAE metadata written to cfg.json (model_name, hook_name, ...)"},
    )

    def __post_init__(self) -> None:
        _freeze_fields(self)
        refuse_nulls(self, skip=("reshape_activations", "metadata", "dtype"))
        _check_numbers(self)
        arch = self.architecture
        if arch not in TRAINABLE_ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {arch!r}; trainable architectures: "
                f"{list(TRAINABLE_ARCHITECTURES)}." + choices_hint(arch, TRAINABLE_ARCHITECTURES)
            )
        for name in ("d_in", "d_sae"):
            _positive_int(name, getattr(self, name), required=True)
        _positive_int("d_out", self.d_out)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # "torch.float16" too
        if self.metadata is None:  # YAML `metadata:` with nothing under it
            object.__setattr__(self, "metadata", freeze({}))
        if self.normalize_activations not in NORMALIZE_MODES:
            raise ConfigError(
                f"normalize_activations={self.normalize_activations!r} is not supported; choose "
                f"one of {list(NORMALIZE_MODES)}."
                + choices_hint(self.normalize_activations, NORMALIZE_MODES)
            )
        if self.reshape_activations is None:  # YAML null: unset
            object.__setattr__(self, "reshape_activations", "auto")
        if self.reshape_activations not in ("auto", *RESHAPE_MODES):
            raise ConfigError(
                f"reshape_activations={self.reshape_activations!r} is not supported; choose one "
                f"of {['auto', *RESHAPE_MODES]}."
                + choices_hint(self.reshape_activations, ("auto", *RESHAPE_MODES))
            )
        if self.jumprelu_sparsity_loss_mode not in SPARSITY_LOSS_MODES:
            raise ConfigError(
                f"jumprelu_sparsity_loss_mode={self.jumprelu_sparsity_loss_mode!r} is not "
                f"supported; choose one of {list(SPARSITY_LOSS_MODES)}."
                + choices_hint(self.jumprelu_sparsity_loss_mode, SPARSITY_LOSS_MODES)
            )
        if self.decoder_init_norm is not None and not self.decoder_init_norm > 0:
            raise ConfigError(
                f"decoder_init_norm must be positive or None, got {self.decoder_init_norm!r}."
            )
        if not self.jumprelu_bandwidth > 0:
            raise ConfigError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}.")
        if self.jumprelu_init_threshold < 0:
            raise ConfigError("jumprelu_init_threshold must be >= 0.")
        for name in (
            "l1_coefficient",
            "l0_coefficient",
            "pre_act_loss_coefficient",
            "aux_loss_coefficient",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}.")
        if not self.lp_norm > 0:
            raise ConfigError(f"lp_norm must be > 0, got {self.lp_norm}.")
        for name in ("l1_warm_up_steps", "l0_warm_up_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 < self.topk_threshold_lr <= 1:
            raise ConfigError(f"topk_threshold_lr must be in (0, 1], got {self.topk_threshold_lr}.")
        self._check_foreign_settings()
        self._check_k()
        self._check_jumprelu()
        self._check_matryoshka()
        self._check_transcoder()

    def _check_foreign_settings(self) -> None:
        """A loss-term setting changed from its default for an architecture that ignores it is
        refused: it would otherwise do nothing, silently (SAELens's per-architecture configs
        refuse such fields too)."""
        defaults = {f.name: f.default for f in fields(self)}
        for name, owners in ARCHITECTURE_SETTINGS.items():
            if self.architecture in owners or getattr(self, name) == defaults[name]:
                continue
            instead = next(
                (why for (key, archs), why in _SETTING_INSTEAD.items()
                 if key == name and self.architecture in archs),
                None,
            )  # fmt: skip
            advice = f"; {instead}" if instead else ""
            raise ConfigError(
                f"{name}={getattr(self, name)!r} is not used by {self.architecture!r} (only by "
                f"{list(owners)}), so it would do nothing{advice}. Remove it."
            )

    def _check_k(self) -> None:
        k, d_sae = self.k, self.d_sae
        if self.architecture not in TOPK_FAMILY:
            if k is not None:
                raise ConfigError(
                    f"k is only used by {list(TOPK_FAMILY)}, not {self.architecture!r}; remove it."
                )
            return
        if k is None:
            raise ConfigError(f"{self.architecture} needs k (active latents per token).")
        integral = self.architecture == "topk"
        if isinstance(k, bool) or not isinstance(k, int | float) or (integral and k != int(k)):
            kind = "an integer" if integral else "a number"
            raise ConfigError(f"k must be {kind}, got {k!r}.")
        if not 0 < k <= d_sae:
            raise ConfigError(f"k must satisfy 0 < k <= d_sae={d_sae}, got k={k:g}.")
        if integral:
            object.__setattr__(self, "k", int(k))

    def _check_jumprelu(self) -> None:
        quadratic = self.jumprelu_sparsity_loss_mode == "quadratic"
        if self.target_l0 is not None and not quadratic and self.architecture in JUMPRELU_FAMILY:
            raise ConfigError(
                f"target_l0 is only used by jumprelu_sparsity_loss_mode 'quadratic', not "
                f"{self.jumprelu_sparsity_loss_mode!r}; remove it or set the mode to quadratic."
            )
        if quadratic and self.architecture in JUMPRELU_FAMILY:
            t = self.target_l0
            if t is None or not 0 < t <= self.d_sae:
                raise ConfigError(
                    f"jumprelu_sparsity_loss_mode='quadratic' needs 0 < target_l0 <= d_sae, "
                    f"got target_l0={t!r}."
                )

    def _check_matryoshka(self) -> None:
        widths = tuple(int(w) for w in self.matryoshka_widths)
        if self.architecture != "matryoshka_batchtopk":
            if widths:
                raise ConfigError("matryoshka_widths is only used by matryoshka_batchtopk.")
            return
        if not widths:
            raise ConfigError(
                "matryoshka_batchtopk needs matryoshka_widths, e.g. [128, 512, d_sae]."
            )
        if widths[-1] != self.d_sae:
            widths = (*widths, self.d_sae)
        if any(w <= 0 for w in widths) or any(a >= b for a, b in itertools.pairwise(widths)):
            raise ConfigError(
                f"matryoshka_widths must be positive, strictly increasing and end at most at "
                f"d_sae={self.d_sae}; got {list(self.matryoshka_widths)}."
            )
        object.__setattr__(self, "matryoshka_widths", widths)

    def _check_transcoder(self) -> None:
        transcoder = self.architecture in TRANSCODERS
        if self.d_out is not None and not transcoder:
            raise ConfigError(f"d_out is only used by transcoders, not {self.architecture!r}.")
        if transcoder and self.apply_b_dec_to_input:
            raise ConfigError(
                "transcoders cannot subtract b_dec from their input (b_dec lives in the output "
                "space); set apply_b_dec_to_input to False or leave it unset."
            )
        if transcoder and self.reshape_activations == "hook_z":
            raise ConfigError(
                "transcoders cannot use reshape_activations='hook_z' (their output belongs to "
                "another hook); leave it 'auto' or set 'none'."
            )
        if transcoder and self.normalize_activations != "none":
            raise ConfigError(
                "transcoder training supports normalize_activations='none' only: input and "
                "target come from different hooks and would need separate scales."
            )

    # ------------------------------------------------------------------ derived

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    @property
    def output_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def rescale(self) -> bool:
        """Whether topk-family training ranks latents by pre-activation · decoder norm."""
        if self.architecture not in TOPK_FAMILY:
            return False
        return (
            True if self.rescale_acts_by_decoder_norm is None else self.rescale_acts_by_decoder_norm
        )

    def sae_config(self, reshape_activations: str | None = None) -> Any:
        """The `jsae.SAEConfig` of the SAE being trained (training form).

        `reshape_activations` replaces 'auto' (`TrainConfig.sae_config` resolves it from the
        hook); 'auto' with none given is "none".
        """
        from jsae.config import SAEConfig

        return SAEConfig(
            architecture=self.architecture,
            d_in=self.d_in,
            d_sae=self.d_sae,
            d_out=self.d_out,
            dtype=self.dtype,
            apply_b_dec_to_input=self.apply_b_dec_to_input,
            normalize_activations=self.normalize_activations,
            reshape_activations=(
                self.reshape_activations
                if self.reshape_activations != "auto"
                else reshape_activations or "none"
            ),
            k=self.k,
            rescale_acts_by_decoder_norm=self.rescale,
            metadata=unfreeze(self.metadata),
        )


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """How the SAE is optimised: Adam, schedules, batching, mesh, checkpoints and outputs."""

    lr: float = option(3e-4, "peak learning rate of Adam")
    adam_beta1: float = option(0.9, "Adam β1 (first-moment decay; Gemma Scope uses 0)")
    adam_beta2: float = option(0.999, "Adam β2 (second-moment decay)")
    adam_epsilon: float = option(1e-8, "Adam ε (added to sqrt(v̂), as torch.optim.Adam does)")
    max_grad_norm: float | None = option(
        1.0, "clip gradients to this global L2 norm (torch's clip_grad_norm_); None disables"
    )
    lr_scheduler_name: str = option("constant", f"one of {list(LR_SCHEDULERS)}")
    lr_warm_up_steps: int = option(0, "linear warm-up from lr/W to lr over W steps")
    lr_decay_steps: int = option(0, "final linear decay to 0 over this many steps")
    lr_end: float | None = option(
        None, "cosine schedules' minimum and the decay's start (default lr / 10)"
    )
    n_restart_cycles: int = option(1, "cosineannealingwarmrestarts: number of cycles")
    train_batch_size_tokens: int = option(4096, "activations per training step (all hosts)")
    training_tokens: int = option(2_000_000, "activations to train on (whole batches)")
    seed: int = option(42, "seeds the initialisation (and the synthetic source)")
    compute_dtype: str | None = option(
        None,
        "dtype of the forward and backward computation; None = the parameter dtype. "
        "'bfloat16' with dtype float32 is mixed precision: float32 master weights, Adam state "
        "and thresholds, bfloat16 matmuls and activations, losses reduced in float32",
    )
    weight_grad_layout: str = option(
        "auto",
        "orientation of the dense step's weight-gradient GEMMs: 'direct' (each in its "
        "parameter's layout), 'latent_rows' or 'latent_columns' (both as [d_sae, d] or "
        "[d, d_sae] products, one copied); 'auto' times them on CPU at the run's shapes once "
        "per machine (remembered in ~/.cache/jsae, or $JSAE_CACHE_DIR; JSAE_LAYOUT_CACHE=0 "
        "times every run) and keeps the fastest, recorded in checkpoints (elsewhere: "
        "'direct'). Speed only: the layouts differ by rounding",
    )
    dead_feature_window: int = option(
        1000, "a latent that has not fired for more than this many steps counts as dead"
    )
    feature_sampling_window: int = option(
        2000, "steps between resets of the firing-frequency statistics (logged at each reset)"
    )
    n_batches_for_norm_estimate: int = option(
        1000, "batches consumed to estimate the expected_average_only_in scale"
    )
    mesh: dict | None = field(
        default=None,
        metadata={"help": 'device mesh, e.g. {"data": 2, "model": 4}; None = one device'},
    )
    n_checkpoints: int = option(
        0, "checkpoints spread evenly over training (SAELens semantics), plus one at the end"
    )
    checkpoint_every_steps: int | None = option(
        None, "also checkpoint every N steps (plus one at the end)"
    )
    save_final_checkpoint: bool = option(False, "checkpoint at the end even without n_checkpoints")
    keep_checkpoints: int | None = option(None, "keep only the newest N checkpoints")
    checkpoint_path: str | None = option(
        "checkpoints", "directory of the run's checkpoints and metrics.jsonl (None: no checkpoints)"
    )
    output_path: str | None = option(
        "output", "final SAE directory in SAELens format (None: do not write it)"
    )
    overwrite_output: bool = option(False, "replace an existing output_path")
    from_pretrained_path: str | None = option(
        None,
        "start from this SAE instead of a fresh initialisation (fine-tuning): any path "
        "jsae.load reads, e.g. a SAELens-format directory; same architecture and sizes",
    )
    resume_from_checkpoint: str | None = option(
        None,
        "checkpoint directory to resume from (the newest checkpoint in it); 'auto': resume from "
        "checkpoint_path when it holds a checkpoint, else start (for jobs that are restarted)",
    )
    coordinator_address: str | None = option(
        None, "multi-host: host:port of process 0 (calls jax.distributed.initialize)"
    )
    num_processes: int | None = option(None, "multi-host: number of processes")
    process_id: int | None = option(None, "multi-host: this process's index")

    def __post_init__(self) -> None:
        _freeze_fields(self)
        refuse_nulls(self)
        _check_numbers(self)
        name = str(self.lr_scheduler_name).lower()
        if name not in LR_SCHEDULERS:
            raise ConfigError(
                f"unknown lr_scheduler_name {self.lr_scheduler_name!r}; choose one of "
                f"{list(LR_SCHEDULERS)}." + choices_hint(name, LR_SCHEDULERS)
            )
        object.__setattr__(self, "lr_scheduler_name", name)
        layouts = ("auto", *LAYOUTS)
        if self.weight_grad_layout not in layouts:
            raise ConfigError(
                f"unknown weight_grad_layout {self.weight_grad_layout!r}; choose one of "
                f"{list(layouts)}." + choices_hint(str(self.weight_grad_layout), layouts)
            )
        for name in ("checkpoint_path", "output_path", "resume_from_checkpoint"):
            if getattr(self, name) == "":  # an empty YAML string or `key=''`: none, as null is
                object.__setattr__(self, name, None)
        if self.compute_dtype is not None:
            object.__setattr__(self, "compute_dtype", canonical_dtype(self.compute_dtype))
        if self.lr_end is None:
            object.__setattr__(self, "lr_end", self.lr / 10)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")
        if not math.isfinite(self.lr_end) or self.lr_end < 0:
            raise ConfigError(f"lr_end must be >= 0, got {self.lr_end}.")
        if not self.adam_epsilon > 0:
            raise ConfigError(f"adam_epsilon must be > 0, got {self.adam_epsilon}.")
        for beta in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, beta) < 1:
                raise ConfigError(f"{beta} must be in [0, 1), got {getattr(self, beta)}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")
        for name in ("train_batch_size_tokens", "training_tokens", "n_restart_cycles",
                     "dead_feature_window", "feature_sampling_window",
                     "n_batches_for_norm_estimate"):  # fmt: skip
            _positive_int(name, getattr(self, name), required=True)
        for name in ("lr_warm_up_steps", "lr_decay_steps", "n_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        _positive_int("checkpoint_every_steps", self.checkpoint_every_steps)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        if self.training_tokens < self.train_batch_size_tokens:
            raise ConfigError(
                f"training_tokens={self.training_tokens} is less than one batch "
                f"(train_batch_size_tokens={self.train_batch_size_tokens})."
            )
        steps = self.total_steps
        if self.lr_warm_up_steps + self.lr_decay_steps > steps:
            raise ConfigError(
                f"lr_warm_up_steps + lr_decay_steps = {self.lr_warm_up_steps + self.lr_decay_steps}"
                f" exceeds the {steps} training steps."
            )
        if self.lr_decay_steps > 0 and self.lr_scheduler_name != "constant" and self.lr_end == 0:
            raise ConfigError("lr_decay_steps > 0 with lr_end = 0 would decay from 0 to 0.")
        main_steps = steps - self.lr_warm_up_steps - self.lr_decay_steps
        if self.lr_scheduler_name == "cosineannealingwarmrestarts" and (
            main_steps < self.n_restart_cycles
        ):
            raise ConfigError(
                f"cosineannealingwarmrestarts needs at least one step per cycle: {main_steps} "
                f"steps between warm-up and decay over n_restart_cycles={self.n_restart_cycles}; "
                "lower n_restart_cycles or train longer."
            )
        if self.mesh is not None:
            unknown = set(self.mesh) - {"data", "model"}
            if unknown:
                raise ConfigError(
                    f"unknown mesh axes {sorted(unknown)}; the axes are ['data', 'model']."
                )
            for axis, size in self.mesh.items():
                if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
                    raise ConfigError(f"mesh axis {axis!r} must be a positive int, got {size!r}.")
            if self.mesh.get("model") == -1:
                raise ConfigError(
                    "mesh model=-1: only the data axis can take the remaining devices (-1); give "
                    "the model axis a size, e.g. {data: -1, model: 2}."
                )
        if self.resume_from_checkpoint == "auto" and self.checkpoint_path is None:
            raise ConfigError(
                "resume_from_checkpoint='auto' resumes from checkpoint_path, which is None; set "
                "a checkpoint_path."
            )
        if self.resume_from_checkpoint is not None and self.checkpoint_path is None:
            object.__setattr__(self, "checkpoint_path", self.resume_from_checkpoint)
        if self.checkpoint_path is None:
            wanted = [
                f"{name}={getattr(self, name)!r}"
                for name, off in (
                    ("n_checkpoints", 0),
                    ("checkpoint_every_steps", None),
                    ("save_final_checkpoint", False),
                    ("keep_checkpoints", None),
                )
                if getattr(self, name) != off
            ]
            if wanted:  # None means "no checkpoints"; say that these options do nothing
                warnings.warn(
                    f"checkpoint_path is None, so no checkpoints are written: {', '.join(wanted)} "
                    "has no effect (set a checkpoint_path to checkpoint).",
                    stacklevel=2,
                )

    @property
    def total_steps(self) -> int:
        """Training steps: whole batches in training_tokens."""
        return self.training_tokens // self.train_batch_size_tokens

    @property
    def mesh_shape(self) -> tuple[int, int]:
        """(data, model) sizes as configured (-1 = all remaining devices)."""
        mesh = self.mesh or {}
        return int(mesh.get("data", 1)), int(mesh.get("model", 1))


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    """What the run reports: progress bar, local JSONL metrics, Weights & Biases."""

    log_to_wandb: bool = option(
        True, "log to wandb (offline, with one line saying so, when no credentials are set)"
    )
    wandb_project: str = option("sae_lens_training", "wandb project")
    wandb_entity: str | None = option(None, "wandb entity (team or user)")
    wandb_id: str | None = option(None, "wandb run id (resume a wandb run)")
    run_name: str | None = option(None, "run name (default: {arch}-{d_sae}-LR-{lr}-Tokens-{n})")
    wandb_log_frequency: int = option(10, "steps between metric logs (wandb and JSONL)")
    eval_every_n_wandb_logs: int = option(
        100, "metric logs between weight histograms / evaluator runs"
    )
    log_weights_to_wandb: bool = option(True, "upload the final SAE as a wandb artifact")
    wandb_dir: str | None = option(None, "directory for wandb's files (default: wandb's own)")
    metrics_path: str | None = option(
        None, "JSONL metrics file (default: <checkpoint_path>/metrics.jsonl); always written"
    )
    progress_bar: bool = option(True, "show a progress bar with tokens/s and ETA")

    def __post_init__(self) -> None:
        _freeze_fields(self)
        refuse_nulls(self)
        _check_numbers(self)
        _positive_int("wandb_log_frequency", self.wandb_log_frequency, required=True)
        _positive_int("eval_every_n_wandb_logs", self.eval_every_n_wandb_logs, required=True)


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Where activations come from when the trainer builds the source itself (CLI, no iterable).

    `activation_source` names a registered source (`jsae.training.sources.register_source`):
    "synthetic" (known sparse features in superposition) or "npy" (a directory of `.npy`
    arrays [N, d_in], read in file-name order).
    """

    activation_source: str = option(
        "synthetic",
        "registered source: synthetic | npy | model | cache (model/cache: automatic "
        "when model_name or use_cached_activations is set)",
    )
    activations_path: str | None = option(None, "npy source: directory of [N, d_in] .npy files")
    targets_path: str | None = option(
        None, "npy source, transcoders: directory of [N, d_out] target .npy files"
    )
    synthetic_n_features: int | None = option(
        None, "synthetic: number of true features (default 2 * d_in)"
    )
    synthetic_structure: str = option(
        "independent", "synthetic: independent | correlated | hierarchical feature firing"
    )
    synthetic_mean_active: float = option(
        3.0, "synthetic: mean number of true features active per activation"
    )
    synthetic_correlation: float = option(
        0.5, "synthetic correlated: strength of the shared low-rank firing correlations"
    )
    synthetic_n_parents: int = option(
        8, "synthetic hierarchical: parent features (each child fires only with its parent)"
    )
    synthetic_noise_std: float = option(0.0, "synthetic: std of isotropic Gaussian noise added")

    def __post_init__(self) -> None:
        _freeze_fields(self)
        refuse_nulls(self)
        _check_numbers(self)
        _positive_int("synthetic_n_features", self.synthetic_n_features)  # None: 2 * d_in


# ------------------------------------------------------------------------------------ the whole


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The full training configuration: `sae`, `training`, `logging` and `data` concerns."""

    sae: SAESettings
    training: TrainingSettings = field(default_factory=TrainingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: LanguageModelSettings = field(default_factory=LanguageModelSettings)

    # Nested-dict aliases: SAELens calls the logging concern "logger".
    SECTION_ALIASES: ClassVar[dict[str, str]] = {"logger": "logging"}

    def __post_init__(self) -> None:
        if self.data.activation_source == "synthetic" and (
            self.model.model_name or self.model.use_cached_activations
        ):  # a model or a cache was named: read activations from it
            source = "cache" if self.model.use_cached_activations else "model"
            object.__setattr__(
                self, "data", dataclasses.replace(self.data, activation_source=source)
            )
        sae, tr = self.sae, self.training
        data, model = tr.mesh_shape
        if model > 1 and sae.d_sae % model:
            raise ConfigError(
                f"d_sae={sae.d_sae} cannot be split over mesh model={model}; choose d_sae "
                "divisible by the model axis."
            )
        if self.model.hook_name_out is not None and not sae.is_transcoder:
            raise ConfigError(
                f"hook_name_out is the hook a transcoder writes; a {sae.architecture} SAE "
                "reconstructs hook_name itself. Remove hook_name_out, or train a transcoder."
            )
        if data > 1 and tr.train_batch_size_tokens % data:
            raise ConfigError(
                f"train_batch_size_tokens={tr.train_batch_size_tokens} cannot be split over "
                f"mesh data={data}; choose a batch divisible by the data axis."
            )
        if (
            sae.architecture in TOPK_FAMILY
            and sae.aux_loss_coefficient
            and (sae.normalize_activations in ("constant_norm_rescale", "layer_norm"))
        ):
            raise ConfigError(
                f"the AuxK loss of {sae.architecture} does not support normalize_activations="
                f"{sae.normalize_activations!r} (its reconstruction would live in normalised "
                "space while the residual does not); use 'none' or 'expected_average_only_in', "
                "or set aux_loss_coefficient=0."
            )
        if sae.architecture == "batchtopk" or sae.architecture == "matryoshka_batchtopk":
            keep = int(sae.k * tr.train_batch_size_tokens)
            if keep < 1:
                raise ConfigError(
                    f"k={sae.k} keeps no latent in a batch of {tr.train_batch_size_tokens} tokens."
                )
        if (
            sae.dtype == "float16"
            and tr.compute_dtype in (None, "float16")
            and (tr.adam_epsilon < 2**-14)
        ):
            raise ConfigError(
                f"dtype float16 keeps Adam's state in float16, where adam_epsilon="
                f"{tr.adam_epsilon:g} and small second moments round to 0, so the first step "
                "divides by zero. Train float32 parameters in float16 or bfloat16 instead "
                "(dtype: float32, compute_dtype: float16: mixed precision, float32 weights and "
                "Adam state), or raise adam_epsilon to at least 1e-4."
            )
        self._check_reshape()

    def _check_reshape(self) -> None:
        if self.sae.reshape_activations != "hook_z":
            return
        hook, head = self.sae_hook()
        if head is not None:
            raise ConfigError(
                f"reshape_activations='hook_z' is for SAEs over all heads of attn.hook_z, but "
                f"hook_head_index={head} trains on one head ([d_head] inputs); remove one of them."
            )
        if hook is not None and not hook.endswith("_z"):
            raise ConfigError(
                f"reshape_activations='hook_z' needs an attn.hook_z hook, not {hook!r} (SAELens "
                "refuses to load such an SAE); set reshape_activations to 'none'."
            )

    # ------------------------------------------------------------------ the SAE

    def sae_hook(self) -> tuple[str | None, int | None]:
        """(hook_name, hook_head_index) of the SAE: from its metadata, else the model settings."""
        meta = self.sae.metadata
        if meta.get("hook_name"):
            return meta["hook_name"], meta.get("hook_head_index")
        return self.model.hook_name, self.model.hook_head_index

    @property
    def reshape_activations(self) -> str:
        """The SAE's reshape_activations: as set, or 'hook_z' for an attn.hook_z over all heads.

        The activation store flattens all heads of attn.hook_z into [B, n_heads * d_head] rows;
        'hook_z' lets the saved SAE take the hook's own [..., n_heads, d_head] activations.
        """
        if self.sae.reshape_activations != "auto":
            return self.sae.reshape_activations
        hook, head = self.sae_hook()
        all_heads = hook is not None and hook.rsplit(".", 1)[-1] == "hook_z" and head is None
        return "hook_z" if all_heads and not self.sae.is_transcoder else "none"

    def with_model_metadata(self) -> TrainConfig:
        """This config with the SAE metadata (model_name, hook_name, context_size, ...) filled
        from the model/data settings, when the activations come from the model or its cache.

        Values already in `metadata` win (a hub id for a local model_name, say), with a warning
        where they contradict how the activations are read (hook_name, hook_head_index,
        context_size, prepend_bos, seqpos_slice): the saved SAE would be evaluated elsewhere.
        Other sources keep the metadata as given: a model's defaults (context_size,
        prepend_bos) would misdescribe activations from elsewhere.
        """
        if self.data.activation_source not in MODEL_SOURCES:
            return self
        implied, given = self.model.sae_metadata(), unfreeze(self.sae.metadata)
        read_with = ("hook_name", "hook_head_index", "hook_name_out", "hook_head_index_out")
        for key in (*read_with, "context_size", "prepend_bos", "seqpos_slice"):
            said, read = given.get(key), implied.get(key)
            listed = isinstance(said, list | tuple) and isinstance(read, list | tuple)
            if said is not None and (list(said) != list(read) if listed else said != read):
                warnings.warn(
                    f"metadata gives {key}={said!r}, but the activations are read with "
                    f"{key}={read!r}; the saved SAE will say {said!r} (and be evaluated so). "
                    f"Leave {key} out of metadata to record how it was trained.",
                    stacklevel=3,
                )
        return self.with_metadata_defaults(implied)

    def with_metadata_defaults(self, implied: Mapping[str, Any]) -> TrainConfig:
        """This config with `implied` SAE metadata filled in where `metadata` has no value
        (None values in `implied` are skipped)."""
        given = unfreeze(self.sae.metadata)
        merged = {**{k: v for k, v in implied.items() if v is not None}, **given}
        return self if merged == given else self.replace(metadata=merged)

    def sae_config(self) -> Any:
        """The `jsae.SAEConfig` of the SAE being trained (training form)."""
        return self.sae.sae_config(reshape_activations=self.reshape_activations)

    # ------------------------------------------------------------------ building

    @classmethod
    def sections(cls) -> dict[str, type]:
        """Concern name -> its dataclass."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}

    @classmethod
    def key_index(cls) -> dict[str, str]:
        """Flat field name -> concern name."""
        index: dict[str, str] = {}
        for section, section_cls in cls.sections().items():
            for f in fields(section_cls):
                if f.name in index:
                    raise AssertionError(f"field {f.name!r} appears in two concerns")
                index[f.name] = section
        return index

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a flat dict of SAELens field names, nested concerns, or a mix."""
        per_section: dict[str, dict[str, Any]] = {name: {} for name in cls.sections()}
        index = cls.key_index()
        ignored: list[str] = []
        autocast: dict[str, Any] = {}
        data = dict(data)
        nested_sae = isinstance(data.get("sae"), Mapping) and "dtype" in data["sae"]
        if nested_sae and "dtype" in data and "activation_dtype" not in data:
            # SAELens's runner layout: sae.dtype is the SAE's, the top-level dtype the
            # activation store's
            data["activation_dtype"] = data.pop("dtype")

        def put(key: str, value: Any, section: str | None = None) -> None:
            if key in IGNORED_SAELENS_KEYS:
                ignored.append(key)
                return
            if key in SAELENS_DEFAULT_ONLY_KEYS:
                default, why = SAELENS_DEFAULT_ONLY_KEYS[key]
                if value not in (default, None):
                    raise ConfigError(f"{key}={value!r} is not supported: {why}.")
                return
            if key in SAELENS_AUTOCAST_KEYS:
                autocast[key] = value
                return
            target = index.get(key)
            if target is None or (section is not None and target != section):
                where = f" in {section!r}" if section else ""
                valid = (
                    sorted(index)
                    if section is None
                    else sorted(k for k, s in index.items() if s == section)
                )
                alias = KEY_ALIASES.get(key)
                if key in KEYS_WITHOUT_COUNTERPART:
                    hint = f" {KEYS_WITHOUT_COUNTERPART[key]}."
                elif alias:
                    name, _, note = alias.partition(" ")
                    hint = f" Did you mean {name!r}{' ' + note if note else ''}?"
                else:
                    hint = choices_hint(key, valid)
                listed = "" if hint else f"; valid keys: {valid}"
                raise ConfigError(
                    f"unknown config key {key!r}{where}.{hint} Every option, with its default "
                    f"and meaning: `jsae train --list-options`{listed}."
                )
            given = per_section[target]
            if key in given and given[key] != value:
                raise ConfigError(
                    f"{key} is given twice, as {given[key]!r} and as {value!r}; keep one."
                )
            given[key] = value

        for key, value in data.items():
            section = cls.SECTION_ALIASES.get(key, key)
            if section in per_section and isinstance(value, Mapping | type(None)):
                for sub_key, sub_value in dict(value or {}).items():
                    put(sub_key, sub_value, None if section == "sae" else section)
            elif isinstance(value, _SECTION_TYPES):
                per_section[key] = {f.name: getattr(value, f.name) for f in fields(value)}
            else:
                put(key, value)
        for key, target in SAELENS_AUTOCAST_KEYS.items():  # SAELens's bfloat16 autocast
            on = _coerce(key, bool, autocast.get(key, False))  # refuses a non-boolean
            section = index[target]
            if on and per_section[section].get(target) is None:
                per_section[section][target] = "bfloat16"
        if ignored:
            warnings.warn(
                f"ignoring SAELens options with no meaning in jsae: {sorted(set(ignored))}",
                stacklevel=2,
            )
        built = {}
        for name, section_cls in cls.sections().items():
            values = _coerce_all(section_cls, per_section[name])
            try:
                built[name] = section_cls(**values)
            except TypeError as exc:  # a missing or malformed value
                raise ConfigError(f"invalid {name} config: {exc}") from None
        return cls(**built)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
        """Read a YAML (or JSON) file of flat or nested fields, with `key=value` overrides
        applied before validation (so a file may be incomplete until overridden)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must hold a mapping of config keys.")
        return cls.from_dict(_with_raw_overrides(dict(data), parse_overrides(overrides)))

    @classmethod
    def coerce(cls, config: TrainConfig | Mapping[str, Any] | str | Path) -> TrainConfig:
        """Accept a TrainConfig, a dict, or a path to a YAML file."""
        if isinstance(config, TrainConfig):
            return config
        if isinstance(config, str | Path):
            return cls.from_yaml(config)
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise ConfigError(
            f"config must be a TrainConfig, a dict or a YAML path, got {type(config).__name__}."
        )

    # ------------------------------------------------------------------ changing and writing

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat (or 'section.key') fields changed, validated again.

        Values derived from a changed field follow it unless given too: `lr_end` (lr / 10 by
        default) after `lr`, and the full-width Matryoshka level after `d_sae`.
        """
        merged = _merge(self.to_dict(), changes)
        changed = {key.rpartition(".")[2] for key in changes}
        training, sae = merged["training"], merged["sae"]
        lr_end_is_default = self.training.lr_end == self.training.lr / 10
        if "lr" in changed and "lr_end" not in changed and lr_end_is_default:
            training["lr_end"] = None  # derive it again from the new lr
        if "d_sae" in changed and "matryoshka_widths" not in changed:
            widths = list(sae.get("matryoshka_widths") or [])
            if widths and widths[-1] == self.sae.d_sae:  # the full-width level moves with d_sae
                sae["matryoshka_widths"] = widths[:-1] or [sae["d_sae"]]
        return TrainConfig.from_dict(merged)

    def with_overrides(self, overrides: Iterable[str]) -> TrainConfig:
        """Apply command-line style `key=value` overrides (values parsed as YAML)."""
        return self.replace(**parse_overrides(overrides))

    def to_dict(self, *, flat: bool = False) -> dict[str, Any]:
        """Nested by concern (default) or flat; JSON/YAML-ready."""
        nested = {
            name: {f.name: _plain(getattr(section, f.name)) for f in fields(section)}
            for name, section in ((n, getattr(self, n)) for n in self.sections())
        }
        if not flat:
            return nested
        return {k: v for section in nested.values() for k, v in section.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save_yaml(self, path: str | Path) -> None:
        """Write the config as YAML, atomically (a kill mid-write leaves the previous file)."""
        from jsae.fsutil import atomic_write_bytes

        atomic_write_bytes(path, self.to_yaml().encode())

    @property
    def run_name(self) -> str:
        return self.logging.run_name or (
            f"{self.sae.architecture}-{self.sae.d_sae}-LR-{self.training.lr}-"
            f"Tokens-{self.training.training_tokens:3.3e}"
        )


_SECTION_TYPES = (
    SAESettings,
    TrainingSettings,
    LoggingSettings,
    DataSettings,
    LanguageModelSettings,
)


def option_help() -> list[tuple[str, str, Any, str]]:
    """(concern, key, default, help) for every option, for `jsae train --list-options`."""
    rows = []
    for section, section_cls in TrainConfig.sections().items():
        for f in fields(section_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((section, f.name, default, f.metadata.get("help", "")))
    return rows


# ------------------------------------------------------------------------------------ helpers


def _positive_int(name: str, value: Any, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


@functools.cache
def _number_fields(cls: type) -> dict[str, str]:
    """{field: "int" | "float"} for the number-typed fields of a settings class."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        options = typing.get_args(hint) if _is_union(hint) else (hint,)
        options = tuple(o for o in options if o is not type(None))
        if options == (int,):
            found[name] = "int"
        elif float in options:
            found[name] = "float"
    return found


def _check_numbers(obj: Any) -> None:
    """Integers are integers and numbers finite: 2.5 warm-up steps, lr=True or a NaN coefficient
    would otherwise pass the range checks (NaN compares False) and fail mid-run."""
    for name, kind in _number_fields(type(obj)).items():
        value = getattr(obj, name)
        if value is None:  # an optional field's "none" (`refuse_nulls` refused the others)
            continue
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ConfigError(f"{name} must be an integer, got {value!r}.")
        if kind == "float" and (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{name} must be a finite number, got {value!r}.")


def _freeze_fields(obj: Any) -> None:
    """Lists become tuples and dicts FrozenDicts, so settings are hashable (static under jit)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list | dict):
            object.__setattr__(obj, f.name, freeze(value))


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["lr=1e-4", "training.seed=5"]` -> `{"lr": 1e-4, "training.seed": 5}` (YAML values)."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-4).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        changes[key.strip()] = value
    return changes


def _with_raw_overrides(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides applied to an unvalidated config dict (flat, nested or mixed): each key is
    removed wherever the file put it and appended flat (keys are unique across concerns), so
    it wins whatever the file's layout. An overridden `lr` takes `lr_end` along when the file's
    `lr_end` is the default lr / 10 (as `TrainConfig.replace` does)."""
    keys = {dotted.rpartition(".")[2] for dotted in changes}
    if "lr" in keys and "lr_end" not in keys:
        old_lr, old_end = _raw_value(data, "lr", 3e-4), _raw_value(data, "lr_end", None)
        numbers_ = [_number(v) for v in (old_lr, old_end)]
        plain = all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers_)
        if plain and math.isclose(numbers_[1], numbers_[0] / 10, rel_tol=1e-12):
            changes = {**changes, "lr_end": None}  # derive it again from the new lr
    for dotted, value in changes.items():
        _, key = _override_target(dotted)
        data.pop(key, None)
        for name, sub in list(data.items()):
            if TrainConfig.SECTION_ALIASES.get(name, name) in TrainConfig.sections() and (
                isinstance(sub, Mapping)
            ):
                data[name] = {k: v for k, v in sub.items() if k != key}
        data[key] = value
    return data


def _override_target(dotted: str) -> tuple[str, str]:
    """(concern or "", field) an override `key` or `concern.key` sets, refusing a dotted path
    into a mapping option (`mesh.data`: give the mapping whole) or an unknown concern."""
    *path, key = dotted.split(".")
    index = TrainConfig.key_index()
    for i, name in enumerate(path):
        if index.get(name) is not None:  # mesh.data, training.mesh.data, metadata.hook_name
            inner = [*path, key][i + 1]
            example = "{data: 2, model: 4}" if name == "mesh" else f"{{{inner}: ...}}"
            raise ConfigError(
                f"override {dotted!r} reaches into the mapping option {name!r}; give the mapping "
                f"whole, quoted: '{name}={example}'."
            )
    section = ".".join(path)
    section = TrainConfig.SECTION_ALIASES.get(section, section)
    if section and section not in TrainConfig.sections():
        concerns = sorted({*TrainConfig.sections(), *TrainConfig.SECTION_ALIASES})
        raise ConfigError(
            f"unknown config key {dotted!r}: {section!r} is not a concern; write {key!r} alone "
            f"or prefix it with one of {concerns}."
        )
    if section and index.get(key) not in (None, section):
        raise ConfigError(f"unknown config key {dotted!r}; {key!r} belongs to {index[key]!r}.")
    return section, key


def _raw_value(data: Mapping[str, Any], key: str, default: Any) -> Any:
    """`key`'s value in an unvalidated config dict, flat or inside a concern."""
    if key in data:
        return data[key]
    for name, sub in data.items():
        if TrainConfig.SECTION_ALIASES.get(name, name) in TrainConfig.sections() and (
            isinstance(sub, Mapping) and key in sub
        ):
            return sub[key]
    return default


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply flat or dotted changes to a nested config dict."""
    out = {k: dict(v) for k, v in base.items()}
    index = TrainConfig.key_index()
    for key, value in changes.items():
        section, name = _override_target(key)  # the dotted-path checks overrides get
        if not section:
            if name in IGNORED_SAELENS_KEYS:
                continue
            section = index.get(name)
        if section not in out or name not in index or index[name] != section:
            valid = sorted(index)
            raise ConfigError(
                f"unknown config key {key!r}; valid keys: {valid}." + choices_hint(name, valid)
            )
        out[section][name] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce_all(section_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {key: _coerce(key, hints[key], value) for key, value in values.items()}


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Convert YAML/CLI values to the declared type (e.g. '1e-3' -> 1e-3, 2e6 -> 2000000)."""
    if value is None:
        return None
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    optional = type(None) in options
    options = tuple(o for o in options if o is not type(None))
    origins = [typing.get_origin(o) or o for o in options]
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    if bool in origins and len(origins) > 1:  # a flag or something else (a list of ids)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        return value  # the field's own check decides
    if bool in origins:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        if optional and isinstance(value, str) and value.strip().lower() == "auto":
            return None
        also = " or null (automatic)" if optional else ""
        raise ConfigError(f"{key} must be true or false{also}, got {value!r}.")
    if int in origins and float not in origins:
        number = _number(value)
        if isinstance(number, float) and number.is_integer() and math.isfinite(number):
            return int(number)
        return number
    if float in origins:
        number = _number(value)
        if isinstance(number, int) and not isinstance(number, bool) and int not in origins:
            return float(number)
        return number
    if tuple in origins:
        items = value
        if isinstance(value, str):
            items = _yaml_value(key, value, "a list of integers such as [128, 512]")
        if not isinstance(items, list | tuple):
            raise ConfigError(
                f"{key} must be a list of integers such as [128, 512], got {value!r}."
            )
        numbers_ = [_number(v) for v in items]
        if not all(_is_integral(v) for v in numbers_):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}.")
        return tuple(int(v) for v in numbers_)
    if origins == [str] and not isinstance(value, str):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
            return str(value)  # output_path=2024 on the command line: YAML read a number
        raise ConfigError(
            f"{key} must be a string, got {type(value).__name__} {value!r} (quote it in YAML)."
        )
    if dict in origins and not isinstance(value, Mapping):
        example = "{data: 2, model: 4}" if key == "mesh" else "{name: value}"
        quote = f" (on the command line, quote the whole override: '{key}={example}')"
        parsed = _yaml_value(key, value, f"a mapping such as {example}{quote}")
        if not isinstance(parsed, dict):
            raise ConfigError(f"{key} must be a mapping such as {example}{quote}, got {value!r}.")
        return parsed
    return value


def _yaml_value(key: str, text: Any, what: str) -> Any:
    """A YAML-parsed option value, or a ConfigError saying what `key` should look like."""
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{key} must be {what}, got {text!r}, which is not valid YAML.") from None


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and value.is_integer()


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


__all__ = [
    "LR_SCHEDULERS",
    "TRAINABLE_ARCHITECTURES",
    "DataSettings",
    "LoggingSettings",
    "SAESettings",
    "TrainConfig",
    "TrainingSettings",
    "option_help",
]
