"""What an iteration selected and trained on, read from a run's store: the figures that say why the loop does or
does not teach. Not a timing; `python -m benchmarks.selection_anatomy` prints them.

For one iteration of a run:
- what SFT trains on: tokens of the kept conversations' Questioner turns that ask (prompts.is_question), of those
  that do not, and of the regulariser responses after them (the Questioner's tokenizer);
- how each pair's kept conversation differs from the pair's others: questions asked, and persona leakage (the
  audit's rule, audit.leakage: the share of the persona's content words that the Roleplayer's answers say
  although the question each answers did not name them);
- the reward spread within a pair: the kept conversation's log-prob less the pair's mean, and max less min;
- with the run's gate (simulate.gate, for a free user as for a gated one): the share of the iteration's sampled
  Questioner turns that ask for any persona fact, and the facts elicited actively and passively per conversation,
  kept against the rest (elicitation.py): how much selection raises asking that draws facts out;
- what a fact drawn out is worth to the reward: the gold's log-prob per persona fact told (actively or passively),
  within a pair (each conversation against its pair's others, so a task or persona that is easy for every
  conversation does not count), with an interval that resamples tasks and personas. A policy that learns to draw
  out d more facts per conversation gains about d times this, which says how many more facts a probe needs
  before it can see the gain.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..engines.gate import question_sentences
from ..engines.questioner import Questioner
from ..prompts import is_question
from ..runs import pick_run, recipe_of_run
from ..stages.simulate import pair_facts, recipe_gate
from ..store import Store
from .audit import leakage
from .elicitation import conversation_elicitation
from .intervals import crossed_resamples, percentile_interval

COMPARED = ("questions", "leakage", "active", "passive", "logprob")  # kept against the rest, per conversation


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def pair_fact_moments(task: str, persona: str, logprobs: list[float], facts: list[int]) -> dict:
    """One pair's share of the within-pair slope of the log-prob on the facts told: the sums of products of each
    conversation's deviations from the pair's means (`fact_worth` pools them over pairs)."""
    mean_logprob, mean_facts = statistics.fmean(logprobs), statistics.fmean(facts)
    return {"task": task, "persona": persona,
            "xy": sum((f - mean_facts) * (lp - mean_logprob) for lp, f in zip(logprobs, facts, strict=True)),
            "xx": sum((f - mean_facts) ** 2 for f in facts)}


def fact_worth(moments: list[dict], resamples: int = 4000) -> dict | None:
    """Nats of the gold's log-prob per persona fact told, within a pair, over the pairs' `pair_fact_moments`
    (pairs of several runs may be pooled), with a 95% interval resampling tasks and personas (a resample whose
    pairs never differ in facts told is left out). None where no pair's conversations differ in facts told."""
    import numpy as np

    varied = [m for m in moments if m["xx"] > 0]
    if not varied:
        return None
    xy = np.array([m["xy"] for m in varied])
    xx = np.array([m["xx"] for m in varied])

    def slope(weight):
        told = weight @ xx
        return np.where(told > 0, (weight @ xy) / np.where(told > 0, told, 1), np.nan)

    slopes = crossed_resamples([m["task"] for m in varied], [m["persona"] for m in varied], slope,
                               resamples=resamples)
    low, high = percentile_interval(slopes[~np.isnan(slopes)], 0.95)
    return {"mean": float(xy.sum() / xx.sum()), "low": low, "high": high, "pairs": len(varied),
            "tasks": len({m["task"] for m in varied}), "personas": len({m["persona"] for m in varied})}


def fact_worth_line(worth: dict | None) -> str:
    """`fact_worth` in words, as the anatomy's table and the benchmark's pooled line print it."""
    if worth is None:
        return "no pair's conversations differ in facts told"
    return (f"{worth['mean']:+.1f} nats of log p(gold) [{worth['low']:+.1f}, {worth['high']:+.1f}] ({worth['pairs']} "
            f"pairs whose conversations differ in facts told, {worth['tasks']} tasks x {worth['personas']} personas)")


def selection_anatomy(home: Path | str | None, run_id: str | None, iteration: int) -> dict:
    """The iteration's anatomy: trained tokens by kind, kept conversations against the rest (means of COMPARED;
    leakage over the conversations it is defined for), the share of sampled Questioner turns asking for a fact,
    the reward's spread within a pair, and what a fact told is worth to the log-prob (`fact_worth`; the pairs'
    moments too, under "fact_moments", for pooling runs)."""
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    recipe = recipe_of_run(run)
    questioner = Questioner(recipe.questioner, store.home)
    gate = recipe_gate(recipe.simulate, store.home)
    pairs = {p["id"]: p for p in store.pairs(run["id"], iteration)}
    conversations = store.conversations(run["id"], iteration)
    turns = store.turns([c["id"] for c in conversations])
    logprob = {s["conversation_id"]: s["logprob"] for s in store.scores(run["id"], iteration)}
    kept = {s["conversation_id"] for s in store.selections(run["id"], iteration)}
    responses = store.responses(run["id"], iteration)

    questioner_turns = [t["text"] for c in kept for t in turns[c] if t["role"] == "questioner"]
    asking = [text for text in questioner_turns if is_question(text)]
    other = [text for text in questioner_turns if not is_question(text)]
    tokens = {"asking turns": sum(questioner.count_tokens(asking)) if asking else 0,
              "other questioner turns": sum(questioner.count_tokens(other)) if other else 0,
              "responses": sum(questioner.count_tokens([r["text"] for r in responses.values()])) if responses else 0}

    by_pair: dict[str, list[dict]] = {}
    sampled = asking_for_facts = 0
    for c in conversations:
        pair = pairs[c["pair_id"]]
        facts = pair_facts(pair)
        told = conversation_elicitation(turns[c["id"]], facts, gate)
        for t in turns[c["id"]]:
            if t["role"] == "questioner":
                sampled += 1
                asking_for_facts += bool(question_sentences(t["text"]) and gate.asked(t["text"], facts))
        by_pair.setdefault(c["pair_id"], []).append({"id": c["id"], "kept": c["id"] in kept,
                                                     "questions": c["questions"], "logprob": logprob[c["id"]],
                                                     "leakage": leakage(pair["persona"], turns[c["id"]]),
                                                     "active": told["active"], "passive": told["passive"]})
    rows: dict[str, list[dict]] = {"kept": [], "rest": []}
    margins, spreads, moments = [], [], []
    for pair_id, group in by_pair.items():
        moments.append(pair_fact_moments(pairs[pair_id]["task_id"], pairs[pair_id]["persona_id"],
                                         [c["logprob"] for c in group], [c["active"] + c["passive"] for c in group]))
        for c in group:
            rows["kept" if c["kept"] else "rest"].append(c)
        rewards = [c["logprob"] for c in group]
        (best,) = [c["logprob"] for c in group if c["kept"]]
        margins.append(best - statistics.fmean(rewards))
        spreads.append(max(rewards) - min(rewards))

    return {
        "run": run["id"], "iteration": iteration, "pairs": len(by_pair), "conversations": len(conversations),
        "trained_tokens": tokens,
        "asking_share_of_trained": tokens["asking turns"] / max(1, sum(tokens.values())),
        **{name: {key: _mean([c[key] for c in rows[name] if c[key] is not None]) for key in COMPARED}
           for name in ("kept", "rest")},
        "questioner_turns": sampled, "turns_asking_for_a_fact": asking_for_facts / sampled if sampled else None,
        "kept_minus_pair_mean": {"mean": _mean(margins), "median": statistics.median(margins)},
        "pair_spread": {"mean": _mean(spreads), "median": statistics.median(spreads)},
        "fact_worth": fact_worth(moments), "fact_moments": moments,
    }


def anatomy_table(a: dict) -> str:
    """The anatomy as lines of text (what the benchmark prints)."""
    t = a["trained_tokens"]

    def share(value: float | None) -> str:
        return f"{value:.1%}" if value is not None else "-"

    return "\n".join([
        f"run {a['run']}, iteration {a['iteration']}: {a['pairs']} pairs, {a['conversations']} conversations",
        (f"SFT trains on {sum(t.values())} tokens: asking turns {t['asking turns']}, other Questioner turns "
         f"{t['other questioner turns']}, regulariser responses {t['responses']} "
         f"(asking: {a['asking_share_of_trained']:.1%})"),
        (f"sampled Questioner turns that ask for a persona fact (the gate): {share(a['turns_asking_for_a_fact'])} "
         f"of {a['questioner_turns']}"),
        (f"{'':<6} {'questions':>9} {'persona leakage':>16} {'facts active':>12} {'passive':>8} "
         f"{'log p(gold)':>12}"),
        *(f"{name:<6} {a[name]['questions']:>9.2f} {share(a[name]['leakage']):>16} {a[name]['active']:>12.2f} "
          f"{a[name]['passive']:>8.2f} {a[name]['logprob']:>12.1f}" for name in ("kept", "rest")),
        (f"within a pair: kept less the pair's mean {a['kept_minus_pair_mean']['mean']:+.1f} nats (median "
         f"{a['kept_minus_pair_mean']['median']:+.1f}); max less min {a['pair_spread']['mean']:.1f} (median "
         f"{a['pair_spread']['median']:.1f})"),
        f"a fact told, within a pair: {fact_worth_line(a['fact_worth'])}",
        ("persona leakage: the share of the persona's content words the answers say unasked (the audit's rule), "
         "over conversations with an answer"),
    ])
