"""The store's core: the SQLite file of a project home, opened (migrated first, or read-only), its transactions and
write lock, plain reads, and the generic row write; and the one-line wording of what can go wrong with the file.

The table families (runs, data, conversations, evaluations, exports) are mixins on StoreCore; the Store that
callers use is all of them together (store/__init__.py). Every generated thing is a row keyed by what produced it,
so a stage can ask what is missing and do only that. Writes of one unit of work happen in one transaction: after a
crash a unit is either all there or absent.
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import sqlite_utils

from ..errors import FallbackNotice, StargateError
from . import migrations

DB_NAME = "stargate.db"
BUSY_TIMEOUT_S = 30  # how long a write waits for another program's lock on the store ($STARGATE_LOCK_TIMEOUT)
LOCK_NOTICE_S = 1  # after this long waiting for the lock, say so (then wait the rest of the timeout)
# Ids bound in one `in (...)` list: under the 999 variables that SQLite builds before 3.32 allow (newer ones allow
# 32,766, which paper-scale lists exceed too).
VARIABLES_PER_QUERY = 500


def lock_timeout() -> float:
    """Seconds a write waits for another program's lock on the store: $STARGATE_LOCK_TIMEOUT, else BUSY_TIMEOUT_S."""
    raw = os.environ.get("STARGATE_LOCK_TIMEOUT", "")
    try:
        return float(raw) if raw.strip() else BUSY_TIMEOUT_S
    except ValueError:
        raise StargateError(f"STARGATE_LOCK_TIMEOUT={raw!r}: give a number of seconds") from None


def default_home() -> Path:
    return Path(os.environ.get("STARGATE_HOME", ".stargate"))


def store_error(path: Path, err: sqlite3.Error, reading: bool = False) -> str | None:
    """One line saying what went wrong with the store file at `path` and what to do; None for an error that is
    not about the file (a bug, which should show as one). `reading`: a command that only reads it (never None)."""
    text = str(err)
    if "not a database" in text:
        return (f"{path} is not a stargate-lite store (not an SQLite database, or damaged): move it aside or give "
                "another --home")
    if "locked" in text or "busy" in text:
        return f"the store {path} is locked by another program: close that program and run the command again"
    if "full" in text:
        return f"the disk holding {path} is full: free space and run the command again (finished work is kept)"
    if reading:
        return f"cannot read the store {path} ({text}): check its permissions or give another --home"
    if "readonly" in text or "unable to open" in text:
        return f"cannot write the store {path} ({text}): make the directory writable or give another --home"
    return None


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') for the values that start with `prefix`, its own % and _ taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class StoreCore:
    """A project home's SQLite file. Cheap to open; safe to read while a run writes (WAL).

    `create=False` (commands that read or add to an existing project) refuses a home without a store instead of
    making one. `read_only=True` (commands that only read: status, report, browse, data show) writes nothing and
    reads a home its user cannot write (a read-only mount, another user's project): see `_open_read_only`."""

    def __init__(self, home: Path | str | None = None, create: bool = True, read_only: bool = False):
        self.home = Path(home) if home is not None else default_home()
        self.path = self.home / DB_NAME
        self.immutable = False  # read without locks: a read-only home with no -wal (see _open_read_only)
        if (read_only or not create) and not self.path.is_file():
            raise StargateError(f"no stargate-lite store in {self.home}: give the --home of a project (or "
                                "$STARGATE_HOME), or start one with `stargate-lite run`")
        if read_only:
            self._open_read_only()
            return
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StargateError(f"the home {self.home} is a file, not a directory: give a directory as --home "
                                "(or $STARGATE_HOME)") from None
        except OSError as err:
            raise StargateError(f"cannot make the home {self.home} ({err.strerror}): give a writable directory as "
                                "--home (or $STARGATE_HOME)") from None
        try:
            self.db = sqlite_utils.Database(self.path)
            self.timeout_ms = int(lock_timeout() * 1000)
            self.db.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")
            self.db.enable_wal()
            self._migrate()
        except sqlite3.Error as err:
            raise StargateError(store_error(self.path, err) or f"cannot open the store {self.path} ({err})") from None

    def _open_read_only(self) -> None:
        """Open the store so that nothing is written through it.

        Where the home can be written, a plain connection with `query_only` on: SQLite's read-only mode (`mode=ro`)
        would make the -wal and -shm files of a WAL store and, unable to check-point, leave them behind, where a
        plain connection removes them as the last one closes. Where it cannot, `mode=ro`, which reads through a
        writer's -wal and -shm where they are; and where there are none and none can be made (a read-only mount
        after a run finished), `immutable=1`: no program has the store open to write, as a writer keeps its -wal.
        A store older than this stargate-lite is upgraded first where the home can be written (as any command
        does), and refused in one line where it cannot: its queries would name columns it lacks."""
        writable = os.access(self.home, os.W_OK) and os.access(self.path, os.W_OK)
        try:
            self.db = self._read_only_database(writable)
            pending = self._pending_migrations()
        except sqlite3.Error as err:
            raise StargateError(store_error(self.path, err, reading=True)) from None
        if not pending:
            return
        if not writable:
            raise StargateError(f"the store {self.path} was written by an older stargate-lite and needs upgrading "
                                f"({len(pending)} migration(s) from {pending[0]}), which this home does not allow: run "
                                "the command once where the home can be written, or with that older stargate-lite")
        self.db.close()
        type(self)(self.home, create=False).db.close()  # the upgrade any command makes
        self.db = self._read_only_database(writable)

    def _read_only_database(self, writable: bool) -> sqlite_utils.Database:
        if writable:
            connection = sqlite3.connect(self.path)
            connection.execute("PRAGMA query_only = ON")
        else:
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            connection = sqlite3.connect(uri, uri=True)
            try:
                connection.execute("select count(*) from sqlite_master").fetchone()  # the -wal is opened here
            except sqlite3.OperationalError as err:
                connection.close()
                if "unable to open" not in str(err) or self.path.with_name(f"{DB_NAME}-wal").exists():
                    raise
                connection = sqlite3.connect(f"{uri}&immutable=1", uri=True)
                self.immutable = True
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        return sqlite_utils.Database(connection)

    # -- schema ---------------------------------------------------------------------------------------------
    def _pending_migrations(self) -> list[str]:
        """The migrations this store lacks; a store written by a newer stargate-lite is refused. (MIGRATIONS is read
        from its module at each open, where tests shorten it to make a store as an older version left it.)"""
        done = ({row["name"] for row in self.db["_migrations"].rows} if "_migrations" in self.db.table_names()
                else set())
        known = {name for name, _ in migrations.MIGRATIONS}
        if done - known:
            raise StargateError(
                f"the store {self.path} was written by a newer stargate-lite (migrations {sorted(done - known)}): "
                "upgrade stargate-lite or use another --home"
            )
        return [name for name, _ in migrations.MIGRATIONS if name not in done]

    def _migrate(self) -> None:
        pending = self._pending_migrations()
        if "_migrations" not in self.db.table_names():
            self.db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
        for name, migrate in migrations.MIGRATIONS:
            if name in pending:
                with self.transaction():
                    migrate(self.db)
                    self.db["_migrations"].insert({"name": name, "applied_at": time.time()})

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around several writes. sqlite-utils' own writes nest inside it as savepoints; with
        the connection's plain context manager, each of them committed on its own, so a unit was not atomic.
        The outermost takes the write lock before anything else (`_lock_for_writing`)."""
        if self.db.conn.in_transaction:
            with self.db.atomic():  # nested: a savepoint
                yield
            return
        self._lock_for_writing()
        try:
            yield
            self.db.conn.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.conn.execute("ROLLBACK")
            raise

    def _lock_for_writing(self) -> None:
        """BEGIN IMMEDIATE: the write lock first, so a unit never reads and then finds the lock taken (which SQLite
        fails at once, without waiting). Where another program holds it, a wait past LOCK_NOTICE_S is said (a
        FallbackNotice: the CLI's "Notice:" line on stderr), then goes on to lock_timeout() in all."""
        first = min(LOCK_NOTICE_S * 1000, self.timeout_ms)
        try:
            self.db.execute(f"PRAGMA busy_timeout = {first}")
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                if ("locked" not in str(err) and "busy" not in str(err)) or first == self.timeout_ms:
                    raise
                warnings.warn(FallbackNotice(f"waiting for the store {self.path}, locked by another process (up "
                                             f"to {self.timeout_ms / 1000:g} s)..."), stacklevel=3)
                self.db.execute(f"PRAGMA busy_timeout = {self.timeout_ms - first}")
                self.db.conn.execute("BEGIN IMMEDIATE")
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")

    # Plain SQL reads, for the table families and for inspecting a store (tests, scripts); the library's other
    # modules call the families' named methods.
    def rows(self, sql: str, params: Iterable | dict = ()) -> list[dict]:
        return list(self.db.query(sql, params))

    def value(self, sql: str, params: Iterable | dict = ()):
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    # -- the generic write --------------------------------------------------------------------------------------
    def insert_rows(self, table: str, rows: list[dict], pk) -> None:
        """Insert rows in one transaction, keeping rows that exist (ignore): reruns add nothing twice."""
        if rows:
            with self.transaction():
                self.db[table].insert_all(rows, pk=pk, ignore=True)
