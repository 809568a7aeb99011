"""Regenerate `jsae/releases.json` from SAELens's public release list.

    python -m jsae.registry_build /path/to/sae_lens/pretrained_saes.yaml --saelens-version 6.54.12

SAELens ships `pretrained_saes.yaml` (MIT licensed data: release names, Hugging Face repos,
folders, Neuronpedia ids, expected L0, dataset-norm scaling factors). jsae keeps that data
as JSON, which loads ~50x faster than the YAML, with each release's SAELens
`conversion_func` mapped to the jsae converter format that reads it. The output records its
provenance (source file, SAELens version, a hash of the source). Releases SAELens lacks live
in `jsae/releases_jsae.yaml`, written by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

OUTPUT = Path(__file__).with_name("releases.json")
_SAE_KEYS = ("id", "path", "l0", "variance_explained", "neuronpedia", "norm_scaling_factor")
_RELEASE_KEYS = ("repo_id", "model", "conversion_func", "config_overrides", "links")


def build(yaml_text: str, saelens_version: str) -> dict[str, Any]:
    """The registry dict for a SAELens `pretrained_saes.yaml` text."""
    from jsae.converters import SAELENS_LOADERS

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(yaml_text, Loader=loader)
    releases: dict[str, Any] = {}
    for name, value in data.items():
        release = {k: value[k] for k in _RELEASE_KEYS if value.get(k) is not None}
        release["format"] = SAELENS_LOADERS[value.get("conversion_func")]
        saes = []
        for entry in value["saes"]:
            # Keep only SAE fields: one SAELens entry holds a mis-indented nested release.
            sae = {k: entry[k] for k in _SAE_KEYS if entry.get(k) is not None}
            sae["id"], sae["path"] = str(sae["id"]), str(sae["path"])
            saes.append(sae)
        release["saes"] = saes
        releases[name] = release
    return {
        "provenance": {
            "source": "sae_lens/pretrained_saes.yaml",
            "saelens_version": saelens_version,
            "license": "MIT (SAELens)",
            "sha256": hashlib.sha256(yaml_text.encode()).hexdigest(),
            "generator": "python -m jsae.registry_build",
        },
        "releases": releases,
    }


def dumps(registry: dict[str, Any]) -> str:
    """JSON with one release header and one SAE per line (reviewable diffs)."""
    lines = ["{", f' "provenance": {json.dumps(registry["provenance"])},', ' "releases": {']
    names = list(registry["releases"])
    for i, name in enumerate(names):
        release = dict(registry["releases"][name])
        saes = release.pop("saes")
        head = json.dumps(release)[:-1]
        lines.append(f'  {json.dumps(name)}: {head}, "saes": [')
        lines.extend(
            f"   {json.dumps(s)}{',' if j < len(saes) - 1 else ''}" for j, s in enumerate(saes)
        )
        lines.append("  ]}" + ("," if i < len(names) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("yaml", type=Path, help="SAELens's pretrained_saes.yaml")
    parser.add_argument("--saelens-version", required=True)
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    registry = build(args.yaml.read_text(), args.saelens_version)
    args.output.write_text(dumps(registry))
    n = sum(len(r["saes"]) for r in registry["releases"].values())
    print(f"wrote {args.output}: {len(registry['releases'])} releases, {n} SAEs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
