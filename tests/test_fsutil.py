"""Interrupted writes: a killed writer's leftovers are cleaned by the next write, and a
replacement killed between its two renames gets the old directory back, never loses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jsae.fsutil import _host, atomic_output_dir, atomic_write_bytes, recover_interrupted


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _run_killed(script: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_removes_a_killed_writers_temporary_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _run_killed(f"""
import os, signal
from jsae.fsutil import atomic_output_dir
with atomic_output_dir({str(target)!r}) as tmp:
    (tmp / "cfg.json").write_text("{{}}")
    os.kill(os.getpid(), signal.SIGKILL)
""")
    assert not target.exists()
    [leftover] = _hidden(tmp_path)
    assert leftover.startswith(f".out.tmp-{_host()}~")
    with atomic_output_dir(target) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (target / "cfg.json").read_text() == "{}"
    assert _hidden(tmp_path) == []


def test_a_replacement_killed_between_its_renames_gets_the_old_directory_back(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "version").write_text("old")
    # die right after the old directory was moved aside, before the new one is renamed in
    _run_killed(f"""
import os, signal
import jsae.fsutil as fsutil
real_rename, calls = os.rename, []
def rename(src, dst):
    calls.append(dst)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)
fsutil.os.rename = rename
with fsutil.atomic_output_dir({str(target)!r}, overwrite=True) as tmp:
    (tmp / "version").write_text("new")
""")
    assert not target.exists()
    assert [n.split("-")[0] for n in _hidden(tmp_path)] == [".out.old", ".out.tmp"]
    # a write that must not clobber finds the old directory back in place, and refuses
    with pytest.raises(FileExistsError, match="already exists"), atomic_output_dir(target):
        pass
    assert (target / "version").read_text() == "old"
    assert _hidden(tmp_path) == []
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "version").write_text("new")
    assert (target / "version").read_text() == "new"
    assert _hidden(tmp_path) == []


def test_an_old_directory_left_after_the_new_one_was_renamed_in_is_deleted(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "version").write_text("new")
    old = tmp_path / f".out.old-{_host()}~{_dead_pid()}~abc"
    old.mkdir()
    (old / "version").write_text("old")
    assert recover_interrupted(target) is False
    assert (target / "version").read_text() == "new"
    assert _hidden(tmp_path) == []


def test_live_writers_and_other_hosts_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "out"
    mine = tmp_path / f".out.tmp-{_host()}~{os.getpid()}~abc"
    elsewhere = tmp_path / f".out.old-{_host()}x~{_dead_pid()}~abc"
    unrelated = tmp_path / f".outer.tmp-{_host()}~{_dead_pid()}~abc"
    for d in (mine, elsewhere, unrelated):
        d.mkdir()
    assert recover_interrupted(target) is False
    assert not target.exists()  # another host's old directory is not ours to restore
    assert _hidden(tmp_path) == sorted(d.name for d in (mine, elsewhere, unrelated))


def test_a_killed_single_file_write_is_cleaned_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    stale = tmp_path / f".manifest.json.tmp-{_host()}~{_dead_pid()}~abc"
    stale.write_text("partial")
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert _hidden(tmp_path) == []
