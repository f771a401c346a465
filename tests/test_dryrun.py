"""`run --dry-run`: counts from the recipe's scale, throughputs measured with its models, nothing stored."""

import pytest
from conftest import TINY_CI_OVERRIDES, cli


def test_dry_run_estimates_one_iteration_and_writes_nothing(home, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table's stage names unwrapped
    overrides = [a for o in TINY_CI_OVERRIDES for a in ("--set", o)]
    result = cli("run", "--dry-run", *overrides, home=home)
    text = result.stdout
    for stage in ("personas", "gold responses", "simulate: questions", "roleplayer answers", "score", "respond",
                  "train"):
        assert stage in text
    assert "Measured stages: about" in text
    assert not (home / "stargate.db").exists() and not (home / "runs").exists()


def test_estimate_counts_follow_the_recipe(home):
    from stargate_lite.commands.dryrun import estimate
    from stargate_lite.recipe import load_recipe

    recipe = load_recipe("tiny", TINY_CI_OVERRIDES)
    rows = {r["stage"]: r for r in estimate(recipe, home)}
    pairs = 2 * 1  # split A: 2 tasks x 1 persona
    conversations = pairs * 2
    assert rows["score"]["calls"] == conversations
    assert rows["simulate: questions"]["calls"] == int(conversations * 1.5)  # k ~ U(1..2): 1.5 turns on average
    assert rows["respond"]["calls"] == pairs
    assert rows["data: gold responses (once)"]["calls"] == 2 * 1 + 2 * 1 + 1 * 2
    assert rows["data: personas (once)"]["calls"] == 1 + 1 + 2
    for r in rows.values():  # every model of the tiny recipe is local: every rate is measured
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0


def test_a_mix_of_roleplayers_shares_the_answers_by_weight(home):
    from stargate_lite.commands.dryrun import estimate
    from stargate_lite.recipe import load_recipe

    recipe = load_recipe("tiny", [*TINY_CI_OVERRIDES, "simulate.conversations_per_pair=8",
                                  "roles.roleplayer={smollm2: 3, smollm2-plain: 1}"])
    answers = {r["model"]: r for r in estimate(recipe, home) if r["stage"] == "simulate: roleplayer answers"}
    assert {m: r["calls"] for m, r in answers.items()} == {"smollm2": 18, "smollm2-plain": 6}  # of 2 x 8 x 1.5 turns
    assert answers and all(r["seconds"] > 0 for r in answers.values())


def test_a_policy_gradient_with_per_turn_credit_counts_its_extra_scorings_and_all_conversations(home):
    from stargate_lite.commands.dryrun import estimate
    from stargate_lite.recipe import load_recipe

    recipe = load_recipe("tiny", [*TINY_CI_OVERRIDES, "simulate.max_turns=3", "train.method=rloo",
                                  "train.init=previous", "train.lora_dropout=0", "train.target=none",
                                  "reward.per_turn=true"])
    rows = {r["stage"]: r for r in estimate(recipe, home, measure=False)}
    conversations = 2 * 1 * 2
    assert rows["score: after each turn (reward.per_turn)"]["calls"] == conversations * (2 - 1)  # k averages 2
    assert rows["train"]["calls"] == conversations  # every conversation is a sample
    assert "respond" not in rows  # train.target none: no regularizer responses
    sft = {r["stage"]: r for r in estimate(load_recipe("tiny", [*TINY_CI_OVERRIDES, "simulate.max_turns=3"]), home,
                                           measure=False)}
    assert all(r["tokens_per_s"] is None and r["seconds"] is None for r in [*rows.values(), *sft.values()])
    assert rows["train"]["tokens"] > 2 * sft["train"]["tokens"]  # twice the sequences, and the extra forward passes


@pytest.mark.parametrize("turns", ["uniform", "policy"])
def test_item10_per_turn_scorings_are_counted_at_each_prefixs_own_length(home, turns):
    """Issue 45, item 10: reward.per_turn scores the gold after each turn but the last, each prefix as long as
    the turns before it; with uniform turns each pair has its own k, so the count is the mean over k of the sum
    over its prefixes (the row took the mean k's middle prefix: 9% low on the tiny recipe)."""
    from stargate_lite.commands.dryrun import estimate
    from stargate_lite.recipe import load_recipe

    recipe = load_recipe("tiny", ["simulate.max_turns=3", f"simulate.turns={turns}", "train.method=rloo",
                                  "train.init=previous", "train.lora_dropout=0", "train.target=none",
                                  "reward.per_turn=true"])
    (row,) = [r for r in estimate(recipe, home, measure=False) if r["stage"].startswith("score: after each turn")]
    sim, gold = recipe.simulate, recipe.data.gold_max_tokens
    conversations = recipe.data.tasks.A * recipe.data.personas.A * sim.conversations_per_pair
    ks = [3] if turns == "policy" else [1, 2, 3]
    per_conversation = sum(sum(80 + j * (sim.question_max_tokens + sim.answer_max_tokens) + gold
                               for j in range(1, k)) for k in ks) / len(ks)
    assert row["calls"] == conversations * sum(k - 1 for k in ks) / len(ks)
    assert row["tokens"] == pytest.approx(conversations * per_conversation, abs=1)


def test_item10_dpo_training_counts_its_reference_pass(home):
    """Issue 45, item 10: dpo reads each pair's chosen and rejected once more, without grad and with the adapter
    off (its reference log-probs), as rloo and grpo read theirs: a third of a training pass per sequence."""
    from stargate_lite.commands.dryrun import TRAIN_FORWARD_COST, estimate
    from stargate_lite.recipe import load_recipe

    recipe = load_recipe("tiny", ["train.method=dpo"])
    rows = {r["stage"]: r for r in estimate(recipe, home, measure=False)}
    sft = {r["stage"]: r for r in estimate(load_recipe("tiny"), home, measure=False)}
    epochs = recipe.train.epochs
    per_sequence = sft["train"]["tokens"] / (sft["train"]["calls"])  # one sequence's tokens, one epoch
    assert rows["train"]["calls"] == 2 * sft["train"]["calls"]
    assert rows["train"]["tokens"] == pytest.approx(
        2 * sft["train"]["calls"] / epochs * per_sequence * (epochs + 1 / TRAIN_FORWARD_COST), abs=1)
