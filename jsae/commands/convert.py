"""`jsae convert SRC DST`: any supported SAE checkpoint to a SAELens-format directory.

    jsae convert path/to/ae_folder out/                       # local, format detected
    jsae convert gemma-scope-2b-pt-res-canonical out/ --sae-id layer_12/width_16k/canonical
    jsae convert jbloom/GPT2-Small-SAEs-Reformatted out/ --sae-id blocks.8.hook_resid_pre

The output (`cfg.json`, `sae_weights.safetensors`, and `sparsity.safetensors` when the source
has one) is what SAELens's `SAE.load_from_disk` reads. It is written atomically: on any error
nothing is left at DST.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="local checkpoint (folder or file), registry release, or hub repo id"
    )
    parser.add_argument("dst", help="output directory (SAELens format)")
    parser.add_argument(
        "--sae-id", help="SAE id within a release, or folder/file within a hub repo"
    )
    parser.add_argument("--format", help="source format, skipping detection (see docs/loading.md)")
    parser.add_argument("--dtype", help="parameter dtype of the output (default: the source's)")
    parser.add_argument("--revision", help="hub branch, tag or commit")
    parser.add_argument("--force-download", action="store_true", help="re-download even if cached")
    parser.add_argument("--cache-dir", help="Hugging Face cache directory (default: HF_HUB_CACHE)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    import jsae
    from jsae.errors import ConfigError

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it.")
    src = Path(args.src).expanduser()
    log_sparsity = None
    if src.exists():
        if args.sae_id or args.revision or args.force_download or args.cache_dir:
            raise ConfigError(
                f"{src} is a local path: --sae-id, --revision, --force-download and --cache-dir "
                "apply only to releases and hub repos."
            )
        sae = jsae.load(src, format=args.format, dtype=args.dtype)
        if sae.cfg.metadata.get("source_format", "saelens") == "saelens" and src.is_dir():
            log_sparsity = jsae.load_log_sparsity(src)
    else:
        sae, log_sparsity = _from_hub(args)
    sae.save(dst, log_sparsity=log_sparsity, overwrite=args.overwrite)
    meta = sae.cfg.metadata
    print(
        f"wrote {dst}: {sae.cfg.architecture} SAE, d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}, "
        f"dtype={sae.cfg.dtype}, model={meta.model_name}, hook={meta.hook_name}"
    )
    return 0


def _from_hub(args: argparse.Namespace):
    """(SAE, log sparsity or None) of a release or hub repo; when SRC is neither, the error also
    says that no local path SRC exists (it may be a mistyped one)."""
    from jsae.errors import ConfigError
    from jsae.hub import HubError, from_pretrained_with_sparsity
    from jsae.registry import releases

    try:
        return from_pretrained_with_sparsity(
            args.src,
            args.sae_id,
            dtype=args.dtype,
            revision=args.revision,
            force_download=args.force_download,
            cache_dir=args.cache_dir,
            format=args.format,
        )
    except (HubError, ConfigError) as exc:
        if args.src in releases():
            raise
        raise type(exc)(
            f"no local file or directory {args.src!r} exists, so it was read as a release or "
            f"Hugging Face repo id, and that failed: {exc}"
        ) from None
