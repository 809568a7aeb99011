"""Runs in the reference environment: SAELens's eval metrics on inputs jsae evaluates too.

    python saelens_evals.py metrics DIR

`metrics`: DIR/sae is an SAE directory (SAELens format, written by jsae); DIR/inputs.npz holds
`acts` [n_batches, B, T, d_in], `tokens` [n_batches, B, T], `ignore` (token ids to exclude),
and `clean_logits`, `new_logits` [B, T, V], `ce_tokens` [B, T]. SAELens's own
`get_sparsity_and_variance_metrics` runs on those activations (handed to it through the model
and store interfaces it calls: `run_with_cache` returns the given activations and
`get_batch_tokens` the given tokens), `get_featurewise_weight_based_metrics` on the SAE, and
`_kl` and TransformerLens's `lm_cross_entropy_loss` on the logits. Writes DIR/outputs.json
(scalar and per-latent metrics) and DIR/outputs.npz (`kl`, `ce`).
"""

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


if __name__ == "__main__":
    {"metrics": metrics}[sys.argv[1]](sys.argv[2])
