"""A run's own records: the run and its recipe, the sessions (processes) that worked on it, its iterations, each
stage's start and done mark, the items a stage failed on, and the points sent to a tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from ..errors import StargateError
from .core import StoreCore


class RunRecords(StoreCore):
    """Tables runs, run_sessions, iterations, stages, stage_starts, failures, tracked and tracked_points: what a run
    is, where it stands and where its time went."""

    def get_run(self, run_id: str) -> dict | None:
        rows = self.rows("select * from runs where id = ?", [run_id])
        return rows[0] if rows else None

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

    def set_run_recipe(self, run_id: str, recipe_json: str) -> None:
        """A resumed run's new execution settings (runs.EXECUTION_ONLY), which later commands then use."""
        with self.transaction():
            self.db["runs"].update(run_id, {"recipe": recipe_json})

    def list_runs(self) -> list[dict]:
        return self.rows("select * from runs order by created_at")

    def start_session(self, row: dict) -> None:
        """A process begins work on a run: the code, package versions and machine (JSON) it runs with."""
        self.insert_rows("run_sessions", [row], pk="id")

    def run_sessions(self, run_id: str) -> list[dict]:
        return self.rows("select * from run_sessions where run_id = ? order by started_at", [run_id])

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

    def iteration_counts(self, run_id: str, iteration: int) -> dict[str, int]:
        """Rows an iteration has in each of its tables, for `status`."""
        return {table: self.value(f"select count(*) from {table} where run_id = ? and iteration = ?",
                                  [run_id, iteration])
                for table in ("pairs", "conversations", "scores", "selections", "responses")}

    def start_stage(self, run_id: str, iteration: int, stage: str, session_id: str, gpus: int) -> None:
        """An attempt at a stage begins (replacing an earlier attempt's start, killed or resumed before it)."""
        with self.transaction():
            self.db["stage_starts"].insert({"run_id": run_id, "iteration": iteration, "stage": stage,
                                            "started_at": time.time(), "session_id": session_id, "gpus": gpus},
                                           pk=("run_id", "iteration", "stage"), replace=True)

    def mark_stage(self, run_id: str, iteration: int, stage: str) -> None:
        with self.transaction():
            self.db["stages"].insert(
                {"run_id": run_id, "iteration": iteration, "stage": stage, "done_at": time.time()},
                pk=("run_id", "iteration", "stage"),
                replace=True,
            )

    def stage_done(self, run_id: str, iteration: int, stage: str) -> bool:
        sql = "select 1 from stages where run_id = ? and iteration = ? and stage = ?"
        return self.value(sql, [run_id, iteration, stage]) is not None

    def stage_marks(self, run_id: str, iteration: int) -> dict[str, float]:
        """When each finished stage of an iteration was marked done (epoch seconds): where its time went."""
        sql = "select stage, done_at from stages where run_id = ? and iteration = ?"
        return {r["stage"]: r["done_at"] for r in self.rows(sql, [run_id, iteration])}

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
