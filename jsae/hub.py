"""`from_pretrained` and format-detecting `load`: public SAEs from the Hugging Face hub or disk.

    sae = jsae.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    sae = jsae.from_pretrained("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre")
    sae = jsae.load("path/to/ae_folder")            # any supported format, detected from its files
    sae = jsae.from_pretrained(..., mesh=jsae.parallel.make_mesh(2, 4))   # straight into shards

A release name is looked up in the registry (`jsae.registry`); anything else of the form
`org/name` is a Hugging Face repo whose `sae_id` folder (or file) holds the SAE, and its
format is detected from the files there. Every download goes through `huggingface_hub`
(`hf_hub_download`: its cache, `revision`, `force_download`, `HF_HUB_OFFLINE`, tokens).
Parameters are read lazily and placed one chunk at a time, directly into their final
sharding when a mesh is given.

Each SAE's `cfg.metadata` names its model as a Hugging Face hub id and its hook in
TransformerLens style, so `jsae.load_model(sae.cfg.metadata.model_name)` followed by a hook
at `sae.cfg.metadata.hook_name` feeds it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae import converters
from jsae.architectures import get_architecture
from jsae.config import SAEConfig, SAEMetadata, canonical_dtype
from jsae.converters import Hints
from jsae.converters.base import HF_MODEL_IDS
from jsae.converters.lazy import shape_of, to_device
from jsae.errors import ConfigError, FormatError, JsaeError
from jsae.registry import get_release, get_sae, releases
from jsae.sae import SAE, check_param_shapes


class HubError(JsaeError, OSError):
    """A Hugging Face download failed: no such repo, revision or file, or not cached offline."""


# ------------------------------------------------------------------------------ building


def build_sae(
    cfg: SAEConfig, params: dict[str, Any], *, dtype: Any = None, mesh: Any = None
) -> SAE:
    """Validate converter output against `cfg` and place it on device(s), chunk by chunk.

    `dtype` overrides the checkpoint's own dtype (thresholds stay float32). With `mesh` (a
    `jax.sharding.Mesh` or `{"data": d, "model": m}`), each device reads only its shard.
    """
    from jsae import parallel

    if dtype is not None:
        cfg = cfg.replace(dtype=canonical_dtype(dtype))
    arch = get_architecture(cfg.architecture)
    check_param_shapes(cfg, {name: shape_of(value) for name, value in params.items()})
    expected = arch.param_shapes(cfg)
    dtypes = {name: arch.param_dtype(cfg, name) for name in expected}
    shardings = None
    mesh = parallel.mesh_from_config(mesh)
    if mesh is not None:
        # zero-byte stand-ins carrying each shape, for the divisibility checks
        stand_ins = {n: np.broadcast_to(np.zeros((), np.int8), s) for n, s in expected.items()}
        shardings = parallel.param_shardings(stand_ins, mesh)
    placed = to_device({n: params[n] for n in expected}, dtypes, shardings)
    return SAE.from_params(cfg, placed)


def load(
    path: str | Path,
    *,
    format: str | None = None,
    dtype: Any = None,
    mesh: Any = None,
    hints: Hints | None = None,
) -> SAE:
    """Load an SAE from a local directory or file in any supported format (detected).

    SAELens directories go through `jsae.io.load_saelens` (unless a mesh is given, when they
    are read shard by shard); a jsae training run's checkpoint directory gives the SAE at its
    newest checkpoint (`jsae.training.load_checkpoint`). `format` skips detection
    (`jsae.converters.format_names()`).
    """
    from jsae.fsutil import recover_interrupted
    from jsae.io import load_saelens

    path = Path(path).expanduser()
    if not path.exists():  # an overwrite killed mid-swap may have left it aside: put it back
        recover_interrupted(path)
    if format is None and (path / "training_config.yaml").is_file() and (path / "state").is_dir():
        from jsae.training.trainer import load_checkpoint  # a training run's checkpoints

        sae = load_checkpoint(path)
        return (
            sae
            if dtype is None and mesh is None
            else build_sae(sae.cfg, sae.params, dtype=dtype, mesh=mesh)
        )
    fmt = format or converters.detect_format(path)
    if fmt == "saelens" and mesh is None and hints is None:
        folder = path if path.is_dir() else path.parent
        return load_saelens(folder, dtype=dtype)
    cfg, params = converters.convert(path, fmt, hints)
    return build_sae(cfg, params, dtype=dtype, mesh=mesh)


# ------------------------------------------------------------------------------ hub access


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None,
    force_download: bool,
    cache_dir: str | Path | None,
    required: bool = True,
) -> Path | None:
    """One file through `hf_hub_download`, with errors that say what to do."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                force_download=force_download,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except LocalEntryNotFoundError:
        if not required:
            return None
        if _offline():
            raise HubError(
                f"{repo_id}/{filename}{at} is not in the local Hugging Face cache and "
                "HF_HUB_OFFLINE=1 forbids downloading it. Unset HF_HUB_OFFLINE (or download "
                "it once while online), or check the release, sae_id and revision."
            ) from None
        raise HubError(
            f"could not reach the Hugging Face hub for {repo_id}/{filename}{at}, and it is not "
            "cached. Check your connection."
        ) from None
    except EntryNotFoundError:
        if not required:
            return None
        raise HubError(
            f"{repo_id} has no file {filename!r}{at}: check the sae_id (the folder inside the "
            "repo) or the release's format."
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{repo_id} is gated: accept its terms on huggingface.co and log in "
            "(`huggingface-cli login` or HF_TOKEN)."
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"Hugging Face repository {repo_id!r} does not exist or is private (log in with "
            "`huggingface-cli login` if it is yours)."
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} (branch, tag or commit).") from None
    except ValueError as exc:
        if force_download and _offline():
            raise HubError(
                "force_download=True needs the network, but HF_HUB_OFFLINE=1; unset it or drop "
                "force_download."
            ) from None
        raise HubError(f"downloading {repo_id}/{filename}{at} failed: {exc}") from None


def _snapshot_root(local_file: Path, filename: str) -> Path:
    """The snapshot directory a downloaded `filename` lives in (`.../snapshots/<commit>`)."""
    root = local_file
    for _ in filename.strip("/").split("/"):
        root = root.parent
    return root


def _list_files(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> list[str]:
    """Every file path in the repo: from the hub, or from the local snapshot when offline."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not _offline():
        try:
            return list(HfApi().list_repo_files(repo_id, revision=revision))
        except RepositoryNotFoundError:
            raise HubError(
                f"Hugging Face repository {repo_id!r} does not exist or is private."
            ) from None
        except RevisionNotFoundError:
            raise HubError(f"{repo_id} has no revision {revision!r}.") from None
        except (OfflineModeIsEnabled, OSError):
            pass  # no network: fall back to what is cached
    try:
        root = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=True,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        at = f" (revision {revision!r})" if revision else ""
        raise HubError(
            f"{repo_id}{at} is not in the local Hugging Face cache and the hub cannot be "
            "reached (HF_HUB_OFFLINE=1 or no network), so its files cannot be listed."
        ) from None
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )


def _format_from_names(folder: str, files: list[str]) -> str | None:
    """The format of repo path `folder` from the repo's file list (None: decide from content)."""
    folder = folder.strip("/")
    names = set(files)
    if folder and folder in names:  # a single file
        base = folder.rsplit("/", 1)[-1]
        if base.endswith(".npz"):
            return "gemma_scope"
        if re.fullmatch(r"W_enc_\d+\.safetensors", base):
            return "mntss_clt"
        if re.fullmatch(r"layer\d+\.sae\.pt", base):
            return "qwen_scope"
        if folder.split(".pt")[0] + "_cfg.json" in names and ".pt" in base:
            return "connor_rob_hook_z"
        if base.endswith(".safetensors"):
            return "circuit_tracer"
        return None  # .pt / .pth: read its keys after downloading
    if folder.isdigit() and f"W_enc_{folder}.safetensors" in names:
        return "mntss_clt"
    prefix = f"{folder}/" if folder else ""
    inside = {n[len(prefix) :] for n in names if n.startswith(prefix)}
    if not inside:
        raise HubError(
            f"the repo has no folder or file {folder!r}; it has e.g. {sorted(files)[:8]}."
        )
    fmt = converters.format_from_names(inside)
    if fmt is not None:
        return fmt
    raise FormatError(
        f"{folder or 'the repo root'} holds {sorted(inside)[:12]}, which matches no SAE "
        f"format jsae reads ({converters.format_names()}); pass format= if you know it."
    )


def _hints(release: Any, entry: Any, repo_id: str, path: str, commit: str | None) -> Hints:
    if release is None:
        return Hints(repo_id=repo_id, path_in_repo=path, revision=commit, sae_id=path)
    return Hints(
        repo_id=repo_id,
        path_in_repo=path,
        revision=commit,
        release=release.name,
        sae_id=entry.id,
        model_name=release.model,
        neuronpedia_id=entry.neuronpedia,
        norm_scaling_factor=entry.norm_scaling_factor,
        config_overrides=release.config_overrides,
    )


def _commit_of(snapshot: Path) -> str | None:
    return snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else None


def _hub_model_name(cfg: SAEConfig) -> SAEConfig:
    """SAELens-format repos name models TransformerLens-style; give the hub id as model_name."""
    name = cfg.metadata.model_name
    if name is None or HF_MODEL_IDS.get(name, name) == name:
        return cfg
    meta = cfg.metadata.to_dict()
    meta["tl_model_name"], meta["model_name"] = name, HF_MODEL_IDS[name]
    return cfg.replace(metadata=SAEMetadata.from_dict(meta))


def resolve(release: str, sae_id: str | None = None) -> tuple[str, str, str | None, Hints]:
    """(repo_id, path in repo, format or None if to be detected, hints) for a release + id."""
    table = releases()
    if release in table:
        rel = table[release]
        if sae_id is None:
            if len(rel.saes) != 1:
                raise ConfigError(
                    f"release {release!r} has {len(rel.saes)} SAEs; pass sae_id, e.g. "
                    f"{list(rel.saes)[:5]}."
                )
            sae_id = next(iter(rel.saes))
        rel, entry = get_sae(release, sae_id)
        if rel.format in converters.UNSUPPORTED:
            raise FormatError(
                f"release {rel.name!r} cannot be loaded: {converters.UNSUPPORTED[rel.format]}"
            )
        return (
            rel.repo_id,
            entry.path,
            rel.format,
            _hints(rel, entry, rel.repo_id, entry.path, None),
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", release):
        get_release(release)  # raises a ConfigError naming the closest releases
    return (
        release,
        (sae_id or "").strip("/"),
        None,
        _hints(None, None, release, (sae_id or "").strip("/"), None),
    )


def from_pretrained(
    release: str,
    sae_id: str | None = None,
    *,
    dtype: Any = None,
    mesh: Any = None,
    revision: str | None = None,
    force_download: bool = False,
    cache_dir: str | Path | None = None,
    format: str | None = None,
) -> SAE:
    """Load a public SAE: a registry release and SAE id, or a Hugging Face repo and folder.

    Args:
      release: a registry release ("gemma-scope-2b-pt-res-canonical", "gpt2-small-res-jb",
        ...; `jsae.registry.release_names()`), or a hub repo id "org/name".
      sae_id: the SAE within the release (registry id), or the folder/file in the repo.
      dtype: parameter dtype; default the checkpoint's own (thresholds stay float32).
      mesh: a `jax.sharding.Mesh` or `{"data": d, "model": m}`: parameters are read straight
        into their shards by `jsae.parallel`'s partition rules.
      revision: branch, tag or commit of the repo (default: main).
      force_download: fetch again even if cached.
      cache_dir: Hugging Face cache directory (default: HF_HUB_CACHE).
      format: skip format detection for a raw repo (`jsae.converters.format_names()`).
    """
    return _from_hub(
        release,
        sae_id,
        dtype=dtype,
        mesh=mesh,
        revision=revision,
        force_download=force_download,
        cache_dir=cache_dir,
        format=format,
    )[0]


def from_pretrained_with_sparsity(
    release: str,
    sae_id: str | None = None,
    *,
    dtype: Any = None,
    mesh: Any = None,
    revision: str | None = None,
    force_download: bool = False,
    cache_dir: str | Path | None = None,
    format: str | None = None,
) -> tuple[SAE, np.ndarray | None]:
    """`from_pretrained`, plus the SAE's log10 feature firing frequencies `[d_sae]` where the
    repo ships them (SAELens format's `sparsity.safetensors`), else None."""
    sae, fmt, target = _from_hub(
        release,
        sae_id,
        dtype=dtype,
        mesh=mesh,
        revision=revision,
        force_download=force_download,
        cache_dir=cache_dir,
        format=format,
    )
    if fmt != "saelens":
        return sae, None
    from jsae.io import load_log_sparsity

    return sae, load_log_sparsity(target)


def _from_hub(
    release: str,
    sae_id: str | None,
    *,
    dtype: Any,
    mesh: Any,
    revision: str | None,
    force_download: bool,
    cache_dir: str | Path | None,
    format: str | None,
) -> tuple[SAE, str, Path]:
    """(SAE, its format, the local snapshot path it was converted from)."""
    repo_id, path, fmt, hints = resolve(release, sae_id)
    fmt = format or fmt
    get = lambda name, required=True: _download(  # noqa: E731
        repo_id,
        name,
        revision=revision,
        force_download=force_download,
        cache_dir=cache_dir,
        required=required,
    )
    if fmt is None:
        fmt = _format_from_names(path, _list_files(repo_id, revision, cache_dir))
    if fmt is None:  # a single .pt/.pth file: its keys decide
        local = get(path)
        fmt = converters.detect_format(local)
    module = converters.get_format(fmt)
    required, optional = converters.hub_files(module, path)
    first = None
    for name in required:
        local = get(name)
        first = first or (local, name)
    for name in optional:
        get(name, required=False)
    snapshot = _snapshot_root(*first)
    hints = dataclasses.replace(hints, revision=_commit_of(snapshot))
    target = snapshot / converters.hub_target(module, path)
    cfg, params = converters.convert(target, fmt, hints)
    if fmt == "saelens":
        cfg = _hub_model_name(cfg)
    return build_sae(cfg, params, dtype=dtype, mesh=mesh), fmt, target


__all__ = [
    "HubError",
    "build_sae",
    "from_pretrained",
    "from_pretrained_with_sparsity",
    "load",
    "resolve",
]
