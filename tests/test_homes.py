"""Bad homes and stores, as a new user meets them: each is one line naming the path and what to do, exit 2, and
the read-only commands never create a home."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing

import pytest
from conftest import cli, skip_or_fail

from stargate_lite.store import Store


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("Error: ")]  # progress bars aside
    assert "Traceback" not in result.stderr
    return line


def _import_tasks(home, tmp_path) -> subprocess.CompletedProcess:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(["Plan my week.", "Cook me dinner."]))
    return cli("data", "import", "--dataset", "mine", "--split", "A", "--tasks", str(tasks), home=home, check=False)


def test_a_home_that_is_a_file_or_under_one(tmp_path):
    line = _error_line(_import_tasks("/dev/null", tmp_path))
    assert "the home /dev/null is a file, not a directory" in line
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    line = _error_line(_import_tasks(blocker / "home", tmp_path))
    assert f"cannot make the home {blocker / 'home'}" in line and "Not a directory" in line


def test_a_file_that_is_not_a_store(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "stargate.db").write_bytes(b"these are someone else's notes, not SQLite\n" * 100)
    for command in (("status",), ("data", "show")):
        line = _error_line(cli(*command, home=home, check=False))
        assert f"{home / 'stargate.db'} is not a stargate-lite store" in line


@pytest.mark.parametrize("command", [("status",), ("report",), ("data", "show")])
def test_read_only_commands_never_create_a_home(tmp_path, command):
    home = tmp_path / "some" / "new" / "path"
    line = _error_line(cli(*command, home=home, check=False))
    assert f"no stargate-lite store in {home}" in line
    assert not (tmp_path / "some").exists()


def test_an_unwritable_home(tmp_path):
    home = tmp_path / "readonly"
    home.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system instead
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)],
                                 capture_output=True)
        if mounted.returncode != 0:
            skip_or_fail(f"root without mount rights: cannot make a read-only home ({mounted.stderr!r})")
    else:
        home.chmod(0o555)
    try:
        line = _error_line(_import_tasks(home, tmp_path))
        assert f"cannot write the store {home / 'stargate.db'}" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(home)], check=True)
        else:
            home.chmod(0o755)


def test_a_store_locked_by_another_program(tmp_path, monkeypatch):
    monkeypatch.setenv("STARGATE_LOCK_TIMEOUT", "2")  # not the default 30 s wait
    home = tmp_path / "home"
    Store(home)
    holder = sqlite3.connect(home / "stargate.db", isolation_level=None)
    holder.execute("begin exclusive")
    try:
        line = _error_line(_import_tasks(home, tmp_path))
        assert f"the store {home / 'stargate.db'} is locked by another program" in line
    finally:
        holder.execute("rollback")
        holder.close()
    assert _import_tasks(home, tmp_path).returncode == 0  # the lock gone, the same command works


def test_a_disk_that_fills_up_mid_stage_loses_nothing(tmp_path, data_home):
    """A home on a 4 MiB file system: the store fits, the 9.4 MB adapter does not. One line, exit 2; once there
    is room, the same command trains and finishes without redoing a stage."""
    from conftest import TINY_CI_OVERRIDES

    home = tmp_path / "small-disk"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home)], capture_output=True)
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a size-limited file system here ({mounted.stderr!r})")
    shutil.copytree(data_home, home, dirs_exist_ok=True)
    args = ["run", "--iterations", "1", *[a for o in TINY_CI_OVERRIDES for a in ("--set", o)]]
    try:
        line = _error_line(cli(*args, home=home, check=False))
        assert "the disk is full writing" in line and str(home / "runs" / "tiny") in line
        with closing(sqlite3.connect(home / "stargate.db")) as db:  # closed: the file system is unmounted after
            done = dict(db.execute("select stage, done_at from stages where iteration = 1"))
        assert set(done) == {"pairs", "simulate", "score", "select", "respond"}  # all but train kept
        subprocess.run(["mount", "-o", "remount,size=64m", str(home)], check=True)
        cli(*args, home=home)
        with closing(sqlite3.connect(home / "stargate.db")) as db:
            after = dict(db.execute("select stage, done_at from stages where iteration = 1"))
        assert {k: after[k] for k in done} == done and "train" in after  # nothing redone, training finished
    finally:
        subprocess.run(["umount", str(home)], check=True)
