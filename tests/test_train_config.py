"""Training config: flat SAELens keys route to their concern, YAML round trips, CLI overrides,
and every invalid value is refused with the valid choices listed."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_reference

import jsae
from jsae.cli import main
from jsae.training.config import TrainConfig, option_help

BASE = {"architecture": "topk", "d_in": 16, "d_sae": 64, "k": 4}


def test_flat_saelens_keys_route_to_their_concern() -> None:
    config = TrainConfig.from_dict(
        {
            **BASE,
            "lr": 1e-3,
            "adam_beta1": 0.0,
            "wandb_project": "p",
            "log_to_wandb": False,
            "activation_source": "npy",
            "activations_path": "/x",
            "mesh": {"data": 2, "model": 4},
            "aux_loss_coefficient": 0.25,
            "lr_scheduler_name": "CosineAnnealing",
        }
    )
    assert config.sae.k == 4 and config.sae.aux_loss_coefficient == 0.25
    assert config.training.lr == 1e-3 and config.training.adam_beta1 == 0.0
    assert config.training.lr_scheduler_name == "cosineannealing"  # case-insensitive, as SAELens
    assert config.training.lr_end == pytest.approx(1e-4)  # SAELens default lr / 10
    assert config.training.mesh_shape == (2, 4)
    assert config.logging.wandb_project == "p" and not config.logging.log_to_wandb
    assert config.data.activation_source == "npy"
    assert config.sae.sae_config().rescale_acts_by_decoder_norm  # SAELens's training default


def test_nested_sections_saelens_logger_and_ignored_keys() -> None:
    with pytest.warns(UserWarning, match="device"):
        config = TrainConfig.from_dict(
            {
                "sae": {**BASE, "device": "cuda"},
                "logger": {"wandb_log_frequency": 5},
                "training": {"seed": 7},
                "autocast": True,
            }
        )
    assert config.logging.wandb_log_frequency == 5 and config.training.seed == 7
    assert config.training.compute_dtype == "bfloat16"  # SAELens's autocast: mixed precision
    with pytest.raises(jsae.ConfigError, match="unknown config key 'lr' in 'logging'"):
        TrainConfig.from_dict({**BASE, "logging": {"lr": 1.0}})


def test_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({**BASE, "matryoshka_widths": [], "seed": 3})
    path = tmp_path / "run.yaml"
    config.save_yaml(path)
    assert TrainConfig.from_yaml(path) == config
    changed = config.with_overrides(
        [
            "lr=1e-3",
            "training.seed=5",
            "mesh={data: 2, model: 4}",
            "training_tokens=2e6",
            "k=8",
            "rescale_acts_by_decoder_norm=false",
            "logger.wandb_entity=me",
        ]
    )
    assert changed.training.lr == 1e-3 and isinstance(changed.training.lr, float)
    assert changed.training.seed == 5
    assert changed.training.mesh == {"data": 2, "model": 4}
    assert changed.training.training_tokens == 2_000_000
    assert isinstance(changed.training.training_tokens, int)
    assert changed.sae.k == 8 and changed.sae.rescale_acts_by_decoder_norm is False
    assert changed.logging.wandb_entity == "me"
    assert changed.training.lr_end == pytest.approx(1e-4)
    assert hash(changed.sae)  # static under jit
    flat = changed.to_dict(flat=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(flat))) == changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": -1}, r"0 < k <= d_sae=64"),
        ({"k": 65}, r"0 < k <= d_sae=64, got k=65\.$"),
        ({"k": 2.5}, "k must be an integer"),
        ({"k": None}, "needs k"),
        (
            {"architecture": "topkk"},
            r"unknown architecture 'topkk'.*'standard'.*Did you mean 'topk'",
        ),
        ({"lr_scheduler_name": "cosine"}, r"unknown lr_scheduler_name 'cosine'.*'cosineannealing'"),
        ({"learning_rate": 1e-3}, r"unknown config key 'learning_rate'.*'lr'"),
        ({"normalize_activations": "unit"}, r"'expected_average_only_in'"),
        ({"jumprelu_sparsity_loss_mode": "l0"}, r"'step', 'tanh', 'quadratic'"),
        (
            {"reshape_activations": "hookz"},
            r"reshape_activations='hookz'.*\['auto', 'none', 'hook_z'\].*Did you mean 'hook_z'",
        ),
        ({"mesh": {"data": 2, "tensor": 2}}, r"unknown mesh axes \['tensor'\]"),
        ({"mesh": {"model": 3}}, "d_sae=64 cannot be split over mesh model=3"),
        ({"train_batch_size_tokens": 100, "mesh": {"data": 8}}, "divisible by the data axis"),
        ({"training_tokens": 10, "train_batch_size_tokens": 64}, "less than one batch"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"d_sae": 0}, "d_sae must be a positive integer"),
        (
            {
                "lr_warm_up_steps": 10,
                "lr_decay_steps": 10,
                "training_tokens": 64 * 15,
                "train_batch_size_tokens": 64,
            },
            "exceeds the 15 training steps",
        ),
        # numbers: integers are integers, everything finite (NaN passes every `<` check)
        ({"lr_warm_up_steps": 2.5}, "lr_warm_up_steps must be an integer, got 2.5"),
        ({"n_checkpoints": 1.5, "checkpoint_path": "c"}, "n_checkpoints must be an integer"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"lr": True}, "lr must be a finite number, got True"),
        ({"l1_coefficient": float("nan")}, "l1_coefficient must be a finite number, got nan"),
        ({"l1_coefficient": -0.5}, "l1_coefficient must be >= 0"),
        ({"lr_end": -1e-5}, "lr_end must be >= 0"),
        ({"adam_epsilon": 0.0}, "adam_epsilon must be > 0"),
        ({"lr": "fast"}, "lr must be a finite number, got 'fast'"),
        (
            {
                "lr_scheduler_name": "cosineannealingwarmrestarts",
                "n_restart_cycles": 20,
                "training_tokens": 64 * 12,
                "train_batch_size_tokens": 64,
            },
            "at least one step per cycle: 12 steps.*n_restart_cycles=20",
        ),
    ],
)
def test_invalid_values_are_refused_with_choices(change: dict, message: str) -> None:
    with pytest.raises(jsae.ConfigError, match=message):
        TrainConfig.from_dict({**BASE, **change})


MATRYOSHKA = {"architecture": "matryoshka_batchtopk", "matryoshka_widths": [16, 64]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_sparse_activations": "maybe"}, r"true or false or null \(automatic\), got 'maybe'"),
        ({"progress_bar": "nope"}, "progress_bar must be true or false, got 'nope'"),
        ({"log_to_wandb": 2}, "log_to_wandb must be true or false"),
        ({**MATRYOSHKA, "matryoshka_widths": "[a, 64]"}, "list of integers, got '\\[a, 64\\]'"),
        ({**MATRYOSHKA, "matryoshka_widths": [32.5, 64]}, "list of integers, got \\[32.5, 64\\]"),
        ({**MATRYOSHKA, "matryoshka_widths": 64}, "list of integers such as"),
        ({"mesh": "{data: 2"}, "mesh must be a mapping.*quote the whole override.*not valid YAML"),
        ({"mesh": "model:4"}, "mesh must be a mapping such as {data: 2, model: 4}"),
        ({"seqpos_slice": "[1, x]"}, "seqpos_slice must be slice arguments"),
        ({"seqpos_slice": [1, 2, 3, 4]}, "seqpos_slice must be slice arguments"),
        ({"exclude_special_tokens": ["bos"]}, "exclude_special_tokens must be"),
        ({"exclude_special_tokens": "maybe"}, "exclude_special_tokens must be true, false or"),
        ({"learning_rate": 1e-3}, "Did you mean 'lr'\\? Every option.*--list-options`\\.$"),
        ({"expansion_factor": 8}, r"Did you mean 'd_sae' \(d_in times the expansion factor\)"),
        ({"weight_decay": 0.01}, "'weight_decay'. jsae trains with Adam without weight decay"),
        ({"epochs": 3}, r"Did you mean 'training_tokens' \(a run's length is counted in tokens"),
        ({"l1": 0.5}, "Did you mean 'l1_coefficient'"),
        ({"use_chat_formatting": True}, "use_chat_formatting=True is not supported: chat"),
        ({"model_kwargs": {"output_attentions": True}}, "model_kwargs=.*not supported"),
        ({"autocast": "sometimes"}, "autocast must be true or false"),
        ({"sae": {"k": 4}, "k": 8}, "k is given twice, as [48] and as [48]; keep one"),
        ({"dtype": None}, r"dtype is empty \(null\); choose one of .*leave the key out"),
        ({"activation_dtype": None}, r"activation_dtype is empty \(null\)"),  # not float64
        # an empty YAML value is null: refused where the field takes none, not read as False
        ({"log_to_wandb": None}, r"log_to_wandb is empty \(null\), but it takes true or false"),
        ({"overwrite_output": None}, r"takes true or false; .*its default \(False\)"),
        ({"activation_source": None}, r"activation_source is empty .* default \('synthetic'\)"),
        ({"prefetch_batches": None}, r"prefetch_batches is empty \(null\), but it takes an int"),
        ({"prefetch_batches": -1}, r"prefetch_batches must be a whole number of batches"),
        ({"lr": None}, r"lr is empty \(null\), but it takes a number"),
        ({"architecture": None}, r"architecture is empty \(null\), .* default \('standard'\)"),
        ({"exclude_special_tokens": None}, r"takes true or false or a list;"),
        ({"mesh": {"model": -1}}, "only the data axis can take the remaining devices"),
        ({"mesh": {"data": -1, "model": -1}}, "only the data axis can take the remaining"),
    ],
)
def test_malformed_values_are_refused_saying_what_is_expected(change: dict, message: str) -> None:
    with pytest.raises(jsae.ConfigError, match=message):
        TrainConfig.from_dict({**BASE, **change})


def test_null_keeps_its_meaning_where_a_field_takes_it() -> None:
    """Optional fields still read null as their documented 'none'/automatic value."""
    nulls = {
        "max_grad_norm": None,  # no clipping
        "lr_end": None,  # lr / 10
        "checkpoint_path": None,  # no checkpoints
        "sequence_separator_token": None,  # documents packed without a separator
        "reshape_activations": None,  # unset: automatic
        "seqpos_slice": None,  # every position
        "metadata": None,  # nothing under `metadata:`
    }
    cfg = TrainConfig.from_dict({**BASE, **nulls})
    assert cfg.training.max_grad_norm is None
    assert cfg.training.lr_end == pytest.approx(cfg.training.lr / 10)
    assert cfg.training.checkpoint_path is None
    assert cfg.model.sequence_separator_token is None
    assert cfg.sae.reshape_activations == "auto"
    assert cfg.model.seqpos_slice == (None,)
    assert dict(cfg.sae.metadata) == {}


@pytest.fixture(scope="module")
def saelens_runner_configs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """`LanguageModelSAERunnerConfig.to_dict()` of SAELens, one per architecture."""
    out = tmp_path_factory.mktemp("runner") / "configs.json"
    run_reference("saelens_runner_configs.py", out)
    return json.loads(out.read_text())


def test_configs_saved_by_saelens_load_with_saelens_meaning(saelens_runner_configs) -> None:
    """Every field of a SAELens runner config that jsae has takes SAELens's value; its two
    dtypes keep their meanings (sae.dtype the SAE's, the top-level one the activations'), and
    autocast turns on bfloat16 mixed precision. The keys SAELens writes for features jsae does
    not have load at their defaults."""
    index = TrainConfig.key_index()
    assert len(saelens_runner_configs) == 6
    for saved in saelens_runner_configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torch-only keys are named in a warning
            config = TrainConfig.from_dict(saved)
        runner = {k: v for k, v in saved.items() if k not in ("sae", "logger", "dtype")}
        fields_ = {**runner, **saved["logger"], **saved["sae"]}
        compared = 0
        for key, value in fields_.items():
            if key not in index or key == "metadata":
                continue
            got = getattr(getattr(config, index[key]), key)
            as_list = list(got) if isinstance(got, tuple) else got
            assert as_list == value, (saved["sae"]["architecture"], key, value, got)
            compared += 1
        assert compared >= 45
        assert config.sae.dtype == saved["sae"]["dtype"] == "float32"
        assert config.model.activation_dtype == saved["dtype"] == "bfloat16"
        assert saved["autocast"] is True and config.training.compute_dtype == "bfloat16"


def test_boolean_options_take_yaml_spellings_and_auto() -> None:
    config = TrainConfig.from_dict(
        {**BASE, "progress_bar": "off" == "x", "log_to_wandb": "no", "streaming": 1,
         "use_sparse_activations": "auto"}
    )  # fmt: skip
    assert config.logging.progress_bar is False and config.logging.log_to_wandb is False
    assert config.model.streaming is True and config.sae.use_sparse_activations is None


def _owners() -> list[tuple[str, str, object]]:
    """(setting, an architecture that does not read it, a non-default value) per setting."""
    from jsae.training.config import ARCHITECTURE_SETTINGS, TRAINABLE_ARCHITECTURES

    values = {
        "jumprelu_sparsity_loss_mode": "tanh",
        "rescale_acts_by_decoder_norm": False,
        "use_sparse_activations": True,
        "gated_detach_aux_decoder": True,
        "jumprelu_ste_to_input": True,
        "use_matryoshka_aux_loss": True,
        "target_l0": 10.0,
        "pre_act_loss_coefficient": 1e-6,
        "topk_threshold_lr": 0.5,
    }
    cases = []
    for name, owners in ARCHITECTURE_SETTINGS.items():
        for arch in TRAINABLE_ARCHITECTURES:
            if arch not in owners:
                cases.append((name, arch, values.get(name, 3)))
    return cases


@pytest.mark.parametrize(("name", "architecture", "value"), _owners())
def test_another_architectures_setting_is_refused_not_ignored(
    name: str, architecture: str, value: object
) -> None:
    """Every loss-term setting changed from its default for an architecture whose loss does
    not read it is refused; at its default (as jsae and SAELens write every config) it passes."""
    config = {"d_in": 16, "d_sae": 64, "architecture": architecture}
    if architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
        config["k"] = 4
    if architecture == "matryoshka_batchtopk":
        config["matryoshka_widths"] = [16, 64]
    with pytest.raises(jsae.ConfigError, match=f"{name}=.* is not used by '{architecture}'"):
        TrainConfig.from_dict({**config, name: value})
    default = next(
        f.default for f in dataclasses.fields(jsae.training.SAESettings) if f.name == name
    )
    TrainConfig.from_dict({**config, name: default})


@pytest.mark.parametrize(
    ("architecture", "name", "advice"),
    [
        ("jumprelu", "l1_coefficient", "its sparsity coefficient is l0_coefficient"),
        ("jumprelu", "l1_warm_up_steps", "its sparsity warm-up is l0_warm_up_steps"),
        ("standard", "l0_coefficient", "its sparsity coefficient is l1_coefficient"),
        ("topk", "l1_coefficient", "k sets its sparsity"),
    ],
)
def test_a_carried_over_sparsity_setting_names_the_right_one(
    architecture: str, name: str, advice: str
) -> None:
    config = {"d_in": 16, "d_sae": 64, "architecture": architecture, name: 2}
    if architecture == "topk":
        config["k"] = 4
    with pytest.raises(jsae.ConfigError, match=advice):
        TrainConfig.from_dict(config)


def test_target_l0_outside_quadratic_mode_is_refused() -> None:
    config = {"d_in": 16, "d_sae": 64, "architecture": "jumprelu", "target_l0": 8.0}
    with pytest.raises(jsae.ConfigError, match="only used by jumprelu_sparsity_loss_mode 'quad"):
        TrainConfig.from_dict(config)
    TrainConfig.from_dict({**config, "jumprelu_sparsity_loss_mode": "quadratic"})


def test_dtype_spellings_are_stored_by_their_name_and_empty_metadata_is_none() -> None:
    """'torch.float16' is float16 to every check (the float16-Adam refusal included), and a YAML
    `metadata:` with nothing under it is no metadata."""
    config = TrainConfig.from_dict({**BASE, "dtype": "torch.bfloat16", "metadata": None})
    assert config.sae.dtype == "bfloat16"
    assert dict(config.sae.metadata) == {}
    assert config.sae_config().dtype == "bfloat16"
    with pytest.raises(jsae.ConfigError, match="dtype float16 keeps Adam's state in float16"):
        TrainConfig.from_dict({**BASE, "dtype": "torch.float16"})


def test_float16_parameters_with_an_epsilon_float16_rounds_to_zero_are_refused() -> None:
    with pytest.raises(jsae.ConfigError, match="compute_dtype: float16: mixed precision"):
        TrainConfig.from_dict({**BASE, "dtype": "float16"})
    TrainConfig.from_dict({**BASE, "dtype": "float16", "adam_epsilon": 1e-4})
    TrainConfig.from_dict({**BASE, "dtype": "float16", "compute_dtype": "bfloat16"})
    TrainConfig.from_dict({**BASE, "compute_dtype": "float16"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "standard", "k": 4}, "k is only used by"),
        (
            {"architecture": "matryoshka_batchtopk", "k": 4, "matryoshka_widths": [32, 16]},
            "strictly increasing",
        ),
        ({"architecture": "jumprelu", "jumprelu_sparsity_loss_mode": "quadratic"}, "target_l0"),
        ({"architecture": "transcoder", "apply_b_dec_to_input": True}, "b_dec"),
        ({"architecture": "standard", "d_out": 4}, "d_out is only used by transcoders"),
        ({"architecture": "topk", "k": 4, "normalize_activations": "layer_norm"}, "AuxK"),
        ({"architecture": "transcoder", "reshape_activations": "hook_z"}, "hook_z"),
        (
            {"reshape_activations": "hook_z", "hook_name": "blocks.1.hook_resid_pre"},
            "needs an attn.hook_z hook",
        ),
        (
            {
                "reshape_activations": "hook_z",
                "hook_name": "blocks.1.attn.hook_z",
                "hook_head_index": 2,
            },
            "trains on one head",
        ),
    ],
)
def test_contradictory_architecture_settings_are_refused(config: dict, message: str) -> None:
    with pytest.raises(jsae.ConfigError, match=message):
        TrainConfig.from_dict({"d_in": 16, "d_sae": 64, **config})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "none"),
        ({"hook_name": "blocks.1.attn.hook_z"}, "hook_z"),  # the store flattens all heads
        ({"metadata": {"hook_name": "blocks.1.attn.hook_z"}}, "hook_z"),
        ({"hook_name": "blocks.1.attn.hook_z", "hook_head_index": 0}, "none"),  # one head
        ({"hook_name": "blocks.1.hook_resid_pre"}, "none"),
        ({"hook_name": "blocks.1.attn.hook_z", "reshape_activations": "none"}, "none"),
        ({"reshape_activations": "hook_z"}, "hook_z"),
        ({"hook_name": "blocks.1.attn.hook_z", "reshape_activations": None}, "hook_z"),
        ({"architecture": "transcoder", "hook_name": "blocks.1.attn.hook_z"}, "none"),
    ],
)
def test_reshape_activations_is_set_or_follows_the_hook(config: dict, expected: str) -> None:
    base = {"architecture": "standard", "d_in": 16, "d_sae": 64}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a SAELens key jsae uses, not one it ignores
        built = TrainConfig.from_dict({**base, **config})
    assert built.reshape_activations == expected
    assert built.sae_config().reshape_activations == expected
    again = TrainConfig.from_dict(yaml.safe_load(built.to_yaml()))
    assert again.sae_config().reshape_activations == expected


def test_every_option_is_documented() -> None:
    rows = option_help()
    assert len(rows) == len(TrainConfig.key_index()) > 60
    for concern, key, _, text in rows:
        assert len(text) > 10, f"{concern}.{key} has no documentation"


# ------------------------------------------------------------------------------------- CLI


def test_cli_print_config_and_list_options(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["train", "--config", str(path), "lr=2e-4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["lr"] == 2e-4 and printed["sae"]["k"] == 4
    assert main(["train", "--list-options"]) == 0
    listing = capsys.readouterr().out
    assert "jumprelu_bandwidth" in listing and "[training]" in listing
    assert main(["train", "--config", str(path), "lr_scheduler_name=cosine"]) == 2
    assert "unknown lr_scheduler_name" in capsys.readouterr().err
    # --resume continues from checkpoint_path: without one there is nothing to resume
    assert main(["train", "--config", str(path), "checkpoint_path=null", "--resume"]) == 2
    assert "--resume continues from checkpoint_path, which is null" in capsys.readouterr().err
    # a path YAML reads as a number is a directory name; other types are refused
    numbered = TrainConfig.from_dict({**BASE, "output_path": 2024, "checkpoint_path": 7})
    assert (numbered.training.output_path, numbered.training.checkpoint_path) == ("2024", "7")
    with pytest.raises(jsae.ConfigError, match="output_path must be a string, got list"):
        TrainConfig.from_dict({**BASE, "output_path": ["a"]})
    # `python -m jsae` is the same command
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "jsae", "train", "--list-options"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout == listing, proc.stderr[-2000:]


def test_cli_trains_from_npy_activations(tmp_path: Path, capsys) -> None:
    """`jsae train` end to end on a directory of .npy activations (the npy source)."""
    rng = np.random.default_rng(0)
    acts = tmp_path / "acts"
    acts.mkdir()
    for i in range(3):
        np.save(acts / f"part{i}.npy", rng.normal(size=(100, 8)).astype(np.float32))
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": "standard",
                "d_in": 8,
                "d_sae": 32,
                "train_batch_size_tokens": 50,
                "training_tokens": 250,
                "activation_source": "npy",
                "activations_path": str(acts),
                "log_to_wandb": False,
                "progress_bar": False,
            }
        )
    )
    out, ckpt = tmp_path / "sae", tmp_path / "ckpt"
    argv = ["train", "-c", str(path), f"output_path={out}", f"checkpoint_path={ckpt}"]
    assert main(argv) == 0
    assert "250 tokens" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} >= {
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "training_config.yaml",
        "training_config.json",
        "metrics.jsonl",
    }
    sae = jsae.load(out)
    assert sae.cfg.d_in == 8 and jsae.load_log_sparsity(out).shape == (32,)
    assert TrainConfig.from_yaml(out / "training_config.yaml").training.training_tokens == 250
    assert main(argv) == 2  # the output exists: refused before training
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "training_tokens=100"]) == 0


def test_checkpoint_options_without_a_checkpoint_path_say_they_do_nothing() -> None:
    with pytest.warns(UserWarning, match=r"no checkpoints are written: n_checkpoints=3"):
        TrainConfig.from_dict({**BASE, "checkpoint_path": None, "n_checkpoints": 3})
    with pytest.warns(UserWarning, match=r"no checkpoints are written: n_checkpoints=2"):
        config = TrainConfig.from_dict({**BASE, "checkpoint_path": "", "n_checkpoints": 2})
    assert config.training.checkpoint_path is None  # an empty path is no path
    with pytest.raises(jsae.ConfigError, match="synthetic_n_features must be a positive integer"):
        TrainConfig.from_dict({**BASE, "synthetic_n_features": 0})


def test_derived_values_follow_the_field_they_derive_from() -> None:
    """lr_end (lr / 10 unless given) follows an overridden lr; the full-width Matryoshka level
    follows an overridden d_sae; values given explicitly stay."""
    base = {**BASE, "architecture": "matryoshka_batchtopk", "matryoshka_widths": [16, 32]}
    config = TrainConfig.from_dict(base)
    assert config.with_overrides(["lr=1e-4"]).training.lr_end == pytest.approx(1e-5)
    assert config.replace(**{"training.lr": 1e-3}).training.lr_end == pytest.approx(1e-4)
    assert config.replace(lr_end=5e-6).replace(lr=1e-2).training.lr_end == 5e-6
    assert config.replace(d_sae=128).sae.matryoshka_widths == (16, 32, 128)
    one_level = TrainConfig.from_dict({**base, "matryoshka_widths": [64]})
    assert one_level.replace(d_sae=128).sae.matryoshka_widths == (128,)


def test_a_cli_lr_takes_a_written_default_lr_end_along(tmp_path: Path) -> None:
    """A file written by --print-config (or SAELens) holds lr_end = lr / 10 explicitly; an
    overridden lr derives it again, as `replace` does. A different lr_end in the file stays."""
    path = tmp_path / "run.yaml"
    path.write_text(TrainConfig.from_dict({**BASE, "lr": 3e-4}).to_yaml())
    assert yaml.safe_load(path.read_text())["training"]["lr_end"] == pytest.approx(3e-5)
    config = TrainConfig.from_yaml(path, ["lr=1e-3"])
    assert config.training.lr_end == pytest.approx(1e-4)
    path.write_text(TrainConfig.from_dict({**BASE, "lr": 3e-4, "lr_end": 1e-6}).to_yaml())
    assert TrainConfig.from_yaml(path, ["lr=1e-3"]).training.lr_end == 1e-6
    assert TrainConfig.from_yaml(path, ["lr=1e-3", "lr_end=2e-6"]).training.lr_end == 2e-6


def test_saelens_autocast_switches_set_mixed_precision_unless_given() -> None:
    config = TrainConfig.from_dict({**BASE, "autocast": True, "autocast_lm": True})
    assert (config.training.compute_dtype, config.model.model_dtype) == ("bfloat16", "bfloat16")
    config = TrainConfig.from_dict({**BASE, "autocast": True, "compute_dtype": "float32"})
    assert config.training.compute_dtype == "float32"  # the jsae option, given, wins
    config = TrainConfig.from_dict({**BASE, "autocast": False, "autocast_lm": False})
    assert (config.training.compute_dtype, config.model.model_dtype) == (None, "float32")


def test_a_transcoder_on_a_model_without_its_target_hook_is_refused_up_front() -> None:
    """A transcoder on a model needs the hook it writes (hook_name_out): refused before the
    model is loaded (gpt2 is not on this machine); pairs passed in train, as for any SAE given
    its activations (they used to be refused too)."""
    config = {
        "architecture": "transcoder",
        "d_in": 16,
        "d_sae": 64,
        "d_out": 16,
        "model_name": "gpt2",
        "hook_name": "blocks.0.hook_resid_mid",
        "train_batch_size_tokens": 32,
        "training_tokens": 64,
        "output_path": None,
        "checkpoint_path": None,
        "log_to_wandb": False,
        "progress_bar": False,
    }
    for build in (jsae.train, jsae.Trainer):
        with pytest.raises(jsae.ConfigError, match=r"set hook_name_out to the hook it writes"):
            build(config)
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(32, 16)).astype(np.float32),) * 2 for _ in range(2)]
    sae = jsae.train(config, pairs)
    assert sae.cfg.architecture == "transcoder" and sae.cfg.d_out == 16


def test_cli_overrides_complete_a_file_before_it_is_validated(tmp_path: Path, capsys) -> None:
    """A file may be incomplete until overridden (here: no batch size, so its 1024 tokens are
    less than the default 4096-token batch); an override wins wherever the file put the key."""

    path = tmp_path / "run.yaml"
    path.write_text("training:\n  training_tokens: 1024\n  lr: 0.001\nd_in: 8\nd_sae: 16\n")
    assert main(["train", "--config", str(path), "train_batch_size_tokens=32", "lr=0.01",
                 "--print-config"]) == 0  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)["training"]
    assert (printed["train_batch_size_tokens"], printed["lr"]) == (32, 0.01)
    assert printed["lr_end"] == pytest.approx(0.001)  # derived from the overridden lr
    assert main(["train", "--config", str(path), "--print-config"]) != 0
    assert "less than one batch" in capsys.readouterr().err
    assert main(["train", "train_batch_size_tokens=32", f"--config={path}", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["training"]["train_batch_size_tokens"] == 32


@pytest.mark.parametrize("with_file", [False, True])
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.d_in=16", "'d_in' belongs to 'sae'"),
        ("nope.lr=0.1", "'nope' is not a concern; write 'lr' alone or prefix it with one of"),
        ("mesh.data=2", "reaches into the mapping option 'mesh'.*'mesh=\\{data: 2, model: 4\\}'"),
        ("training.mesh.data=2", "reaches into the mapping option 'mesh'"),
        ("metadata.hook_name=h", "mapping option 'metadata'.*'metadata=\\{hook_name: ...\\}'"),
    ],
)
def test_cli_dotted_overrides_are_checked_with_or_without_a_file(
    tmp_path: Path, capsys, with_file: bool, override: str, message: str
) -> None:
    """A dotted key names its concern, and only a concern: `mesh.data=2` used to be read as the
    `data` concern (dropping a file's data section), and without --config every prefix was
    dropped (`metadata.hook_name` set the model's hook_name)."""
    path = tmp_path / "run.yaml"
    path.write_text("d_in: 8\nd_sae: 16\ndata:\n  synthetic_n_features: 40\n")
    given = ["--config", str(path)] if with_file else ["d_in=8", "d_sae=16"]
    assert main(["train", *given, override, "--print-config"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["train", *given, "sae.k=4", "architecture=topk", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sae"]["k"] == 4
    assert printed["data"]["synthetic_n_features"] == (40 if with_file else None)


def test_cli_help_after_the_overrides_prints_the_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "lr=1e-3", "--help"])
    assert exit_.value.code == 0
    assert "usage: jsae train" in capsys.readouterr().out


def test_metadata_that_contradicts_how_activations_are_read_draws_a_warning() -> None:
    """Given metadata wins (a hub id for a local model path is a fair label), but a hook or
    context other than the one read would make later evals run elsewhere: say so."""
    base = {"d_in": 16, "d_sae": 32, "model_name": "/models/gpt2", "context_size": 16,
            "hook_name": "blocks.0.hook_resid_post"}  # fmt: skip
    config = TrainConfig.from_dict(
        {**base, "metadata": {"hook_name": "blocks.1.hook_resid_post", "context_size": 8}}
    )
    with pytest.warns(UserWarning) as caught:
        labelled = config.with_model_metadata()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert (
        "metadata gives context_size=8, but the activations are read with context_size=16"
        in (messages[0])
    )
    assert "hook_name='blocks.1.hook_resid_post'" in messages[1]
    assert labelled.sae.metadata["hook_name"] == "blocks.1.hook_resid_post"  # it still wins
    relabelled = TrainConfig.from_dict(
        {**base, "metadata": {"model_name": "gpt2", "seqpos_slice": [None]}}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert relabelled.with_model_metadata().sae.metadata["model_name"] == "gpt2"
