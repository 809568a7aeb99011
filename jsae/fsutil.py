"""All-or-nothing output directories: a failed write leaves no half-written result.

    with atomic_output_dir(path, overwrite=False) as tmp:
        write files into tmp
    # path now holds exactly those files; on an exception nothing at path changed

Files are written into a hidden sibling directory (same filesystem), flushed to disk, and
renamed into place. Replacing an existing directory moves it aside first and deletes it only
after the new one is in place, so an interruption at any point leaves either the old or the
new directory at `path` (and at worst a hidden `.name.old-*` to clean up).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    """Give a tempfile-made path the mode a plain mkdir/open would (tempfile makes them
    private, 0700/0600, and the rename would keep that: other users could not read an SAE)."""
    os.chmod(path, mode & ~_umask())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync everywhere
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block exits without error."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (or --overwrite) to replace it, "
            "or choose another output path."
        )
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a directory; remove it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _as_created(tmp, 0o777)
        for dirpath, dirnames, filenames in os.walk(tmp):
            for name in dirnames:
                _as_created(Path(dirpath, name), 0o777)
            for name in filenames:
                _as_created(Path(dirpath, name), 0o666)
        _fsync_tree(tmp)
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` at `target`; what was there is deleted only once `new` is in place
    (a failed rename puts it back)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a single file atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _as_created(Path(tmp), 0o666)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
