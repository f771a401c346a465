"""The simulate stage's Roleplayer workload: in-process llama-cpp-python against the managed llama-server at several
slot counts, side by side in one run (one job at a time on the machine: they share its cores).

    python -m benchmarks.bench_roleplayer                        # the tiny recipe's Roleplayer, 8 pairs
    python -m benchmarks.bench_roleplayer --pairs 12 --slots 1 4 16 --set simulate.pairs_per_chunk=8

The workload is simulate's, turn by turn and chunk by chunk: the built-in personas and tasks, n conversations per
pair, k ~ uniform(1..K) turns. Each turn's Roleplayer side is the stage's own (simulate.roleplayer_turn): the
prompt rebuilt from the whole conversation (or, for a gated user, from the facts asked for), the turn's sampling
seed, every answer of a chunk requested together, answers trimmed as simulate trims them. The Questioner's
questions come from a fixed list (its own time is not measured here).
Besides speed it prints how many greedy answers each server run shares with the 1-slot server run (llama.cpp's
batched kernels and prompt cache are not bit-for-bit identical to one sequence decoded alone).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

QUESTIONS = (
    "What does a typical day look like for you?",
    "What matters most to you about this?",
    "How much time can you set aside for it?",
    "Is there anything you would rather avoid?",
    "What have you tried so far, and how did it go?",
    "What budget do you have in mind?",
    "Who else is involved or affected?",
    "What would a great result look like for you?",
)


ROLEPLAYER = "roleplayer"  # the one chat model each row runs, under this name


def workload(pairs: int, conversations: int, max_turns: int, seed: int) -> list[dict]:
    """Conversation records as simulate_chunk keeps them (pair, messages, roleplayer, failed), for the built-in
    personas and tasks, each with its own k ~ uniform(1..max_turns) turns."""
    from stargate_lite.stages.builtin_data import SEED_PERSONAS, TASKS

    rng = random.Random(seed)
    convs = []
    for i in range(pairs):
        name, persona = SEED_PERSONAS[i % len(SEED_PERSONAS)]
        pair = {"id": f"bench/{i}", "persona": persona, "persona_name": name, "task": TASKS[(7 * i) % len(TASKS)]}
        convs += [{"pair": pair, "index": i, "sample": s, "turns": rng.randint(1, max_turns), "messages": [],
                   "roleplayer": ROLEPLAYER, "failed": None} for s in range(conversations)]
    return convs


def run_workload(roleplayers, convs: list[dict], sim, chunk_conversations: int, seed: int) -> list[str]:
    """simulate_chunk's Roleplayer side, through the stage's own roleplayer_turn: per chunk and turn, a fixed
    question in every active conversation, then all their replies requested at once under the seeds iteration 1
    of a run with this seed would use. Returns the replies as the Roleplayer wrote them."""
    from stargate_lite.stages.simulate import chunk_seed, roleplayer_turn

    raw: list[str] = []
    for index, start in enumerate(range(0, len(convs), chunk_conversations)):
        chunk = convs[start:start + chunk_conversations]
        for turn in range(max(c["turns"] for c in chunk)):
            active = [c for c in chunk if c["turns"] > turn and not c["failed"]]
            for c in active:
                c["messages"].append({"role": "questioner",
                                      "text": QUESTIONS[(c["index"] * 3 + c["sample"] * 5 + turn) % len(QUESTIONS)]})
            replies = roleplayer_turn(active, roleplayers, sim, chunk_seed(seed, 1, index, 0), turn)
            raw += [reply for reply in replies if reply is not None]
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides, as in run")
    parser.add_argument("--home", default="/tmp/stargate-bench-roleplayer", help="where the servers' logs go")
    a = parser.parse_args()

    from llama_cpp import Llama

    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.engines.models import resolve_gguf
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.simulate import Roleplayers, user_gate

    recipe = load_recipe(a.recipe, a.set)
    sim = recipe.simulate
    gate = user_gate(sim, Path(a.home))  # None for the free user (simulate.reveal all, as shipped)
    base = recipe.chat_models[recipe.roles.main_roleplayer].model_copy(update={"backend": "llamacpp"})
    vocab = Llama(model_path=str(resolve_gguf(base.model, base.gguf_file)), vocab_only=True, verbose=False)

    def tokens(texts: list[str]) -> int:
        return sum(len(vocab.tokenize(t.encode(), add_bos=False)) for t in texts)

    chunk = sim.pairs_per_chunk * sim.conversations_per_pair
    requests = sum(c["turns"] for c in workload(a.pairs, sim.conversations_per_pair, sim.max_turns, recipe.seed))
    print(f"roleplayer benchmark: recipe {recipe.name}, {base.model}, {a.pairs} pairs x {sim.conversations_per_pair} "
          f"conversations, k ~ 1..{sim.max_turns}: {requests} answers of at most {sim.answer_max_tokens} tokens, "
          f"chunks of {chunk} conversations")
    print(f"{'backend':<22} {'seconds':>8} {'answers/s':>10} {'tokens/s':>9} {'x in-process':>13} "
          f"{'same as 1 slot':>15}")
    rows = [("llama.cpp in-process", base)]
    rows += [(f"llama-server {n} slot{'s' if n > 1 else ''}", base.model_copy(update={"backend": "llama-server",
                                                                                       "slots": n}))
             for n in a.slots]
    baseline, one_slot = None, None
    for label, config in rows:
        with ChatModels({ROLEPLAYER: config}, Path(a.home), Path(a.home) / "logs") as chat:
            roleplayers = Roleplayers({ROLEPLAYER: 1.0}, chat.get, recipe.seed, gate)
            run_workload(roleplayers, workload(1, 1, 1, recipe.seed), sim, 1, recipe.seed)  # warm-up
            convs = workload(a.pairs, sim.conversations_per_pair, sim.max_turns, recipe.seed)
            started = time.perf_counter()
            answers = run_workload(roleplayers, convs, sim, chunk, recipe.seed)
            seconds = time.perf_counter() - started
        rate = tokens(answers) / seconds
        baseline = baseline or rate
        same = ""
        if config.backend == "llama-server":
            one_slot = one_slot or (answers if config.slots == 1 else None)
            if one_slot:
                same = f"{sum(x == y for x, y in zip(answers, one_slot))}/{len(answers)}"
        print(f"{label:<22} {seconds:8.1f} {len(answers) / seconds:10.2f} {rate:9.1f} {rate / baseline:12.2f}x "
              f"{same:>15}", flush=True)


if __name__ == "__main__":
    main()
