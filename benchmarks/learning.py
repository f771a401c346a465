"""Does the loop teach? The learning probe (stargate_lite.evaluation.probe) on a finished run's policies: per
split, the mean reward, each policy's gain over Q_0 paired per pair with its 95% crossed-bootstrap interval (tasks
and personas resampled), and what kind of gain it is (the share of Questioner turns that ask, and of turns that
hold response text), and the persona's facts per conversation told when asked (active) and unasked (passive).
Not a timing.

    stargate-lite run --iterations 2                       # or any finished run
    python benchmarks/learning.py --home .stargate         # probes Q_0, Q_1, Q_2: 48 training + 12 test pairs
    python benchmarks/learning.py --home H --tasks A=8 B=8 test=6 --personas A=4 B=4 test=2 --conversations 4

Everything is stored in the run's home under probe namespaces, so a rerun (or a later iteration) reuses what is
there: Q_0's conversations are made once, and with --q0-from once for a sweep's runs that differ only in training. --json writes the summary, --plot the gains per iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = ("A", "B", "A+B", "test")


def split_sizes(values: list[str], default: dict[str, int]) -> dict[str, int]:
    sizes = dict(default)
    for item in values:
        split, _, n = item.partition("=")
        if split not in default or not n.isdigit():
            raise SystemExit(f"expected SPLIT=N with SPLIT one of {', '.join(default)}, got {item!r}")
        sizes[split] = int(n)
    return sizes


def table(summary: dict) -> str:
    q0 = f" (Q_0 from run {summary['q0_run']})" if summary.get("q0_run", summary["run"]) != summary["run"] else ""
    title = (f"learning probe: run {summary['run']}{q0}, roleplayer {summary['roleplayer']}, "
             f"reward = log p_base(gold) - {summary['question_cost']} x questions")
    header = (f"{'policy':<8} {'split':<5} {'pairs':>5} {'trained':>7} {'reward':>9}  "
              f"{'gain over Q_0 [95% interval]':<32} {'detects':>7} {'asks':>6} {'resp.':>6} {'active':>6} "
              f"{'passive':>7}")
    rows = [(f"Q_{p['iteration']}", p["splits"]) for p in summary["policies"]]
    rows += [("control", summary["control"])] if summary.get("control") else []
    rows += [("no-q", summary["no_questions"])] if summary.get("no_questions") else []
    lines = [title, header]
    for label, splits in rows:
        for group in GROUPS:
            s = splits[group]
            gain = s["gain"]
            shown = (f"{gain.mean:+.2f} [{gain.low:+.2f}, {gain.high:+.2f}]{' *' if gain.excludes_zero() else ''}"
                     if gain else "-")
            detects = f"{s['detectable']:.2f}" if s["detectable"] is not None else "-"
            reward = f"{s['reward']:.2f}" if s["reward"] is not None else "-"
            share = [f"{s[k]:.2f}" if s[k] is not None else "-" for k in ("asking_share", "response_text_share")]
            elicited = s.get("elicitation")
            facts = [f"{elicited[k]['mean']:.2f}" if elicited and elicited[k]["mean"] is not None else "-"
                     for k in ("active", "passive")]
            lines.append(f"{label:<8} {group:<5} {s['pairs']:>5} {s['trained_on']:>7} {reward:>9}  "
                         f"{shown:<32} {detects:>7} {share[0]:>6} {share[1]:>6} {facts[0]:>6} {facts[1]:>7}")
    lines.append("trained: probe pairs the run trained on; * interval excludes 0; detects: the smallest gain found "
                 "80% of the time (5% two-sided); asks: Questioner turns that ask; resp.: turns with response text; "
                 "active, passive: the persona's facts per conversation told when asked, told unasked; "
                 "control: Q_0 with a Roleplayer that recites its persona; no-q: Q_0 answering at once, no question")
    for group, room in (summary.get("room") or {}).items():
        if room:
            lines.append(f"room to learn, {group}: control less no-q {room.mean:+.2f} [{room.low:+.2f}, {room.high:+.2f}]")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for group in ("A+B", "test"):
        points = [(p["iteration"], p["splits"][group]["gain"]) for p in summary["policies"] if p["iteration"]]
        xs = [0, *(i for i, _ in points)]
        means = [0.0, *(g.mean for _, g in points)]
        errors = [[0.0, *(g.mean - g.low for _, g in points)], [0.0, *(g.high - g.mean for _, g in points)]]
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=4, label=f"{group} pairs")
    ax.set_xticks(sorted({0, *(p["iteration"] for p in summary["policies"])}))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("iteration (policy Q_eta)")
    ax.set_ylabel("gain in log p(gold) over Q_0, per pair")
    ax.set_title(f"learning probe: run {summary['run']} (95% crossed bootstrap)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the finished run's home")
    parser.add_argument("--run", default=None, help="run id [default: the home's only run]")
    parser.add_argument("--iterations", type=int, nargs="*", default=None, help="policies [default: all trained]")
    parser.add_argument("--tasks", nargs="*", default=[], metavar="SPLIT=N", help="first N tasks per split")
    parser.add_argument("--personas", nargs="*", default=[], metavar="SPLIT=N", help="first N personas per split")
    parser.add_argument("--conversations", type=int, default=3, help="fresh conversations per pair and policy")
    parser.add_argument("--roleplayer", default=None, help="a chat model of the run [default: its main one]")
    parser.add_argument("--control", action="store_true",
                        help="also the positive control: Q_0 with a Roleplayer that recites its persona")
    parser.add_argument("--no-questions", action="store_true",
                        help="also the no-question arm: Q_0 answering at once (the reward of not asking); with "
                             "--control, the room to learn between the two")
    parser.add_argument("--q0-from", default=None, metavar="RUN",
                        help="take Q_0's conversations from this run's probe (a sweep's runs that differ only after "
                             "simulation make the same ones)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--plot", type=Path, default=None, help="write the gains per iteration here (PNG)")
    a = parser.parse_args()

    from stargate_lite.evaluation.probe import probe

    summary = probe(a.home, a.run, a.iterations, split_sizes(a.tasks, {"A": 6, "B": 6, "test": 6}),
                    split_sizes(a.personas, {"A": 4, "B": 4, "test": 2}), a.conversations, a.roleplayer, a.control,
                    a.q0_from, no_questions=a.no_questions)
    print(table(summary))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2, default=dataclasses.asdict) + "\n")
    if a.plot:
        plot(summary, a.plot)


if __name__ == "__main__":
    main()
