"""A data set's records: its tasks and personas by split, the golds of (task, persona) pairs, and the pairs an
iteration (or an evaluation) draws from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..facts import persona_facts
from .core import VARIABLES_PER_QUERY, StoreCore


class DataRecords(StoreCore):
    """Tables tasks, personas, golds and pairs: what the stages simulate from."""

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

    def pair_iterations(self, run_id: str) -> list[int]:
        return [r["iteration"] for r in self.rows(
            "select distinct iteration from pairs where run_id = ? order by iteration", [run_id])]
