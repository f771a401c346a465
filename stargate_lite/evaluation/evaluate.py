"""Evaluation on the test split (never trained on), per iteration eta (0 = the base model):

- gold log-probs under the base model in four conditions: negative control (name only), positive control
  (persona given), experimental (conversations elicited by Q_eta), random (Q_eta's conversations with another
  test persona, for the same task); mean and SEM over conversations, and the best of n per pair;
- win rates of Q_eta against Q_0: each answers greedily after one of its own conversations (the same sample
  index), a Judge compares the two in a seeded random order and, with eval.judge_orders 2, in the other order
  too (the counterbalanced win rate, and how often the judge's two verdicts agree).

Everything is stored under an evaluation namespace per roleplayer ("RUN#eval:ROLEPLAYER"), keyed by iteration,
pair, condition, responder, judge, judging protocol (judge.judge_protocol) and order, so a rerun reuses it all,
and another roleplayer, judge or judge template adds new rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engines.chat_models import ChatFailure, ChatModels, Sampling, preflight
from ..engines.gate import Gate
from ..engines.questioner import Questioner, SharedBase
from ..errors import StargateError
from ..progress import Progress
from ..prompts import greeting, judge_messages, questioner_messages
from ..recipe import Recipe, apply_overrides, check_judge_budget, override_key, validate_recipe
from ..runs import check_chat_model, pick_run, policies, recipe_of_run, run_dir
from ..stages.data import make_pairs, prepare_data
from ..stages.score import base_weights, encode_gold, score_stage, score_sums
from ..stages.simulate import Roleplayers, recipe_gate, simulate, user_gate
from ..store import Store
from ..tracking import open_tracker
from .audit import audit
from .curves import log_evaluation
from .efficiency import efficiency, mean_sem
from .elicitation import each_elicitation, elicitation
from .intervals import crossed_bootstrap
from .judge import judge_prompt_text, judge_protocol, policy_is_a, read_verdict, winner_of
from .strengths import bradley_terry

RESPONDERS = ("policy", "base")  # who answers after Q_eta's conversation: Q_eta itself, or Q_0 (ablation)
# What `eval --set` (and `report --set`) may change for a stored run: how verdicts are asked for and read, and in
# how many orders. Judgments are stored under the judging protocol and the order, so these add verdicts beside
# the earlier ones and change no stored conversation, score or response; anything else is refused.
EVAL_SETTINGS = ("eval.judge_orders", "judge.template", "judge.read", "judge.label", "judge.max_tokens", "track")


def namespace(run_id: str, roleplayer: str) -> str:
    return f"{run_id}#eval:{roleplayer}"


def pair_key(pair: dict) -> str:
    """A test pair's key in an evaluation's rows (task and persona): the same pair under every iteration."""
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
    by_task: dict[str, list[dict]] = {}
    for p in pairs:
        by_task.setdefault(p["task_id"], []).append(p)
    for p in pairs:
        others = [o for o in by_task[p["task_id"]] if o["persona_id"] != p["persona_id"]]
        if others:
            items += [(p, "random", cid) for cid in by_pair.get(others[p["idx"] % len(others)]["id"], [])]
    have = store.eval_score_ids(ns, iteration)
    todo = [item for item in items if score_id(ns, iteration, *item) not in have]
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
            rows = [{"id": score_id(ns, iteration, p, cond, cid), "ns": ns, "iteration": iteration,
                     "condition": cond, "pair_key": pair_key(p), "conversation_id": cid, "logprob": lp,
                     "n_tokens": n} for (p, cond, cid), (lp, n) in zip(chunk, sums)]
            store.insert_rows("eval_scores", rows, pk="id")
            bar(len(chunk))


def score_id(ns: str, iteration: int, pair: dict, condition: str, conversation_id: str) -> str:
    """An eval_scores row's id: what produced it (namespace, iteration, condition, pair, conversation), so a
    rerun finds the scores it already has."""
    return f"{ns}/{iteration}/{condition}/{pair_key(pair)}/{conversation_id}"


def win_rate_pairs(pairs: list[dict], per_turn: int | None, seed: int) -> list[dict]:
    """All test pairs, or `per_turn` of each turn count k, sampled with the run's seed (the paper: 100 each)."""
    if per_turn is None:
        return pairs
    chosen = []
    for k in sorted({p["turns"] for p in pairs}):
        group = sorted((p for p in pairs if p["turns"] == k), key=pair_key)
        chosen += random.Random(f"{seed}/win-pairs/{k}").sample(group, min(per_turn, len(group)))
    return sorted(chosen, key=lambda p: p["idx"])


def _sample_for(seed: int, pair: dict, n: int) -> int:
    return random.Random(f"{seed}/win-sample/{pair_key(pair)}").randrange(n)


def _respond(store: Store, ns: str, iteration: int, responder: str, pairs: list[dict], models: Callable[[], SharedBase],
             adapter: str | None, recipe, conv_iteration: int, progress: Progress) -> None:
    """Greedy final responses of the model with `adapter` (None: Q_0) after the chosen conversation of each pair
    (conversations of conv_iteration), in the run's prompt format (train.format). Loads no model when all exist."""
    n = recipe.eval.conversations_per_pair
    have = store.eval_response_keys(ns, iteration, responder)
    todo = [p for p in pairs if pair_key(p) not in have]
    if not todo:
        return
    conv_ids = [f"{ns}/{conv_iteration}/{pair_key(p)}#{_sample_for(recipe.seed, p, n):03d}" for p in todo]
    turns = store.turns(conv_ids)
    instruction = recipe.train.format == "instructed"
    decide = recipe.simulate.turns == "policy"
    prompts = [questioner_messages(p["persona_name"], p["task"], turns[c], final=True, instruction=instruction,
                                   decide=decide, instruction_text=recipe.simulate.instruction)
               for p, c in zip(todo, conv_ids)]
    questioner = models().questioner
    with progress.stage(f"eval {iteration}: responses ({responder})", len(todo)) as bar, \
            models().policy(adapter) as model:
        for start in range(0, len(todo), recipe.respond.batch_size):
            sl = slice(start, start + recipe.respond.batch_size)
            texts = questioner.generate(model, prompts[sl], max_new_tokens=recipe.respond.max_tokens, temperature=0.0,
                                        top_p=1.0, batch_size=recipe.respond.batch_size, seed=0)
            rows = [{"id": f"{ns}/{iteration}/{responder}/{pair_key(p)}", "ns": ns, "iteration": iteration,
                     "responder": responder, "pair_key": pair_key(p), "conversation_id": c, "text": t,
                     "n_tokens": n}
                    for p, c, t, n in zip(todo[sl], conv_ids[sl], texts, questioner.count_tokens(texts))]
            store.insert_rows("eval_responses", rows, pk="id")
            bar(len(rows))


ORDERS = ("seeded", "swapped")  # the order drawn from the item's seed, and the other one


def judgment_id(ns: str, iteration: int, responder: str, judge: str, protocol: str, key: str, swapped: int) -> str:
    """A judgments row's id: everything that produced the verdict, down to the order the two responses were shown
    in, so each judge and protocol keeps its verdicts beside the others'."""
    return f"{ns}/{iteration}/{responder}/{judge}/{protocol}/{key}/{ORDERS[swapped]}"


def _judge(store: Store, ns: str, iteration: int, responder: str, pairs: list[dict], judge, recipe,
           progress: Progress) -> None:
    """Judge Q_eta's response against Q_0's for each pair, in the seeded order and (judge_orders 2) the other."""
    config = recipe.judge
    protocol, template = judge_protocol(config), judge_prompt_text(config)
    responses = store.eval_response_texts(ns, [0, iteration])
    # The turns Q_eta's conversation took (its pair's k, unless the Questioner chose when to stop).
    turns = {r["pair_key"]: r["turns"] for r in store.eval_response_lengths(ns, iteration, responder)}
    have = {r["id"] for r in store.judgments(ns, iteration, responder, judge.name, protocol)}
    todo = [(p, swapped) for p in pairs for swapped in range(recipe.eval.judge_orders)
            if judgment_id(ns, iteration, responder, judge.name, protocol, pair_key(p), swapped) not in have]
    if not todo:
        return
    sampling = Sampling(config.max_tokens, temperature=0.0, seed=recipe.seed)
    failure_stage = f"judge/{iteration}/{responder}/{judge.name}/{protocol}"
    with progress.stage(f"eval {iteration}: judge ({judge.name})", len(todo)) as bar, \
            store.failure_log(ns, failure_stage, "judgments") as record_failure:
        for start in range(0, len(todo), 8):
            chunk = todo[start : start + 8]
            prompts, shown = [], []
            for p, swapped in chunk:
                key = pair_key(p)
                ours, base = responses[(iteration, responder, key)], responses[(0, "policy", key)]
                first = policy_is_a(recipe.seed, f"{ns}/{iteration}/{responder}/{key}") != bool(swapped)
                shown.append(first)
                a, b = (ours, base) if first else (base, ours)
                prompts.append(judge_messages(template, p["persona"], p["task"], a, b, config.label))
            if config.read == "logprobs":
                results = judge.choice_logprobs(prompts, ("A", "B"))
            else:
                results = judge.complete_each(prompts, sampling)
            rows = []
            for (p, swapped), first, result in zip(chunk, shown, results):
                key = pair_key(p)
                if isinstance(result, ChatFailure) and not result.refused:  # retried on the next eval
                    record_failure(f"{key}/{ORDERS[swapped]}", str(result))
                    continue
                if isinstance(result, ChatFailure):  # refused for good: stored and counted, not asked again
                    verdict, margin, raw, status = None, None, str(result), "refused"
                else:
                    verdict, margin, raw = read_verdict(config, result)
                    cut = getattr(result, "truncated", False)  # a Reply that hit judge.max_tokens
                    status = "valid" if verdict else "truncated" if cut else "unparsable"
                rows.append({"id": judgment_id(ns, iteration, responder, judge.name, protocol, key, swapped),
                             "ns": ns, "iteration": iteration, "responder": responder, "judge": judge.name,
                             "protocol": protocol, "pair_key": key, "turns": turns[key], "swapped": swapped,
                             "policy_is_a": int(first), "verdict": verdict, "winner": winner_of(verdict, first),
                             "margin": margin, "status": status, "raw": raw})
            store.insert_rows("judgments", rows, pk="id")
            bar(len(chunk))


def with_eval_settings(recipe: Recipe, run_id: str, overrides: list[str] | None) -> Recipe:
    """The run's recipe with `--set` overrides of EVAL_SETTINGS (any other key is refused)."""
    if not overrides:
        return recipe
    for item in overrides:
        key = override_key(item)
        if key not in EVAL_SETTINGS:
            raise StargateError(f"--set {key}: a stored run's evaluation can change only {', '.join(EVAL_SETTINGS)} "
                                "(anything else would change what was evaluated): start a run with it instead")
    changed = validate_recipe(apply_overrides(json.loads(recipe.to_json()), overrides), f"of run {run_id} with --set")
    check_judge_budget(changed.judge, f"--set for run {run_id}")
    return changed


def check_eval_names(recipe, run_id: str, roleplayer: str | None, judge: str | None, responder: str) -> None:
    """The chat models and responder an evaluation is asked for (eval, report) must be the run's: one line
    naming the valid ones."""
    for option, name in (("--roleplayer", roleplayer), ("--judge", judge)):
        if name is not None:
            check_chat_model(recipe, run_id, option, name)
    if responder not in RESPONDERS:
        raise StargateError(f"--responder {responder!r} is not a responder: choose one of {', '.join(RESPONDERS)}")


def evaluate(home: Path | str | None = None, run_id: str | None = None, iterations: list[int] | None = None,
             roleplayer: str | None = None, judge: str | None = None, responder: str = "policy",
             overrides: list[str] | None = None, progress: Progress | None = None) -> dict:
    """Evaluate a run's iterations on the test split; returns the summary (see `summarize`).

    overrides: `section.key=value` items of EVAL_SETTINGS, e.g. judging a finished run in both orders or with
    another template, beside its earlier verdicts. One copy of the base weights serves Q_0 and every Q_eta
    (SharedBase)."""
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    run_id = run["id"]
    recipe = with_eval_settings(recipe_of_run(run), run_id, overrides)
    roleplayer = roleplayer or recipe.roles.main_roleplayer
    judge_name = judge or recipe.roles.judge
    check_eval_names(recipe, run_id, roleplayer, judge_name, responder)
    wanted = policies(store, run_id, iterations)
    ns = namespace(run_id, roleplayer)
    protocol = judge_protocol(recipe.judge)
    judged = f"judge:{responder}:{judge_name}:{protocol}:{recipe.eval.judge_orders}"
    if any(not store.stage_done(ns, i, "eval") or (i and not store.stage_done(ns, i, judged)) for i in wanted):
        preflight(recipe.chat_models, {roleplayer, judge_name})
    chat = ChatModels(recipe.chat_models, store.home, run_dir(store, run_id))
    progress = progress or Progress()
    sim_config = recipe.simulate.model_copy(update={"conversations_per_pair": recipe.eval.conversations_per_pair})
    gate = functools.cache(lambda: user_gate(sim_config, store.home))  # loaded when a simulation needs it
    @functools.cache
    def models() -> SharedBase:
        """Made on first use: a rerun that finds everything stored loads no model."""
        return SharedBase(Questioner(recipe.questioner, store.home))

    def adapter_of(iteration: int) -> str | None:
        return store.training(run_id, iteration)["adapter"] if iteration else None

    with progress, chat, closing_questioner(models):
        prepare_data(store, recipe, lambda: chat.get(recipe.roles.oracle), progress)
        for iteration in wanted:
            if not store.stage_done(ns, iteration, "eval"):
                questioner = models().questioner
                make_pairs(store, recipe, ns, iteration, "test", f"{recipe.seed}/eval")
                with models().policy(adapter_of(iteration)) as policy:
                    simulate(store, ns, iteration, policy, f"iteration-{iteration}" if iteration else "base",
                             questioner, Roleplayers({roleplayer: 1.0}, chat.get, recipe.seed, gate()), sim_config,
                             recipe.seed + 7919, progress)
                    score_stage(store, ns, iteration, policy, questioner, recipe.score, progress)
                    _score_conditions(store, ns, iteration, policy, questioner, recipe, progress)
                store.mark_stage(ns, iteration, "eval")
            if iteration == 0 or store.stage_done(ns, iteration, judged):
                continue
            pairs = win_rate_pairs(store.pairs(ns, iteration), recipe.eval.win_rate_pairs_per_turn, recipe.seed)
            base_pairs = win_rate_pairs(store.pairs(ns, 0), recipe.eval.win_rate_pairs_per_turn, recipe.seed)
            _respond(store, ns, 0, "policy", base_pairs, models, None, recipe, 0, progress)
            # Who answers after Q_eta's conversations: Q_eta itself, or Q_0 (the response-model ablation).
            answerer = adapter_of(iteration) if responder == "policy" else None
            _respond(store, ns, iteration, responder, pairs, models, answerer, recipe, iteration, progress)
            _judge(store, ns, iteration, responder, pairs, chat.get(judge_name), recipe, progress)
            store.mark_stage(ns, iteration, judged)
    summary = summarize(store, run_id, roleplayer, judge_name, protocol, responder, wanted,
                        gate() or recipe_gate(sim_config, store.home))
    with open_tracker(store, run_id, recipe.track, run_dir(store, run_id)) as tracker:
        log_evaluation(tracker, summary)
    return summary


@contextmanager
def closing_questioner(models: Callable[[], SharedBase]) -> Iterator[None]:
    """Close the Questioner (its managed vLLM server) at the end, if one was made."""
    try:
        yield
    finally:
        if models.cache_info().currsize:
            models().questioner.close()


def summarize(store: Store, run_id: str, roleplayer: str, judge: str, protocol: str, responder: str = "policy",
              iterations: list[int] | None = None, gate: Gate | None = None) -> dict:
    """The evaluation as stored: no model is loaded but the gate's sentence embedder, which counts elicitation
    (elicitation.py; without a `gate` the elicitation figures are None). Used by `eval --json` and `report`.

    Every log-prob condition has its mean and SEM over conversations (the paper's figures) and, beside them, a 95%
    interval from the crossed bootstrap over the test pairs' tasks and personas (each pair's mean once): pairs
    share tasks and personas, so the SEM is too narrow. `gain` is Q_eta's experimental log-prob less Q_0's, paired
    per pair, with its interval; `bradley_terry` fits every iteration's judgments at once (strengths.py)."""
    ns = namespace(run_id, roleplayer)
    if iterations is None:
        iterations = store.pair_iterations(ns)
    controls = {c: [(r["pair_key"], r["logprob"]) for r in store.eval_logprobs(ns, 0, c)]
                for c in ("negative", "positive")}
    base_by_pair = _experimental_by_pair(store, ns, 0)

    @functools.cache
    def audited(space: str, it: int) -> tuple[list[dict], list[dict] | None]:
        """A namespace's conversations of an iteration and their elicitation counts, read and counted once for
        both the efficiency figures and the audit."""
        conversations = store.audit_conversations(space, it)
        return conversations, each_elicitation(conversations, gate) if gate else None

    out, judged = [], {}
    for it in iterations:
        by_pair = _experimental_by_pair(store, ns, it) if it else base_by_pair
        best = [(key, max(values)) for key, values in by_pair.items()]
        conversations = [(key, v) for key, values in by_pair.items() for v in values]
        random_persona = [(r["pair_key"], r["logprob"]) for r in store.eval_logprobs(ns, it, "random")]
        if it:
            judged[it] = store.judgments(ns, it, responder, judge, protocol)
        out.append({
            "iteration": it,
            "logprob": {
                "negative": _condition(controls["negative"]),
                "positive": _condition(controls["positive"]),
                "experimental": _condition(conversations),
                "experimental_best_of_n": _condition(best),
                "random": _condition(random_persona),
            },
            "gain": _paired_gain(by_pair, base_by_pair) if it else None,
            **(win_rates(judged[it]) if it else _REFERENCE),
            # Q_eta's conversations (the experimental condition's; the random condition reuses them) and the
            # responses the win rates judged (Q_0 answers for itself at iteration 0).
            "efficiency": _with_elicitation(efficiency(store.conversation_efficiency(ns, it),
                                                       store.eval_response_lengths(ns, it, responder if it else
                                                                                   "policy")), *audited(ns, it)),
        })
    strengths = bradley_terry(judged)
    # The simulator audit of every Roleplayer this run was evaluated with, per iteration: a matrix in `report`.
    audits = {other.partition("#eval:")[2]: {str(it): audit(*audited(other, it))
                                             for it in store.pair_iterations(other) if it in iterations}
              for other in store.eval_namespaces(run_id)}
    return {"run": run_id, "roleplayer": roleplayer, "judge": judge, "protocol": protocol, "responder": responder,
            "iterations": out, "bradley_terry": _strengths_dict(strengths) if strengths else None,
            "audit": audits}


def _with_elicitation(figures: dict, conversations: list[dict], counts: list[dict] | None) -> dict:
    """The efficiency figures with elicitation beside them, over all conversations and per number of turns
    (None without counts)."""
    def over(k: int | None) -> dict | None:
        if counts is None:
            return None
        return elicitation([n for c, n in zip(conversations, counts, strict=True) if k is None or c["turn_count"] == k])

    figures["elicitation"] = over(None)
    for k, metrics in figures["by_turns"].items():
        metrics["elicitation"] = over(int(k))
    return figures


def _experimental_by_pair(store: Store, ns: str, iteration: int) -> dict[str, list[float]]:
    """{pair key: gold log-probs of its conversations} for Q_eta's conversations."""
    keys = {p["id"]: pair_key(p) for p in store.pairs(ns, iteration)}
    by_pair: dict[str, list[float]] = {}
    for s in store.scores(ns, iteration):
        by_pair.setdefault(keys[s["pair_id"]], []).append(s["logprob"])
    return by_pair


def _pairs_interval(values: dict[str, float]) -> dict | None:
    """The crossed bootstrap's interval of the mean of one value per pair key ("TASK|PERSONA")."""
    if not values:
        return None
    tasks, _, personas = zip(*(key.partition("|") for key in values), strict=True)
    return dataclasses.asdict(crossed_bootstrap(list(values.values()), tasks, personas))


def _condition(observations: list[tuple[str, float]]) -> dict:
    """{mean, sem, n} over the observations (the paper's), and `interval` over their pairs' means."""
    by_pair: dict[str, list[float]] = {}
    for key, value in observations:
        by_pair.setdefault(key, []).append(value)
    return {**mean_sem([v for _, v in observations]),
            "interval": _pairs_interval({k: statistics.fmean(v) for k, v in by_pair.items()})}


def _paired_gain(by_pair: dict[str, list[float]], base_by_pair: dict[str, list[float]]) -> dict | None:
    """Q_eta's mean log-prob on a pair less Q_0's on the same pair, over the pairs both have, with its interval."""
    return _pairs_interval({k: statistics.fmean(v) - statistics.fmean(base_by_pair[k])
                            for k, v in by_pair.items() if k in base_by_pair})


def _strengths_dict(fit: dict) -> dict:
    return {"strengths": {str(it): dataclasses.asdict(i) for it, i in fit["strengths"].items()},
            "balanced_win_rates": {str(it): dataclasses.asdict(i) for it, i in fit["balanced_win_rates"].items()},
            "position_a": dataclasses.asdict(fit["position_a"]), "judgments": fit["judgments"]}


_SCORE = {"policy": 1.0, "base": 0.0}
# Q_0 against itself: 0.5 by definition, nothing judged.
_REFERENCE = {key: {"rate": 0.5, "sem": None, "interval": None, "wins": None, "losses": None, "ties": None,
                    "valid": None, "unparsable": None, "truncated": None, "refused": None, "by_turns": {}}
              for key in ("win_rate", "win_rate_counterbalanced")}


def _rate(outcomes: list[tuple[str, float | None, str]]) -> dict:
    """Win rate over (pair key, outcome, status): outcome 1 win, 0 loss, 0.5 tie, None where no verdict counts;
    ties count as half a win. A verdict missing is `unparsable` (the judge's words kept), `truncated` (the reply
    hit judge.max_tokens first) or `refused` (the endpoint declined the item), each counted apart and left out of
    the denominator.

    SEM is the standard error of the mean outcome (for wins and losses alone: sqrt(p(1-p)/n)); `interval` is the
    crossed bootstrap's over the pairs' tasks and personas."""
    valid = [o for _, o, _ in outcomes if o is not None]
    n = len(valid)
    rate = statistics.fmean(valid) if n else None
    sem = math.sqrt(statistics.pvariance(valid) / n) if n else None
    missing = [status for _, o, status in outcomes if o is None]
    return {"rate": rate, "sem": sem, "interval": _pairs_interval({k: o for k, o, _ in outcomes if o is not None}),
            "wins": valid.count(1.0), "losses": valid.count(0.0), "ties": valid.count(0.5), "valid": n,
            "unparsable": missing.count("unparsable"), "truncated": missing.count("truncated"),
            "refused": missing.count("refused")}


def _with_turns(outcomes: list[tuple[int, str, float | None, str]]) -> dict:
    by_turns = {str(k): _rate([(key, o, status) for t, key, o, status in outcomes if t == k])
                for k in sorted({t for t, *_ in outcomes})}
    return {**_rate([(key, o, status) for _, key, o, status in outcomes]), "by_turns": by_turns}


def win_rates(judged: list[dict]) -> dict:
    """The randomized-order win rate (each pair's seeded order) and, where both orders were judged, the
    counterbalanced one: a win when both orders pick Q_eta, a loss when both pick Q_0, else a tie; with the
    judge's position consistency (the share of valid pairs whose two verdicts name the same model)."""
    seeded = [r for r in judged if not r["swapped"]]
    randomized = _with_turns([(r["turns"], r["pair_key"], _SCORE.get(r["winner"]), _status(r)) for r in seeded])
    orders: dict[str, dict[int, dict]] = {}
    for r in judged:
        orders.setdefault(r["pair_key"], {})[r["swapped"]] = r
    both = [(o[0], o[1]) for o in orders.values() if len(o) == 2]
    if not both:
        return {"win_rate": randomized, "win_rate_counterbalanced": None}

    def outcome(first: dict, second: dict) -> float | None:
        if first["winner"] is None or second["winner"] is None:
            return None
        return _SCORE[first["winner"]] if first["winner"] == second["winner"] else 0.5

    def status(first: dict, second: dict) -> str:
        statuses = {_status(first), _status(second)}
        return next(s for s in ("refused", "truncated", "unparsable", "valid") if s in statuses)

    counterbalanced = _with_turns([(a["turns"], a["pair_key"], outcome(a, b), status(a, b)) for a, b in both])
    valid = counterbalanced["valid"]
    counterbalanced["consistency"] = (counterbalanced["wins"] + counterbalanced["losses"]) / valid if valid else None
    return {"win_rate": randomized, "win_rate_counterbalanced": counterbalanced}


def _status(judgment: dict) -> str:
    """valid, unparsable, truncated or refused (stores from before the last two say valid or unparsable)."""
    if judgment["winner"] is not None:
        return "valid"
    return judgment["status"] if judgment.get("status") in ("refused", "truncated") else "unparsable"
