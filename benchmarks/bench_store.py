"""The store's real queries on a store at paper scale and beyond, with SQLite's variable limit lowered to 999.

    python -m benchmarks.bench_store                       # 100,000 pairs, 1,000,000 conversations (~4 GB)
    python -m benchmarks.bench_store --tasks 50 --personas 250 --conversations 10   # the paper's 12,500 pairs

The store is filled once (tests/synthetic_store.py, whose queries tests/test_store_scale.py checks at a small
scale: an iteration that crashed before training, an evaluation of iterations 0 and 1) and kept at --store for
later runs. Each query is timed cold-ish (the first
call after opening) and warm (median of three more); targets: each under 2 s, `status` under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tests.synthetic_store import VARIABLE_LIMIT, fill, limited_store, queries


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
