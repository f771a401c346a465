"""How often does Q_0 ask for something the persona holds, under each candidate instruction to ask? A screen for
`simulate.instruction`, before a run and its probe: cheap (the first turn only, no user, no training).

    python -m benchmarks.instruction_screen --home H [--samples 4] [--instructions FILE.json]

For each split-A pair of the learning probe's default size (6 tasks x 4 hand-written personas, `data.dataset
builtin-written`: a home the probe has run in holds their gold responses), Q_0 writes its first turn `--samples` times, sampled
as the simulation samples it (the tiny recipe's temperature, top_p and question token limit), under each
instruction; the gate of a gated user (simulate.gate) says which turns ask for any of the persona's facts. Prints
per instruction the share of turns that ask for a fact and the share that hold a question mark. The shipped
instruction is always screened first; FILE.json maps further names to instruction texts (default: the candidates
below). Not a timing. Later turns, which follow a user's reply, ask less: the run's own figure is
`benchmarks/selection_anatomy.py`'s share of sampled turns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CANDIDATES = {
    "examples": 'Before you help me, ask me one short question about my life, like "Who do you live with?", "What '
                'do you do for work?" or "Do you have a budget in mind?". Write only your question; when I repeat my '
                "request, give your full answer.",
    "one-question": "Ask me one question about myself. Only the question.",
    "personal": "Do not answer yet. First ask me one question about my own life, such as who I live with, what I "
                "like to eat, how much I can spend or what my job is. Reply with that question only.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a home whose data holds the written personas")
    parser.add_argument("--samples", type=int, default=4, help="first turns per pair and instruction")
    parser.add_argument("--instructions", type=Path, help="JSON: {name: instruction text}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.prompts import QUESTION_INSTRUCTION, is_question, questioner_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.data import usable_pairs
    from stargate_lite.stages.simulate import recipe_gate
    from stargate_lite.store import Store

    recipe = load_recipe("tiny", ["data.dataset=builtin-written", "simulate.reveal=asked", "data.tasks.A=6",
                                  "data.personas.A=4"])
    store = Store(args.home, create=False)
    pairs = usable_pairs(store, recipe, "A")
    candidates = {"shipped": QUESTION_INSTRUCTION,
                  **(json.loads(args.instructions.read_text()) if args.instructions else CANDIDATES)}
    questioner = Questioner(recipe.questioner, store.home)
    model = questioner.load_base()
    gate = recipe_gate(recipe.simulate, store.home)
    results = {}
    for name, text in candidates.items():
        prompts = [questioner_messages(persona["name"], task["text"], [], final=False, instruction_text=text)
                   for task, persona in pairs for _ in range(args.samples)]
        turns = questioner.generate(model, prompts, max_new_tokens=recipe.simulate.question_max_tokens,
                                    temperature=recipe.simulate.temperature, top_p=recipe.simulate.top_p,
                                    batch_size=recipe.simulate.batch_size, seed=0)
        facts = [json.loads(persona["facts"]) for _, persona in pairs for _ in range(args.samples)]
        asks = sum(bool(gate.asked(turn, f)) for turn, f in zip(turns, facts, strict=True))
        questions = sum(is_question(turn) for turn in turns)
        results[name] = {"instruction": text, "turns": len(turns), "asks_for_a_fact": asks / len(turns),
                         "questions": questions / len(turns)}
        print(f"{name:>14}: {asks / len(turns):6.1%} of {len(turns)} first turns ask for a persona fact; "
              f"{questions / len(turns):6.1%} hold a question mark", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pairs": len(pairs), "samples": args.samples, "results": results}, indent=1))


if __name__ == "__main__":
    main()
