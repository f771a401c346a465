"""Evaluation on the test split (never trained on), per iteration eta (0 = the base model):

- gold log-probs under the base model in four conditions: negative control (name only), positive control
  (persona given), experimental (conversations elicited by Q_eta), random (Q_eta's conversations with another
  test persona, for the same task); mean and SEM over conversations, and the best of n per pair;
- win rates of Q_eta against Q_0: each answers greedily after one of its own conversations (the same sample
  index), a Judge compares the two in a seeded random order.

Everything is stored under an evaluation namespace per roleplayer ("RUN#eval:ROLEPLAYER"), keyed by iteration,
pair, condition, responder and judge, so a rerun reuses it all and another roleplayer or judge adds new rows.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

from .chat import ChatFailure, ChatModels, Sampling, preflight
from .data import prepare_data
from .errors import StargateError
from .judge import parse_verdict, policy_is_a
from .loop import make_pairs, recipe_of_run
from .progress import Progress
from .prompts import greeting, judge_messages, questioner_messages
from .questioner import Questioner
from .score import base_weights, encode_gold, score_sums, score_stage
from .simulate import simulate
from .store import Store

RESPONDERS = ("policy", "base")  # who answers after Q_eta's conversation: Q_eta itself, or Q_0 (ablation)


def namespace(run_id: str, roleplayer: str) -> str:
    return f"{run_id}#eval:{roleplayer}"


def pick_run(store: Store, run_id: str | None) -> dict:
    runs = store.list_runs()
    if run_id is None:
        if not runs:
            raise StargateError(f"no runs in {store.path}: start one with `stargate-lite run`")
        return runs[-1]
    run = store.get_run(run_id)
    if run is None:
        known = ", ".join(r["id"] for r in runs) or "none yet"
        raise StargateError(f"no run {run_id!r} in {store.path} (runs: {known})")
    return run


def trained_iterations(store: Store, run_id: str) -> list[int]:
    return [it["iteration"] for it in store.iterations(run_id) if store.training(run_id, it["iteration"])]


def pick_adapter(store: Store, run: dict, iteration: int | None) -> tuple[int, str]:
    """(iteration, adapter path) of a run's trained iteration, the latest by default."""
    trained = trained_iterations(store, run["id"])
    if not trained:
        raise StargateError(f"run {run['id']} has no trained adapter yet: finish an iteration first")
    iteration = trained[-1] if iteration is None else iteration
    if iteration not in trained:
        raise StargateError(f"run {run['id']} has no trained iteration {iteration} (trained: {trained})")
    return iteration, store.training(run["id"], iteration)["adapter"]


def _pair_key(pair: dict) -> str:
    return f"{pair['task_id']}|{pair['persona_id']}"


def _score_conditions(store: Store, ns: str, iteration: int, model, questioner: Questioner, recipe,
                      progress: Progress) -> None:
    """Negative and positive controls (once, at iteration 0) and the random-persona condition."""
    pairs = store.pairs(ns, iteration)
    by_pair: dict[str, list[str]] = {}
    for c in store.conversations(ns, iteration):
        by_pair.setdefault(c["pair_id"], []).append(c["id"])
    items: list[tuple[dict, str, str]] = []  # (pair, condition, conversation id or "")
    if iteration == 0:
        items += [(p, cond, "") for p in pairs for cond in ("negative", "positive")]
    # Random: the gold of (t, u) after Q_eta's conversations with another test persona u' for the same task t.
    for p in pairs:
        others = [o for o in pairs if o["task_id"] == p["task_id"] and o["persona_id"] != p["persona_id"]]
        if others:
            items += [(p, "random", cid) for cid in by_pair.get(others[p["idx"] % len(others)]["id"], [])]
    have = {r["id"] for r in store.rows("select id from eval_scores where ns = ? and iteration = ?", [ns, iteration])}
    todo = [item for item in items if _score_id(ns, iteration, *item) not in have]
    if not todo:
        return
    turns = store.turns([cid for _, cond, cid in todo if cond == "random"])

    def encode(p: dict, cond: str, cid: str):
        if cond == "random":
            return encode_gold(questioner, p["persona_name"], p["task"], turns[cid], p["gold"])
        opening = greeting(p["persona_name"], p["task"])
        if cond == "positive":
            opening = f"{p['persona']}\n\n{opening}"
        return questioner.encode_for_scoring([{"role": "user", "content": opening}], p["gold"])

    with progress.stage(f"eval {iteration}: control and random conditions", len(todo)) as bar, base_weights(model):
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            sums = score_sums(model, [encode(*item) for item in chunk], batch_size=recipe.score.batch_size,
                              vocab_chunk_tokens=recipe.score.vocab_chunk_tokens,
                              memory_budget_bytes=questioner.memory_budget_bytes)
            rows = [{"id": _score_id(ns, iteration, p, cond, cid), "ns": ns, "iteration": iteration,
                     "condition": cond, "pair_key": _pair_key(p), "conversation_id": cid, "logprob": lp,
                     "n_tokens": n} for (p, cond, cid), (lp, n) in zip(chunk, sums)]
            store.insert_rows("eval_scores", rows, pk="id")
            bar(len(chunk))


def _score_id(ns: str, iteration: int, pair: dict, condition: str, conversation_id: str) -> str:
    return f"{ns}/{iteration}/{condition}/{_pair_key(pair)}/{conversation_id}"


def win_rate_pairs(pairs: list[dict], per_turn: int | None, seed: int) -> list[dict]:
    """All test pairs, or `per_turn` of each turn count k, sampled with the run's seed (the paper: 100 each)."""
    if per_turn is None:
        return pairs
    chosen = []
    for k in sorted({p["turns"] for p in pairs}):
        group = sorted((p for p in pairs if p["turns"] == k), key=_pair_key)
        chosen += random.Random(f"{seed}/win-pairs/{k}").sample(group, min(per_turn, len(group)))
    return sorted(chosen, key=lambda p: p["idx"])


def _sample_for(seed: int, pair: dict, n: int) -> int:
    return random.Random(f"{seed}/win-sample/{_pair_key(pair)}").randrange(n)


def _respond(store: Store, ns: str, iteration: int, responder: str, pairs: list[dict], model, questioner: Questioner,
             recipe, conv_iteration: int, progress: Progress) -> None:
    """Greedy final responses after the chosen conversation of each pair (conversations of conv_iteration)."""
    n = recipe.eval.conversations_per_pair
    have = {r["pair_key"] for r in store.rows(
        "select pair_key from eval_responses where ns = ? and iteration = ? and responder = ?",
        [ns, iteration, responder])}
    todo = [p for p in pairs if _pair_key(p) not in have]
    if not todo:
        return
    conv_ids = [f"{ns}/{conv_iteration}/{_pair_key(p)}#{_sample_for(recipe.seed, p, n):03d}" for p in todo]
    turns = store.turns(conv_ids)
    prompts = [questioner_messages(p["persona_name"], p["task"], turns[c], final=True) for p, c in zip(todo, conv_ids)]
    with progress.stage(f"eval {iteration}: responses ({responder})", len(todo)) as bar:
        for start in range(0, len(todo), recipe.respond.batch_size):
            sl = slice(start, start + recipe.respond.batch_size)
            texts = questioner.generate(model, prompts[sl], max_new_tokens=recipe.respond.max_tokens, temperature=0.0,
                                        top_p=1.0, batch_size=recipe.respond.batch_size, seed=0)
            rows = [{"id": f"{ns}/{iteration}/{responder}/{_pair_key(p)}", "ns": ns, "iteration": iteration,
                     "responder": responder, "pair_key": _pair_key(p), "conversation_id": c, "text": t}
                    for p, c, t in zip(todo[sl], conv_ids[sl], texts)]
            store.insert_rows("eval_responses", rows, pk="id")
            bar(len(rows))


def _judge(store: Store, ns: str, iteration: int, responder: str, pairs: list[dict], judge, recipe,
           progress: Progress) -> None:
    responses = {(r["iteration"], r["responder"], r["pair_key"]): r["text"] for r in store.rows(
        "select * from eval_responses where ns = ? and iteration in (0, ?)", [ns, iteration])}
    have = {r["pair_key"] for r in store.rows(
        "select pair_key from judgments where ns = ? and iteration = ? and responder = ? and judge = ?",
        [ns, iteration, responder, judge.name])}
    todo = [p for p in pairs if _pair_key(p) not in have]
    if not todo:
        return
    with progress.stage(f"eval {iteration}: judge ({judge.name})", len(todo)) as bar, \
            store.failure_log(ns, f"judge/{iteration}/{responder}/{judge.name}", "judgments") as record_failure:
        for start in range(0, len(todo), 8):
            chunk = todo[start : start + 8]
            prompts, orders = [], []
            for p in chunk:
                key = _pair_key(p)
                ours, base = responses[(iteration, responder, key)], responses[(0, "policy", key)]
                first = policy_is_a(recipe.seed, f"{ns}/{iteration}/{responder}/{key}")
                orders.append(first)
                a, b = (ours, base) if first else (base, ours)
                prompts.append(judge_messages(p["persona"], p["task"], a, b))
            texts = judge.complete_each(prompts, Sampling(recipe.eval.judge_max_tokens, temperature=0.0,
                                                           seed=recipe.seed))
            rows = []
            for p, first, text in zip(chunk, orders, texts):
                if isinstance(text, ChatFailure):  # not a verdict: retried on the next eval, never counted
                    record_failure(_pair_key(p), str(text))
                    continue
                verdict = parse_verdict(text)
                winner = None if verdict is None else ("policy" if (verdict == "A") == first else "base")
                rows.append({"id": f"{ns}/{iteration}/{responder}/{judge.name}/{_pair_key(p)}", "ns": ns,
                             "iteration": iteration, "responder": responder, "judge": judge.name,
                             "pair_key": _pair_key(p), "turns": p["turns"], "policy_is_a": int(first),
                             "verdict": verdict, "winner": winner,
                             "status": "valid" if verdict else "unparsable", "raw": text})
            store.insert_rows("judgments", rows, pk="id")
            bar(len(rows))


def evaluate(home: Path | str | None = None, run_id: str | None = None, iterations: list[int] | None = None,
             roleplayer: str | None = None, judge: str | None = None, responder: str = "policy",
             progress: Progress | None = None) -> dict:
    """Evaluate a run's iterations on the test split; returns the summary (see `summarize`)."""
    store = Store(home)
    run = pick_run(store, run_id)
    recipe = recipe_of_run(run)
    run_id = run["id"]
    roleplayer = roleplayer or recipe.roles.roleplayer
    judge_name = judge or recipe.roles.judge
    for role, name in (("--roleplayer", roleplayer), ("--judge", judge_name)):
        if name not in recipe.chat_models:
            raise StargateError(f"{role} {name!r} is not a chat model of run {run_id}: "
                                f"choose one of {', '.join(sorted(recipe.chat_models))}")
    if responder not in RESPONDERS:
        raise StargateError(f"--responder must be one of {', '.join(RESPONDERS)}")
    available = trained_iterations(store, run_id)
    wanted = sorted(set([0, *(available if iterations is None else iterations)]))
    missing = [i for i in wanted if i != 0 and i not in available]
    if missing:
        raise StargateError(f"run {run_id} has no trained iteration {missing[0]} (trained: {available or 'none'})")
    ns = namespace(run_id, roleplayer)
    judged = f"judge:{responder}:{judge_name}"
    if any(not store.stage_done(ns, i, "eval") or (i and not store.stage_done(ns, i, judged)) for i in wanted):
        preflight(recipe.chat_models, {roleplayer, judge_name})
    chat = ChatModels(recipe.chat_models, store.home)
    progress = progress or Progress()
    sim_config = recipe.simulate.model_copy(update={"conversations_per_pair": recipe.eval.conversations_per_pair})
    questioner = None
    with progress:
        prepare_data(store, recipe, lambda: chat.get(recipe.roles.oracle), progress)
        for iteration in wanted:
            if not store.stage_done(ns, iteration, "eval"):
                questioner = questioner or Questioner(recipe.questioner, store.home)
                adapter = store.training(run_id, iteration)["adapter"] if iteration else None
                make_pairs(store, recipe, ns, iteration, "test", f"{recipe.seed}/eval")
                policy = questioner.load_policy(adapter)
                simulate(store, ns, iteration, policy, f"iteration-{iteration}" if iteration else "base", questioner,
                         chat.get(roleplayer), sim_config, recipe.seed + 7919, progress)
                score_stage(store, ns, iteration, policy, questioner, recipe.score, progress)
                _score_conditions(store, ns, iteration, policy, questioner, recipe, progress)
                store.mark_stage(ns, iteration, "eval")
            pairs = win_rate_pairs(store.pairs(ns, iteration), recipe.eval.win_rate_pairs_per_turn, recipe.seed)
            if iteration == 0 or store.stage_done(ns, iteration, judged):
                continue
            questioner = questioner or Questioner(recipe.questioner, store.home)
            base_pairs = win_rate_pairs(store.pairs(ns, 0), recipe.eval.win_rate_pairs_per_turn, recipe.seed)
            base_model = questioner.load_policy(None)
            _respond(store, ns, 0, "policy", base_pairs, base_model, questioner, recipe, 0, progress)
            if responder == "base":
                _respond(store, ns, iteration, "base", pairs, base_model, questioner, recipe, iteration, progress)
            else:
                adapter = store.training(run_id, iteration)["adapter"]
                _respond(store, ns, iteration, "policy", pairs, questioner.load_policy(adapter), questioner, recipe,
                         iteration, progress)
            _judge(store, ns, iteration, responder, pairs, chat.get(judge_name), recipe, progress)
            store.mark_stage(ns, iteration, judged)
    return summarize(store, run_id, roleplayer, judge_name, responder, wanted)


def _mean_sem(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values) if n else None
    sem = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "sem": sem, "n": n}


def summarize(store: Store, run_id: str, roleplayer: str, judge: str, responder: str = "policy",
              iterations: list[int] | None = None) -> dict:
    """The evaluation as stored: no model is loaded. Used by `eval --json` and `report`."""
    ns = namespace(run_id, roleplayer)
    if iterations is None:
        iterations = sorted({r["iteration"] for r in store.rows("select distinct iteration from pairs where run_id = ?",
                                                                [ns])})
    controls = {c: [r["logprob"] for r in store.rows(
        "select logprob from eval_scores where ns = ? and iteration = 0 and condition = ?", [ns, c])]
        for c in ("negative", "positive")}
    out = []
    for it in iterations:
        exp = store.scores(ns, it)
        best: dict[str, float] = {}
        for s in exp:
            best[s["pair_id"]] = max(best.get(s["pair_id"], -math.inf), s["logprob"])
        rnd = [r["logprob"] for r in store.rows(
            "select logprob from eval_scores where ns = ? and iteration = ? and condition = 'random'", [ns, it])]
        judged = store.rows("select * from judgments where ns = ? and iteration = ? and responder = ? and judge = ?",
                            [ns, it, responder, judge])
        out.append({
            "iteration": it,
            "logprob": {
                "negative": _mean_sem(controls["negative"]),
                "positive": _mean_sem(controls["positive"]),
                "experimental": _mean_sem([s["logprob"] for s in exp]),
                "experimental_best_of_n": _mean_sem(list(best.values())),
                "random": _mean_sem(rnd),
            },
            "win_rate": _win_rate(judged) if it else {"rate": 0.5, "sem": None, "wins": None, "valid": None,
                                                      "unparsable": None, "by_turns": {}},
        })
    return {"run": run_id, "roleplayer": roleplayer, "judge": judge, "responder": responder, "iterations": out}


def _win_rate(judged: list[dict]) -> dict:
    def rate(rows: list[dict]) -> dict:
        valid = [r for r in rows if r["status"] == "valid"]
        wins = sum(r["winner"] == "policy" for r in valid)
        p = wins / len(valid) if valid else None
        sem = math.sqrt(p * (1 - p) / len(valid)) if valid else None
        return {"rate": p, "sem": sem, "wins": wins, "valid": len(valid), "unparsable": len(rows) - len(valid)}

    by_turns = {str(k): rate([r for r in judged if r["turns"] == k]) for k in sorted({r["turns"] for r in judged})}
    return {**rate(judged), "by_turns": by_turns}
