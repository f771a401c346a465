"""What an iteration selected and trained on, read from a run's store (stargate_lite.evaluation.anatomy): the
figures that say why the loop does or does not teach (issue "Proven end to end", item 3). Not a timing.

For one iteration of a run: SFT's tokens in asking turns, other Questioner turns and regulariser responses;
questions asked, persona leakage (the audit's rule) and the facts elicited actively and passively, kept
conversations against the rest; the share of sampled Questioner turns that ask for a persona fact (the run's
gate); the reward spread within a pair; what a fact told is worth to the gold's log-prob within a pair. Several
runs (`--run` repeated, say one recipe under several seeds): each one's anatomy, then that worth over all their
pairs together.

    python -m benchmarks.selection_anatomy --home H [--run RUN ...] [--iteration 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--run", action="append", help="run id, repeatable [default: the latest]")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from stargate_lite.evaluation.anatomy import anatomy_table, fact_worth, fact_worth_line, selection_anatomy

    results = [selection_anatomy(args.home, run, args.iteration) for run in args.run or [None]]
    print("\n\n".join(anatomy_table(result) for result in results))
    if len(results) > 1:
        pooled = fact_worth([m for result in results for m in result["fact_moments"]])
        print(f"\nover the {len(results)} runs' pairs, a fact told, within a pair: {fact_worth_line(pooled)}")
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
