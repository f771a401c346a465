"""The store's real queries on a store at paper scale and beyond, with SQLite's variable limit lowered to 999.

    python benchmarks/bench_store.py                       # 100,000 pairs, 1,000,000 conversations (~4 GB)
    python benchmarks/bench_store.py --tasks 50 --personas 250 --conversations 10   # the paper's 12,500 pairs

The store is filled once (benchmarks/_synthetic_store.py: an iteration that crashed before training, an
evaluation of iterations 0 and 1) and kept at --store for later runs. Each query is timed cold-ish (the first
call after opening) and warm (median of three more); targets: each under 2 s, `status` under 1 s.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _synthetic_store import ROLEPLAYER, RUN_ID, fill  # noqa: E402

from stargate_lite.store import Store  # noqa: E402

VARIABLE_LIMIT = 999  # what SQLite builds before 3.32 allow; Python's own sqlite3 allows 32,766 or more


def limited_store(home: Path) -> Store:
    """The store with at most VARIABLE_LIMIT bound variables per statement."""
    store = Store(home)
    store.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, VARIABLE_LIMIT)
    return store


def queries(store: Store) -> dict:
    """name -> call of each read that a stage, a resume, `status` or `eval` makes (as the library makes it)."""
    from stargate_lite.commands.status import run_status
    from stargate_lite.evaluation.evaluate import namespace, summarize
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.stages.data import split_pairs

    recipe = recipe_of_run(store.get_run(RUN_ID))
    ns = namespace(RUN_ID, ROLEPLAYER)
    first_chunk = [c["id"] for c in store.conversations_to_score(RUN_ID, 1)[:64]]
    return {
        "pairing: golds of the split's pairs": lambda: store.golds_for(
            (t["id"], p["id"]) for t, p in split_pairs(store, recipe, "A")),
        "pairs of an iteration (joined)": lambda: store.pairs(RUN_ID, 1),
        "simulate resume: conversation ids": lambda: store.conversation_ids(RUN_ID, 1),
        "score resume: conversations to score": lambda: store.conversations_to_score(RUN_ID, 1),
        "turns of one 64-conversation chunk": lambda: store.turns(first_chunk),
        "select: each pair's best conversation": lambda: store.best_scores(RUN_ID, 1),
        "respond resume: selections, responses": lambda: (store.selections(RUN_ID, 1), store.responses(RUN_ID, 1)),
        "train: selected conversations' turns": lambda: store.selected_turns(RUN_ID, 1),
        "train: training examples (reads + assembly)": lambda: training_examples(store, recipe, RUN_ID, 1),
        "status": lambda: run_status(store),
        "eval: summary (every eval read)": lambda: summarize(store, RUN_ID, ROLEPLAYER, recipe.roles.judge,
                                                             judge_protocol(recipe.judge)),
        "eval resume: score ids, response keys": lambda: (store.eval_score_ids(ns, 1),
                                                          store.eval_response_keys(ns, 1, "policy")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/stargate-bench-store"))
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--personas", type=int, default=500)
    parser.add_argument("--conversations", type=int, default=10, help="per pair")
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--eval-personas", type=int, default=100)
    a = parser.parse_args()
    filled = (a.store / "stargate.db").is_file()
    store = limited_store(a.store)
    if not filled:
        started = time.perf_counter()
        timings = fill(store, a.tasks, a.personas, a.conversations, a.eval_tasks, a.eval_personas)
        print(f"filled {a.store} in {time.perf_counter() - started:.0f} s")
        for name, seconds in timings.items():
            print(f"  {name:<44} {seconds:7.2f} s")
    counts = {t: store.value(f"select count(*) from {t}") for t in
              ("pairs", "conversations", "turns", "scores", "golds", "eval_scores", "judgments")}
    print(f"store: {', '.join(f'{n:,} {t}' for t, n in counts.items())}; "
          f"{(a.store / 'stargate.db').stat().st_size / 2**30:.2f} GiB; variable limit {VARIABLE_LIMIT}")
    print(f"{'query':<48} {'first':>8} {'warm':>8}")
    for name, call in queries(store).items():
        started = time.perf_counter()
        call()
        first = time.perf_counter() - started
        warm = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            warm.append(time.perf_counter() - started)
        print(f"{name:<48} {first:7.2f}s {statistics.median(warm):7.2f}s")


if __name__ == "__main__":
    main()
