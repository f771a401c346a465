"""Bad homes and stores, as a new user meets them: each is one line naming the path and what to do, exit 2, and
the read-only commands never create a home."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing, contextmanager

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


def _files(folder) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def _older_store(home) -> None:
    """A store as the stargate-lite before the last migration left it."""
    import sqlite_utils

    from stargate_lite.store import MIGRATIONS

    home.mkdir(parents=True)
    db = sqlite_utils.Database(home / "stargate.db")
    db.enable_wal()
    db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    for name, migrate in MIGRATIONS[:-1]:
        migrate(db)
        db["_migrations"].insert({"name": name, "applied_at": 0.0})
    db.close()


def test_a_read_only_opening_writes_nothing(tmp_path):
    """Store(read_only=True), as status, report, browse and data show open it: the file keeps its bytes and time,
    no -wal or -shm is left behind, and a write through it is refused. Beside a writer at work (its -wal and -shm
    there) it reads the writer's latest rows and leaves the store and the -wal as they were."""
    home = tmp_path / "home"
    Store(home).db.close()
    before = _files(home)
    assert list(before) == ["stargate.db"]
    reader = Store(home, read_only=True)
    assert reader.list_runs() == []
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("insert into runs (id) values ('mine')")
    reader.db.close()
    assert _files(home) == before

    writer = Store(home)
    writer.create_run("working", "tiny", "{}", "builtin", 0)
    before = {name: v for name, v in _files(home).items() if name != "stargate.db-shm"}  # readers mark the -shm
    assert "stargate.db-wal" in before
    reader = Store(home, read_only=True)
    assert [r["id"] for r in reader.list_runs()] == ["working"]
    reader.db.close()
    assert {name: v for name, v in _files(home).items() if name != "stargate.db-shm"} == before
    writer.db.close()


def test_a_reading_command_upgrades_an_older_store_where_it_can_write(tmp_path):
    from stargate_lite.store import MIGRATIONS

    home = tmp_path / "home"
    _older_store(home)
    reader = Store(home, read_only=True)
    assert {r["name"] for r in reader.rows("select name from _migrations")} == {name for name, _ in MIGRATIONS}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("insert into runs (id) values ('mine')")


@contextmanager
def _read_only(home, view):
    """`view`: the home as a user who may not write it sees it. Root writes through permissions (CI runs as
    root): a read-only bind mount of the home; for others, a copy without write permission."""
    view.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(home), str(view)], capture_output=True, check=False)
        if mounted.returncode != 0:
            skip_or_fail(f"root without mount rights: cannot make a read-only home ({mounted.stderr!r})")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
            yield True
        finally:
            subprocess.run(["umount", str(view)], check=True)
    else:
        shutil.copytree(home, view, dirs_exist_ok=True)
        modes = {p: p.stat().st_mode for p in [view, *view.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield False
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


def _browse_runs(home) -> list[str]:
    """The runs table as `browse` serves it (Datasette's own client on its app)."""
    import asyncio

    from stargate_lite.commands.browse import browse_app

    app = browse_app(home)

    async def get():
        await app.invoke_startup()
        return await app.client.get("/stargate/runs.json?_shape=objects")

    try:
        response = asyncio.run(get())
    finally:
        for database in app.databases.values():
            database.close()
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["rows"]]


def test_reading_commands_read_a_read_only_home(tmp_path):
    """status, data show, report and browse on a home its user cannot write (a read-only mount: root writes through
    permissions, and CI runs as root): they read it; report prints what it found and says in one line that it
    could not write its files. Where a program writes the store through another path (a run at work), they read
    its latest rows. A store that needs upgrading there is one line."""
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run

    home, view = tmp_path / "home", tmp_path / "view"
    store = Store(home)
    open_run(store, load_recipe("tiny"), "tiny")
    store.start_iteration("tiny", 1, "A")
    store.mark_stage("tiny", 1, "pairs")
    store.db.close()
    assert not (home / "stargate.db-wal").exists()  # as a finished run leaves it
    with _read_only(home, view) as mounted:
        assert os.geteuid() != 0 or mounted
        (run,) = json.loads(cli("status", "--json", home=view).stdout)["runs"]
        assert run["id"] == "tiny" and [it["iteration"] for it in run["iterations"]] == [1]
        assert "run tiny" in cli("status", home=view).stdout
        assert cli("data", "show", home=view).returncode == 0
        report = cli("report", home=view, check=False)
        assert report.returncode == 0, report.stderr[-2000:]
        assert "No evaluation with that roleplayer yet" in report.stdout and "Report:" not in report.stdout
        (notice,) = report.stderr.splitlines()
        assert notice.startswith("Notice: ") and str(view / "runs" / "tiny") in notice and "report.md" in notice
        assert _browse_runs(view) == ["tiny"]
        if mounted:  # a run at work through the writable path: its -wal and -shm are there, read-only
            writer = Store(home)
            try:
                open_run(writer, load_recipe("tiny"), "working")
                runs = json.loads(cli("status", "--json", home=view).stdout)["runs"]
                assert [r["id"] for r in runs] == ["tiny", "working"]
                assert _browse_runs(view) == ["tiny", "working"]
            finally:
                writer.db.close()
    assert not (home / "runs" / "tiny" / "report.md").exists()

    older, view = tmp_path / "older", tmp_path / "older-view"
    _older_store(older)
    with _read_only(older, view):
        for command in (("status",), ("data", "show"), ("report",)):
            line = _error_line(cli(*command, home=view, check=False))
            assert f"the store {view / 'stargate.db'} was written by an older stargate-lite" in line, line
