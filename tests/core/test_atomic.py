"""hoe.core.atomic: one way to publish a folder or a file (stale temp cleanup, permissions, fsync, overlap)."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from hoe.core import atomic
from hoe.core.atomic import atomic_write_text, check_output, clean_stale, staged_folder
from hoe.core.errors import CheckpointError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_published_folder_has_umask_permissions(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    target = tmp_path / "ckpt"
    with staged_folder(target) as tmp:
        save_file({"x": np.zeros(2, dtype=np.float32)}, str(tmp / "w.safetensors"))  # safetensors makes 0600
        (tmp / "a.json").write_text("{}")
    mask = atomic.umask()
    assert _mode(target) == 0o777 & ~mask
    assert _mode(target / "w.safetensors") == 0o666 & ~mask
    assert _mode(target / "a.json") == 0o666 & ~mask
    atomic_write_text(tmp_path / "f.json", "{}")
    assert _mode(tmp_path / "f.json") == 0o666 & ~mask


def test_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append((str(a), len(synced))), real_rename(a, b)))
    target = tmp_path / "out"
    with staged_folder(target) as tmp:
        (tmp / "data.bin").write_bytes(b"x" * 10)
    staged_name = renamed[0][0]
    assert any(p.endswith("data.bin") for p in synced[: renamed[0][1]])  # the file before the rename
    assert staged_name in synced[: renamed[0][1]]  # its folder too
    assert str(tmp_path) in synced[renamed[0][1]:]  # the parent after it


def test_failure_leaves_the_old_folder_and_no_temp(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_swaps_the_whole_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_folder(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        with staged_folder(target):
            pass


def test_replace_without_rename_exchange_works_too(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    target.mkdir()
    with staged_folder(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def _killed_writer(tmp_path, body: str) -> None:
    """Run `body` in a child process that SIGKILLs itself mid-write (what a `kill -9` during export leaves)."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from hoe.core import atomic
        target = Path({str(tmp_path / 'out')!r})
    """) + textwrap.dedent(body) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_stale_temp_folder_of_a_killed_run_is_cleaned_next_time(tmp_path):
    _killed_writer(tmp_path, """
        cm = atomic.staged_folder(target)
        tmp = cm.__enter__()
        (tmp / "model.onnx.data").write_bytes(b"0" * 1000)
    """)
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".out.hoe-tmp-")
    with staged_folder(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_old_folder_moved_aside_by_a_killed_run_is_restored(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    _killed_writer(tmp_path, """
        os.rename(target, atomic.sibling(target, atomic.OLD))  # killed between the two renames
    """)
    assert not (tmp_path / "out").exists()
    clean_stale(tmp_path)
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_live_processes_keep_their_temp_folders(tmp_path):
    mine = atomic.sibling(tmp_path / "out")
    mine.mkdir()
    other = tmp_path / f".out.hoe-tmp-{os.getppid()}-0123abcd"
    other.mkdir()
    not_ours = tmp_path / ".out.tmpabc123"
    not_ours.mkdir()
    assert clean_stale(tmp_path) == []
    assert mine.exists() and other.exists() and not_ours.exists()


@pytest.mark.parametrize("layout", ["is", "inside", "contains"])
def test_output_overlapping_an_input_is_refused(tmp_path, layout):
    base = tmp_path / "sb" / "base"
    base.mkdir(parents=True)
    out = {"is": base, "inside": base / "sub", "contains": tmp_path / "sb"}[layout]
    with pytest.raises(CheckpointError, match=f"{layout} the input"):
        check_output(out, [base], force=True)
    assert base.is_dir()


def test_output_holding_the_working_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="holds the working folder"):
        check_output(".", [], force=True)
    assert check_output("new", [], force=False) == tmp_path / "new"
