"""The learning probe: does training raise the reward it optimises, on the splits it trained on and on the test
split, and by asking or by answering?

For each policy Q_eta of a run (0 = the base model) and each split A, B and test, fresh conversations on a fixed
probe set of pairs (the split's first tasks x personas, the run's own pairs among them), under the same seeds for
every policy, scored as training scores them: log p_base(gold | task, conversation), less reward.question_cost
per question. A pair's reward is the mean over its conversations; Q_eta's gain on a pair is its reward there less
Q_0's, and the mean gain gets a 95% interval from the crossed bootstrap over tasks and personas
(intervals.crossed_bootstrap): the pairs share both, so they are not independent draws.

What kind of gain it is: the share of Questioner turns that ask (prompts.is_question), and the share that hold
response text, RESPONSE_WORDS or more words outside their questions. A Questioner that writes the answer into
its turns raises log p(gold) without eliciting anything, which the reward alone cannot tell apart.

Each (split, policy) is an evaluation namespace of its own ("RUN#probe:ROLEPLAYER:SPLIT:ETA", iteration 0), so
every policy meets the same turn counts, the same sampling seeds and the same Roleplayer seeds, and a rerun
reuses what is stored: Q_0's conversations are made once.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..engines.chat_models import ChatModels, preflight
from ..engines.questioner import Questioner, SharedBase
from ..errors import StargateError
from ..progress import Progress
from ..prompts import is_question
from ..recipe import SPLITS, Recipe
from ..runs import pick_run, recipe_of_run, run_dir, trained_iterations
from ..stages.data import make_pairs, prepare_data
from ..stages.score import score_stage
from ..stages.simulate import Roleplayers, simulate
from ..store import Store
from .evaluate import closing_questioner
from .intervals import crossed_bootstrap

RESPONSE_WORDS = 8  # about one sentence of content besides the question
PROBE_SEED = 104_729  # added to the run's seed: conversations apart from training's and evaluation's
_SENTENCE = re.compile(r"[^.!?]*[.!?]+|[^.!?]+$")


def probe_namespace(run_id: str, roleplayer: str, split: str, iteration: int) -> str:
    return f"{run_id}#probe:{roleplayer}:{split}:{iteration}"


def response_words(text: str) -> int:
    """Words of a Questioner turn outside its questions (sentences that end in '?')."""
    return sum(len(s.split()) for s in _SENTENCE.findall(text) if not s.strip().endswith("?"))


def probe_recipe(recipe: Recipe, tasks: dict[str, int], personas: dict[str, int], conversations: int) -> Recipe:
    """The run's recipe with the probe's data sizes and conversations per pair; everything else as trained."""
    data = recipe.data.model_copy(update={"tasks": recipe.data.tasks.model_copy(update=tasks),
                                          "personas": recipe.data.personas.model_copy(update=personas)})
    simulate_config = recipe.simulate.model_copy(update={"conversations_per_pair": conversations})
    return recipe.model_copy(update={"data": data, "simulate": simulate_config})


def probe(home: Path | str | None = None, run_id: str | None = None, iterations: list[int] | None = None,
          tasks: dict[str, int] | None = None, personas: dict[str, int] | None = None, conversations: int = 3,
          roleplayer: str | None = None, progress: Progress | None = None) -> dict:
    """Run (or resume) the probe for a run's policies and return its summary (`summarize_probe`).

    tasks / personas: per split, how many of the split's first tasks and personas make the probe's pairs
    (default: A and B 6 x 4, test 6 x 2: 48 training pairs and 12 test pairs). Missing personas and golds are
    written by the run's Oracle, as the data stage writes them."""
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    run_id, recipe = run["id"], recipe_of_run(run)
    roleplayer = roleplayer or recipe.roles.main_roleplayer
    if roleplayer not in recipe.chat_models:
        raise StargateError(f"--roleplayer {roleplayer!r} is not a chat model of run {run_id}: "
                            f"choose one of {', '.join(sorted(recipe.chat_models))}")
    if conversations < 1:
        raise StargateError("the probe needs at least one conversation per pair")
    available = trained_iterations(store, run_id)
    wanted = sorted({0, *(available if iterations is None else iterations)})
    missing = [i for i in wanted if i and i not in available]
    if missing:
        raise StargateError(f"run {run_id} has no trained iteration {missing[0]} (trained: {available or 'none'})")
    sized = probe_recipe(recipe, tasks or {"A": 6, "B": 6, "test": 6}, personas or {"A": 4, "B": 4, "test": 2},
                         conversations)
    todo = [(split, it) for split in SPLITS for it in wanted
            if not store.stage_done(probe_namespace(run_id, roleplayer, split, it), 0, "probe")]
    progress = progress or Progress()
    if todo:
        preflight(recipe.chat_models, {roleplayer, recipe.roles.oracle})

    @functools.cache
    def models() -> SharedBase:
        return SharedBase(Questioner(recipe.questioner, store.home))

    with progress, ChatModels(recipe.chat_models, store.home, run_dir(store, run_id)) as chat, \
            closing_questioner(models):
        if todo:
            prepare_data(store, sized, lambda: chat.get(recipe.roles.oracle), progress)
        for split, it in todo:
            ns = probe_namespace(run_id, roleplayer, split, it)
            make_pairs(store, sized, ns, 0, split, f"{recipe.seed}/probe")
            adapter = store.training(run_id, it)["adapter"] if it else None
            with models().policy(adapter) as policy:
                simulate(store, ns, 0, policy, f"iteration-{it}" if it else "base", models().questioner,
                         Roleplayers({roleplayer: 1.0}, chat.get, recipe.seed), sized.simulate,
                         recipe.seed + PROBE_SEED, progress)
                score_stage(store, ns, 0, policy, models().questioner, recipe.score, progress)
            store.mark_stage(ns, 0, "probe")
    return summarize_probe(store, run_id, roleplayer, wanted, recipe.reward.question_cost)


def _policy_split(store: Store, ns: str, question_cost: float) -> tuple[dict[str, tuple[str, str, float]], dict]:
    """Per pair key (task, persona, mean reward); the Questioner's turns, those that ask, those with response text."""
    conversations = {c["id"]: c for c in store.conversations(ns, 0)}
    pairs = {p["id"]: p for p in store.pairs(ns, 0)}
    rewards: dict[str, list[float]] = {}
    for s in store.scores(ns, 0):
        questions = conversations[s["conversation_id"]]["questions"] or 0
        rewards.setdefault(s["pair_id"], []).append(s["logprob"] - question_cost * questions)
    by_key = {}
    for pair_id, values in rewards.items():
        p = pairs[pair_id]
        by_key[f"{p['task_id']}|{p['persona_id']}"] = (p["task_id"], p["persona_id"], sum(values) / len(values))
    turns = [t["text"] for ts in store.turns(list(conversations)).values() for t in ts if t["role"] == "questioner"]
    counts = {"questioner_turns": len(turns), "asking": sum(map(is_question, turns)),
              "response_text": sum(response_words(t) >= RESPONSE_WORDS for t in turns)}
    return by_key, counts


def summarize_probe(store: Store, run_id: str, roleplayer: str, iterations: list[int],
                    question_cost: float = 0.0) -> dict:
    """The probe as stored: per policy and split, the mean reward, the gain over Q_0 paired per pair with its
    crossed-bootstrap interval, the asking and response-text shares, and how many probe pairs the run trained on."""
    trained_on = {f"{p['task_id']}|{p['persona_id']}" for it in trained_iterations(store, run_id)
                  for p in store.pairs(run_id, it)}
    base = {split: _policy_split(store, probe_namespace(run_id, roleplayer, split, 0), question_cost)
            for split in SPLITS}
    policies = []
    for it in iterations:
        measured = {split: _policy_split(store, probe_namespace(run_id, roleplayer, split, it), question_cost)
                    for split in SPLITS}
        # A and B together too: the training distribution's pairs, twice as many as either split's.
        groups = {**{split: (split,) for split in SPLITS}, "A+B": ("A", "B")}
        splits = {}
        for name, members in groups.items():
            rewards = {k: v for m in members for k, v in measured[m][0].items()}
            reference = {k: v for m in members for k, v in base[m][0].items()}
            counted = {c: sum(measured[m][1][c] for m in members) for c in ("questioner_turns", "asking",
                                                                              "response_text")}
            turns = counted["questioner_turns"]
            keys = sorted(rewards.keys() & reference.keys())
            gain = None
            if it and keys:
                gain = crossed_bootstrap([rewards[k][2] - reference[k][2] for k in keys],
                                         [rewards[k][0] for k in keys], [rewards[k][1] for k in keys])
            splits[name] = {
                "pairs": len(rewards), "trained_on": len(rewards.keys() & trained_on),
                "reward": sum(r for *_, r in rewards.values()) / len(rewards) if rewards else None,
                "gain": gain, "questioner_turns": turns,
                "asking_share": counted["asking"] / turns if turns else None,
                "response_text_share": counted["response_text"] / turns if turns else None,
            }
        policies.append({"iteration": it, "splits": splits})
    return {"run": run_id, "roleplayer": roleplayer, "question_cost": question_cost, "policies": policies}
