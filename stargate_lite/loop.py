"""The STaR-GATE expert-iteration loop: data, then per iteration simulate, score, select, respond, train.

Each stage asks the store what is missing and does only that, and marks itself done last; running the same
command again after a crash continues where it stopped. Iteration eta uses split A when eta is odd, B when even.
"""

from __future__ import annotations

import gc
from contextlib import closing
from pathlib import Path

from .chat import ChatModels, preflight
from .data import make_pairs, prepare_data
from .errors import StargateError
from .memory import trim_heap
from .progress import Progress
from .prompts import questioner_messages
from .questioner import Questioner
from .recipe import Recipe
from .respond import respond_stage
from .runs import open_run, run_dir, run_lock
from .score import score_stage
from .select import select_best
from .simulate import Roleplayers, simulate
from .store import Store
from .train import train_adapter

STAGES = ("pairs", "simulate", "score", "select", "respond", "train")


def split_for(iteration: int) -> str:
    return "A" if iteration % 2 == 1 else "B"


def training_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[list[dict]]:
    """Kept conversation + final turn, as the Questioner sees it; what follows the questions is the target.

    Rule for empty generations: a kept conversation with an empty question, or an empty regularizer response,
    is left out of training (it would teach the model to end its turn at once); it stays in the store.
    """
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    selections = store.selections(run_id, iteration)
    turns = store.selected_turns(run_id, iteration)
    responses = store.responses(run_id, iteration)
    target = recipe.train.target
    instruction = recipe.train.format == "instructed"
    decide = recipe.simulate.turns == "policy"
    examples = []
    for s in selections:
        pair, conversation = pairs[s["pair_id"]], turns.get(s["conversation_id"], [])
        final = {"response": (responses.get(s["pair_id"]) or {}).get("text"), "gold": pair["gold"]}.get(target)
        if any(not t["text"].strip() for t in conversation if t["role"] == "questioner"):
            continue
        if target == "none":
            examples.append(questioner_messages(pair["persona_name"], pair["task"], conversation, final=False,
                                                instruction=instruction, decide=decide))
        elif final and final.strip():
            messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=True,
                                           instruction=instruction, decide=decide)
            examples.append([*messages, {"role": "assistant", "content": final}])
    if not examples:
        raise StargateError(
            f"iteration {iteration} of run {run_id} has no usable training example (every kept conversation has "
            "an empty question or response): check the Questioner model and its generation settings"
        )
    return examples


def release_memory() -> None:
    """Free the last stage's models and hand the freed heap back: a CPU process's resident memory would
    otherwise carry each stage's peak into the next."""
    gc.collect()
    trim_heap()


def run_iteration(store: Store, recipe: Recipe, run_id: str, iteration: int, questioner: Questioner,
                  chat: ChatModels, progress: Progress) -> None:
    split = split_for(iteration)
    store.start_iteration(run_id, iteration, split)
    previous = store.training(run_id, iteration - 1) if iteration > 1 else None
    adapter = previous["adapter"] if previous else None
    policy_name = f"iteration-{iteration - 1}" if adapter else "base"

    if not store.stage_done(run_id, iteration, "pairs"):
        make_pairs(store, recipe, run_id, iteration, split, f"{recipe.seed}/{iteration}")
        store.mark_stage(run_id, iteration, "pairs")

    needs_policy = any(not store.stage_done(run_id, iteration, s) for s in ("simulate", "score", "respond"))
    policy = questioner.engine_policy(adapter) if needs_policy else None
    if not store.stage_done(run_id, iteration, "simulate"):
        roleplayers = Roleplayers(recipe.roles.roleplayer_weights, chat.get, recipe.seed)
        simulate(store, run_id, iteration, policy, policy_name, questioner, roleplayers, recipe.simulate,
                 recipe.seed, progress)
        store.mark_stage(run_id, iteration, "simulate")
    if not store.stage_done(run_id, iteration, "score"):
        score_stage(store, run_id, iteration, policy, questioner, recipe.score, progress)
        store.mark_stage(run_id, iteration, "score")
    if not store.stage_done(run_id, iteration, "select"):
        select_best(store, run_id, iteration, recipe.reward.question_cost)
        store.mark_stage(run_id, iteration, "select")
    if not store.stage_done(run_id, iteration, "respond"):
        if recipe.train.target == "response":
            respond_stage(store, run_id, iteration, policy, policy_name, questioner, recipe.respond,
                          recipe.train.format, progress, decide=recipe.simulate.turns == "policy")
        store.mark_stage(run_id, iteration, "respond")
    del policy
    questioner.close()  # managed vLLM servers give their GPU memory to training; the next iteration restarts them
    release_memory()

    if not store.stage_done(run_id, iteration, "train"):
        examples = [questioner.encode_for_training(m) for m in training_examples(store, recipe, run_id, iteration)]
        out_dir = run_dir(store, run_id) / f"iteration-{iteration}" / "adapter"
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with progress.stage(f"iteration {iteration}: train (steps)", 1) as bar:
            def on_step(step: int, total: int, loss: float) -> None:
                bar.set_total(total)
                bar(1)

            record = train_adapter(questioner, examples, recipe.train, seed=recipe.seed + iteration,
                                   out_dir=out_dir, on_step=on_step)
        store.finish_training({"run_id": run_id, "iteration": iteration, "format": recipe.train.format, **record})
        release_memory()


def run(recipe: Recipe, iterations: int, home: Path | str | None = None, run_id: str | None = None,
        progress: Progress | None = None) -> str:
    """Run (or resume) STaR-GATE for `iterations` iterations; returns the run id."""
    if iterations < 1:
        raise StargateError("--iterations must be at least 1")
    preflight(recipe.chat_models, {recipe.roles.oracle, *recipe.roles.roleplayer_weights})
    store = Store(home)
    run_id = open_run(store, recipe, run_id)
    progress = progress or Progress()
    with run_lock(store, run_id), progress, ChatModels(recipe.chat_models, store.home, run_dir(store, run_id)) as chat:
        prepare_data(store, recipe, lambda: chat.get(recipe.roles.oracle), progress)
        with closing(Questioner(recipe.questioner, store.home)) as questioner:
            for iteration in range(1, iterations + 1):
                if store.stage_done(run_id, iteration, "train"):
                    # Stores written before training and finish were one transaction can hold a trained iteration
                    # that was never marked finished: finish it.
                    store.finish_iteration(run_id, iteration)
                    continue
                run_iteration(store, recipe, run_id, iteration, questioner, chat, progress)
    return run_id
