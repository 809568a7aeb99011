"""The release registry: which Hugging Face repo and folder each (release, sae_id) names.

    jsae.registry.get_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    # -> (Release(repo_id="google/gemma-scope-2b-pt-res", format="gemma_scope", ...),
    #     SAEEntry(path="layer_12/width_16k/average_l0_82",
    #              neuronpedia="gemma-2-2b/12-gemmascope-res-16k"))

Two data files ship with jsae: `releases.json`, generated from SAELens's public
`pretrained_saes.yaml` by `python -m jsae.registry_build` (its provenance is recorded inside),
and `releases_jsae.yaml`, jsae's own entries for releases SAELens does not list. Each release
names its repo, model, the jsae converter format, optional config overrides, and its SAEs
(id, path in the repo, expected L0, variance explained, Neuronpedia id, dataset-norm scaling
factor).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from jsae.errors import ConfigError, choices_hint


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of a release."""

    id: str
    path: str  # folder (or file) inside the release's repo
    l0: float | None = None  # expected average number of active latents
    variance_explained: float | None = None
    neuronpedia: str | None = None  # Neuronpedia id, e.g. "gpt2-small/8-res-jb"
    norm_scaling_factor: float | None = None  # dataset-norm input scale the SAE expects


@dataclass(frozen=True)
class Release:
    """A set of SAEs in one Hugging Face repo, read by one converter format."""

    name: str
    repo_id: str
    model: str | None
    format: str  # jsae converter format (see jsae.converters.format_names())
    saes: Mapping[str, SAEEntry] = field(repr=False)
    conversion_func: str | None = None  # SAELens's loader name, for reference
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # where the entry comes from


def _entries(raw: Mapping[str, Any]) -> dict[str, SAEEntry]:
    templates = raw["saes"]
    layers = raw.get("layers")
    rows = []
    if layers:
        first, last = layers
        for layer in range(int(first), int(last) + 1):
            for t in templates:
                rows.append(
                    {k: (v.format(layer=layer) if isinstance(v, str) else v) for k, v in t.items()}
                )
    else:
        rows = templates
    out = {}
    for row in rows:
        entry = SAEEntry(**{k: row[k] for k in row if k in SAEEntry.__dataclass_fields__})
        out[entry.id] = entry
    return out


def _release(name: str, raw: Mapping[str, Any], source: str) -> Release:
    return Release(
        name=name,
        repo_id=raw["repo_id"],
        model=raw.get("model"),
        format=raw["format"],
        saes=_entries(raw),
        conversion_func=raw.get("conversion_func"),
        config_overrides=dict(raw.get("config_overrides") or {}),
        links=dict(raw.get("links") or {}),
        source=raw.get("source", source),
    )


@functools.cache
def releases() -> dict[str, Release]:
    """Every known release by name (loaded once)."""
    pkg = resources.files("jsae")
    generated = json.loads(pkg.joinpath("releases.json").read_text())
    prov = generated["provenance"]
    source = f"SAELens {prov['saelens_version']} pretrained_saes.yaml"
    out = {name: _release(name, raw, source) for name, raw in generated["releases"].items()}
    own = yaml.safe_load(pkg.joinpath("releases_jsae.yaml").read_text()) or {}
    for name, raw in own.items():
        if name in out:
            raise ConfigError(f"release {name!r} is defined twice (releases_jsae.yaml).")
        out[name] = _release(name, raw, "jsae")
    return out


def provenance() -> dict[str, Any]:
    """Where releases.json came from (SAELens version, source hash, generator)."""
    pkg = resources.files("jsae")
    return dict(json.loads(pkg.joinpath("releases.json").read_text())["provenance"])


def release_names() -> list[str]:
    return sorted(releases())


def get_release(name: str) -> Release:
    """A release by name, or a ConfigError listing the closest names."""
    table = releases()
    if name not in table:
        raise ConfigError(
            f"unknown release {name!r}. jsae knows {len(table)} releases (jsae.registry."
            "release_names()); a Hugging Face repo id 'org/name' with a folder as sae_id also "
            "works." + choices_hint(name, table)
        )
    return table[name]


def get_sae(release: str, sae_id: str) -> tuple[Release, SAEEntry]:
    """(release, entry) for an SAE id, or a ConfigError listing the closest ids.

    Gemma Scope's canonical ids (`layer_N/width_16k/canonical`) also resolve through the
    release without `-canonical` in its name.
    """
    rel = get_release(release)
    if sae_id in rel.saes:
        return rel, rel.saes[sae_id]
    canonical = releases().get(release + "-canonical")
    if canonical is not None and sae_id in canonical.saes:
        return canonical, canonical.saes[sae_id]
    hint = choices_hint(sae_id, rel.saes)
    if not hint and canonical is not None:
        hint = choices_hint(sae_id, canonical.saes)
    examples = list(rel.saes)[:5]
    canon = f" Canonical ids live in release {release + '-canonical'!r}." if canonical else ""
    raise ConfigError(
        f"release {release!r} has no SAE {sae_id!r}; it has {len(rel.saes)} ids, e.g. "
        f"{examples}.{canon}" + hint
    )


__all__ = [
    "Release",
    "SAEEntry",
    "get_release",
    "get_sae",
    "provenance",
    "release_names",
    "releases",
]
