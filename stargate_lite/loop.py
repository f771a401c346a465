"""The STaR-GATE expert-iteration loop: data, then per iteration simulate, score, select, respond, train.

Each stage asks the store what is missing and does only that, and marks itself done last; running the same
command again after a crash continues where it stopped. Iteration eta uses split A when eta is odd, B when even.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from .engines.chat_models import ChatModels, preflight
from .engines.memory import release_memory
from .engines.questioner import Questioner
from .engines.training import group_advantages
from .errors import StargateError
from .evaluation.curves import log_finished, log_iteration, log_stage, log_train_step, train_step_offset
from .progress import Progress
from .prompts import is_question, questioner_messages
from .recipe import POLICY_GRADIENT_METHODS, Recipe
from .runs import open_run, run_dir, run_lock, split_for, start_session, stop_point
from .stages.data import make_pairs, prepare_data
from .stages.respond import respond_stage
from .stages.score import score_stage
from .stages.select import select_best
from .stages.simulate import Roleplayers, check_gate, simulate, user_gate
from .stages.train import train_adapter
from .store import Store
from .tracking import Tracker, open_tracker


def _example(recipe: Recipe, pair: dict, conversation: list[dict], final: str | None) -> list[dict] | None:
    """A conversation + final turn, as the Questioner sees it; what follows the questions is the target. None
    where the rule for empty generations leaves it out (see training_examples)."""
    instruction = recipe.train.format == "instructed"
    decide = recipe.simulate.turns == "policy"
    if any(not t["text"].strip() for t in conversation if t["role"] == "questioner"):
        return None
    if recipe.train.target == "none":
        return questioner_messages(pair["persona_name"], pair["task"], conversation, final=False,
                                   instruction=instruction, decide=decide)
    if not (final and final.strip()):
        return None
    messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=True,
                                   instruction=instruction, decide=decide)
    return [*messages, {"role": "assistant", "content": final}]


def _final(recipe: Recipe, pair: dict, responses: dict[str, dict]) -> str | None:
    """What follows a pair's conversations in training (train.target): the regularizer's response, or the gold."""
    return {"response": (responses.get(pair["id"]) or {}).get("text"), "gold": pair["gold"]}.get(recipe.train.target)


def training_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[list[dict]]:
    """Each pair's kept conversation + final turn (train.method sft).

    Rule for empty generations: a kept conversation with an empty question, or an empty regularizer response,
    is left out of training (it would teach the model to end its turn at once); it stays in the store.
    """
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    turns = store.selected_turns(run_id, iteration)
    responses = store.responses(run_id, iteration)
    examples = []
    for s in store.selections(run_id, iteration):
        pair = pairs[s["pair_id"]]
        example = _example(recipe, pair, turns.get(s["conversation_id"], []), _final(recipe, pair, responses))
        if example:
            examples.append(example)
    return _some(examples, run_id, iteration)


def preference_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[tuple[list[dict], ...]]:
    """(chosen, rejected) per pair (train.method dpo): the kept conversation, the best by reward, against the
    worst, each followed by the same final turn (the regularizer's response to the kept one, or the gold).

    Left out: pairs whose best and worst conversations have the same reward (no preference to learn, e.g. a
    single conversation per pair), and, by the rule for empty generations, pairs where either conversation has
    an empty question or the final turn is empty."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    cost = recipe.reward.question_cost
    worst = {w["pair_id"]: w for w in store.best_scores(run_id, iteration, cost, worst=True)}
    selections = [s for s in store.selections(run_id, iteration)
                  if s["pair_id"] in worst and worst[s["pair_id"]]["reward"] < s["reward"]]
    turns = store.turns([c for s in selections for c in (s["conversation_id"], worst[s["pair_id"]]["conversation_id"])])
    responses = store.responses(run_id, iteration)
    examples = []
    for s in selections:
        pair = pairs[s["pair_id"]]
        final = _final(recipe, pair, responses)
        chosen = _example(recipe, pair, turns[s["conversation_id"]], final)
        rejected = _example(recipe, pair, turns[worst[s["pair_id"]]["conversation_id"]], final)
        if chosen and rejected:
            examples.append((chosen, rejected))
    return _some(examples, run_id, iteration)


def policy_samples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[tuple[list[dict], list[float]]]:
    """(conversation, advantages) for every scored conversation (train.method rloo or grpo): the Questioner's turns
    as it sampled them, after the prompt it sampled them from (the instructed one, whatever train.format), with
    its answer last where it gave one (simulate.turns policy); one advantage per Questioner turn, from its pair's
    rewards (engines/training.py, group_advantages).

    Without reward.per_turn every turn gets its conversation's advantage. With it, turn k's reward-to-go is the
    conversation's final gold log-prob less the log-prob after its first k - 1 turns (nothing before turn 1: a
    constant of the pair, which the group's baseline removes), less the cost of its questions from turn k on; an
    answer that ends a conversation after its questions has a reward-to-go of 0, and one given at once (the
    conversation's only turn) the conversation's reward, as every first turn has. Its advantage is against the
    pair's other conversations at the same turn; a turn only one conversation reached has 0.

    Unlike sft and dpo, conversations with an empty question are kept: the policy sampled the empty turn, and
    its advantage says whether to make it likelier. A turn generation cut at its token limit is marked cut, so
    its end-of-turn marker, which the policy never sampled, is not trained (Questioner.encode_for_training); sft
    and dpo keep the paper's format, every turn ending with it. Pairs where every advantage is 0 teach nothing
    but the KL penalty, and are left out."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    groups: dict[str, list[dict]] = {}
    for row in store.rewards(run_id, iteration, recipe.reward.question_cost):
        groups.setdefault(row["pair_id"], []).append(row)
    turns = store.turns([r["conversation_id"] for rows in groups.values() for r in rows])
    cut = store.cut_turns(run_id, iteration)
    after = store.turn_scores(run_id, iteration) if recipe.reward.per_turn else {}
    decide = recipe.simulate.turns == "policy"
    samples = []
    for pair_id, rows in groups.items():
        if recipe.reward.per_turn:
            to_go = [_rewards_to_go(r, turns[r["conversation_id"]], after.get(r["conversation_id"], {}),
                                    recipe.reward.question_cost) for r in rows]
        else:
            to_go = [[r["reward"]] for r in rows]
        advantages = [[] for _ in rows]
        for k in range(max(len(g) for g in to_go)):
            reached = [i for i, g in enumerate(to_go) if len(g) > k]
            values = group_advantages([to_go[i][k] for i in reached], recipe.train.method) if len(reached) > 1 \
                else [0.0]
            for i, value in zip(reached, values, strict=True):
                advantages[i].append(value)
        if not any(any(a) for a in advantages):
            continue
        pair = pairs[pair_id]
        for row, advantage in zip(rows, advantages, strict=True):
            conversation = turns[row["conversation_id"]]
            messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=False,
                                           instruction=True, decide=decide)
            for message, idx in zip(messages[1::2], range(0, len(conversation), 2), strict=True):
                message["cut"] = (row["conversation_id"], idx) in cut  # its Questioner turn's
            if row["answer"] is not None:
                messages.append({"role": "assistant", "content": row["answer"], "cut": bool(row["answer_cut"])})
            asked = sum(m["role"] == "assistant" for m in messages)
            samples.append((messages, advantage * asked if len(advantage) == 1 else advantage))
    return _some(samples, run_id, iteration)


def _rewards_to_go(row: dict, turns: list[dict], after: dict[int, float], cost: float) -> list[float]:
    """Each Questioner turn's reward-to-go (policy_samples), the answer's (0) last where there is one."""
    questions = [is_question(t["text"]) for t in turns if t["role"] == "questioner"]
    final = row["logprob"]  # the gold's, after the whole conversation
    if any(k not in after for k in range(1, len(questions))):
        raise StargateError(f"conversation {row['conversation_id']} has no per-turn scores: was it scored with "
                            "reward.per_turn?")
    # phi(h_k), the gold's log-prob after the first k turns: 0 before any (the pair's constant), the per-turn
    # scores between, `final` after the last turn. Turn k + 1's reward-to-go is final - phi(h_k), less the cost of
    # the questions from it on; an answer after n turns leaves final - phi(h_n): 0 after a question turn, the whole
    # reward where it is the conversation's first turn.
    before = [0.0, *(after[k] for k in range(1, len(questions)))][: len(questions)]
    to_go = [final - b - cost * sum(questions[k:]) for k, b in enumerate(before)]
    if row["answer"] is None:
        return to_go
    return [*to_go, 0.0 if questions else final]


def token_advantages(encoded, advantages: list[float]) -> list[float]:
    """One advantage per Questioner turn spread over that turn's target tokens (each turn's tokens are one run of
    consecutive positions, the Roleplayer's turns between them)."""
    runs: list[int] = []
    for k, position in enumerate(encoded.target_positions):
        if k == 0 or position != encoded.target_positions[k - 1] + 1:
            runs.append(0)
        runs[-1] += 1
    if len(runs) != len(advantages):
        raise StargateError(f"{len(advantages)} turn advantages for {len(runs)} Questioner turns in the encoding")
    return [a for a, n in zip(advantages, runs, strict=True) for _ in range(n)]


def _some(examples: list, run_id: str, iteration: int) -> list:
    if not examples:
        raise StargateError(
            f"iteration {iteration} of run {run_id} has no usable training example (every kept conversation has "
            "an empty question or response, or no pair has a better and a worse conversation): check the "
            "Questioner model and its generation settings"
        )
    return examples


def hand_over_memory(questioner: Questioner, chat: ChatModels) -> None:
    """Before the train stage: stop the Questioner's managed vLLM servers and every chat model this process started
    or loaded (managed llama-servers, in-process llama.cpp or transformers models), drop the models the earlier
    stages loaded, and give their memory back, so that training, here or in its child processes, starts with the
    machine to itself. The next stage that needs a server or a chat model starts or loads it again.

    No base model is kept across the hand-over: every stage loads the model it needs, and training loads its own
    (a kept 4-bit 7B base would hold some 4 GB that a training child could not use)."""
    questioner.close()
    chat.close()
    release_memory()


def run_iteration(store: Store, recipe: Recipe, run_id: str, iteration: int, questioner: Questioner,
                  chat: ChatModels, progress: Progress, session: str, tracker: Tracker | None = None) -> None:
    split = split_for(iteration)
    tracker = tracker or Tracker(store, run_id)
    store.start_iteration(run_id, iteration, split)
    gpu = questioner.device.type == "cuda"
    begun: set[str] = set()

    def begin(stage: str) -> None:
        """The stage's start, once, for the report: the Questioner's GPU, or train.processes of them in
        training."""
        if stage not in begun:
            begun.add(stage)
            store.start_stage(run_id, iteration, stage, session, (recipe.train.processes if stage == "train"
                                                                  else 1) if gpu else 0)

    def done(stage: str) -> None:
        store.mark_stage(run_id, iteration, stage)
        log_stage(tracker, store, run_id, iteration, stage)

    previous = store.training(run_id, iteration - 1) if iteration > 1 else None
    adapter = previous["adapter"] if previous else None
    policy_name = f"iteration-{iteration - 1}" if adapter else "base"

    if not store.stage_done(run_id, iteration, "pairs"):
        begin("pairs")
        make_pairs(store, recipe, run_id, iteration, split, f"{recipe.seed}/{iteration}")
        stop_point(f"pairs/{iteration}")
        done("pairs")

    needing_policy = [s for s in ("simulate", "score", "respond") if not store.stage_done(run_id, iteration, s)]
    if needing_policy:
        begin(needing_policy[0])  # loading the policy is the first stage's time
    policy = questioner.engine_policy(adapter) if needing_policy else None
    if not store.stage_done(run_id, iteration, "simulate"):
        begin("simulate")
        roleplayers = Roleplayers(recipe.roles.roleplayer_weights, chat.get, recipe.seed,
                                  user_gate(recipe.simulate, store.home))
        simulate(store, run_id, iteration, policy, policy_name, questioner, roleplayers, recipe.simulate,
                 recipe.seed, progress)
        done("simulate")
    if not store.stage_done(run_id, iteration, "score"):
        begin("score")
        score_stage(store, run_id, iteration, policy, questioner, recipe.score, progress,
                    per_turn=recipe.reward.per_turn)
        done("score")
    if not store.stage_done(run_id, iteration, "select"):
        begin("select")
        select_best(store, run_id, iteration, recipe.reward.question_cost)
        stop_point(f"select/{iteration}")
        done("select")
    if not store.stage_done(run_id, iteration, "respond"):
        begin("respond")
        if recipe.train.target == "response":
            respond_stage(store, run_id, iteration, policy, policy_name, questioner, recipe.respond,
                          recipe.train.format, progress, decide=recipe.simulate.turns == "policy")
        done("respond")
    del policy
    hand_over_memory(questioner, chat)

    if not store.stage_done(run_id, iteration, "train"):
        begin("train")
        if recipe.train.method == "dpo":
            examples = [(questioner.encode_for_training(chosen), questioner.encode_for_training(rejected))
                        for chosen, rejected in preference_examples(store, recipe, run_id, iteration)]
        elif recipe.train.method in POLICY_GRADIENT_METHODS:
            encoded = [(questioner.encode_for_training(messages), advantages)
                       for messages, advantages in policy_samples(store, recipe, run_id, iteration)]
            examples = [(e, token_advantages(e, advantages)) for e, advantages in encoded]
        else:
            examples = [questioner.encode_for_training(m) for m in training_examples(store, recipe, run_id, iteration)]
        out_dir = run_dir(store, run_id) / f"iteration-{iteration}" / "adapter"
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        offset = train_step_offset(store, run_id, iteration)
        with progress.stage(f"iteration {iteration}: train (steps)", 1) as bar:
            def on_step(step: dict) -> None:
                bar.set_total(step["total"])
                bar(1)
                log_train_step(tracker, offset, step)
                stop_point(f"train/{iteration}")

            record = train_adapter(questioner, examples, recipe.train, seed=recipe.seed + iteration,
                                   out_dir=out_dir, on_step=on_step,
                                   start_from=adapter if recipe.train.init == "previous" else None,
                                   sampling=(recipe.simulate.temperature, recipe.simulate.top_p))
        stop_point(f"trained/{iteration}")
        store.finish_training({"run_id": run_id, "iteration": iteration, "format": recipe.train.format, **record})
        log_stage(tracker, store, run_id, iteration, "train")
        log_iteration(tracker, store, run_id, iteration, recipe.reward.question_cost)
        release_memory()


def run(recipe: Recipe, iterations: int, home: Path | str | None = None, run_id: str | None = None,
        progress: Progress | None = None) -> str:
    """Run (or resume) STaR-GATE for `iterations` iterations; returns the run id. The curves go where
    recipe.track says (tracking.py), the points a killed process never sent first."""
    if iterations < 1:
        raise StargateError("--iterations must be at least 1")
    preflight(recipe.chat_models, {recipe.roles.oracle, *recipe.roles.roleplayer_weights})
    check_gate(recipe.simulate)
    store = Store(home)
    run_id = open_run(store, recipe, run_id)
    progress = progress or Progress()
    with (run_lock(store, run_id), progress,
          ChatModels(recipe.chat_models, store.home, run_dir(store, run_id)) as chat,
          open_tracker(store, run_id, recipe.track, run_dir(store, run_id)) as tracker):
        session = start_session(store, run_id)
        log_finished(tracker, store, run_id, recipe.reward.question_cost)
        if not store.stage_done(run_id, 0, "data"):  # the home's data is shared: a later run finds it made
            store.start_stage(run_id, 0, "data", session, 0)
            prepare_data(store, recipe, lambda: chat.get(recipe.roles.oracle), progress)
            store.mark_stage(run_id, 0, "data")
            log_stage(tracker, store, run_id, 0, "data")
        with closing(Questioner(recipe.questioner, store.home)) as questioner:
            for iteration in range(1, iterations + 1):
                if store.stage_done(run_id, iteration, "train"):
                    # Stores written before training and finish were one transaction can hold a trained iteration
                    # that was never marked finished: finish it.
                    store.finish_iteration(run_id, iteration)
                    continue
                run_iteration(store, recipe, run_id, iteration, questioner, chat, progress, session, tracker)
    return run_id
