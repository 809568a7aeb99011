"""Runs in the reference environment: SAELens's eval metrics on inputs jsae evaluates too.

    python saelens_evals.py metrics DIR
    python saelens_evals.py end2end DIR

`metrics`: DIR/sae is an SAE directory (SAELens format, written by jsae); DIR/inputs.npz holds
`acts` [n_batches, B, T, d_in], `tokens` [n_batches, B, T], `ignore` (token ids to exclude),
and `clean_logits`, `new_logits` [B, T, V], `ce_tokens` [B, T]. SAELens's own
`get_sparsity_and_variance_metrics` runs on those activations (handed to it through the model
and store interfaces it calls: `run_with_cache` returns the given activations and
`get_batch_tokens` the given tokens), `get_featurewise_weight_based_metrics` on the SAE, and
`_kl` and TransformerLens's `lm_cross_entropy_loss` on the logits. Writes DIR/outputs.json
(scalar and per-latent metrics) and DIR/outputs.npz (`kl`, `ce`).

`end2end`: DIR/spec.json names a tokenizer directory, a JSON-lines text dataset and the eval
settings. A random GPT-2 (PyTorch transformers) is saved to DIR/model (safetensors, plus the
tokenizer files), the same weights are loaded into a TransformerLens HookedTransformer, a
random SAELens SAE per case (hook_name, hook_head_index) is saved to DIR/sae_<i>, and
SAELens's `run_evals` (every metric, exclude_special_tokens=True) runs on an
`ActivationsStore.from_sae` over the dataset. Writes DIR/outputs.json: per case the metrics,
the per-latent metrics and the token batches used.

`transcoders`: after `end2end` in the same DIR, random SAELens transcoders (DIR/spec.json
`transcoder_cases`: architecture, hook_name[/head] in, hook_name_out[/head] out) are saved to
DIR/transcoder_<i> and evaluated by SAELens's own `run_evals` at their output hook, through
`TranscoderAtOutput`: an SAE whose `encode` ignores the activation it is given and encodes the
transcoder's input, captured by a permanent TransformerLens hook at the input hook during the
same forward pass. So the spliced forward, the zero ablation, the masks and every formula are
SAELens's and TransformerLens's. Writes DIR/transcoder_outputs.json.
"""

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from sae_lens import SAE
from sae_lens.evals import (
    _kl,
    get_featurewise_weight_based_metrics,
    get_sparsity_and_variance_metrics,
)
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens.utils import lm_cross_entropy_loss


class GivenActivations:
    """The two calls SAELens's metric code makes, answered from arrays (batch by batch)."""

    def __init__(self, hook_name, acts, tokens):
        self.hook_name, self.acts, self.tokens = hook_name, acts, tokens
        self.i_acts = self.i_tokens = 0

    def get_batch_tokens(self, batch_size=None):
        out = torch.as_tensor(self.tokens[self.i_tokens], dtype=torch.long)
        self.i_tokens += 1
        return out

    def run_with_cache(self, tokens, **kwargs):
        out = torch.as_tensor(self.acts[self.i_acts])
        self.i_acts += 1
        return None, {self.hook_name: out}


def metrics(directory):
    directory = Path(directory)
    sae = SAE.load_from_disk(str(directory / "sae"))
    data = np.load(directory / "inputs.npz")
    acts, tokens = data["acts"], data["tokens"]
    given = GivenActivations(sae.cfg.metadata.hook_name, acts, tokens)
    ignore = [int(t) for t in data["ignore"]]
    scalars, features = get_sparsity_and_variance_metrics(
        sae,
        given,
        given,
        ActivationScaler(),
        n_batches=len(acts),
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=acts.shape[1],
        model_kwargs={},
        ignore_tokens=ignore or None,
    )
    features.update(get_featurewise_weight_based_metrics(sae))
    clean = torch.as_tensor(data["clean_logits"])
    new = torch.as_tensor(data["new_logits"])
    kl = _kl(clean, new)
    ce = lm_cross_entropy_loss(
        clean, torch.as_tensor(data["ce_tokens"], dtype=torch.long), per_token=True
    )
    (directory / "outputs.json").write_text(json.dumps({"scalars": scalars, "features": features}))
    np.savez(directory / "outputs.npz", kl=kl.numpy(), ce=ce.numpy())


def tiny_hooked_gpt2(hf, tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        n_layers=c.n_layer,
        n_ctx=c.n_positions,
        d_vocab=c.vocab_size,
        d_mlp=4 * c.n_embd,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        device="cpu",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    state = convert_gpt2_weights(hf, cfg)
    state["unembed.b_U"] = torch.zeros(c.vocab_size)
    model.load_state_dict(state, strict=False)
    return model


def recording_store(model, sae, dataset, spec):
    """(SAELens's ActivationsStore for `sae`, the list its token batches are recorded in)."""
    from sae_lens.training.activations_store import ActivationsStore

    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset,
        context_size=spec["context_size"],
        streaming=False,
        store_batch_size_prompts=spec["batch_size_prompts"],
    )
    batches = []
    original = store.get_batch_tokens

    def recording(batch_size=None, **kw):
        out = original(batch_size, **kw)
        batches.append(out.tolist())
        return out

    store.get_batch_tokens = recording
    return store, batches


def end2end(directory):
    import shutil

    from datasets import load_dataset
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.activation_scaler import ActivationScaler
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    spec = json.loads((directory / "spec.json").read_text())
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    config = GPT2Config(
        n_layer=2,
        n_embd=spec["d_model"],
        n_head=4,
        vocab_size=len(tokenizer),
        n_positions=spec["n_positions"],
    )
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger weights than the default init, so the model is not ~uniform
        for p in hf.parameters():
            p.mul_(spec["weight_scale"])
    hf.save_pretrained(directory / "model")
    for f in Path(spec["tokenizer"]).iterdir():  # tokenizer files as jsae's transformers wrote them
        shutil.copy(f, directory / "model" / f.name)
    model = tiny_hooked_gpt2(hf, tokenizer)
    dataset = load_dataset("json", data_files=spec["data_files"], split="train")
    results = []
    for i, case in enumerate(spec["cases"]):
        torch.manual_seed(spec["seed"] + 1 + i)
        meta = {
            "hook_name": case["hook_name"],
            "hook_head_index": case["hook_head_index"],
            "context_size": spec["context_size"],
            "prepend_bos": True,
        }
        sae = StandardSAE(
            StandardSAEConfig(d_in=case["d_in"], d_sae=case["d_sae"], metadata=SAEMetadata(**meta))
        )
        with torch.no_grad():
            sae.W_dec.normal_(0, case["w_scale"])
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.normal_(-0.2, 0.1)
            sae.b_dec.normal_(0, 0.05)
        sae.save_model(str(directory / f"sae_{i}"))
        store, batches = recording_store(model, sae, dataset, spec)
        cfg = get_eval_everything_config(
            batch_size_prompts=spec["batch_size_prompts"],
            n_eval_reconstruction_batches=spec["n_recon"],
            n_eval_sparsity_variance_batches=spec["n_sparsity"],
        )
        with torch.no_grad():
            scalars, features = run_evals(
                sae, store, model, ActivationScaler(), cfg, exclude_special_tokens=True
            )
        results.append({"metrics": scalars, "features": features, "batches": batches})
    (directory / "outputs.json").write_text(json.dumps(results))


class TranscoderAtOutput(torch.nn.Module):
    """A transcoder seen by SAELens's evals as an SAE of its output hook (see the docstring)."""

    def __init__(self, transcoder, head_in):
        super().__init__()
        self.transcoder, self.head_in, self.x = transcoder, head_in, None
        meta = transcoder.cfg.metadata
        self.cfg = copy.copy(transcoder.cfg)
        self.cfg.metadata = type(meta)(
            hook_name=meta.hook_name_out,
            hook_head_index=meta.hook_head_index_out,
            context_size=meta.context_size,
            prepend_bos=meta.prepend_bos,
        )
        self.W_enc, self.W_dec, self.b_enc = transcoder.W_enc, transcoder.W_dec, transcoder.b_enc
        self.device = transcoder.device

    hook_z_reshaping_mode = False  # the captured input is flattened by `capture` itself

    def turn_off_forward_pass_hook_z_reshaping(self):
        pass

    def capture(self, acts, hook):  # the permanent hook at the transcoder's input
        if self.head_in is not None:
            self.x = acts[:, :, self.head_in]
        else:
            self.x = acts.flatten(-2, -1) if acts.ndim == 4 else acts
        return acts

    def encode(self, _output_activation):
        return self.transcoder.encode(self.x)

    def decode(self, f):
        out = self.transcoder.decode(f)
        if hasattr(self.transcoder, "W_skip"):
            out = out + self.x @ self.transcoder.W_skip.T
        return out


def transcoders(directory):
    from datasets import load_dataset
    from sae_lens import (
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        Transcoder,
        TranscoderConfig,
    )
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.activation_scaler import ActivationScaler
    from transformers import AutoTokenizer, GPT2LMHeadModel

    directory = Path(directory)
    spec = json.loads((directory / "spec.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    model = tiny_hooked_gpt2(GPT2LMHeadModel.from_pretrained(directory / "model").eval(), tokenizer)
    dataset = load_dataset("json", data_files=spec["data_files"], split="train")
    classes = {
        "transcoder": (Transcoder, TranscoderConfig),
        "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig),
        "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig),
    }
    results = []
    for i, case in enumerate(spec["transcoder_cases"]):
        torch.manual_seed(spec["seed"] + 100 + i)
        meta = SAEMetadata(
            hook_name=case["hook_name"],
            hook_head_index=case["hook_head_index"],
            hook_name_out=case["hook_name_out"],
            hook_head_index_out=case["hook_head_index_out"],
            context_size=spec["context_size"],
            prepend_bos=True,
        )
        cls, cfg_cls = classes[case["architecture"]]
        tc = cls(
            cfg_cls(
                d_in=case["d_in"],
                d_sae=case["d_sae"],
                d_out=case["d_out"],
                apply_b_dec_to_input=False,
                metadata=meta,
            )
        )
        with torch.no_grad():
            tc.W_enc.normal_(0, case["w_scale"])
            tc.W_dec.normal_(0, case["w_scale"])
            tc.b_enc.normal_(-0.2, 0.1)
            tc.b_dec.normal_(0, 0.05)
            if hasattr(tc, "W_skip"):
                tc.W_skip.normal_(0, 0.1)
            if hasattr(tc, "threshold"):
                tc.threshold.uniform_(0.0, 0.3)
        tc.save_model(str(directory / f"transcoder_{i}"))
        shim = TranscoderAtOutput(tc, case["hook_head_index"])
        # a plain SAE at the output hook only gives the store its hook and context settings
        like = StandardSAE(
            StandardSAEConfig(d_in=case["d_out"], d_sae=4, metadata=shim.cfg.metadata)
        )
        store, batches = recording_store(model, like, dataset, spec)
        square = case["d_in"] == case["d_out"]  # SAELens's encoder-decoder cosine needs it
        cfg = get_eval_everything_config(
            batch_size_prompts=spec["batch_size_prompts"],
            n_eval_reconstruction_batches=spec["n_recon"],
            n_eval_sparsity_variance_batches=spec["n_sparsity"],
        )
        cfg.compute_featurewise_weight_based_metrics = square
        model.reset_hooks(including_permanent=True)
        model.add_hook(case["hook_name"], shim.capture, is_permanent=True)
        with torch.no_grad():
            scalars, features = run_evals(
                shim, store, model, ActivationScaler(), cfg, exclude_special_tokens=True
            )
        model.reset_hooks(including_permanent=True)
        if not square:
            features["encoder_norm"] = tc.W_enc.norm(dim=0).tolist()
            features["encoder_bias"] = tc.b_enc.tolist()
        results.append({"metrics": scalars, "features": features, "batches": batches})
    (directory / "transcoder_outputs.json").write_text(json.dumps(results))


if __name__ == "__main__":
    {"metrics": metrics, "end2end": end2end, "transcoders": transcoders}[sys.argv[1]](sys.argv[2])
