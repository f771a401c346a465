import pytest

from stargate_lite.errors import StargateError
from stargate_lite.recipe import TrainConfig, load_recipe, shipped_recipes
from stargate_lite.store.reward import RewardTerms


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
        ("roles.roleplayer=mixtral", "roles.roleplayer: no chat model named 'mixtral'"),
        ("roles.roleplayer=[smollm2, mixtral]", "roles.roleplayer: no chat model named 'mixtral'"),
        ("roles.roleplayer=[]", "roles.roleplayer: name at least one"),
        ("roles.roleplayer=[smollm2, smollm2]", "roles.roleplayer: a chat model is named twice"),
        ("roles.roleplayer={smollm2: 1, smollm2-plain: 0}", "roles.roleplayer: every weight must be above 0"),
        ("simulate.temperature=hot", "simulate.temperature"),
        ("data.tasks.A=0", "data.tasks.A"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, named):
    with pytest.raises(StargateError, match="invalid") as info:
        load_recipe("tiny", [override])
    assert named in str(info.value)


def test_train_method_is_one_of_the_registered_methods_and_an_unknown_one_is_one_line_naming_them():
    """The registry's names are the modules of stargate_lite/methods/ (those not beginning with "_"), each
    registering itself under its own name; the recipe and the registry refuse any other name alike."""
    from stargate_lite.training_methods import METHODS_DIR, method_names, training_method

    names = method_names()
    assert {"sft", "dpo", "rloo", "grpo"} <= set(names)
    assert set(names) == {p.stem for p in METHODS_DIR.glob("*.py") if not p.stem.startswith("_")}
    for name in names:
        assert load_recipe("tiny", [f"train.method={name}"]
                           + (["train.init=previous", "train.lora_dropout=0", "train.target=none"]
                              if training_method(name).needs_sampling else [])).train.method == name
        assert training_method(name).name == name and training_method(name).sequences_per_pair(3) >= 1
    listed = f"no training method 'nosuch': the registered ones are {', '.join(names)}"
    with pytest.raises(StargateError) as info:
        load_recipe("tiny", ["train.method=nosuch"])
    assert str(info.value) == f"recipe tiny.yaml is invalid: train.method: {listed}"
    with pytest.raises(StargateError, match=f"^train.method: {listed}$"):
        training_method("nosuch")


def test_several_roleplayers_with_or_without_weights():
    plain = load_recipe("tiny")
    assert plain.roles.roleplayer_weights == {"smollm2": 1.0} and plain.roles.main_roleplayer == "smollm2"
    listed = load_recipe("tiny", ["roles.roleplayer=[smollm2-plain, smollm2]"])
    assert listed.roles.roleplayer_weights == {"smollm2-plain": 1.0, "smollm2": 1.0}
    assert listed.roles.main_roleplayer == "smollm2-plain"  # evaluation's, when --roleplayer names none
    weighted = load_recipe("tiny", ["roles.roleplayer={smollm2: 3, smollm2-hf: 1}"])
    assert weighted.roles.roleplayer_weights == {"smollm2": 3.0, "smollm2-hf": 1.0}


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

    from stargate_lite.runs import open_run, recipe_of_run, redact
    from stargate_lite.store import Store

    recipe = load_recipe("paper")
    store = Store(home)
    open_run(store, recipe)
    assert recipe_of_run(store.get_run("paper")) == recipe  # token limits and key *names* survive
    assert redact({"api_key": "sk-1", "nested": {"auth_token": "t", "max_tokens": 5, "api_key_env": "X"}}) == {
        "api_key": "<redacted>", "nested": {"auth_token": "<redacted>", "max_tokens": 5, "api_key_env": "X"}}
    assert json.loads((home / "runs" / "paper" / "recipe.json").read_text())["chat_models"]["gpt4"][
        "api_key_env"] == "OPENAI_API_KEY"


def test_the_judge_is_declared_in_the_recipe():
    import json

    paper = load_recipe("paper")
    assert (paper.judge.template, paper.judge.read, paper.eval.judge_orders) == ("compare", "last_line", 2)
    assert paper.train.format == "bare" and load_recipe("self-oracle").train.format == "bare"
    tiny = load_recipe("tiny")
    assert (tiny.judge.template, tiny.judge.read, tiny.eval.judge_orders) == ("letter", "logprobs", 2)
    own = "Person: {persona}\nRequest: {task}\nFirst: {a}\nSecond: {b}\nWhich fits? End with {label} A or {label} B."
    assert load_recipe("tiny", [f"judge.template={json.dumps(own)}", "judge.read=last_line"]).judge.template == own
    with pytest.raises(StargateError, match="judge.template: not a shipped template"):
        load_recipe("tiny", ["judge.template=fancy"])
    with pytest.raises(StargateError, match=r"judge.template: only \{persona\}"):
        load_recipe("tiny", [f"judge.template={json.dumps(own + ' {x}')}"])
    with pytest.raises(StargateError, match="judge.read: logprobs reads the reply's first token"):
        load_recipe("paper", ["judge.read=logprobs"])
    with pytest.raises(StargateError, match="judge.read"):
        load_recipe("tiny", ["judge.read=anywhere"])


def test_a_run_stored_before_the_judge_section_still_loads(home):
    """Stored recipes keep their old keys: eval.judge_max_tokens moved to judge.max_tokens."""
    import json

    from stargate_lite.runs import recipe_of_run

    stored = json.loads(load_recipe("tiny").to_json())
    del stored["judge"], stored["eval"]["judge_orders"], stored["train"]["format"]
    stored["eval"]["judge_max_tokens"] = 12
    recipe = recipe_of_run({"id": "old", "recipe": json.dumps(stored)})
    assert recipe.judge.max_tokens == 12 and recipe.judge.read == "reply" and recipe.train.format == "instructed"


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_the_commented_roleplayer_mix_of_a_shipped_recipe_loads(name):
    import re

    from stargate_lite.recipe import recipes_dir

    (mix,) = re.findall(r"#\s+roleplayer: (\{.*\})", (recipes_dir() / f"{name}.yaml").read_text())
    recipe = load_recipe(name, [f"roles.roleplayer={mix}"])
    assert len(recipe.roles.roleplayer_weights) == 2


def test_a_recipe_that_omits_the_format_trains_as_the_paper_and_stored_runs_as_they_were_trained(tmp_path):
    import json

    import yaml

    from stargate_lite.recipe import TrainConfig, recipes_dir
    from stargate_lite.runs import recipe_of_run

    assert TrainConfig().format == "bare"
    data = yaml.safe_load((recipes_dir() / "tiny.yaml").read_text())
    del data["train"]["format"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    assert load_recipe(str(tmp_path / "mine.yaml")).train.format == "bare"
    stored = json.loads(load_recipe("paper").to_json())  # every run since train.format came in stores it
    assert recipe_of_run({"id": "new", "recipe": json.dumps(stored)}).train.format == "bare"


def test_a_question_cost_needs_policy_turns():
    """Under uniform turns every conversation of a pair has the same turns: a cost per question could only make
    selection prefer the conversations that ask least."""
    with pytest.raises(StargateError, match="reward.question_cost needs simulate.turns: policy"):
        load_recipe("tiny", ["reward.question_cost=0.5"])
    assert load_recipe("tiny", ["reward.question_cost=0.5", "simulate.turns=policy"]).reward.question_cost == 0.5
    import json

    from stargate_lite.runs import recipe_of_run

    stored = json.loads(load_recipe("tiny").to_json())
    stored["reward"]["question_cost"] = 0.5  # a run made before the refusal still loads
    assert recipe_of_run({"id": "old", "recipe": json.dumps(stored)}).reward.question_cost == 0.5


def test_a_fact_credit_needs_a_gated_user():
    """A free user's replies record no facts given, so a credit per fact told would silently add nothing."""
    with pytest.raises(StargateError, match="reward.fact_credit needs simulate.reveal: asked"):
        load_recipe("tiny", ["reward.fact_credit=2"])
    credited = load_recipe("tiny", ["reward.fact_credit=2", "simulate.reveal=asked", "simulate.turns=policy",
                                    "reward.question_cost=0.5"])
    assert credited.reward.terms == RewardTerms(question_cost=0.5, fact_credit=2.0)  # what selection ranks by


def test_dropout_in_several_processes_needs_masks_seeded_per_sequence():
    """Every process seeds torch's generator alike: with its masks, the processes would drop the same units of
    different sequences."""
    with pytest.raises(StargateError, match="needs train.dropout_masks: sequence"):
        load_recipe("tiny", ["train.processes=2"])
    assert load_recipe("tiny", ["train.processes=2", "train.dropout_masks=sequence"]).train.processes == 2
    assert load_recipe("tiny", ["train.processes=2", "train.lora_dropout=0"]).train.processes == 2
    from stargate_lite.engines.training import resolve_backend
    from stargate_lite.methods.sft import METHOD as SFT

    with pytest.raises(StargateError, match="needs train.dropout_masks: sequence"):  # the Python API refuses it too
        resolve_backend(TrainConfig(processes=2), "cpu", SFT)
    with pytest.raises(StargateError, match="set train.backend=peft"):
        resolve_backend(TrainConfig(dropout_masks="sequence", backend="unsloth"), "cuda", SFT)
    assert resolve_backend(TrainConfig(dropout_masks="sequence"), "cuda", SFT) == "peft"


def test_continuing_the_last_adapter_or_dpo_with_unsloth_is_refused_before_any_work():
    from stargate_lite.engines.training import resolve_backend
    from stargate_lite.methods.sft import METHOD as SFT

    for setting in ("train.init=previous", "train.method=dpo"):
        with pytest.raises(StargateError, match=f"{setting.replace('=', ' ')} trains with peft, not Unsloth"):
            load_recipe("tiny", [setting, "train.backend=unsloth"])
        assert load_recipe("tiny", [setting]).train.backend == "auto"
    with pytest.raises(StargateError, match="train.init previous continues the last adapter with peft"):
        resolve_backend(TrainConfig(init="previous", backend="unsloth"), "cuda", SFT)  # the Python API refuses it too
    assert resolve_backend(TrainConfig(init="previous"), "cuda", SFT) == "peft"


def test_a_compare_judge_needs_a_budget_for_its_comparison():
    with pytest.raises(StargateError, match="judge.max_tokens 64 would cut"):
        load_recipe("tiny", ["judge.template=compare", "judge.read=last_line"])
    assert load_recipe("tiny", ["judge.template=compare", "judge.read=last_line",
                                "judge.max_tokens=200"]).judge.max_tokens == 200
    import json

    from stargate_lite.evaluation.evaluate import with_eval_settings
    from stargate_lite.runs import recipe_of_run

    stored = json.loads(load_recipe("tiny").to_json())
    stored["judge"].update(template="compare", read="last_line")  # a run made before the refusal still loads ...
    old = recipe_of_run({"id": "old", "recipe": json.dumps(stored)})
    assert old.judge.template == "compare"
    with pytest.raises(StargateError, match="at least 200"):  # ... and judging it so again is refused
        with_eval_settings(old, "old", ["eval.judge_orders=2"])
    assert with_eval_settings(old, "old", ["judge.max_tokens=256", "eval.judge_orders=1"]).judge.max_tokens == 256
    with pytest.raises(StargateError, match="--set simulate.max_turns: a stored run's evaluation can change only"):
        with_eval_settings(old, "old", ["simulate.max_turns=1"])


# Every recipe field that changes what a run computes; the rest are runs.EXECUTION_ONLY. A field added to the
# recipe fails the test below until it is put in one or the other.
RESULT_FIELDS = {
    "name", "seed", "questioner.model", "questioner.gguf_file", "questioner.dtype", "questioner.load_in_4bit",
    "questioner.device", "questioner.memory_budget_gib", "questioner.decoder", "questioner.engine",
    "questioner.vllm.server_args", "questioner.vllm.max_lora_rank",
    *(f"chat_models.*.{key}" for key in ("backend", "model", "gguf_file", "n_ctx", "n_gpu_layers", "repeat_penalty",
                                         "base_url", "fold_system", "chat_format")),
    "roles.roleplayer", "roles.oracle", "roles.judge",
    "data.dataset", *(f"data.{what}.{split}" for what in ("tasks", "personas") for split in ("A", "B", "test")),
    "data.persona_max_tokens", "data.gold_max_tokens", "data.gold_temperature",
    *(f"simulate.{key}" for key in ("conversations_per_pair", "max_turns", "turns", "temperature", "top_p",
                                    "question_max_tokens", "answer_max_tokens", "answer_temperature",
                                    "max_answer_sentences", "batch_size", "pairs_per_chunk", "instruction", "reveal",
                                    "gate.model", "gate.threshold", "gate.spread", "gate.stated_threshold")),
    "reward.question_cost", "reward.fact_credit", "reward.per_turn", "score.batch_size", "score.vocab_chunk_tokens",
    "respond.max_tokens", "respond.batch_size",
    *(f"train.{key}" for key in ("method", "dpo_beta", "clip_epsilon", "kl_beta", "init", "target", "lora_r",
                                 "lora_alpha", "lora_dropout",
                                 "target_modules", "learning_rate", "epochs", "batch_size", "gradient_accumulation",
                                 "max_length", "warmup_ratio", "weight_decay", "gradient_checkpointing", "format",
                                 "backend", "dropout_masks")),
    "eval.conversations_per_pair", "eval.win_rate_pairs_per_turn", "eval.judge_orders",
    "judge.template", "judge.read", "judge.label", "judge.max_tokens",
}


def _field_paths(model, prefix: str = "") -> set[str]:
    import typing

    from pydantic import BaseModel

    from stargate_lite.recipe import ChatModelConfig

    paths = set()
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths |= _field_paths(field.annotation, f"{prefix}{name}.")
        elif typing.get_origin(field.annotation) is dict and name == "chat_models":
            paths |= _field_paths(ChatModelConfig, f"{prefix}{name}.*.")
        else:
            paths.add(prefix + name)
    return paths


def test_every_recipe_field_either_changes_results_or_only_how_a_run_executes():
    from stargate_lite.recipe import Recipe
    from stargate_lite.runs import EXECUTION_ONLY

    assert not RESULT_FIELDS & EXECUTION_ONLY
    assert _field_paths(Recipe) == RESULT_FIELDS | EXECUTION_ONLY


def test_a_run_resumes_after_an_execution_change_and_refuses_a_result_change(home):
    import json

    from stargate_lite.errors import FallbackNotice
    from stargate_lite.runs import open_run, recipe_of_run
    from stargate_lite.store import Store

    store = Store(home)
    sequence_masks = "train.dropout_masks=sequence"  # with which the number of processes changes no result
    open_run(store, load_recipe("tiny", [sequence_masks]))
    faster = load_recipe("tiny", [sequence_masks, "train.processes=3", "chat_models.smollm2.n_threads=1",
                                  "chat_models.smollm2-plain.max_retries=0", "questioner.vllm.max_concurrency=8"])
    with pytest.warns(FallbackNotice, match="continues with new execution settings"):
        open_run(store, faster)
    stored = recipe_of_run(store.get_run("tiny"))
    assert stored.train.processes == 3 and stored.chat_models["smollm2"].n_threads == 1  # eval uses them
    assert json.loads((home / "runs" / "tiny" / "recipe.json").read_text()) == json.loads(faster.to_json())
    for change in ("simulate.temperature=1.2", "chat_models.smollm2.repeat_penalty=1.0", "train.format=bare"):
        with pytest.raises(StargateError, match=f"different recipe \\(changed: {change.split('=')[0]}\\)"):
            open_run(store, load_recipe("tiny", [sequence_masks, "train.processes=3", "chat_models.smollm2.n_threads=1",
                                                 "chat_models.smollm2-plain.max_retries=0",
                                                 "questioner.vllm.max_concurrency=8", change]))


def test_a_run_resumes_after_its_recipe_gains_or_loses_a_chat_model_that_no_role_names(home):
    """As a run of the tiny recipe made before the recipe shipped `gemma` does: adding a Roleplayer for `eval
    --roleplayer` changes nothing the run computed. Its settings count from then on, and a role's chat model never
    comes or goes unnoticed."""
    import yaml

    from stargate_lite.errors import FallbackNotice
    from stargate_lite.recipe import recipes_dir, validate_recipe
    from stargate_lite.runs import open_run, recipe_of_run
    from stargate_lite.store import Store

    store = Store(home)
    data = yaml.safe_load((recipes_dir() / "tiny.yaml").read_text())
    del data["chat_models"]["gemma"]
    open_run(store, validate_recipe(data))
    with pytest.warns(FallbackNotice, match=r"new execution settings \(chat_models.gemma \(named by no role\)\)"):
        open_run(store, load_recipe("tiny"))
    assert "gemma" in recipe_of_run(store.get_run("tiny")).chat_models  # so `eval --roleplayer gemma` may use it
    with pytest.raises(StargateError, match=r"different recipe \(changed: chat_models.gemma.repeat_penalty\)"):
        open_run(store, load_recipe("tiny", ["chat_models.gemma.repeat_penalty=1.0"]))
    with pytest.raises(StargateError, match=r"different recipe \(changed: chat_models.plain.backend, "):
        open_run(store, validate_recipe({**data, "roles": {**data["roles"], "roleplayer": "plain"},
                                         "chat_models": {**data["chat_models"], "plain": {"backend": "llamacpp",
                                                         "model": "builtin:smollm2-135m-instruct"}}}))
