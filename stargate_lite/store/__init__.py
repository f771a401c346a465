"""The one module that owns SQLite: schema, named migrations, and every read and write of records.

Every generated thing is a row keyed by what produced it, so a stage can ask what is missing and do only that.
Writes of one unit of work happen in one transaction: after a crash a unit is either all there or absent.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import sqlite_utils

from ..errors import FallbackNotice, StargateError
from ..facts import persona_facts
from ..prompts import is_question
from . import migrations
from .browse import BROWSE_QUERIES as BROWSE_QUERIES  # browse's, from the store
from .browse import TABLE_NOTES as TABLE_NOTES
from .migrations import MIGRATIONS as MIGRATIONS  # callers (tests) import it from the store
from .reward import reward_sql

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


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') for the values that start with `prefix`, its own % and _ taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Store:
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
        Store(self.home, create=False).db.close()  # the upgrade any command makes
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

    # Plain SQL reads, for this module and for inspecting a store (tests, scripts); the library's other modules
    # call the named methods below.
    def rows(self, sql: str, params: Iterable | dict = ()) -> list[dict]:
        return list(self.db.query(sql, params))

    def value(self, sql: str, params: Iterable | dict = ()):
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    # -- runs -----------------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict | None:
        rows = self.rows("select * from runs where id = ?", [run_id])
        return rows[0] if rows else None

    def set_run_recipe(self, run_id: str, recipe_json: str) -> None:
        """A resumed run's new execution settings (runs.EXECUTION_ONLY), which later commands then use."""
        with self.transaction():
            self.db["runs"].update(run_id, {"recipe": recipe_json})

    def create_run(self, run_id: str, recipe_name: str, recipe_json: str, dataset: str, seed: int) -> None:
        with self.transaction():
            self.db["runs"].insert(
                {
                    "id": run_id,
                    "recipe_name": recipe_name,
                    "recipe": recipe_json,
                    "dataset": dataset,
                    "seed": seed,
                    "created_at": time.time(),
                }
            )

    def list_runs(self) -> list[dict]:
        return self.rows("select * from runs order by created_at")

    # -- data -----------------------------------------------------------------------------------------------
    def insert_rows(self, table: str, rows: list[dict], pk) -> None:
        """Insert rows in one transaction, keeping rows that exist (ignore): reruns add nothing twice."""
        if rows:
            with self.transaction():
                self.db[table].insert_all(rows, pk=pk, ignore=True)

    def tasks(self, dataset: str, split: str, limit: int | None = None) -> list[dict]:
        sql = "select * from tasks where dataset = ? and split = ? order by idx"
        rows = self.rows(sql, [dataset, split])
        return rows if limit is None else rows[:limit]

    def add_personas(self, rows: list[dict]) -> None:
        """Insert personas (keeping those that exist) with their facts (facts.persona_facts) beside the text."""
        self.insert_rows("personas", [{**row, "facts": json.dumps(persona_facts(row["text"]))} for row in rows],
                         pk="id")

    def personas(self, dataset: str, split: str, limit: int | None = None) -> list[dict]:
        rows = self.rows("select * from personas where dataset = ? and split = ? order by idx", [dataset, split])
        return rows if limit is None else rows[:limit]

    def golds_for(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The gold rows of (task id, persona id) pairs that have one, read VARIABLES_PER_QUERY ids at a time."""
        ids = [f"{t}|{p}" for t, p in pairs]  # a gold's id, whether the Oracle wrote it or it was imported
        found = {}
        for start in range(0, len(ids), VARIABLES_PER_QUERY):
            chunk = ids[start : start + VARIABLES_PER_QUERY]
            for g in self.rows(f"select * from golds where id in ({','.join('?' * len(chunk))})", chunk):
                found[(g["task_id"], g["persona_id"])] = g
        return found

    def split_texts(self, table: str, dataset: str, split: str) -> list[str]:
        """The texts of a data set's tasks or personas in one split, in order."""
        if table not in ("tasks", "personas"):
            raise ValueError(table)
        return [r["text"] for r in self.rows(f"select text from {table} where dataset = ? and split = ? order by idx",
                                             [dataset, split])]

    def texts_outside_split(self, table: str, dataset: str, split: str) -> set[str]:
        if table not in ("tasks", "personas"):
            raise ValueError(table)
        return {r["text"] for r in self.rows(f"select text from {table} where dataset = ? and split != ?",
                                             [dataset, split])}

    def dataset_counts(self) -> list[dict]:
        """Each split that holds tasks or personas (an import may bring either first), with its counts."""
        return self.rows(
            """
            with splits as (select dataset, split from tasks union select dataset, split from personas)
            select s.dataset, s.split,
              (select count(*) from tasks t where t.dataset = s.dataset and t.split = s.split) as tasks,
              (select count(*) from personas p where p.dataset = s.dataset and p.split = s.split) as personas,
              (select count(*) from golds g join tasks t2 on g.task_id = t2.id
                 where t2.dataset = s.dataset and t2.split = s.split and g.status = 'ok') as golds,
              (select count(*) from golds g join tasks t2 on g.task_id = t2.id
                 where t2.dataset = s.dataset and t2.split = s.split and g.status != 'ok') as golds_skipped
            from splits s order by s.dataset, s.split
            """
        )

    # -- failures -------------------------------------------------------------------------------------------------
    @contextmanager
    def failure_log(self, scope: str, stage: str, what: str) -> Iterator[Callable[[str, str], None]]:
        """Collect the items a stage could not finish; yields record(item, reason, final=False).

        The stage's old failure rows are replaced by this attempt's. If any item failed, the stage ends with one
        error saying how many, why, and that a rerun retries only those (everything else is already stored). An
        item `final`ly failed (refused for good: a rerun would fail alike) is recorded, its reason prefixed "left
        out: ", and the stage goes on."""
        with self.transaction():
            self.db.execute("delete from failures where scope = ? and stage = ?", [scope, stage])
        failed: list[tuple[str, str]] = []

        def record(item: str, reason: str, final: bool = False) -> None:
            if not final:
                failed.append((item, reason))
            row = {"id": f"{scope}/{stage}/{item}", "scope": scope, "stage": stage, "item": item,
                   "reason": f"left out: {reason}" if final else reason, "at": time.time()}
            with self.transaction():
                self.db["failures"].insert(row, pk="id", replace=True)

        yield record
        if failed:
            raise StargateError(
                f"{len(failed)} {what} failed ({failed[-1][1]}); all else is saved in {self.path}: "
                "run the same command again to retry only those (see the failures table)"
            )

    # -- stages -----------------------------------------------------------------------------------------------
    def stage_done(self, run_id: str, iteration: int, stage: str) -> bool:
        sql = "select 1 from stages where run_id = ? and iteration = ? and stage = ?"
        return self.value(sql, [run_id, iteration, stage]) is not None

    def stage_marks(self, run_id: str, iteration: int) -> dict[str, float]:
        """When each finished stage of an iteration was marked done (epoch seconds): where its time went."""
        sql = "select stage, done_at from stages where run_id = ? and iteration = ?"
        return {r["stage"]: r["done_at"] for r in self.rows(sql, [run_id, iteration])}

    def start_session(self, row: dict) -> None:
        """A process begins work on a run: the code, package versions and machine (JSON) it runs with."""
        self.insert_rows("run_sessions", [row], pk="id")

    def start_stage(self, run_id: str, iteration: int, stage: str, session_id: str, gpus: int) -> None:
        """An attempt at a stage begins (replacing an earlier attempt's start, killed or resumed before it)."""
        with self.transaction():
            self.db["stage_starts"].insert({"run_id": run_id, "iteration": iteration, "stage": stage,
                                            "started_at": time.time(), "session_id": session_id, "gpus": gpus},
                                           pk=("run_id", "iteration", "stage"), replace=True)

    def tracked_points(self, run_id: str, tracker: str, series: str) -> set[tuple[str, int]]:
        """The points of a series sent to a tracker, {(name, step)}."""
        sql = "select name, step from tracked_points where run_id = ? and tracker = ? and series = ?"
        return {(name, step) for name, step in self.db.execute(sql, [run_id, tracker, series])}

    def tracked_until(self, run_id: str, tracker: str, series: str) -> int | None:
        """The step up to which a store from before m020 had sent a series (each point at or before it counts as
        sent), or None."""
        return self.value("select step from tracked where run_id = ? and tracker = ? and series = ?",
                          [run_id, tracker, series])

    def add_tracked(self, run_id: str, tracker: str, series: str, step: int, names: Iterable[str]) -> None:
        """Points of a series about to be sent to a tracker, in one transaction."""
        self.insert_rows("tracked_points", [{"run_id": run_id, "tracker": tracker, "series": series, "name": name,
                                             "step": step} for name in names],
                         pk=("run_id", "tracker", "series", "name", "step"))

    def run_sessions(self, run_id: str) -> list[dict]:
        return self.rows("select * from run_sessions where run_id = ? order by started_at", [run_id])

    def stage_times(self, run_id: str) -> list[dict]:
        """Each finished stage of a run with its latest attempt's start ({iteration, stage, started_at, done_at,
        gpus}; started_at NULL for stages finished before starts were stored)."""
        return self.rows(
            """
            select s.iteration, s.stage, b.started_at, s.done_at, b.gpus from stages s left join stage_starts b
              on b.run_id = s.run_id and b.iteration = s.iteration and b.stage = s.stage
            where s.run_id = ? order by s.iteration, s.done_at
            """,
            [run_id],
        )

    def stage_tokens(self, run_id: str, iteration: int) -> dict[str, int | None]:
        """Tokens each stage of an iteration handled, where the store counts them: simulate the conversations'
        turns (both roles), score the gold tokens scored (after each turn too under reward.per_turn), respond the
        responses' and train the trained tokens."""
        def total(table: str, column: str = "n_tokens") -> int | None:
            return self.value(f"select sum({column}) from {table} where run_id = ? and iteration = ?",
                              [run_id, iteration])

        turns = ("select sum(t.n_tokens) from turns t join conversations c on c.id = t.conversation_id "
                 "where c.run_id = ? and c.iteration = ?")
        scored = [n for n in (total("scores"), total("turn_scores")) if n is not None]
        return {"simulate": self.value(turns, [run_id, iteration]), "score": sum(scored) if scored else None,
                "respond": total("responses"), "train": total("trainings", "trained_tokens")}

    def pair_extremes(self, run_id: str, iteration: int, pairs: int) -> list[dict]:
        """The first `pairs` scored pairs of an iteration, each with its best and worst conversation by gold
        log-prob: {task, persona_name, best: {logprob, turns}, worst: {logprob, turns}}."""
        rows = self.rows(
            """
            select p.id, p.idx, t.text as task, pe.name as persona_name, s.conversation_id, s.logprob
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
              join conversations c on c.pair_id = p.id join scores s on s.conversation_id = c.id
            where p.run_id = ? and p.iteration = ? and p.id in (
              select p2.id from pairs p2 where p2.run_id = ? and p2.iteration = ?
                and exists (select 1 from conversations c2 join scores s2 on s2.conversation_id = c2.id
                            where c2.pair_id = p2.id)
              order by p2.idx limit ?)
            order by p.idx, s.logprob desc, s.conversation_id
            """,
            [run_id, iteration, run_id, iteration, pairs],
        )
        by_pair: dict[str, list[dict]] = {}
        for row in rows:
            by_pair.setdefault(row["id"], []).append(row)
        turns = self.turns([r["conversation_id"] for group in by_pair.values() for r in (group[0], group[-1])])
        return [{"task": group[0]["task"], "persona_name": group[0]["persona_name"],
                 **{end: {"logprob": row["logprob"], "turns": turns[row["conversation_id"]]}
                    for end, row in (("best", group[0]), ("worst", group[-1]))}}
                for group in by_pair.values()]

    def mark_stage(self, run_id: str, iteration: int, stage: str) -> None:
        with self.transaction():
            self.db["stages"].insert(
                {"run_id": run_id, "iteration": iteration, "stage": stage, "done_at": time.time()},
                pk=("run_id", "iteration", "stage"),
                replace=True,
            )

    # -- iteration records -------------------------------------------------------------------------------------
    def pairs(self, run_id: str, iteration: int) -> list[dict]:
        return self.rows(
            """
            select p.*, t.text as task, pe.name as persona_name, pe.text as persona, pe.facts as persona_facts,
                   g.text as gold
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
            join golds g on g.task_id = p.task_id and g.persona_id = p.persona_id
            where p.run_id = ? and p.iteration = ? order by p.idx
            """,
            [run_id, iteration],
        )

    def conversation_ids(self, run_id: str, iteration: int) -> set[str]:
        sql = "select id from conversations where run_id = ? and iteration = ?"
        return {conversation for (conversation,) in self.db.execute(sql, [run_id, iteration])}

    def save_conversations(self, conversations: list[dict]) -> None:
        """Store finished conversations and their turns together: one chunk, one transaction.

        A message is {role, text, trimmed, cut, n_tokens, facts}; whether a Questioner turn is a question
        (prompts.is_question), and how many a conversation asked, are worked out here."""
        turn_rows = [
            {
                "conversation_id": c["id"],
                "idx": i,
                "role": t["role"],
                "text": t["text"],
                "is_question": int(t["role"] == "questioner" and is_question(t["text"])),
                "trimmed": t.get("trimmed", 0),
                "cut": t.get("cut"),
                "n_tokens": t.get("n_tokens"),
                "facts": json.dumps(t["facts"]) if t.get("facts") is not None else None,
            }
            for c in conversations
            for i, t in enumerate(c["messages"])
        ]
        conv_rows = [{**{k: v for k, v in c.items() if k != "messages"},
                      "questions": sum(t["role"] == "questioner" and is_question(t["text"]) for t in c["messages"])}
                     for c in conversations]
        with self.transaction():
            self.db["conversations"].insert_all(conv_rows, pk="id", ignore=True)
            self.db["turns"].insert_all(turn_rows, pk=("conversation_id", "idx"), ignore=True)

    def turns(self, conversation_ids: list[str]) -> dict[str, list[dict]]:
        conversation_ids = list(dict.fromkeys(conversation_ids))  # an id named twice, maybe in two chunks: once
        out: dict[str, list[dict]] = {cid: [] for cid in conversation_ids}
        for start in range(0, len(conversation_ids), VARIABLES_PER_QUERY):
            ids = conversation_ids[start : start + VARIABLES_PER_QUERY]
            sql = f"select * from turns where conversation_id in ({','.join('?' * len(ids))}) order by idx"
            for row in self.rows(sql, ids):
                turn = {"role": row["role"], "text": row["text"]}
                if row.get("facts") is not None:  # a gated user's reply: the facts it was given
                    turn["facts"] = json.loads(row["facts"])
                out[row["conversation_id"]].append(turn)
        return out

    def cut_turns(self, run_id: str, iteration: int) -> set[tuple[str, int]]:
        """(conversation, turn index) of an iteration's Questioner turns that generation cut at its token limit."""
        sql = ("select t.conversation_id, t.idx from conversations c join turns t on t.conversation_id = c.id "
               "where c.run_id = ? and c.iteration = ? and t.cut = 1")
        return {(conversation, idx) for conversation, idx in self.db.execute(sql, [run_id, iteration])}

    def conversations(self, run_id: str, iteration: int) -> list[dict]:
        sql = "select * from conversations where run_id = ? and iteration = ? order by pair_id, sample"
        return self.rows(sql, [run_id, iteration])

    def conversations_to_score(self, run_id: str, iteration: int) -> list[dict]:
        """Every conversation of an iteration as {id, pair_id, scored (0 or 1)}, in (pair, sample) order."""
        return self.rows(
            """
            select c.id, c.pair_id, s.conversation_id is not null as scored
            from conversations c left join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [run_id, iteration],
        )

    def scores(self, run_id: str, iteration: int) -> list[dict]:
        return self.rows(
            """
            select s.conversation_id, s.logprob, s.n_tokens, c.pair_id, c.sample
            from conversations c join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [run_id, iteration],
        )

    def best_scores(self, run_id: str, iteration: int, question_cost: float = 0.0, worst: bool = False) -> list[dict]:
        """Each pair's best conversation {pair_id, conversation_id, logprob, reward} by reward (its log-prob less
        question_cost per question), ties to the lowest sample, by pair: the selection, chosen in SQL (an iteration
        can hold a million scores). With no cost the reward is the log-prob itself (x - 0.0 is x, exactly).
        `worst`: each pair's worst instead (ties to the lowest sample too), for preference training."""
        order = "asc" if worst else "desc"
        reward = reward_sql("s.logprob", "c.questions", "?")
        return self.rows(
            f"""
            select pair_id, conversation_id, logprob, reward from (
              select c.pair_id, s.conversation_id, s.logprob, {reward} as reward,
                row_number() over (partition by c.pair_id order by {reward} {order}, c.sample) as place
              from conversations c join scores s on s.conversation_id = c.id
              where c.run_id = ? and c.iteration = ?
            ) where place = 1 order by pair_id
            """,
            [question_cost, question_cost, run_id, iteration],
        )

    def rewards(self, run_id: str, iteration: int, question_cost: float = 0.0) -> list[dict]:
        """Every scored conversation of an iteration {pair_id, conversation_id, answer, answer_cut, logprob, reward}, its reward as
        selection reckons it (best_scores), in (pair, sample) order: the samples of rloo and grpo."""
        return self.rows(
            f"""
            select c.pair_id, c.id as conversation_id, c.answer, c.answer_cut, s.logprob,
              {reward_sql("s.logprob", "c.questions", "?")} as reward
            from conversations c join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [question_cost, run_id, iteration],
        )

    def turn_scores(self, run_id: str, iteration: int) -> dict[str, dict[int, float]]:
        """reward.per_turn: each conversation's gold log-prob after its first k turns, {conversation: {k: logprob}}."""
        out: dict[str, dict[int, float]] = {}
        sql = "select conversation_id, turns, logprob from turn_scores where run_id = ? and iteration = ?"
        for conversation, turns, logprob in self.db.execute(sql, [run_id, iteration]):
            out.setdefault(conversation, {})[turns] = logprob
        return out

    def selected_turns(self, run_id: str, iteration: int) -> dict[str, list[dict]]:
        """The turns of an iteration's selected conversations, by conversation id (one query, no id list)."""
        rows: dict[str, list[tuple]] = {}
        sql = """
            select t.conversation_id, t.idx, t.role, t.text from selections s join turns t
            on t.conversation_id = s.conversation_id where s.run_id = ? and s.iteration = ?
        """  # ordered here, per conversation: an ORDER BY costs SQLite a sort of every turn
        for conversation, idx, role, text in self.db.execute(sql, [run_id, iteration]):
            rows.setdefault(conversation, []).append((idx, role, text))
        return {conversation: [{"role": role, "text": text} for _, role, text in sorted(turns)]
                for conversation, turns in rows.items()}

    def selections(self, run_id: str, iteration: int) -> list[dict]:
        sql = "select * from selections where run_id = ? and iteration = ? order by pair_id"
        return self.rows(sql, [run_id, iteration])

    def responses(self, run_id: str, iteration: int) -> dict[str, dict]:
        sql = "select * from responses where run_id = ? and iteration = ?"
        return {r["pair_id"]: r for r in self.rows(sql, [run_id, iteration])}

    def iteration_counts(self, run_id: str, iteration: int) -> dict[str, int]:
        """Rows an iteration has in each of its tables, for `status`."""
        return {table: self.value(f"select count(*) from {table} where run_id = ? and iteration = ?",
                                  [run_id, iteration])
                for table in ("pairs", "conversations", "scores", "selections", "responses")}

    def roleplayer_counts(self, run_id: str, iteration: int) -> dict[str, int]:
        """How many of an iteration's conversations each Roleplayer answered (None: stored before this was)."""
        sql = ("select roleplayer, count(*) as n from conversations where run_id = ? and iteration = ? "
               "group by roleplayer order by roleplayer")
        return {r["roleplayer"]: r["n"] for r in self.rows(sql, [run_id, iteration])}

    def conversation_efficiency(self, run_id: str, iteration: int) -> list[dict]:
        """Per conversation of an iteration (or evaluation): {turns, questions, questioner_turns, user_tokens};
        user_tokens (the Roleplayer's answers) is NULL for conversations stored before token counts were."""
        return self.rows(
            """
            select c.turns, c.questions, count(case when t.role = 'questioner' then 1 end) as questioner_turns,
              case when count(case when t.role = 'roleplayer' and t.n_tokens is null then 1 end) > 0 then null
                   else coalesce(sum(case when t.role = 'roleplayer' then t.n_tokens end), 0) end as user_tokens
            from conversations c left join turns t on t.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? group by c.id
            """,
            [run_id, iteration],
        )

    def facts_given(self, run_id: str, iteration: int) -> list[int]:
        """Per conversation of an iteration whose user was gated (simulate.reveal asked), how many of its persona's
        facts the user was given over its replies (each fact once); empty for a free user's conversations."""
        sql = """
            select c.id, count(distinct j.value) as given
            from conversations c join turns t on t.conversation_id = c.id, json_each(t.facts) j
            where c.run_id = ? and c.iteration = ? and t.facts is not null group by c.id
        """
        gated = """
            select c.id from conversations c join turns t on t.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? and t.facts is not null group by c.id
        """
        given = {row["id"]: row["given"] for row in self.rows(sql, [run_id, iteration])}
        return [given.get(conversation, 0) for (conversation,) in self.db.execute(gated, [run_id, iteration])]

    def response_lengths(self, run_id: str, iteration: int) -> list[dict]:
        """{turns, n_tokens} of each regularizer response of an iteration, with its conversation's turns."""
        sql = ("select c.turns, r.n_tokens from responses r join conversations c on c.id = r.conversation_id "
               "where r.run_id = ? and r.iteration = ?")
        return self.rows(sql, [run_id, iteration])

    def eval_response_lengths(self, ns: str, iteration: int, responder: str) -> list[dict]:
        """{pair_key, turns, n_tokens} of each evaluation response, with the turns of the conversation it
        followed."""
        sql = ("select r.pair_key, c.turns, r.n_tokens from eval_responses r join conversations c "
               "on c.id = r.conversation_id where r.ns = ? and r.iteration = ? and r.responder = ?")
        return self.rows(sql, [ns, iteration, responder])

    def audit_conversations(self, run_id: str, iteration: int, limit: int | None = None) -> list[dict]:
        """{roleplayer, persona, persona_facts (JSON), turn_count, turns} of an iteration's conversations: all, or
        the first `limit` stored."""
        sql = ("select c.id, c.roleplayer, c.turns as turn_count, pe.text as persona, pe.facts as persona_facts "
               "from conversations c join pairs p on p.id = c.pair_id join personas pe on pe.id = p.persona_id "
               "where c.run_id = ? and c.iteration = ? limit ?")
        rows = self.rows(sql, [run_id, iteration, -1 if limit is None else limit])
        turns = self.turns([r["id"] for r in rows])
        return [{**{k: v for k, v in r.items() if k != "id"}, "turns": turns[r["id"]]} for r in rows]

    def eval_namespaces(self, run_id: str) -> list[str]:
        """The evaluation namespaces ("RUN#eval:ROLEPLAYER") that hold conversations of a run."""
        sql = "select distinct run_id from pairs where run_id like ? escape '\\' order by run_id"
        return [r["run_id"] for r in self.rows(sql, [_like_prefix(f"{run_id}#eval:")])]

    def pair_iterations(self, run_id: str) -> list[int]:
        return [r["iteration"] for r in self.rows(
            "select distinct iteration from pairs where run_id = ? order by iteration", [run_id])]

    def training(self, run_id: str, iteration: int) -> dict | None:
        """The training record, its adapter as an absolute path (stored relative to the home, so a home that
        moves, or a command started from another directory, still finds it)."""
        rows = self.rows("select * from trainings where run_id = ? and iteration = ?", [run_id, iteration])
        if not rows:
            return None
        return {**rows[0], "adapter": os.path.abspath(self.home / rows[0]["adapter"])}

    def finish_training(self, row: dict) -> None:
        """The training record, the train stage's mark and the iteration's finish, in one transaction: a crash
        leaves an iteration either trained and finished or to be trained again."""
        now = time.time()
        adapter = Path(row["adapter"])
        if adapter.is_relative_to(self.home):
            adapter = adapter.relative_to(self.home)
        steps = row.get("policy_steps")
        row = {**row, "adapter": str(adapter), "losses": json.dumps(row["losses"]),
               "policy_steps": json.dumps(steps) if steps else None, "finished_at": now}
        with self.transaction():
            self.db["trainings"].insert(row, pk=("run_id", "iteration"), replace=True)
            self.db["stages"].insert({"run_id": row["run_id"], "iteration": row["iteration"], "stage": "train",
                                      "done_at": now}, pk=("run_id", "iteration", "stage"), replace=True)
            self.db["iterations"].update((row["run_id"], row["iteration"]), {"finished_at": now})

    def start_iteration(self, run_id: str, iteration: int, split: str) -> None:
        row = {"run_id": run_id, "iteration": iteration, "split": split, "started_at": time.time(), "finished_at": None}
        self.insert_rows("iterations", [row], pk=("run_id", "iteration"))

    def finish_iteration(self, run_id: str, iteration: int) -> None:
        """Mark a trained iteration finished, if it is not yet (keeps the first finish time)."""
        with self.transaction():
            self.db.execute("update iterations set finished_at = ? where run_id = ? and iteration = ? "
                            "and finished_at is null", [time.time(), run_id, iteration])

    def iterations(self, run_id: str) -> list[dict]:
        return self.rows("select * from iterations where run_id = ? order by iteration", [run_id])

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_score_ids(self, ns: str, iteration: int) -> set[str]:
        sql = "select id from eval_scores where ns = ? and iteration = ?"
        return {r["id"] for r in self.rows(sql, [ns, iteration])}

    def eval_logprobs(self, ns: str, iteration: int, condition: str) -> list[dict]:
        """[{pair_key, logprob}] of one condition's gold log-probs."""
        sql = "select pair_key, logprob from eval_scores where ns = ? and iteration = ? and condition = ? order by id"
        return self.rows(sql, [ns, iteration, condition])

    def eval_response_keys(self, ns: str, iteration: int, responder: str) -> set[str]:
        sql = "select pair_key from eval_responses where ns = ? and iteration = ? and responder = ?"
        return {r["pair_key"] for r in self.rows(sql, [ns, iteration, responder])}

    def eval_response_texts(self, ns: str, iterations: list[int]) -> dict[tuple[int, str, str], str]:
        """{(iteration, responder, pair key): response}"""
        sql = f"select * from eval_responses where ns = ? and iteration in ({','.join('?' * len(iterations))})"
        return {(r["iteration"], r["responder"], r["pair_key"]): r["text"] for r in self.rows(sql, [ns, *iterations])}

    def judgments(self, ns: str, iteration: int, responder: str, judge: str, protocol: str) -> list[dict]:
        sql = ("select * from judgments where ns = ? and iteration = ? and responder = ? and judge = ? "
               "and protocol = ? order by id")
        return self.rows(sql, [ns, iteration, responder, judge, protocol])

    # -- a run's records as a dataset (commands/dataset.py) --------------------------------------------------------
    def _of_run(self, column: str, run_id: str) -> tuple[str, list[str]]:
        """A WHERE clause for the rows of a run's namespaces: the run's own and "RUN#..." (evaluation, probe)."""
        return f"({column} = ? or {column} like ? escape '\\')", [run_id, _like_prefix(f"{run_id}#")]

    def export_pairs(self, run_id: str) -> list[dict]:
        """Every pair of a run's namespaces with its task, persona and gold."""
        where, params = self._of_run("p.run_id", run_id)
        return self.rows(
            f"""
            select p.id, p.run_id as namespace, p.iteration, t.split, p.task_id, t.text as task, p.persona_id,
              pe.name as persona_name, pe.text as persona, g.text as gold, p.turns
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
            left join golds g on g.task_id = p.task_id and g.persona_id = p.persona_id
            where {where} order by p.run_id, p.iteration, p.idx
            """,
            params,
        )

    def export_conversations(self, run_id: str, question_cost: float) -> list[dict]:
        """Every conversation of a run's namespaces: its gold log-prob (the score stage's, or an evaluation's
        experimental one), its reward as selection reckons it, whether selection kept it, and its persona (text,
        facts) for the elicitation counts."""
        where, params = self._of_run("c.run_id", run_id)
        return self.rows(
            f"""
            select c.id, c.run_id as namespace, c.iteration, c.pair_id, c.sample, c.policy, c.roleplayer,
              c.turns as turn_count, c.questions, c.answer, coalesce(s.logprob, e.logprob) as logprob,
              {reward_sql("coalesce(s.logprob, e.logprob)", "coalesce(c.questions, 0)", "?")} as reward,
              k.conversation_id is not null as kept, pe.text as persona, pe.facts as persona_facts
            from conversations c join pairs p on p.id = c.pair_id join personas pe on pe.id = p.persona_id
            left join scores s on s.conversation_id = c.id
            left join eval_scores e on e.conversation_id = c.id and e.condition = 'experimental'
            left join selections k on k.conversation_id = c.id
            where {where} order by c.run_id, c.iteration, c.pair_id, c.sample
            """,
            [question_cost, *params],
        )

    def export_selections(self, run_id: str) -> list[dict]:
        return self.rows("select * from selections where run_id = ? order by iteration, pair_id", [run_id])

    def export_responses(self, run_id: str) -> list[dict]:
        return self.rows("select * from responses where run_id = ? order by iteration, pair_id", [run_id])

    def export_judgments(self, run_id: str) -> list[dict]:
        """Every verdict of a run's evaluations, with the two responses it compared side by side: the responder's
        after Q_eta's conversation, and Q_0's own (iteration 0, stored under responder 'policy' whichever responder
        was judged: evaluate._respond)."""
        where, params = self._of_run("j.ns", run_id)
        return self.rows(
            f"""
            select j.id, j.ns as namespace, j.iteration, j.responder, j.judge, j.protocol, j.pair_key, j.turns,
              j.swapped, j.policy_is_a, j.verdict, j.winner, j.status, j.margin,
              p.text as policy_response, b.text as base_response
            from judgments j
            left join eval_responses p on p.ns = j.ns and p.iteration = j.iteration and p.responder = j.responder
              and p.pair_key = j.pair_key
            left join eval_responses b on b.ns = j.ns and b.iteration = 0 and b.responder = 'policy'
              and b.pair_key = j.pair_key
            where {where} order by j.ns, j.iteration, j.id
            """,
            params,
        )

    # -- chats --------------------------------------------------------------------------------------------------
    def save_chat(self, row: dict) -> None:
        with self.transaction():
            self.db["chats"].insert(row, pk="id", replace=True)
