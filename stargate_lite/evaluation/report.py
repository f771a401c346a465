"""Evaluation output, drawn from the store alone: tables (Rich in the terminal, Markdown in report.md), three PNG
plots (the paper's Figures 3 and 4, and the efficiency metrics), and report.md, a run's account of itself."""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from ..runs import pick_run, recipe_of_run, run_dir
from ..store import Store

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


@dataclass
class Grid:
    """A table of text cells, printed with Rich in the terminal and written as Markdown in report.md."""
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    left: int = 0  # leading columns of labels, left-justified; the rest are figures

    def rich(self) -> Table:
        table = Table(title=self.title, caption=self.caption or None)
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i < self.left else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = [":---" if i < self.left else "---:" for i in range(len(self.headers))]
        text = [f"**{self.title}**", "", line(self.headers), "| " + " | ".join(align) + " |",
                *(line(row) for row in self.rows)]
        return "\n".join([*text, *(["", f"*{self.caption}*"] if self.caption else [])])


def summary_table(summary: dict) -> Grid:
    grid = Grid(title=f"run {summary['run']}: roleplayer {summary['roleplayer']}, judge {summary['judge']} "
                      f"({summary['protocol']}), responder {summary['responder']}",
                headers=["iteration", "negative", "positive", "experimental", "experimental − Q_0, paired",
                         "best of n", "random", *WIN_RATE_LABELS.values()],
                caption="mean ± SEM over conversations (the paper's), [95% interval] from the bootstrap over the "
                        "test pairs' tasks and personas")
    for it in summary["iterations"]:
        lp = it["logprob"]
        grid.rows.append([str(it["iteration"]), _fmt(lp["negative"]), _fmt(lp["positive"]),
                          _fmt(lp["experimental"]), _fmt_gain(it.get("gain")), _fmt(lp["experimental_best_of_n"]),
                          _fmt(lp["random"]), *(_fmt_win(it["iteration"], it[key]) for key in WIN_RATE_LABELS)])
    return grid


def strengths_table(summary: dict) -> Grid | None:
    """The Bradley-Terry strengths (logit scale, Q_0 = 0) and the judge's lean towards the response shown first."""
    fit = summary.get("bradley_terry")
    if not fit:
        return None
    grid = Grid(title=f"Bradley-Terry over all iterations' judgments ({fit['judgments']} verdicts; judge "
                      f"{summary['judge']})", headers=["", "estimate [95% interval]"], left=1,
                caption="strengths on the logit scale, 0 = as good as Q_0; win rate with the position balanced "
                        "out: the mean of the two orders' modelled rates (sigmoid of the strength only without a "
                        "lean); [95% interval] from the bootstrap over tasks and personas")
    balanced = fit.get("balanced_win_rates") or {}  # summaries stored before it have the strengths alone
    for it, strength in fit["strengths"].items():
        grid.rows.append([f"Q_{it} strength", f"{strength['mean']:+.2f}{_interval(strength, 2)}"])
        if it in balanced:
            rate = balanced[it]
            grid.rows.append([f"Q_{it} win rate, position balanced out", f"{rate['mean']:.2f}{_interval(rate, 2)}"])
    grid.rows.append(["judge's lean to the first response",
                      f"{fit['position_a']['mean']:+.2f}{_interval(fit['position_a'], 2)}"])
    return grid


EFFICIENCY_LABELS = {
    "questions": "questions / conversation",
    "question_share": "share of turns asking",
    "user_tokens": "tokens the user typed",
    "response_tokens": "final response tokens",
    "turns": "turns",
}


ELICITATION_LABELS = {"active": "facts told asked", "passive": "told unasked", "never": "never told"}
ELICITATION_CAPTION = ("facts: the persona's facts per conversation, told in reply to a turn that asked for them, "
                       "told unasked, or never (counted with the recipe's gate; docs/evaluation.md, Elicitation)")


def efficiency_table(summary: dict) -> Grid:
    """The elicitation and efficiency metrics per iteration, over all its conversations and per number of turns."""
    grid = Grid(title=f"Efficiency (Q_eta's conversations with roleplayer {summary['roleplayer']}, "
                      f"responder {summary['responder']}; mean ± SEM)",
                headers=["iteration", "turns", *ELICITATION_LABELS.values(), *EFFICIENCY_LABELS.values()],
                caption=ELICITATION_CAPTION)
    for it in summary["iterations"]:
        eff = it["efficiency"]
        for k, metrics in [("all", eff), *eff["by_turns"].items()]:
            elicited = metrics.get("elicitation")  # None without a gate; absent from summaries stored before it
            grid.rows.append([str(it["iteration"]) if k == "all" else "", k,
                              *(_fmt(elicited[kind], 2) if elicited else "-" for kind in ELICITATION_LABELS),
                              *(_fmt(metrics[m], 2 if m == "question_share" else 1) for m in EFFICIENCY_LABELS)])
    return grid


def _fmt_elicitation(elicited: dict | None) -> str:
    """Facts per conversation told asked / unasked / never, e.g. "facts 1.20/0.40/2.40 of 4.0 (n=12)"."""
    if not elicited or not elicited["conversations"]:
        return "facts -"
    means = "/".join(f"{elicited[kind]['mean']:.2f}" for kind in ELICITATION_LABELS)
    return f"facts {means} of {elicited['facts']['mean']:.1f} (n={elicited['conversations']})"


def _bars(stats: list[dict], key: str) -> list[list[float]]:
    """Error bars below and above each point: its crossed-bootstrap interval, or none (iteration 0's reference)."""
    below = [s[key] - s["interval"]["low"] if s.get("interval") else 0.0 for s in stats]
    above = [s["interval"]["high"] - s[key] if s.get("interval") else 0.0 for s in stats]
    return [below, above]


def audit_table(summary: dict) -> Grid | None:
    """The simulator audit: every Roleplayer the run was evaluated with (rows) by iteration (columns)."""
    audits = summary.get("audit")
    if not audits:
        return None
    iterations = sorted({it for by_iteration in audits.values() for it in by_iteration}, key=int)
    grid = Grid(title="Simulator audit (the evaluation's conversations)",
                headers=["roleplayer", *(f"Q_{it}" for it in iterations)], left=1,
                caption="facts a/p/n: the persona's facts per conversation told asked / told unasked / never "
                        "(means over conversations; docs/evaluation.md, Elicitation); leak: share of the "
                        "persona's content words the answers say unasked (mean ± SEM over conversations); breaks: "
                        "share of answers in the assistant's voice or laying out a list")
    for name, by_iteration in audits.items():
        cells = []
        for it in iterations:
            per_roleplayer = by_iteration.get(it, {})
            cells.append("; ".join(f"{who + ': ' if who != name else ''}{_fmt_elicitation(a.get('elicitation'))}, "
                                   f"leak {_fmt(a['leakage'], 2)}, breaks {a['role_breaks']:.2f} of {a['answers']}"
                                   if a["answers"] else f"{who}: -" for who, a in per_roleplayer.items()) or "-")
        grid.rows.append([name, *cells])
    return grid


def grids(summary: dict) -> list[Grid]:
    """The evaluation's tables: the conditions and win rates, the strengths, the efficiency metrics and the
    simulator audit."""
    return [g for g in (summary_table(summary), strengths_table(summary), efficiency_table(summary),
                        audit_table(summary)) if g]


def tables(summary: dict) -> list[Table]:
    """What `eval` and `report` print."""
    return [grid.rich() for grid in grids(summary)]


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


# -- report.md --------------------------------------------------------------------------------------------------
SAMPLE_PAIRS = 2  # pairs whose best and worst conversations report.md shows


def _utc(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC") if seconds else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def time_grid(store: Store, run_id: str) -> tuple[Grid, dict]:
    """Each finished stage's time (its latest attempt, start to end), tokens and GPUs, and the run's totals."""
    grid = Grid(title="Where the time went", left=2,
                headers=["iteration", "stage", "started", "time", "tokens", "tokens / s", "GPUs", "GPU-seconds"],
                caption="a stage's time is its last attempt's, from its start to its end: time lost to attempts "
                        "that were stopped is not counted; '-': finished before stage starts were stored")
    totals = {"seconds": 0.0, "gpu_seconds": 0.0, "untimed": 0}
    tokens: dict[int, dict] = {}
    for row in store.stage_times(run_id):
        seconds = row["done_at"] - row["started_at"] if row["started_at"] is not None else None
        if row["iteration"] not in tokens:
            tokens[row["iteration"]] = store.stage_tokens(run_id, row["iteration"]) if row["iteration"] else {}
        n = tokens[row["iteration"]].get(row["stage"])
        gpu_seconds = seconds * row["gpus"] if seconds is not None and row["gpus"] is not None else None
        if seconds is None:
            totals["untimed"] += 1
        else:
            totals["seconds"] += seconds
            totals["gpu_seconds"] += gpu_seconds or 0.0
        grid.rows.append([str(row["iteration"]) if row["iteration"] else "", row["stage"],
                          _utc(row["started_at"]), _duration(seconds), f"{n:,}" if n else "-",
                          f"{n / seconds:,.0f}" if n and seconds else "-",
                          "-" if row["gpus"] is None else str(row["gpus"]),
                          "-" if gpu_seconds is None else f"{gpu_seconds:,.0f}"])
    return grid, totals


def sessions_grid(sessions: list[dict]) -> Grid:
    grid = Grid(title="Code and machine, per session (each process that worked on the run)", left=5,
                headers=["started", "host", "commit", "machine", "packages"])
    for session in sessions:
        machine, versions = json.loads(session["hardware"]), json.loads(session["versions"])
        commit = (session["commit"] or "not a git checkout")[:12] + (" (dirty)" if session["dirty"] else "")
        gpus = ", ".join(machine["gpus"]) or "no GPU"
        grid.rows.append([_utc(session["started_at"]), session["host"], commit,
                          f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; {gpus}",
                          ", ".join(f"{name} {version}" for name, version in versions.items())])
    return grid


def _conversation(turns: list[dict]) -> list[str]:
    who = {"questioner": "Questioner", "roleplayer": "Roleplayer"}
    return [f"> **{who.get(t['role'], t['role'])}:** {' '.join(t['text'].split())}" for t in turns] or ["> (no turns)"]


def write_report(store: Store, run_id: str, summary: dict | None, plots: list[Path], out_dir: Path) -> Path:
    """report.md in `out_dir`: the run's recipe and its hash, the code, packages and machines it ran on, each
    stage's time, tokens and GPU-seconds, the evaluation's tables and plots, and the best and worst conversation
    of a few pairs."""
    run = store.get_run(run_id)
    finished = [it for it in store.iterations(run_id) if it["finished_at"] is not None]
    recipe_hash = hashlib.sha256(run["recipe"].encode()).hexdigest()[:16]
    lines = [f"# Run {run_id}", "",
             (f"Recipe `{run['recipe_name']}` (sha256 of the recipe as stored, `recipe.json` beside this file: "
              f"`{recipe_hash}`), dataset `{run['dataset']}`, seed {run['seed']}; created "
              f"{_utc(run['created_at'])}; {len(finished)} iteration(s) finished."), ""]
    sessions = store.run_sessions(run_id)
    lines += [sessions_grid(sessions).markdown() if sessions else
              "No session recorded: the run was made before sessions were stored.", ""]
    timing, totals = time_grid(store, run_id)
    lines += [timing.markdown(), "",
              f"Stages timed: {_duration(totals['seconds'])} in all, {totals['gpu_seconds'] / 3600:.2f} GPU-hours "
              "(each stage's time by the GPUs it had: the Questioner's one, or train.processes in training; "
              "GPUs of chat-model servers are not counted)"
              + (f"; {totals['untimed']} stage(s) finished before starts were stored." if totals["untimed"] else "."),
              ""]
    if summary and summary["iterations"]:
        lines += ["## Evaluation", ""]
        for grid in grids(summary):
            lines += [grid.markdown(), ""]
        lines += [f"![{path.stem}]({path.relative_to(out_dir) if path.is_relative_to(out_dir) else path})"
                  for path in plots] + [""]
    else:
        lines += ["## Evaluation", "", "No evaluation with this roleplayer yet: `stargate-lite eval` adds it.", ""]
    scored = [it["iteration"] for it in store.iterations(run_id)
              if store.stage_done(run_id, it["iteration"], "score")]
    if scored:
        lines += [f"## Sample conversations (iteration {scored[-1]}: each pair's best and worst by the gold's log-prob)",
                  ""]
        for pair in store.pair_extremes(run_id, scored[-1], SAMPLE_PAIRS):
            lines += [f"**{pair['persona_name']}**: {pair['task']}", ""]
            for end in ("best", "worst"):
                lines += [f"{end.capitalize()}, log p(gold) = {pair[end]['logprob']:.2f}:", "",
                          *_conversation(pair[end]["turns"]), ""]
    path = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".md.tmp")
    temporary.write_text("\n".join(lines))
    temporary.replace(path)
    return path


def _gate(recipe, home: Path):
    """The gate that counts elicitation, or None where its model cannot be unpacked into a home that cannot be
    written (the figures then show as missing; the rest of the report is drawn as ever)."""
    from ..stages.simulate import recipe_gate

    try:
        return recipe_gate(recipe.simulate, home)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        return None


def report(home: Path | str | None = None, run_id: str | None = None, roleplayer: str | None = None,
           judge: str | None = None, responder: str = "policy", settings: list[str] | None = None) -> dict:
    """`stargate-lite report`, loading no model but the gate's small sentence embedder (elicitation is counted
    from the stored turns): the evaluation's summary as stored (None without one), its plots
    and report.md, written to the run's folder. Returns {"summary", "plots", "report", "unwritten"}: where the
    home cannot be written (a read-only mount, another user's project), the store is still read, and "plots" and
    "report" are empty and "unwritten" says why; otherwise "unwritten" is None."""
    from .evaluate import check_eval_names, summarize, with_eval_settings
    from .judge import judge_protocol

    store = Store(home, read_only=True)
    run = pick_run(store, run_id)
    recipe = with_eval_settings(recipe_of_run(run), run["id"], settings)
    check_eval_names(recipe, run["id"], roleplayer, judge, responder)  # as eval refuses them, before any file
    summary = summarize(store, run["id"], roleplayer or recipe.roles.main_roleplayer, judge or recipe.roles.judge,
                        judge_protocol(recipe.judge), responder, gate=_gate(recipe, store.home))
    out_dir = run_dir(store, run["id"])
    written = {"summary": summary if summary["iterations"] else None, "plots": [], "report": None, "unwritten": None}
    try:
        written["plots"] = plot(summary, out_dir) if summary["iterations"] else []
        written["report"] = write_report(store, run["id"], summary, written["plots"], out_dir)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):  # a full disk is the CLI's one line
            raise
        written.update(plots=[], unwritten=f"cannot write the plots and report.md in {out_dir} ({err.strerror})")
    return written
