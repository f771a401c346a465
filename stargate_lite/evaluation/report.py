"""Evaluation output: Rich tables and three PNG plots (the paper's Figures 3 and 4, and the efficiency metrics),
drawn from the store alone."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

CONDITION_LABELS = {
    "negative": "negative control (name only)",
    "positive": "positive control (persona given)",
    "experimental": "experimental (Q_eta's conversations)",
    "experimental_best_of_n": "experimental, best of n per pair",
    "random": "random persona's conversations",
}


def _interval(interval: dict | None, digits: int) -> str:
    return f" [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]" if interval else ""


def _fmt(stat: dict, digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "-"
    sem = f" ± {stat['sem']:.{digits}f}" if stat.get("sem") is not None else ""
    return f"{stat['mean']:.{digits}f}{sem}{_interval(stat.get('interval'), digits)} (n={stat['n']})"


def _fmt_gain(gain: dict | None) -> str:
    if gain is None:
        return "-"
    return f"{gain['mean']:+.1f}{_interval(gain, 1)} ({gain['n']} pairs)"


WIN_RATE_LABELS = {
    "win_rate": "win rate, random order",
    "win_rate_counterbalanced": "win rate, both orders",
}


def _fmt_win(iteration: int, win: dict | None) -> str:
    if iteration == 0:
        return "0.5 (reference)"
    if win is None:
        return "- (judge_orders=1)"
    counts = f"n={win['valid']}, {win['ties']} ties, {win['unparsable']} unparsable"
    for missing in ("truncated", "refused"):
        if win.get(missing):
            counts += f", {win[missing]} {missing}"
    if "consistency" in win and win["consistency"] is not None:
        counts += f", consistency {win['consistency']:.2f}"
    if win["rate"] is None:
        return f"- ({counts})"
    return f"{win['rate']:.2f} ± {win['sem']:.2f}{_interval(win.get('interval'), 2)} ({counts})"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary['run']}: roleplayer {summary['roleplayer']}, judge {summary['judge']} "
                        f"({summary['protocol']}), responder {summary['responder']}",
                  caption="mean ± SEM over conversations (the paper's), [95% interval] from the bootstrap over the "
                          "test pairs' tasks and personas")
    table.add_column("iteration", justify="right")
    for label in ("negative", "positive", "experimental", "experimental − Q_0, paired", "best of n", "random",
                  *WIN_RATE_LABELS.values()):
        table.add_column(label, justify="right")
    for it in summary["iterations"]:
        lp = it["logprob"]
        table.add_row(str(it["iteration"]), _fmt(lp["negative"]), _fmt(lp["positive"]), _fmt(lp["experimental"]),
                      _fmt_gain(it.get("gain")), _fmt(lp["experimental_best_of_n"]), _fmt(lp["random"]),
                      *(_fmt_win(it["iteration"], it[key]) for key in WIN_RATE_LABELS))
    return table


def strengths_table(summary: dict) -> Table | None:
    """The Bradley-Terry strengths (logit scale, Q_0 = 0) and the judge's lean towards the response shown first."""
    fit = summary.get("bradley_terry")
    if not fit:
        return None
    table = Table(title=f"Bradley-Terry over all iterations' judgments ({fit['judgments']} verdicts; judge "
                        f"{summary['judge']})", caption="logit scale; 0 = as good as Q_0; [95% interval] from the "
                                                        "bootstrap over tasks and personas")
    table.add_column("")
    table.add_column("estimate [95% interval]", justify="right")
    for it, strength in fit["strengths"].items():
        table.add_row(f"Q_{it} strength", f"{strength['mean']:+.2f}{_interval(strength, 2)}")
    table.add_row("judge's lean to the first response", f"{fit['position_a']['mean']:+.2f}"
                                                        f"{_interval(fit['position_a'], 2)}")
    return table


EFFICIENCY_LABELS = {
    "questions": "questions / conversation",
    "question_share": "share of turns asking",
    "user_tokens": "tokens the user typed",
    "response_tokens": "final response tokens",
    "turns": "turns",
}


def efficiency_table(summary: dict) -> Table:
    """The efficiency metrics per iteration, over all its conversations and per number of turns."""
    table = Table(title=f"Efficiency (Q_eta's conversations with roleplayer {summary['roleplayer']}, "
                        f"responder {summary['responder']}; mean ± SEM)")
    table.add_column("iteration", justify="right")
    table.add_column("turns", justify="right")
    for label in EFFICIENCY_LABELS.values():
        table.add_column(label, justify="right")
    for it in summary["iterations"]:
        eff = it["efficiency"]
        for k, metrics in [("all", eff), *eff["by_turns"].items()]:
            table.add_row(str(it["iteration"]) if k == "all" else "", k,
                          *(_fmt(metrics[m], 2 if m == "question_share" else 1) for m in EFFICIENCY_LABELS))
    return table


def _bars(stats: list[dict], key: str) -> list[list[float]]:
    """Error bars below and above each point: its crossed-bootstrap interval, or none (iteration 0's reference)."""
    below = [s[key] - s["interval"]["low"] if s.get("interval") else 0.0 for s in stats]
    above = [s["interval"]["high"] - s[key] if s.get("interval") else 0.0 for s in stats]
    return [below, above]


def audit_table(summary: dict) -> Table | None:
    """The simulator audit: every Roleplayer the run was evaluated with (rows) by iteration (columns)."""
    audits = summary.get("audit")
    if not audits:
        return None
    iterations = sorted({it for by_iteration in audits.values() for it in by_iteration}, key=int)
    table = Table(title="Simulator audit (the evaluation's conversations)",
                  caption="leak: share of the persona's content words the answers say unasked (mean ± SEM over "
                          "conversations); breaks: share of answers in the assistant's voice or laying out a list")
    table.add_column("roleplayer")
    for it in iterations:
        table.add_column(f"Q_{it}", justify="right")
    for name, by_iteration in audits.items():
        cells = []
        for it in iterations:
            per_roleplayer = by_iteration.get(it, {})
            cells.append("; ".join(f"{who + ': ' if who != name else ''}leak {_fmt(a['leakage'], 2)}, breaks "
                                   f"{a['role_breaks']:.2f} of {a['answers']}" if a["answers"] else f"{who}: -"
                                   for who, a in per_roleplayer.items()) or "-")
        table.add_row(name, *cells)
    return table


def tables(summary: dict) -> list[Table]:
    """What `eval` and `report` print: the conditions and win rates, the strengths, the efficiency metrics and the
    simulator audit."""
    return [t for t in (summary_table(summary), strengths_table(summary), efficiency_table(summary),
                        audit_table(summary)) if t]


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """gold-logprobs.png (log-prob per iteration per condition) and win-rates.png (with the 0.5 line), with 95%
    crossed-bootstrap intervals, and efficiency.png (SEM bars; one panel per metric: all conversations, and each
    number of turns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"{summary['roleplayer']}-{summary['judge']}-{summary['responder']}"
    iterations = [it["iteration"] for it in summary["iterations"]]

    def save(fig, ax, name: str, legend_size: int) -> Path:
        ax.set_xticks(iterations)
        ax.legend(fontsize=legend_size)
        fig.tight_layout()
        path = out_dir / f"{name}-{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for condition, label in CONDITION_LABELS.items():
        stats = [it["logprob"][condition] for it in summary["iterations"]]
        if all(s["mean"] is None for s in stats):
            continue
        xs = [i for i, s in zip(iterations, stats) if s["mean"] is not None]
        ys = [s["mean"] for s in stats if s["mean"] is not None]
        errs = _bars([s for s in stats if s["mean"] is not None], "mean")
        style = "--" if condition in ("negative", "positive") else "-"
        ax.errorbar(xs, ys, yerr=errs, label=label, linestyle=style, marker="o", capsize=3)
    ax.set(xlabel="iteration", ylabel="log p(gold response)",
           title=f"Gold log-probability, run {summary['run']} (95% intervals)")
    paths = [save(fig, ax, "gold-logprobs", legend_size=7)]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in WIN_RATE_LABELS.items():
        points = [(it["iteration"], it[key]) for it in summary["iterations"] if it[key] and it[key]["rate"] is not None]
        if len(points) < 2:  # iteration 0's reference alone
            continue
        ax.errorbar([i for i, _ in points], [w["rate"] for _, w in points], yerr=_bars([w for _, w in points], "rate"),
                    marker="o", capsize=3, label=f"{label} ({summary['judge']} judge)")
    ax.axhline(0.5, color="gray", linestyle=":", label="no change")
    ax.set(xlabel="iteration", ylabel="win rate", ylim=(0, 1), title=f"Win rate, roleplayer {summary['roleplayer']}")
    paths.append(save(fig, ax, "win-rates", legend_size=8))

    fig, axes = plt.subplots(1, len(EFFICIENCY_LABELS), figsize=(3.2 * len(EFFICIENCY_LABELS), 3.4))
    turn_counts = sorted({k for it in summary["iterations"] for k in it["efficiency"]["by_turns"]}, key=int)
    for ax, (metric, label) in zip(axes, EFFICIENCY_LABELS.items()):
        for k in [None, *turn_counts]:
            stats = [(it["iteration"], it["efficiency"] if k is None else it["efficiency"]["by_turns"].get(k))
                     for it in summary["iterations"]]
            points = [(i, s[metric]) for i, s in stats if s and s[metric]["mean"] is not None]
            if points:
                ax.errorbar([i for i, _ in points], [p["mean"] for _, p in points],
                            yerr=[p["sem"] or 0.0 for _, p in points], marker="o", capsize=3,
                            linestyle="-" if k is None else ":", label="all" if k is None else f"{k} turns")
        ax.set(xlabel="iteration", title=label)
        ax.set_xticks(iterations)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Efficiency, roleplayer {summary['roleplayer']}", fontsize=10)
    fig.tight_layout()
    path = out_dir / f"efficiency-{suffix}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths
