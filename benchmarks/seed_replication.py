"""Does a probe's gain replicate? One recipe run under several seeds, each probed on its own (`stargate-lite probe
--json`): each seed's gain of Q_1 over Q_0 on one split with its crossed interval, what Q_1 does differently (the
share of its turns that ask, the facts it draws out by asking, its turns holding response text), and the gain
across seeds. Not a timing.

A seed draws a run's conversations, turn counts, training and probe samples, and its splits where the dataset
leaves them to it (a built-in dataset's splits are fixed: every seed then trains and is probed on the same pairs).
Each seed's gain is an independent draw of what varies between two runs of the recipe, so the interval across
seeds is Student's t on the seeds' gains, one observation per seed: it answers "would another run of this recipe
gain on these pairs?". Whether a gain carries to other pairs is each seed's crossed interval's question. With a
handful of seeds the t interval is wide by design.

    python -m benchmarks.seed_replication PROBE.json [PROBE.json ...] [--split A]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

# Student's t, two-sided 95%, by degrees of freedom (a table, so the benchmark needs nothing beyond the package).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_row(summary: dict, split: str) -> dict:
    """One probe's figures on `split`: Q_0's and Q_1's (the first trained policy's)."""
    by_iteration = {p["iteration"]: p["splits"][split] for p in summary["policies"]}
    base, trained = by_iteration[0], by_iteration[min(i for i in by_iteration if i)]
    gain = trained["gain"]
    return {"run": summary["run"], "pairs": trained["pairs"], "gain": gain["mean"], "low": gain["low"],
            "high": gain["high"], "detectable": trained["detectable"],
            **{f"{name}_{side}": figures for side, split_figures in (("q0", base), ("q1", trained))
               for name, figures in (("asks", split_figures["asking_share"]),
                                     ("active", split_figures["elicitation"]["active"]["mean"]),
                                     ("response_text", split_figures["response_text_share"]))}}


def across_seeds(gains: list[float]) -> dict:
    """The mean gain over seeds with its 95% t interval (None for one seed), and how many seeds gained."""
    n = len(gains)
    mean = statistics.fmean(gains)
    if n < 2:
        return {"seeds": n, "mean": mean, "low": None, "high": None, "positive": sum(g > 0 for g in gains)}
    half = T_975.get(n - 1, 1.96) * statistics.stdev(gains) / math.sqrt(n)
    return {"seeds": n, "mean": mean, "low": mean - half, "high": mean + half, "positive": sum(g > 0 for g in gains)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probes", type=Path, nargs="+", help="probe --json outputs, one per seed")
    parser.add_argument("--split", default="A", help="the split to compare on [default: A]")
    args = parser.parse_args()

    rows = [seed_row(json.loads(path.read_text()), args.split) for path in args.probes]
    print(f"Q_1 against Q_0 on split {args.split}, per seed:")
    print(f"{'run':<16} {'pairs':>5} {'gain [95% crossed]':>24} {'detects':>7} {'asks':>12} {'facts asked':>12} "
          f"{'response text':>13}")
    for r in rows:
        print(f"{r['run']:<16} {r['pairs']:>5} {r['gain']:>+8.1f} [{r['low']:+6.1f}, {r['high']:+6.1f}] "
              f"{r['detectable']:>7.1f} {r['asks_q0']:>5.2f}->{r['asks_q1']:.2f} "
              f"{r['active_q0']:>5.2f}->{r['active_q1']:.2f} {r['response_text_q0']:>6.2f}->{r['response_text_q1']:.2f}")
    summary = across_seeds([r["gain"] for r in rows])
    interval = "" if summary["low"] is None else f" [{summary['low']:+.1f}, {summary['high']:+.1f}]"
    print(f"across {summary['seeds']} seeds: mean gain {summary['mean']:+.1f}{interval} (95% t over seeds); "
          f"{summary['positive']} of {summary['seeds']} seeds above 0; "
          f"{sum(r['low'] > 0 for r in rows)} with an interval above 0")


if __name__ == "__main__":
    main()
