"""Which training method teaches? The learning probe (stargate_lite.evaluation.probe) on the policies of several
runs of one home that differ only in training (SFT on the best, DPO, RLOO, GRPO, with or without per-turn credit):
the same data, the same simulation seeds, so the same conversations and Roleplayer calls before training. Per
run: its Q_eta's gain over Q_0 on the training distribution (A+B) and on the test split, paired per pair with the
95% crossed-bootstrap interval, its test reward, its difference from a reference run (the paper's SFT) paired
the same way, and the share of Questioner turns that ask. Not a timing.

    for m in sft dpo; do stargate-lite run -n 1 --run $m --set train.method=$m; done   # and rloo, grpo: see docs
    python -m benchmarks.methods --home H --runs sft dpo rloo grpo --reference sft --q0-from sft \\
        --conversations 1 --plot methods.png

Each run's probe is stored in the home under its namespaces, so a rerun reads what is there (Q_0's conversations
come from --q0-from, made once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from stargate_lite.evaluation.probe import split_sizes


def _shown(interval) -> str:
    if interval is None:
        return "-"
    star = " *" if interval.excludes_zero() else ""
    return f"{interval.mean:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]{star}"


def compare(home: str, runs: list[str], reference: str, iteration: int, tasks: dict, personas: dict,
            conversations: int, q0_from: str | None) -> list[dict]:
    """Each run's probe (made or read) with its training record and its difference from `reference`."""
    from stargate_lite.evaluation.probe import policy_difference, probe
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store

    rows = []
    for run in runs:
        summary = probe(home, run, [0, iteration], tasks, personas, conversations, None, False, q0_from)
        store = Store(home, create=False)
        recipe = recipe_of_run(pick_run(store, run))
        (policy,) = [p for p in summary["policies"] if p["iteration"] == iteration]
        (q0,) = [p for p in summary["policies"] if p["iteration"] == 0]
        difference = (policy_difference(store, (run, iteration), (reference, iteration),
                                        summary["roleplayer"], recipe.reward.question_cost) if run != reference else None)
        training = store.training(run, iteration)
        rows.append({"run": run, "method": recipe.train.method, "per_turn": recipe.reward.per_turn,
                     "target": recipe.train.target, "trained_tokens": training["trained_tokens"],
                     "train_seconds": training["seconds"], "splits": policy["splits"], "q0": q0["splits"],
                     "difference": difference})
    return rows


def table(rows: list[dict], reference: str, iteration: int) -> str:
    header = (f"{'run':<9} {'method':<6} {'per-turn':<8} {'target':<8} {'tokens':>6}  "
              f"{'A+B gain over Q_0':<24} {'test gain over Q_0':<24} {'test reward':>11}  "
              f"{'A+B less ' + reference:<24} {'asks A+B':>8} {'asks test':>9}")
    lines = [f"Q_{iteration} of each run against Q_0 (log p(gold) per pair; 95% crossed bootstrap; * excludes 0)",
             header]
    q0 = rows[0]["q0"]
    lines.append(f"{'Q_0':<9} {'-':<6} {'-':<8} {'-':<8} {'-':>6}  {'(reward ' + format(q0['A+B']['reward'], '.1f') + ')':<24} "
                 f"{'(reward ' + format(q0['test']['reward'], '.1f') + ')':<24} {q0['test']['reward']:>11.1f}  "
                 f"{'':<24} {q0['A+B']['asking_share']:>8.2f} {q0['test']['asking_share']:>9.2f}")
    for r in rows:
        s = r["splits"]
        lines.append(f"{r['run']:<9} {r['method']:<6} {str(r['per_turn']).lower():<8} {r['target']:<8} "
                     f"{r['trained_tokens']:>6}  {_shown(s['A+B']['gain']):<24} {_shown(s['test']['gain']):<24} "
                     f"{s['test']['reward']:>11.1f}  {_shown((r['difference'] or {}).get('A+B')):<24} "
                     f"{s['A+B']['asking_share']:>8.2f} {s['test']['asking_share']:>9.2f}")
    lines.append("tokens: Questioner tokens trained on; asks: share of Questioner turns that ask")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, iteration: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, group in ((-0.12, "A+B"), (0.12, "test")):
        gains = [r["splits"][group]["gain"] for r in rows]
        xs = [i + offset for i in range(len(rows))]
        ax.errorbar(xs, [g.mean for g in gains], yerr=[[g.mean - g.low for g in gains],
                                                       [g.high - g.mean for g in gains]],
                    fmt="o", capsize=4, label=f"{group} pairs")
    ax.set_xticks(range(len(rows)), [r["run"] for r in rows])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel(f"Q_{iteration}'s gain in log p(gold) over Q_0, per pair")
    ax.set_title("training methods on the same conversations (95% crossed bootstrap)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the home holding the runs")
    parser.add_argument("--runs", nargs="+", required=True, help="run ids, the reference among them")
    parser.add_argument("--reference", required=True, help="the run every other is paired against (e.g. sft)")
    parser.add_argument("--iteration", type=int, default=1, help="the policy Q_eta compared [default: 1]")
    parser.add_argument("--tasks", nargs="*", default=[], metavar="SPLIT=N",
                        help="first N tasks per split [default: A=6 B=6 test=6]")
    parser.add_argument("--personas", nargs="*", default=[], metavar="SPLIT=N",
                        help="first N personas per split [default: A=4 B=4 test=2]")
    parser.add_argument("--conversations", type=int, default=3, help="fresh conversations per pair and policy")
    parser.add_argument("--q0-from", default=None, metavar="RUN", help="take Q_0's probe from this run")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--plot", type=Path, default=None, help="write the gains per run here (PNG)")
    a = parser.parse_args()
    if a.reference not in a.runs:
        raise SystemExit(f"--reference {a.reference} is not one of --runs")

    rows = compare(a.home, a.runs, a.reference, a.iteration, split_sizes(a.tasks, "--tasks"),
                   split_sizes(a.personas, "--personas"), a.conversations, a.q0_from)
    print(table(rows, a.reference, a.iteration))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2, default=dataclasses.asdict) + "\n")
    if a.plot:
        plot(rows, a.plot, a.iteration)


if __name__ == "__main__":
    main()
