"""All-or-nothing output directories: a failed write leaves no half-written result.

    with atomic_output_dir(path, overwrite=False) as tmp:
        write files into tmp
    # path now holds exactly those files; on an exception nothing at path changed

Files are written into a hidden sibling directory (same filesystem), flushed to disk, and
renamed into place. Replacing an existing directory moves it aside first and deletes it only
after the new one is in place. A writer killed part-way leaves hidden siblings named after its
host and process id (`.name.tmp-<host>~<pid>~*`, `.name.old-<host>~<pid>~*`); the next write
of `path` on that host deletes them, and if the writer died in the instant between moving the
old directory aside and renaming the new one in, it moves the old one back first
(`recover_interrupted`). So the old directory is never lost, and a dead writer's leftovers do
not pile up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
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


def _host() -> str:
    """This host's name, reduced to characters that cannot clash with the sibling-name syntax."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _sibling_prefix(path: Path, kind: str) -> str:
    """Prefix of a hidden sibling of `path` owned by this process: kind is "tmp" or "old"."""
    return f".{path.name}.{kind}-{_host()}~{os.getpid()}~"


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a recycled pid reads as alive: the safe side).

    On Windows `os.kill(pid, 0)` would terminate the process, so every writer counts as alive
    there and nothing is cleaned up."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_interrupted(path: str | Path) -> bool:
    """Clean up after writers of `path` on this host that died mid-write; True if the old
    directory had to be moved back to `path`.

    Their temporary siblings are deleted. An `old` sibling is the previous `path`, moved aside
    by a replacement that was killed before its new directory was renamed in: when `path` is
    missing it goes back there, otherwise (the replacement finished) it is deleted. Siblings of
    live processes and of other hosts (a shared filesystem) are left alone.
    """
    path = Path(path).expanduser().absolute()
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-{_host()}~(\d+)~")
    stale: dict[str, list[Path]] = {"tmp": [], "old": []}
    with contextlib.suppress(FileNotFoundError):
        for sibling in path.parent.iterdir():
            match = pattern.match(sibling.name)
            if match and not _alive(int(match.group(2))):
                stale[match.group(1)].append(sibling)
    restored = False
    # newest first: were there several, the latest replaced directory is the one to restore
    for old in sorted(stale["old"], key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if not path.exists() and not path.is_symlink():
            os.rename(old, path)
            restored = True
        else:
            _remove(old)
    for tmp in stale["tmp"]:
        _remove(tmp)
    return restored


def recover_interrupted_in(directory: str | Path) -> None:
    """`recover_interrupted` for every entry of `directory` that a dead writer on this host left
    hidden siblings of (e.g. a checkpoint's host files, each written by `atomic_write_bytes`)."""
    pattern = re.compile(rf"^\.(.+)\.(?:tmp|old)-{_host()}~\d+~")
    with contextlib.suppress(FileNotFoundError):
        names = {m.group(1) for e in Path(directory).iterdir() if (m := pattern.match(e.name))}
        for name in sorted(names):
            recover_interrupted(Path(directory) / name)


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block exits without error."""
    path = Path(path).expanduser().absolute()
    recover_interrupted(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (or --overwrite) to replace it, "
            "or choose another output path."
        )
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a directory; remove it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_sibling_prefix(path, "tmp"), dir=path.parent))
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
    (a failed rename puts it back; after a killed process, `recover_interrupted` does, which
    callers run before they start writing)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, "old"), dir=target.parent))
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
    recover_interrupted(path)
    fd, tmp = tempfile.mkstemp(prefix=_sibling_prefix(path, "tmp"), dir=path.parent)
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
