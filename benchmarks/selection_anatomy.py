"""What an iteration selected and trained on, read from a run's store: the figures that say why the loop does or
does not teach (issue "Proven end to end", item 3). Not a timing.

For one iteration of a run:
- what SFT trains on: tokens of the kept conversations' Questioner turns that ask (a question mark), of those
  that do not, and of the regulariser responses after them (the Questioner's tokenizer);
- how each pair's kept conversation differs from the pair's others: questions asked, and persona words elicited
  (the share of the persona's content words, 5 letters or more, that the Roleplayer's answers contain);
- the reward spread within a pair: the kept conversation's log-prob less the pair's mean, and max less min;
- with the run's gate (simulate.gate, for a free user as for a gated one): the share of the iteration's sampled
  Questioner turns that ask for any persona fact, and the facts elicited actively and passively per conversation,
  kept against the rest (evaluation/elicitation.py): how much selection raises asking that draws facts out.

    python -m benchmarks.selection_anatomy --home H [--run RUN] [--iteration 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

WORD = re.compile(r"[a-z]{5,}")


def persona_words(persona: str) -> set[str]:
    return set(WORD.findall(persona.lower()))


def elicited(persona: set[str], turns: list[dict]) -> float:
    """The share of the persona's content words that the Roleplayer's answers contain."""
    said = set(WORD.findall(" ".join(t["text"] for t in turns if t["role"] == "roleplayer").lower()))
    return len(persona & said) / len(persona) if persona else 0.0


def anatomy(home: Path, run_id: str | None, iteration: int) -> dict:
    from stargate_lite.engines.gate import question_sentences
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.evaluation.elicitation import conversation_elicitation
    from stargate_lite.prompts import is_question
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.stages.simulate import pair_facts, recipe_gate
    from stargate_lite.store import Store

    store = Store(home, create=False)
    run = pick_run(store, run_id)
    questioner = Questioner(recipe_of_run(run).questioner, store.home)
    gate = recipe_gate(recipe_of_run(run).simulate, store.home)
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
        words = persona_words(pair["persona"])
        facts = pair_facts(pair)
        told = conversation_elicitation(turns[c["id"]], facts, gate)
        for t in turns[c["id"]]:
            if t["role"] == "questioner":
                sampled += 1
                asking_for_facts += bool(question_sentences(t["text"]) and gate.asked(t["text"], facts))
        by_pair.setdefault(c["pair_id"], []).append({"id": c["id"], "kept": c["id"] in kept,
                                                     "questions": c["questions"], "logprob": logprob[c["id"]],
                                                     "elicited": elicited(words, turns[c["id"]]),
                                                     "active": told["active"], "passive": told["passive"]})
    rows = {"kept": [], "rest": []}
    margins, spreads = [], []
    for group in by_pair.values():
        for c in group:
            rows["kept" if c["kept"] else "rest"].append(c)
        rewards = [c["logprob"] for c in group]
        (best,) = [c["logprob"] for c in group if c["kept"]]
        margins.append(best - statistics.fmean(rewards))
        spreads.append(max(rewards) - min(rewards))

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    return {
        "run": run["id"], "iteration": iteration, "pairs": len(by_pair), "conversations": len(conversations),
        "trained_tokens": tokens,
        "asking_share_of_trained": tokens["asking turns"] / max(1, sum(tokens.values())),
        "kept": {key: mean([c[key] for c in rows["kept"]])
                 for key in ("questions", "elicited", "active", "passive", "logprob")},
        "rest": {key: mean([c[key] for c in rows["rest"]])
                 for key in ("questions", "elicited", "active", "passive", "logprob")},
        "questioner_turns": sampled, "turns_asking_for_a_fact": asking_for_facts / sampled if sampled else None,
        "kept_minus_pair_mean": {"mean": mean(margins), "median": statistics.median(margins)},
        "pair_spread": {"mean": mean(spreads), "median": statistics.median(spreads)},
    }


def table(a: dict) -> str:
    t = a["trained_tokens"]
    return "\n".join([
        f"run {a['run']}, iteration {a['iteration']}: {a['pairs']} pairs, {a['conversations']} conversations",
        (f"SFT trains on {sum(t.values())} tokens: asking turns {t['asking turns']}, other Questioner turns "
         f"{t['other questioner turns']}, regulariser responses {t['responses']} "
         f"(asking: {a['asking_share_of_trained']:.1%})"),
        (f"sampled Questioner turns that ask for a persona fact (the gate): {a['turns_asking_for_a_fact']:.1%} "
         f"of {a['questioner_turns']}"),
        f"{'':<6} {'questions':>9} {'persona words elicited':>23} {'facts active':>12} {'passive':>8} "
        f"{'log p(gold)':>12}",
        *(f"{name:<6} {a[name]['questions']:>9.2f} {a[name]['elicited']:>23.1%} {a[name]['active']:>12.2f} "
          f"{a[name]['passive']:>8.2f} {a[name]['logprob']:>12.1f}" for name in ("kept", "rest")),
        (f"within a pair: kept less the pair's mean {a['kept_minus_pair_mean']['mean']:+.1f} nats (median "
         f"{a['kept_minus_pair_mean']['median']:+.1f}); max less min {a['pair_spread']['mean']:.1f} (median "
         f"{a['pair_spread']['median']:.1f})"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--run", default=None, help="run id [default: the latest]")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = anatomy(args.home, args.run, args.iteration)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
