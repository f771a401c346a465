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
from .errors import StargateError
from .evaluation.curves import log_finished, log_iteration, log_stage, log_train_step, train_step_offset
from .progress import Progress
from .recipe import Recipe
from .runs import open_run, run_dir, run_lock, split_for, start_session, stop_point
from .stages.data import make_pairs, prepare_data, training_turns_seed
from .stages.respond import respond_stage
from .stages.score import score_stage
from .stages.select import select_best
from .stages.simulate import Roleplayers, check_gate, simulate, user_gate
from .stages.train import train_adapter
from .store import Store
from .tracking import Tracker, open_tracker
from .training_methods import training_method


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
        make_pairs(store, recipe, run_id, iteration, split, training_turns_seed(recipe, iteration))
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
        select_best(store, run_id, iteration, recipe.reward.terms)
        stop_point(f"select/{iteration}")
        done("select")
    if not store.stage_done(run_id, iteration, "respond"):
        begin("respond")
        if recipe.train.target == "response":
            respond_stage(store, run_id, iteration, policy, policy_name, questioner, recipe.respond,
                          recipe.train.format, progress, decide=recipe.simulate.turns == "policy",
                          instruction_text=recipe.simulate.instruction)
        done("respond")
    del policy
    hand_over_memory(questioner, chat)

    if not store.stage_done(run_id, iteration, "train"):
        begin("train")
        examples = training_method(recipe.train.method).examples(store, recipe, run_id, iteration,
                                                                 questioner.encode_for_training)
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
        log_iteration(tracker, store, run_id, iteration, recipe.reward.terms)
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
        log_finished(tracker, store, run_id, recipe.reward.terms)
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
