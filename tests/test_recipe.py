import pytest

from stargate_lite.errors import StargateError
from stargate_lite.recipe import load_recipe, shipped_recipes


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.description


def test_tiny_is_shipped_and_paper_matches_the_paper():
    assert {"tiny", "paper", "self-oracle"} <= set(shipped_recipes())
    paper = load_recipe("paper")
    assert (paper.simulate.conversations_per_pair, paper.simulate.max_turns) == (10, 3)
    assert (paper.simulate.temperature, paper.simulate.top_p, paper.simulate.answer_temperature) == (0.9, 0.9, 0.0)
    assert (paper.data.personas.A, paper.data.personas.test, paper.data.gold_max_tokens) == (50, 10, 300)
    assert paper.train.batch_size * paper.train.gradient_accumulation == 64


def test_overrides_apply_and_parse_yaml_values():
    recipe = load_recipe("tiny", ["simulate.max_turns=1", "train.target=none", "data.tasks={A: 1, B: 1, test: 1}"])
    assert recipe.simulate.max_turns == 1
    assert recipe.train.target == "none"
    assert recipe.data.tasks.B == 1


@pytest.mark.parametrize(
    "override, named",
    [
        ("simulate.max_turn=2", "simulate.max_turn: unknown key"),
        ("simulate.max_turns=0", "simulate.max_turns"),
        ("simulate.conversations_per_pair=0", "simulate.conversations_per_pair"),
        ("train.target=everything", "train.target"),
        ("roles.roleplayer=gemma", "roles.roleplayer: no chat model named 'gemma'"),
        ("simulate.temperature=hot", "simulate.temperature"),
        ("data.tasks.A=0", "data.tasks.A"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, named):
    with pytest.raises(StargateError, match="invalid") as info:
        load_recipe("tiny", [override])
    assert named in str(info.value)


def test_all_errors_are_reported_together():
    with pytest.raises(StargateError) as info:
        load_recipe("tiny", ["simulate.max_turns=0", "train.lora_r=0", "bogus=1"])
    message = str(info.value)
    assert "simulate.max_turns" in message and "train.lora_r" in message and "bogus: unknown key" in message


def test_unknown_recipe_and_bad_override_syntax(tmp_path):
    with pytest.raises(StargateError, match="no recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(StargateError, match="section.key=value"):
        load_recipe("tiny", ["simulate.max_turns"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StargateError, match="not valid YAML"):
        load_recipe(str(bad))


def test_a_stored_recipe_round_trips_and_secrets_are_redacted(home):
    import json

    from stargate_lite.loop import open_run, recipe_of_run, redact
    from stargate_lite.store import Store

    recipe = load_recipe("paper")
    store = Store(home)
    open_run(store, recipe)
    assert recipe_of_run(store.get_run("paper")) == recipe  # token limits and key *names* survive
    assert redact({"api_key": "sk-1", "nested": {"auth_token": "t", "max_tokens": 5, "api_key_env": "X"}}) == {
        "api_key": "<redacted>", "nested": {"auth_token": "<redacted>", "max_tokens": 5, "api_key_env": "X"}}
    assert json.loads((home / "runs" / "paper" / "recipe.json").read_text())["chat_models"]["gpt4"][
        "api_key_env"] == "OPENAI_API_KEY"
