"""Select stage: keep the best-scoring conversation of each pair (top-1, ties to the lowest sample)."""

from __future__ import annotations

from .store import Store


def select_best(store: Store, run_id: str, iteration: int) -> int:
    """Store one selection per pair; returns how many pairs have one."""
    rows = [{**best, "run_id": run_id, "iteration": iteration} for best in store.best_scores(run_id, iteration)]
    store.insert_rows("selections", rows, pk="pair_id")
    return len(rows)
