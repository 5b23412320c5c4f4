from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from interfuse import io as iio
from interfuse.io import atomic_text_writer, atomic_write_bytes, atomic_write_text


def test_write_text_and_bytes(tmp_path):
    assert atomic_write_text(tmp_path / "a.md", "héllo\n") == tmp_path / "a.md"
    assert (tmp_path / "a.md").read_bytes() == "héllo\n".encode()
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01\x02")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\x02"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.bin"]


def test_overwrite_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "report.md"
    for i in range(3):
        atomic_write_text(target, f"version {i}")
    assert target.read_text() == "version 2"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_text_is_written_without_newline_translation(tmp_path):
    atomic_write_text(tmp_path / "x.txt", "a\r\nb\n")
    assert (tmp_path / "x.txt").read_bytes() == b"a\r\nb\n"


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, fail_in):
    target = tmp_path / "results.md"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(iio.os, fail_in, boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_bad_data_keeps_old_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_missing_parent_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permissions(tmp_path):
    new = atomic_write_text(tmp_path / "new.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask

    existing = tmp_path / "existing.txt"
    existing.write_text("old")
    existing.chmod(0o640)
    atomic_write_text(existing, "new")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640


def test_a_live_writers_temporary_survives_a_train_starting_meanwhile(tmp_path, monkeypatch):
    """``interfuse explain`` writes into a run folder without its lock; a ``train --resume``
    starting while it writes clears leftover temporaries. The writer's own (its PID is alive)
    survives, and its write completes."""
    fsync = os.fsync
    cleared: list = []

    def train_starts_now(fd):
        cleared.append(iio.remove_stale_temporaries(tmp_path))
        fsync(fd)

    monkeypatch.setattr(iio.os, "fsync", train_starts_now)
    atomic_write_text(tmp_path / "explain.json", "{}")
    assert cleared[0] == [] and (tmp_path / "explain.json").read_text() == "{}"


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".history.csv.{dead}-0123456789ab.tmp",
            "old": ".results.json.abcdef012345.tmp",  # before the PID was recorded: removed
            "live": f".explain.json.{live.pid}-0123456789ab.tmp",
            "mine": f".report.md.{os.getpid()}-abcdef012345.tmp",
            "other": "notes.tmp",  # not a temporary of ours
            "group": ".x.0-0123456789ab.tmp",  # PID 0 names no writer: removed, never signalled
        }
        for name in names.values():
            (tmp_path / name).write_text("x")
        removed = {p.name for p in iio.remove_stale_temporaries(tmp_path)}
    finally:
        live.kill()
        live.wait()
    assert removed == {names["dead"], names["old"], names["group"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("live", "mine", "other")
    )


def test_a_streamed_file_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_text_writer(target) as f:
        f.write("half\r\n")
        raise RuntimeError("stopped")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with atomic_text_writer(target) as f:
        f.write("a,b\r\n")
        f.write("1,2\r\n")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
