"""train.method dpo on the tiny model: preference pairs, the loss over the SFT masks, the margin it raises, the
method recorded, and resume after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import cli, copy_home, run_args
from pinned import assert_pinned

DPO = ["train.method=dpo", "simulate.conversations_per_pair=3", "train.epochs=2"]


@pytest.fixture(scope="module")
def preferred_run(data_home, tmp_path_factory) -> Path:
    home = copy_home(data_home, tmp_path_factory.mktemp("dpo") / "home")
    cli(*run_args(*DPO, iterations=1), home=home)
    return home


@pytest.fixture
def preferred(preferred_run, tmp_path) -> Path:
    """A copy of the module's run, this test's own."""
    return copy_home(preferred_run, tmp_path / "dpo")


def result(home: Path) -> dict:
    with sqlite3.connect(home / "stargate.db") as db:
        out = {
            "selections": db.execute("select pair_id, conversation_id, reward from selections order by 1").fetchall(),
            "responses": db.execute("select pair_id, text from responses order by 1").fetchall(),
            "trainings": db.execute("select iteration, method, losses, examples from trainings").fetchall(),
        }
    out["adapter"] = hashlib.sha256(
        (home / "runs" / "tiny" / "iteration-1" / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    return out


def test_each_pair_prefers_its_best_conversation_to_its_worst_with_the_same_final_turn(preferred):
    from stargate_lite.methods.dpo import preference_examples
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store

    store = Store(preferred)
    recipe = recipe_of_run(pick_run(store, None))
    pairs = preference_examples(store, recipe, "tiny", 1)
    assert pairs
    # The chosen side is exactly what SFT trains on (same prompt, turns and final response, so the same masks).
    assert [chosen for chosen, _ in pairs] == training_examples(store, recipe, "tiny", 1)[: len(pairs)]
    with sqlite3.connect(preferred / "stargate.db") as db:
        worst = db.execute("select c.pair_id, min(s.logprob) from conversations c "  # no question cost here
                           "join scores s on s.conversation_id = c.id group by c.pair_id order by 1").fetchall()
        best = db.execute("select pair_id, reward from selections order by 1").fetchall()
    assert best and all(b > w for (_, b), (_, w) in zip(best, worst, strict=True))
    for chosen, rejected in pairs:
        assert chosen[0] == rejected[0] and chosen[-1] == rejected[-1]  # same greeting, same final turn
        assert chosen[1:-1] != rejected[1:-1]  # the conversations differ


def test_one_dpo_iteration_raises_the_chosen_minus_rejected_margin_on_its_own_pairs(preferred):
    import torch

    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.engines.training import sequence_logprobs
    from stargate_lite.methods.dpo import preference_examples
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store

    store = Store(preferred)
    recipe = recipe_of_run(pick_run(store, None))
    questioner = Questioner(recipe.questioner, preferred)
    pairs = [(questioner.encode_for_training(c), questioner.encode_for_training(r))
             for c, r in preference_examples(store, recipe, "tiny", 1)]
    policy = questioner.load_policy(store.training("tiny", 1)["adapter"])
    sequences = [c for c, _ in pairs] + [r for _, r in pairs]
    with torch.no_grad():
        tuned = sequence_logprobs(policy, policy.get_base_model(), sequences, questioner.tokenizer.pad_token_id, True)
        with policy.disable_adapter():  # the base: where every margin starts, at 0
            base = sequence_logprobs(policy, policy.get_base_model(), sequences, questioner.tokenizer.pad_token_id,
                                     True)
    n = len(pairs)
    margins = (tuned[:n] - base[:n]) - (tuned[n:] - base[n:])
    assert bool((margins > 0).all()), margins.tolist()


def test_a_dpo_run_gives_the_pinned_records(preferred):
    """Its pairs' records and losses, token for token as pinned (tests/pinned.py)."""
    assert_pinned(preferred, "dpo")


def test_the_method_is_recorded_with_the_training(preferred):
    (it,) = json.loads(cli("status", "--json", home=preferred).stdout)["runs"][0]["iterations"]
    assert it["method"] == "dpo"
    (_, method, losses, examples), = result(preferred)["trainings"]
    assert method == "dpo" and examples == 2
    assert json.loads(losses)[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: at the start policy = reference


def test_dpo_resumes_after_sigkill_with_the_uninterrupted_result(preferred_run, preferred):
    """SIGKILL where DPO differs from SFT: in training, after an optimizer step (runs.stop_point "train/1").
    test_loop.py stops the SFT run at every named point, the adapter written but not recorded included, which is
    the same for every method. From a copy of the finished DPO run with its training undone, the rerun gives its
    preferences, losses and adapter bytes."""
    home = preferred
    shutil.rmtree(home / "runs" / "tiny" / "iteration-1" / "adapter")
    with sqlite3.connect(home / "stargate.db") as db:
        db.execute("delete from trainings")
        db.execute("delete from stages where stage = 'train'")
        db.execute("update iterations set finished_at = null")
    stopped = cli(*run_args(*DPO, iterations=1), home=home, check=False, stop_at="train/1")
    assert stopped.returncode == -signal.SIGKILL, f"the run never reached train/1: {stopped.stderr[-2000:]}"
    with sqlite3.connect(home / "stargate.db") as db:
        assert not db.execute("select count(*) from trainings").fetchone()[0]
    cli(*run_args(*DPO, iterations=1), home=home)
    assert result(home) == result(preferred_run)


def test_dpo_refuses_unsloth():
    from stargate_lite.engines.training import resolve_backend
    from stargate_lite.errors import StargateError
    from stargate_lite.recipe import TrainConfig
    from stargate_lite.training_methods import training_method

    dpo = training_method("dpo")
    with pytest.raises(StargateError, match="dpo trains with the peft backend"):
        resolve_backend(TrainConfig(method="dpo", backend="unsloth"), "cuda", dpo)
    assert resolve_backend(TrainConfig(method="dpo", backend="auto"), "cuda", dpo) == "peft"
