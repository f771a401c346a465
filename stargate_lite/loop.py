"""The STaR-GATE expert-iteration loop: data, then per iteration simulate, score, select, respond, train.

Each stage asks the store what is missing and does only that, and marks itself done last; running the same
command again after a crash continues where it stopped. Iteration eta uses split A when eta is odd, B when even.
"""

from __future__ import annotations

import fcntl
import gc
import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .chat import ChatModels, preflight
from .data import prepare_data, split_pairs
from .errors import StargateError
from .progress import Progress
from .prompts import questioner_messages
from .questioner import Questioner
from .recipe import Recipe, validate_recipe
from .respond import respond_stage
from .score import score_stage
from .select import select_best
from .simulate import simulate
from .store import Store
from .train import train_adapter

STAGES = ("pairs", "simulate", "score", "select", "respond", "train")
_SECRET_KEY = re.compile(r"(?:^|_)(?:key|token|secret|password)$", re.IGNORECASE)


def split_for(iteration: int) -> str:
    return "A" if iteration % 2 == 1 else "B"


def redact(value):
    """The recipe as stored: values under secret-looking keys (api_key, token, ...) are replaced.

    Recipes name the variable that holds a key (api_key_env) rather than the key, so this is a second guard."""
    if isinstance(value, dict):
        return {k: "<redacted>" if _SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def run_dir(store: Store, run_id: str) -> Path:
    return store.home / "runs" / run_id.replace("/", "_")


def open_run(store: Store, recipe: Recipe, run_id: str | None = None) -> str:
    """Create the run, or check that an existing run of that id was made by the same recipe."""
    run_id = run_id or recipe.name
    stored = json.dumps(redact(json.loads(recipe.to_json())), sort_keys=True)
    existing = store.get_run(run_id)
    if existing is not None:
        # Fill in fields added since the run was made, so only real changes count as a different recipe.
        existing["recipe"] = json.dumps(redact(json.loads(recipe_of_run(existing).to_json())), sort_keys=True)
    if existing is None:
        store.create_run(run_id, recipe.name, stored, recipe.data.dataset, recipe.seed)
        path = run_dir(store, run_id)
        path.mkdir(parents=True, exist_ok=True)
        (path / "recipe.json").write_text(json.dumps(json.loads(stored), indent=2) + "\n")
    elif existing["recipe"] != stored:
        old, new = _flatten(json.loads(existing["recipe"])), _flatten(json.loads(stored))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise StargateError(
            f"run {run_id!r} was made with a different recipe (changed: {', '.join(changed[:5])}): "
            "rerun with the same settings to resume, or choose a new --run id"
        )
    return run_id


def recipe_of_run(run: dict) -> Recipe:
    """The recipe a run was made with, as stored, with defaults for fields newer than the run."""
    return validate_recipe(json.loads(run["recipe"]), f"of run {run['id']}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_pairs(store: Store, recipe: Recipe, run_id: str, iteration: int, split: str, turns_seed: str) -> None:
    """The split's pairs with a gold response, each with its turn count k ~ uniform(1..K) drawn from
    `turns_seed` and the pair: training uses one draw per iteration, evaluation the same draw for all."""
    pairs = split_pairs(store, recipe, split)
    golds = store.golds_for([t["id"] for t, _ in pairs], [p["id"] for _, p in pairs])
    usable = [(t, p) for t, p in pairs if golds[(t["id"], p["id"])]["status"] == "ok"]
    if not usable:
        raise StargateError(f"split {split} has no pair with a gold response: check the data (stargate-lite data show)")
    rows = []
    for idx, (t, p) in enumerate(usable):
        key = f"{t['id']}|{p['id']}"
        turns = random.Random(f"{turns_seed}/{key}").randint(1, recipe.simulate.max_turns)
        rows.append({"id": f"{run_id}/{iteration}/{key}", "run_id": run_id, "iteration": iteration,
                     "task_id": t["id"], "persona_id": p["id"], "turns": turns, "idx": idx})
    store.insert_rows("pairs", rows, pk="id")


def training_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[list[dict]]:
    """Kept conversation + final turn, as the Questioner sees it; what follows the questions is the target.

    Rule for empty generations: a kept conversation with an empty question, or an empty regularizer response,
    is left out of training (it would teach the model to end its turn at once); it stays in the store.
    """
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    selections = store.selections(run_id, iteration)
    turns = store.turns([s["conversation_id"] for s in selections])
    responses = store.responses(run_id, iteration)
    target = recipe.train.target
    examples = []
    for s in selections:
        pair, conversation = pairs[s["pair_id"]], turns[s["conversation_id"]]
        final = {"response": (responses.get(s["pair_id"]) or {}).get("text"), "gold": pair["gold"]}.get(target)
        if any(not t["text"].strip() for t in conversation if t["role"] == "questioner"):
            continue
        if target == "none":
            examples.append(questioner_messages(pair["persona_name"], pair["task"], conversation, final=False))
        elif final and final.strip():
            messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=True)
            examples.append([*messages, {"role": "assistant", "content": final}])
    if not examples:
        raise StargateError(
            f"iteration {iteration} of run {run_id} has no usable training example (every kept conversation has "
            "an empty question or response): check the Questioner model and its generation settings"
        )
    return examples


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
    policy = questioner.load_policy(adapter) if needs_policy else None
    if not store.stage_done(run_id, iteration, "simulate"):
        roleplayer = chat.get(recipe.roles.roleplayer)
        simulate(store, run_id, iteration, policy, policy_name, questioner, roleplayer, recipe.simulate,
                 recipe.seed, progress)
        store.mark_stage(run_id, iteration, "simulate")
    if not store.stage_done(run_id, iteration, "score"):
        score_stage(store, run_id, iteration, policy, questioner, recipe.score, progress)
        store.mark_stage(run_id, iteration, "score")
    if not store.stage_done(run_id, iteration, "select"):
        select_best(store, run_id, iteration)
        store.mark_stage(run_id, iteration, "select")
    if not store.stage_done(run_id, iteration, "respond"):
        if recipe.train.target == "response":
            respond_stage(store, run_id, iteration, policy, policy_name, questioner, recipe.respond, progress)
        store.mark_stage(run_id, iteration, "respond")
    del policy
    gc.collect()

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
        store.save_training({"run_id": run_id, "iteration": iteration, **record})
        store.mark_stage(run_id, iteration, "train")
        gc.collect()
    store.finish_iteration(run_id, iteration)


@contextmanager
def run_lock(store: Store, run_id: str) -> Iterator[None]:
    """Only one process works on a run at a time. The OS drops the lock when its holder dies, even by SIGKILL."""
    path = run_dir(store, run_id) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StargateError(
                f"run {run_id!r} is already running in another process (lock {path}): wait for it, or stop it "
                "and run the same command again to resume"
            ) from None
        yield


def run(recipe: Recipe, iterations: int, home: Path | str | None = None, run_id: str | None = None,
        progress: Progress | None = None) -> str:
    """Run (or resume) STaR-GATE for `iterations` iterations; returns the run id."""
    if iterations < 1:
        raise StargateError("--iterations must be at least 1")
    preflight(recipe.chat_models, {recipe.roles.oracle, recipe.roles.roleplayer})
    store = Store(home)
    run_id = open_run(store, recipe, run_id)
    progress = progress or Progress()
    chat = ChatModels(recipe.chat_models, store.home)
    with run_lock(store, run_id), progress:
        prepare_data(store, recipe, lambda: chat.get(recipe.roles.oracle), progress)
        questioner = Questioner(recipe.questioner, store.home)
        for iteration in range(1, iterations + 1):
            if store.stage_done(run_id, iteration, "train"):
                continue
            run_iteration(store, recipe, run_id, iteration, questioner, chat, progress)
    return run_id
