"""Evaluation output: a Rich table and two PNG plots (the paper's Figures 3 and 4), drawn from the store alone."""

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


def _fmt(stat: dict, digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "-"
    sem = f" ± {stat['sem']:.{digits}f}" if stat.get("sem") is not None else ""
    return f"{stat['mean']:.{digits}f}{sem} (n={stat['n']})"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"run {summary['run']}: roleplayer {summary['roleplayer']}, judge {summary['judge']}, "
                        f"responder {summary['responder']}")
    table.add_column("iteration", justify="right")
    for label in ("negative", "positive", "experimental", "best of n", "random", "win rate vs Q_0"):
        table.add_column(label, justify="right")
    for it in summary["iterations"]:
        lp, win = it["logprob"], it["win_rate"]
        if it["iteration"] == 0:
            rate = "0.5 (reference)"
        elif win["rate"] is None:
            rate = f"- (0 valid, {win['unparsable']} unparsable)"
        else:
            rate = f"{win['rate']:.2f} ± {win['sem']:.2f} ({win['wins']}/{win['valid']}, {win['unparsable']} unparsable)"
        table.add_row(str(it["iteration"]), _fmt(lp["negative"]), _fmt(lp["positive"]), _fmt(lp["experimental"]),
                      _fmt(lp["experimental_best_of_n"]), _fmt(lp["random"]), rate)
    return table


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """gold-logprobs.png (log-prob per iteration per condition, SEM bars) and win-rates.png (with the 0.5 line)."""
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
        errs = [s["sem"] or 0.0 for s in stats if s["mean"] is not None]
        style = "--" if condition in ("negative", "positive") else "-"
        ax.errorbar(xs, ys, yerr=errs, label=label, linestyle=style, marker="o", capsize=3)
    ax.set(xlabel="iteration", ylabel="log p(gold response)", title=f"Gold log-probability, run {summary['run']}")
    paths = [save(fig, ax, "gold-logprobs", legend_size=7)]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs, ys, errs = [], [], []
    for it in summary["iterations"]:
        win = it["win_rate"]
        if win["rate"] is not None:
            xs.append(it["iteration"])
            ys.append(win["rate"])
            errs.append(win["sem"] or 0.0)
    ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"Q_eta vs Q_0 ({summary['judge']} judge)")
    ax.axhline(0.5, color="gray", linestyle=":", label="no change")
    ax.set(xlabel="iteration", ylabel="win rate", ylim=(0, 1), title=f"Win rate, roleplayer {summary['roleplayer']}")
    paths.append(save(fig, ax, "win-rates", legend_size=8))
    return paths
