"""A store filled with synthetic records at any scale, no model needed, and the store's real queries over it:
tests/test_store_scale.py checks that each query works under a 999-variable limit, and
benchmarks/bench_store.py times them at a million rows (`from tests.synthetic_store import ...`, run from the
repository's root).

The rows have the ids and shapes the stages write, and they are written through the store's own methods and
the loop's own pairing and selection: one training iteration that crashed after `respond` (its training is
left to do), and an evaluation of iterations 0 and 1 under one roleplayer, judged in both orders.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from stargate_lite.evaluation.evaluate import judgment_id, namespace, pair_key, score_id
from stargate_lite.evaluation.judge import judge_protocol
from stargate_lite.recipe import Recipe, load_recipe
from stargate_lite.runs import open_run
from stargate_lite.stages.data import make_pairs, persona_id, task_id
from stargate_lite.stages.select import select_best
from stargate_lite.stages.simulate import conversation_id
from stargate_lite.store import Store

DATASET = "synthetic"
RUN_ID = "synthetic"
ROLEPLAYER = "smollm2"
CHUNK = 5000  # conversations per transaction, as a stage's chunk (larger, so filling takes minutes)
VARIABLE_LIMIT = 999  # what SQLite builds before 3.32 allow; Python's own sqlite3 allows 32,766 or more


def synthetic_recipe(tasks: int, personas: int, conversations: int, eval_tasks: int, eval_personas: int,
                     eval_conversations: int) -> Recipe:
    return load_recipe("tiny", [
        f"data.dataset={DATASET}",
        f"data.tasks={{A: {tasks}, B: 1, test: {eval_tasks}}}",
        f"data.personas={{A: {personas}, B: 1, test: {eval_personas}}}",
        f"simulate.conversations_per_pair={conversations}",
        f"eval.conversations_per_pair={eval_conversations}",
    ])


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(("plan", "week", "budget", "quiet", "garden", "train", "recipe", "music", "son",
                                "morning", "allergic", "cheap", "friends", "deadline")) for _ in range(words))


def _data(store: Store, recipe: Recipe, rng: random.Random) -> None:
    for split in ("A", "B", "test"):
        n_tasks, n_personas = getattr(recipe.data.tasks, split), getattr(recipe.data.personas, split)
        tasks = [{"id": task_id(DATASET, split, i), "dataset": DATASET, "split": split, "idx": i,
                  "text": f"Task {i}: {_text(rng, 12)}?"} for i in range(n_tasks)]
        personas = [{"id": persona_id(DATASET, split, j), "dataset": DATASET, "split": split, "idx": j,
                     "name": f"Name{j}", "text": _text(rng, 60), "source": "synthetic"} for j in range(n_personas)]
        store.insert_rows("tasks", tasks, pk="id")
        store.insert_rows("personas", personas, pk="id")
        golds = [{"id": f"{t['id']}|{p['id']}", "dataset": DATASET, "task_id": t["id"], "persona_id": p["id"],
                  "text": _text(rng, 120), "status": "ok", "source": "synthetic"} for t in tasks for p in personas]
        for start in range(0, len(golds), CHUNK * 4):
            store.insert_rows("golds", golds[start : start + CHUNK * 4], pk="id")


def _conversations(store: Store, run_id: str, iteration: int, samples: int, rng: random.Random) -> None:
    """Each pair's conversations with their turns (as simulate saves them), then their scores (as score does)."""
    pairs = store.pairs(run_id, iteration)
    todo = [(p, s) for p in pairs for s in range(samples)]
    for start in range(0, len(todo), CHUNK):
        conversations = []
        for p, s in todo[start : start + CHUNK]:
            messages = []
            for _ in range(p["turns"]):
                messages += [{"role": "questioner", "text": _text(rng, 10) + "?"},
                             {"role": "roleplayer", "text": _text(rng, 30)}]
            conversations.append({"id": conversation_id(p["id"], s), "run_id": run_id, "iteration": iteration,
                                  "pair_id": p["id"], "sample": s, "turns": p["turns"], "policy": "base",
                                  "messages": messages})
        store.save_conversations(conversations)
        store.insert_rows("scores", [{"conversation_id": c["id"], "run_id": run_id, "iteration": iteration,
                                      "logprob": -rng.uniform(100, 500), "n_tokens": 150} for c in conversations],
                          pk="conversation_id")
    for stage in ("simulate", "score"):
        store.mark_stage(run_id, iteration, stage)


def fill(store: Store, tasks: int, personas: int, conversations: int, eval_tasks: int, eval_personas: int,
         eval_conversations: int = 3, seed: int = 0) -> dict[str, float]:
    """Fill an empty store; returns the seconds of the real stage code it ran (pairing, selection)."""
    rng = random.Random(seed)
    recipe = synthetic_recipe(tasks, personas, conversations, eval_tasks, eval_personas, eval_conversations)
    _data(store, recipe, rng)
    run_id = open_run(store, recipe, RUN_ID)
    timings = {}

    store.start_iteration(run_id, 1, "A")
    started = time.perf_counter()
    make_pairs(store, recipe, run_id, 1, "A", f"{seed}/1")
    timings["make_pairs (iteration 1)"] = time.perf_counter() - started
    store.mark_stage(run_id, 1, "pairs")
    _conversations(store, run_id, 1, conversations, rng)
    started = time.perf_counter()
    select_best(store, run_id, 1)
    timings["select_best (iteration 1)"] = time.perf_counter() - started
    store.mark_stage(run_id, 1, "select")
    responses = [{"pair_id": s["pair_id"], "run_id": run_id, "iteration": 1, "conversation_id": s["conversation_id"],
                  "text": _text(rng, 80), "policy": "base"} for s in store.selections(run_id, 1)]
    store.insert_rows("responses", responses, pk="pair_id")
    store.mark_stage(run_id, 1, "respond")  # and then the crash: training is left to do

    ns = namespace(run_id, ROLEPLAYER)
    protocol = judge_protocol(recipe.judge)
    judge = recipe.roles.judge
    for iteration in (0, 1):
        make_pairs(store, recipe, ns, iteration, "test", f"{seed}/eval")
        _conversations(store, ns, iteration, eval_conversations, rng)
        pairs = store.pairs(ns, iteration)
        scores = [{"id": score_id(ns, iteration, p, "random", conversation_id(p["id"], s)), "ns": ns,
                   "iteration": iteration, "condition": "random", "pair_key": pair_key(p),
                   "conversation_id": conversation_id(p["id"], s), "logprob": -rng.uniform(100, 500),
                   "n_tokens": 150} for p in pairs for s in range(eval_conversations)]
        if iteration == 0:
            scores += [{"id": score_id(ns, 0, p, condition, ""), "ns": ns, "iteration": 0, "condition": condition,
                        "pair_key": pair_key(p), "conversation_id": "", "logprob": -rng.uniform(100, 500),
                        "n_tokens": 150} for p in pairs for condition in ("negative", "positive")]
        store.insert_rows("eval_scores", scores, pk="id")
        store.mark_stage(ns, iteration, "eval")
        store.insert_rows("eval_responses", [
            {"id": f"{ns}/{iteration}/policy/{pair_key(p)}", "ns": ns, "iteration": iteration, "responder": "policy",
             "pair_key": pair_key(p), "conversation_id": conversation_id(p["id"], 0), "text": _text(rng, 80)}
            for p in pairs], pk="id")
    store.insert_rows("judgments", [
        {"id": judgment_id(ns, 1, "policy", judge, protocol, pair_key(p), swapped), "ns": ns, "iteration": 1,
         "responder": "policy", "judge": judge, "pair_key": pair_key(p), "turns": p["turns"],
         "policy_is_a": int(rng.random() < 0.5), "verdict": "A", "winner": rng.choice(("policy", "base")),
         "status": "valid", "raw": "A", "protocol": protocol, "swapped": swapped, "margin": rng.uniform(-3, 3)}
        for p in store.pairs(ns, 1) for swapped in (0, 1)], pk="id")
    store.mark_stage(ns, 1, f"judge:policy:{judge}:{protocol}:2")
    return timings


def limited_store(home: Path) -> Store:
    """The store with at most VARIABLE_LIMIT bound variables per statement."""
    store = Store(home)
    store.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, VARIABLE_LIMIT)
    return store


def queries(store: Store) -> dict:
    """name -> call of each read that a stage, a resume, `status` or `eval` makes (as the library makes it), on a
    store `fill` filled."""
    from stargate_lite.commands.status import run_status
    from stargate_lite.evaluation.evaluate import summarize
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.stages.data import split_pairs

    recipe = recipe_of_run(store.get_run(RUN_ID))
    ns = namespace(RUN_ID, ROLEPLAYER)
    first_chunk = [c["id"] for c in store.conversations_to_score(RUN_ID, 1)[:64]]
    return {
        "pairing: golds of the split's pairs": lambda: store.golds_for(
            (t["id"], p["id"]) for t, p in split_pairs(store, recipe, "A")),
        "pairs of an iteration (joined)": lambda: store.pairs(RUN_ID, 1),
        "simulate resume: conversation ids": lambda: store.conversation_ids(RUN_ID, 1),
        "score resume: conversations to score": lambda: store.conversations_to_score(RUN_ID, 1),
        "turns of one 64-conversation chunk": lambda: store.turns(first_chunk),
        "select: each pair's best conversation": lambda: store.best_scores(RUN_ID, 1),
        "respond resume: selections, responses": lambda: (store.selections(RUN_ID, 1), store.responses(RUN_ID, 1)),
        "train: selected conversations' turns": lambda: store.selected_turns(RUN_ID, 1),
        "train: training examples (reads + assembly)": lambda: training_examples(store, recipe, RUN_ID, 1),
        "status": lambda: run_status(store),
        "eval: summary (every eval read)": lambda: summarize(store, RUN_ID, ROLEPLAYER, recipe.roles.judge,
                                                             judge_protocol(recipe.judge)),
        "eval resume: score ids, response keys": lambda: (store.eval_score_ids(ns, 1),
                                                          store.eval_response_keys(ns, 1, "policy")),
    }
