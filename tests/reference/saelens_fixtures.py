"""Runs in the reference environment (torch + sae-lens): the oracle side of the parity tests.

    python saelens_fixtures.py write OUT_DIR    SAEs of every architecture, with inputs and outputs
    python saelens_fixtures.py check DIR        load jsae-written SAEs with SAELens, record outputs

`write` makes, for each case, OUT_DIR/<case>/sae (saved by SAELens) and
OUT_DIR/<case>/io.safetensors holding the inputs and SAELens's encode / decode / forward
outputs (and, where SAELens supports it, the outputs after fold_W_dec_norm and
fold_activation_norm_scaling_factor). Every parameter is random and non-trivial; thresholds
and biases make some latents fire and some never do.

`check` reads DIR/<case>/sae (written by jsae) and DIR/<case>/inputs.safetensors, and writes
DIR/<case>/saelens_outputs.safetensors.
"""

import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
torch.manual_seed(0)

import sae_lens
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    Transcoder,
    TranscoderConfig,
)

D_IN, D_SAE, D_OUT, BATCH = 24, 96, 20, 33
N_HEADS, D_HEAD = 4, 6  # hook_z: N_HEADS * D_HEAD == D_IN


def randomize(sae, *, threshold=True):
    """Every parameter random; thresholds near the pre-activation median; some dead latents."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name.startswith("W") else 0.2))
        if hasattr(sae, "r_mag"):
            sae.r_mag.copy_(torch.randn_like(sae.r_mag) * 0.3)
        # latents 0..7 never fire: a large negative encoder bias
        for bias in ("b_enc", "b_gate", "b_mag"):
            if getattr(sae, bias, None) is not None:
                getattr(sae, bias)[:8] = -50.0
        if threshold and hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.6)
    return sae


def inputs(shape):
    return torch.randn(*shape) * 1.5 + 0.3


def record(sae, x, out_dir, *, transcoder=False, fold=True, scale=True):
    """Save the SAE with SAELens and its outputs on x."""
    out_dir.mkdir(parents=True)
    sae.save_model(out_dir / "sae")
    tensors = {"x": x.contiguous()}
    with torch.no_grad():
        f = sae.encode(x)
        tensors["feature_acts"] = f
        tensors["recon"] = sae.decode(f)
        tensors["forward"] = sae(x)
        if not transcoder:
            sae.use_error_term = True
            tensors["forward_error_term"] = sae(x)
            sae.use_error_term = False
        if fold:
            folded = SAE.load_from_disk(out_dir / "sae")
            folded.fold_W_dec_norm()
            tensors["folded_feature_acts"] = folded.encode(x)
            tensors["folded_forward"] = folded(x)
            tensors["folded_W_dec"] = folded.W_dec.detach()
        if scale:
            scaled = SAE.load_from_disk(out_dir / "sae")
            scaled.fold_activation_norm_scaling_factor(2.5)
            tensors["scaled_feature_acts"] = scaled.encode(x)
            tensors["scaled_forward"] = scaled(x)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "io.safetensors")


def record_training(train_sae, x, out_dir):
    """A training SAE: its raw checkpoint (save_model) and the inference model it exports."""
    out_dir.mkdir(parents=True)
    train_sae.save_model(out_dir / "checkpoint")
    train_sae.save_inference_model(out_dir / "sae")
    inference = SAE.load_from_disk(out_dir / "sae")
    with torch.no_grad():
        f = inference.encode(x)
        tensors = {"x": x, "feature_acts": f, "recon": inference.decode(f), "forward": inference(x)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "io.safetensors")
    (out_dir / "inference_architecture.txt").write_text(inference.cfg.architecture())


def write(out: Path):
    x = inputs((BATCH, D_IN))
    cases = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "standard_no_bdec": StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
        ),
        "standard_constant_norm": StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="constant_norm_rescale")
        ),
        "standard_layer_norm": StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm")
        ),
        "standard_expected_average": StandardSAE(
            StandardSAEConfig(
                d_in=D_IN, d_sae=D_SAE, normalize_activations="expected_average_only_in"
            )
        ),
        "gated": GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "jumprelu_layer_norm": JumpReLUSAE(
            JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm")
        ),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=7)),
        "topk_rescale": TopKSAE(
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=7, rescale_acts_by_decoder_norm=True)
        ),
    }
    for name, sae in cases.items():
        randomize(sae)
        fold = name != "topk"  # SAELens refuses to fold a non-rescaled TopK SAE
        # A dataset scale cannot be folded into per-token-normalising SAEs (jsae refuses;
        # SAELens rewrites the config but keeps normalising), so no reference for those.
        scale = not name.endswith(("constant_norm", "layer_norm"))
        record(sae, x, out / name, fold=fold, scale=scale)

    # hook_z: inputs are [batch, n_heads, d_head]
    meta = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.3.attn.hook_z")
    hz = randomize(
        StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, reshape_activations="hook_z", metadata=meta)
        )
    )
    record(hz, inputs((BATCH, N_HEADS, D_HEAD)), out / "standard_hook_z")

    transcoders = {
        "transcoder": Transcoder(
            TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "skip_transcoder": SkipTranscoder(
            SkipTranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "jumprelu_transcoder": JumpReLUTranscoder(
            JumpReLUTranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False
            )
        ),
        "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(
            JumpReLUSkipTranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False
            )
        ),
    }
    for name, sae in transcoders.items():
        randomize(sae)
        record(sae, x, out / name, transcoder=True, fold=True, scale=False)

    # Training SAEs: checkpoints in their training form, and the inference models they export.
    btk = randomize(BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6)))
    btk.topk_threshold = torch.tensor(0.45, dtype=torch.double)
    record_training(btk, x, out / "train_batchtopk")
    mat = randomize(
        MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=D_IN, d_sae=D_SAE, k=6, matryoshka_widths=[16, 48, D_SAE]
            )
        )
    )
    mat.topk_threshold = torch.tensor(0.3, dtype=torch.double)
    record_training(mat, x, out / "train_matryoshka_batchtopk")
    tk = randomize(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5)))
    record_training(tk, x, out / "train_topk")
    jr = randomize(JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)))
    record_training(jr, x, out / "train_jumprelu")

    # A pre-6.0 config (SAELens 3.x layout) with legacy keys; SAELens converts it on load.
    legacy_dir = out / "legacy_v3"
    legacy = randomize(StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)))
    record(legacy, x, legacy_dir, fold=False, scale=False)
    legacy_cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.2.hook_resid_pre",
        "hook_point_layer": 2,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
        "context_size": 128,
        "expansion_factor": D_SAE // D_IN,
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "sae_lens_training_version": "3.1.0",
        "dataset_path": "Skylion007/openwebtext",
    }
    (legacy_dir / "sae" / "cfg.json").write_text(json.dumps(legacy_cfg))
    reloaded = SAE.load_from_disk(legacy_dir / "sae")
    with torch.no_grad():
        assert torch.equal(reloaded.encode(x), legacy.encode(x))
    (out / "VERSION").write_text(sae_lens.__version__)


def check(root: Path):
    for case in sorted(p for p in root.iterdir() if (p / "sae").is_dir()):
        sae = SAE.load_from_disk(case / "sae")
        x = load_file(case / "inputs.safetensors")["x"]
        with torch.no_grad():
            f = sae.encode(x)
            out = {
                "feature_acts": f,
                "recon": sae.decode(f),
                "forward": sae(x),
            }
        out = {k: v.contiguous() for k, v in out.items()}
        save_file(out, case / "saelens_outputs.safetensors")
        (case / "saelens_class.txt").write_text(type(sae).__name__)


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    {"write": write, "check": check}[command](path)
