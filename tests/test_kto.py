"""train.method kto on the tiny model (stargate_lite/methods/kto.py): one iteration raises the desirable
conversations' implied reward above the undesirable ones' on its own pairs, starting where policy and reference
agree; the dry-run counts its sequences as the method says; and what it refuses."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import cli, copy_home, run_args

KTO = ["train.method=kto", "simulate.conversations_per_pair=3", "train.epochs=2"]


@pytest.fixture(scope="module")
def kto_run(data_home, tmp_path_factory) -> Path:
    home = copy_home(data_home, tmp_path_factory.mktemp("kto") / "home")
    cli(*run_args(*KTO, iterations=1), home=home)
    return home


def test_one_kto_iteration_raises_the_desirable_minus_undesirable_implied_reward_on_its_own_pairs(kto_run):
    """Implied reward beta * (log pi(y) - log pi_base(y)) over the trained tokens: 0 for every conversation before
    training (the loss starts at 1 - sigmoid(0) = 0.5), and after it each pair's best conversation (desirable)
    above its worst (undesirable)."""
    import torch

    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.engines.training import sequence_logprobs
    from stargate_lite.methods.dpo import preference_examples
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store
    from stargate_lite.training_methods import training_method

    store = Store(kto_run)
    recipe = recipe_of_run(pick_run(store, None))
    questioner = Questioner(recipe.questioner, kto_run)
    pairs = training_method("kto").examples(store, recipe, "tiny", 1, questioner.encode_for_training)
    assert len(pairs) == len(preference_examples(store, recipe, "tiny", 1)) > 0
    with sqlite3.connect(kto_run / "stargate.db") as db:
        ((method, examples, losses),) = db.execute("select method, examples, losses from trainings").fetchall()
    assert method == "kto" and examples == len(pairs)
    assert json.loads(losses)[0] == pytest.approx(0.5, abs=1e-3)

    policy = questioner.load_policy(store.training("tiny", 1)["adapter"])
    sequences = [d for d, _ in pairs] + [u for _, u in pairs]
    pad = questioner.tokenizer.pad_token_id
    with torch.no_grad():
        tuned = sequence_logprobs(policy, policy.get_base_model(), sequences, pad, True)
        with policy.disable_adapter():
            base = sequence_logprobs(policy, policy.get_base_model(), sequences, pad, True)
    rewards = recipe.train.dpo_beta * (tuned - base)
    n = len(pairs)
    gaps = rewards[:n] - rewards[n:]
    assert bool((gaps > 0).all()), gaps.tolist()


def test_the_dry_run_counts_kto_as_the_method_says_and_its_refusals(home):
    """Two sequences a pair and a reference pass without grad, as dpo (whose examples and reference it shares);
    Unsloth and several processes (its reference point is a whole micro-batch's) are refused before any work."""
    from stargate_lite.commands.dryrun import estimate
    from stargate_lite.errors import StargateError
    from stargate_lite.recipe import load_recipe

    rows = {r["stage"]: r for r in estimate(load_recipe("tiny", ["train.method=kto"]), home, measure=False)}
    dpo = {r["stage"]: r for r in estimate(load_recipe("tiny", ["train.method=dpo"]), home, measure=False)}
    assert rows["train"] == dpo["train"]
    with pytest.raises(StargateError, match="train.method kto trains with peft, not Unsloth"):
        load_recipe("tiny", ["train.method=kto", "train.backend=unsloth"])
    with pytest.raises(StargateError, match="kto takes its reference point from a whole micro-batch"):
        load_recipe("tiny", ["train.method=kto", "train.processes=2", "train.lora_dropout=0"])
