"""Select stage: keep the best-scoring conversation of each pair (top-1, ties to the lowest sample)."""

from __future__ import annotations

from .store import Store


def select_best(store: Store, run_id: str, iteration: int) -> int:
    """Store one selection per pair; returns how many pairs have one."""
    best: dict[str, dict] = {}
    for score in store.scores(run_id, iteration):
        current = best.get(score["pair_id"])
        if current is None or score["logprob"] > current["logprob"]:
            best[score["pair_id"]] = score
    rows = [
        {"pair_id": pair_id, "run_id": run_id, "iteration": iteration,
         "conversation_id": s["conversation_id"], "logprob": s["logprob"]}
        for pair_id, s in sorted(best.items())
    ]
    store.insert_rows("selections", rows, pk="pair_id")
    return len(rows)
