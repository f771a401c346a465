"""Select stage: keep each pair's best conversation by reward (top-1, ties to the lowest sample).

The reward is the gold's log-prob under the base model less reward.question_cost nats per question asked, plus
reward.fact_credit nats per persona fact a gated user was told (store/reward.py)."""

from __future__ import annotations

from ..store import Store
from ..store.reward import LOGPROB_ONLY, RewardTerms


def select_best(store: Store, run_id: str, iteration: int, terms: RewardTerms = LOGPROB_ONLY) -> int:
    """Store one selection per pair; returns how many pairs have one."""
    rows = [{**best, "run_id": run_id, "iteration": iteration}
            for best in store.best_scores(run_id, iteration, terms)]
    store.insert_rows("selections", rows, pk="pair_id")
    return len(rows)
