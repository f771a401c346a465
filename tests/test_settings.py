"""Every setting the recipe accepts gives the right numbers: the defects a line-by-line reading found (issue 45),
each pinned here by the test that failed before its fix. Each runs in seconds on the real tiny Questioner."""

from __future__ import annotations

import itertools

import pytest

from stargate_lite.engines.training import attach_lora, train_lora
from stargate_lite.recipe import TrainConfig
from stargate_lite.training_methods import training_method

POLICY_GRADIENT_METHODS = ("rloo", "grpo")

TEMPERATURE, TOP_P = 0.9, 0.9  # the tiny recipe's simulate.temperature and top_p
SOUND_POLICY_GRADIENT = ["train.init=previous", "train.lora_dropout=0", "train.target=none"]
TASK = "Plan a weekend for me."
GOLD = "A slow weekend: Saturday a short hike by the lake, Sunday a small museum and an early dinner."
# One pair's conversations under each simulate.turns: (questions and answers, the Questioner's own answer).
QUESTION, REPLY = "Do you like being outdoors?", "Yes, I hike most weekends."
SECOND, SECOND_REPLY = "What do you enjoy indoors?", "Small museums, mostly."
CONVERSATIONS = {
    "uniform": [([QUESTION, REPLY, SECOND, SECOND_REPLY], None),
                (["Tell me more about it.", "It is a weekend away.", SECOND, SECOND_REPLY], None),
                ([QUESTION, "I prefer staying in.", "Any budget?", "Not much."], None)],
    "policy": [([], "Here is a plan: a hike on Saturday and a museum on Sunday."),  # answers at once
               ([QUESTION, REPLY], "Then a lakeside hike on Saturday and a museum on Sunday."),
               ([QUESTION, "I prefer staying in.", SECOND, SECOND_REPLY], None)],
}


def _accepted_combinations() -> list[tuple[str, bool, str]]:
    """(train.method, reward.per_turn, simulate.turns) for every combination the recipe accepts for new work."""
    from stargate_lite.errors import StargateError
    from stargate_lite.recipe import load_recipe

    accepted = []
    for method, per_turn, turns in itertools.product(("sft", "dpo", "rloo", "grpo"), (False, True),
                                                     ("uniform", "policy")):
        try:
            load_recipe("tiny", _overrides(method, per_turn, turns))
        except StargateError:
            continue
        accepted.append((method, per_turn, turns))
    return accepted


def _overrides(method: str, per_turn: bool, turns: str) -> list[str]:
    return [f"train.method={method}", f"reward.per_turn={str(per_turn).lower()}", f"simulate.turns={turns}",
            "simulate.conversations_per_pair=3", "simulate.max_turns=2", "respond.max_tokens=8", "train.epochs=1",
            "train.batch_size=4", "train.gradient_accumulation=1", "train.gradient_checkpointing=false",
            *(SOUND_POLICY_GRADIENT if method in POLICY_GRADIENT_METHODS else [])]


def _simulated_store(home, recipe, run_id: str):
    """A store with the data and one pair of an iteration whose conversations are the ones above, marked as
    simulated: the stages after simulation run for real on them."""
    from stargate_lite.runs import open_run
    from stargate_lite.store import Store

    store = Store(home)
    open_run(store, recipe, run_id)
    dataset = recipe.data.dataset
    store.insert_rows("tasks", [{"id": "t0", "dataset": dataset, "split": "A", "idx": 0, "text": TASK}], pk="id")
    store.insert_rows("personas", [{"id": "p0", "dataset": dataset, "split": "A", "idx": 0, "name": "Mei",
                                    "text": "I am Mei. I love hiking and small museums.", "source": "test"}], pk="id")
    store.insert_rows("golds", [{"id": "g0", "dataset": dataset, "task_id": "t0", "persona_id": "p0", "text": GOLD,
                                 "status": "ok", "source": "test"}], pk="id")
    store.start_iteration(run_id, 1, "A")
    pair = f"{run_id}/1/t0|p0"
    store.insert_rows("pairs", [{"id": pair, "run_id": run_id, "iteration": 1, "task_id": "t0", "persona_id": "p0",
                                 "turns": 2, "idx": 0}], pk="id")
    store.save_conversations([
        {"id": f"{pair}#{sample:03d}", "run_id": run_id, "iteration": 1, "pair_id": pair, "sample": sample,
         "turns": len(texts) // 2, "policy": "base", "answer": answer, "roleplayer": "smollm2",
         "messages": [{"role": "questioner" if k % 2 == 0 else "roleplayer", "text": text}
                      for k, text in enumerate(texts)]}
        for sample, (texts, answer) in enumerate(CONVERSATIONS[recipe.simulate.turns])])
    for stage in ("pairs", "simulate"):
        store.mark_stage(run_id, 1, stage)
    return store


@pytest.mark.parametrize(("method", "per_turn", "turns"), _accepted_combinations())
def test_item1_every_accepted_method_credit_and_turns_combination_runs_an_iteration(questioner, home, method,
                                                                                   per_turn, turns):
    """Issue 45, item 1: from simulated conversations (one that answers at once where turns are the policy's), the
    iteration's score, select, respond and train stages run for real and train an adapter, for every combination
    of train.method, reward.per_turn and simulate.turns that the recipe accepts."""
    from stargate_lite import loop
    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.progress import Progress
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import start_session

    recipe = load_recipe("tiny", _overrides(method, per_turn, turns))
    store = _simulated_store(home, recipe, "r")
    with ChatModels(recipe.chat_models, home) as chat:
        loop.run_iteration(store, recipe, "r", 1, questioner, chat, Progress(enabled=False),
                           start_session(store, "r"))
    training = store.training("r", 1)
    assert training is not None and training["steps"] >= 1
    assert store.stage_done("r", 1, "train")


def test_the_accepted_combinations_are_the_expected_twelve():
    """per_turn is refused without a policy gradient; everything else is accepted: 4 + 8 combinations."""
    combinations = _accepted_combinations()
    assert len(combinations) == 12
    assert not [c for c in combinations if c[1] and c[0] not in POLICY_GRADIENT_METHODS]


def test_item1_a_conversation_that_answers_at_once_has_one_reward_to_go_its_conversations_reward():
    """Issue 45, item 1: its one Questioner turn is the answer, and what it leaves to go is the whole reward (the
    first turn of every conversation carries its conversation's reward, up to the pair's constant)."""
    from stargate_lite.store.reward import RewardTerms, rewards_to_go

    row = {"conversation_id": "d", "logprob": -50.0, "answer": "Here is a plan."}
    assert rewards_to_go(row, [], {}, RewardTerms(question_cost=1.0)) == [-50.0]


def _sequences(questioner, questions: list[str]):
    """Each question as the Questioner's one turn after the greeting, then a second turn after an answer: two
    trained turns per sequence, each ending with its end-of-turn marker."""
    from stargate_lite.prompts import questioner_messages

    return [questioner.encode_for_training([*questioner_messages("Mei", TASK, [
        {"role": "questioner", "text": q}, {"role": "roleplayer", "text": REPLY}], final=False),
        {"role": "assistant", "content": SECOND}]) for q in questions]


LONG_QUESTIONS = [
    ("Before I plan anything, could you tell me which parts of a weekend away make you happiest, and which parts "
     "you would rather skip entirely?"),
    ("What kind of places do you usually enjoy visiting on a free weekend, and how far are you willing to travel "
     "from home to reach them?"),
]
POLICY_GRADIENT_CONFIG = {"init": "previous", "lora_dropout": 0.0, "target": "none", "lora_r": 4, "lora_alpha": 8,
                          "learning_rate": 2e-3, "warmup_ratio": 0.0}


def test_item2_behaviour_reference_and_policy_logprobs_share_one_precision(questioner, tmp_path, monkeypatch):
    """Issue 45, item 2: under reduced precision (bf16 autocast, as training runs on a GPU; here on the CPU) the
    first step's importance ratios are exactly 1 and its KL to the base exactly 0, because the sampler's and the
    base's log-probs are computed in the same precision as the policy's (a fresh adapter is the base)."""
    import torch

    from stargate_lite.engines import training

    monkeypatch.setattr(training, "precision", lambda device_type: torch.autocast("cpu", dtype=torch.bfloat16))
    config = TrainConfig(method="rloo", batch_size=4, kl_beta=0.04, **POLICY_GRADIENT_CONFIG)
    advantages = training_method("rloo").group_advantages([-20.0, -26.0])
    samples = list(zip(_sequences(questioner, LONG_QUESTIONS), advantages, strict=True))
    model = attach_lora(questioner.load_base(), config, seed=0)
    record = train_lora(model, samples, config, method=training_method("rloo"), seed=0, out_dir=tmp_path / "adapter",
                        pad_token_id=questioner.tokenizer.pad_token_id, sampling=(TEMPERATURE, TOP_P))
    (first,) = record["policy_steps"]
    assert first["ratio_drift"] == 0 and first["kl"] == 0 and first["clipped"] == 0


def test_item3_clipped_counts_only_the_clips_that_bind(questioner):
    """Issue 45, item 3: a token counts as clipped where the clip changes its surrogate, as TRL counts it: ratio
    above 1 + eps with a positive advantage, or below 1 - eps with a negative one. The other two cases leave
    the unclipped term the smaller, and count nothing."""
    import torch

    from stargate_lite.engines.logits import sampling_logprobs
    from stargate_lite.engines.training import target_logits
    from stargate_lite.methods._policy_gradient import policy_terms

    config = TrainConfig(method="rloo", batch_size=4, kl_beta=0.0, **POLICY_GRADIENT_CONFIG)
    advantages = [1.0, -1.0, -1.0, 1.0]
    sequences = _sequences(questioner, [*LONG_QUESTIONS, "Any budget?", "Who is coming along?"])
    samples = [(e, [a] * len(e.target_positions)) for e, a in zip(sequences, advantages, strict=True)]
    pad = questioner.tokenizer.pad_token_id
    model = attach_lora(questioner.load_base(), config, seed=0)
    decoder = model.get_base_model()
    with torch.no_grad():
        logits, tokens, rows = target_logits(model, decoder, sequences, pad, True)
        now = sampling_logprobs(logits, tokens, TEMPERATURE, TOP_P).split(rows.bincount(minlength=4).tolist())
    # Samples 0 and 1 were less likely to the sampler (ratio e^0.5, above 1.2), 2 and 3 likelier (e^-0.5, below 0.8).
    behaviour = {i: (now[i] - 0.5 if i < 2 else now[i] + 0.5, now[i]) for i in range(4)}
    with torch.no_grad():
        _, terms = policy_terms(model, decoder, samples, [0, 1, 2, 3], behaviour, config, (TEMPERATURE, TOP_P),
                                pad, True)
    binding = len(sequences[0].target_positions) + len(sequences[2].target_positions)
    assert terms[1] == binding


def _kept_targets(example, max_length: int) -> int:
    """Target tokens an example keeps when cut to max_length from the left, each with a token before it."""
    cut = max(0, len(example.input_ids) - max_length)
    return sum(p - cut >= 1 for p in example.target_positions)


@pytest.mark.parametrize("method", ["sft", "dpo", "rloo", "grpo"])
def test_item4_an_example_cut_to_max_length_trains_every_target_it_keeps_in_context(questioner, tmp_path, method):
    """Issue 45, item 4: a cut that lands on a trained token leaves it without context (nothing predicts a first
    token): it is dropped with the cut, every other kept target is trained, and the count says so."""
    first, second = _sequences(questioner, LONG_QUESTIONS)
    max_length = len(first.input_ids) - first.target_positions[0]  # the cut lands on first's first target
    assert max_length >= 32 and len(second.input_ids) > max_length
    options = {"init": "previous", "lora_dropout": 0.0, "target": "none"} if method in POLICY_GRADIENT_METHODS else {}
    config = TrainConfig(method=method, batch_size=2, max_length=max_length, lora_r=4, lora_alpha=8,
                         warmup_ratio=0.0, **options)
    if method == "sft":
        examples = [first, second]
    elif method == "dpo":
        examples = [(first, second)]
    else:
        examples = [(first, 1.0), (second, -1.0)]
    model = attach_lora(questioner.load_base(), config, seed=0)
    record = train_lora(model, examples, config, method=training_method(method), seed=0, out_dir=tmp_path / "adapter",
                        pad_token_id=questioner.tokenizer.pad_token_id, sampling=(TEMPERATURE, TOP_P))
    kept = _kept_targets(first, max_length) + _kept_targets(second, max_length)
    assert kept == len(first.target_positions) - 1 + _kept_targets(second, max_length)
    assert record["trained_tokens"] == kept


class _EchoRoleplayer:
    """The boundary of simulation this test does not look at: an answer per question, at once."""

    def complete_each(self, conversations, sampling):
        return ["I like quiet places." for _ in conversations]


def test_item9_a_turn_cut_at_its_token_limit_is_recorded_and_a_policy_gradient_never_trains_its_end_of_turn(
        questioner, home):
    """Issue 45, item 9: a Questioner turn that stopped at simulate.question_max_tokens (no end-of-turn sampled)
    is recorded as cut, a question and an answer alike; rloo and grpo train its sampled tokens and not the
    end-of-turn marker the chat template appends, while sft keeps the paper's format (every turn ends with it)."""
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.prompts import questioner_messages
    from stargate_lite.recipe import SimulateConfig, load_recipe
    from stargate_lite.stages.simulate import Roleplayers, simulate_chunk

    base = questioner.load_base()
    texts = questioner.generate(base, [questioner_messages("Mei", TASK, [], final=False)] * 2, max_new_tokens=3,
                                temperature=0.9, top_p=0.9, batch_size=2, seed=0)
    assert texts.cut == [True, True]  # three tokens are never a whole turn of this model's
    done = questioner.generate(base, [[{"role": "user", "content": "Reply with the single word: yes"}]],
                               max_new_tokens=40, temperature=0.0, top_p=1.0, batch_size=1, seed=0)
    assert done.cut == [False]

    pair = {"id": "p", "task": TASK, "persona": "I'm Mei.", "persona_name": "Mei", "turns": 2}
    config = SimulateConfig(turns="policy", max_turns=2, conversations_per_pair=4, question_max_tokens=4)
    roleplayer = _EchoRoleplayer()
    convs = simulate_chunk([pair], base, questioner, Roleplayers({"echo": 1.0}, lambda _: roleplayer, 0), config, 0)
    asked = [m for c in convs for m in c["messages"] if m["role"] == "questioner"]
    assert [m["cut"] for m in asked] == [1] * len(asked)
    assert all(c["answer_cut"] == 1 for c in convs if c["answer"] is not None)

    recipe = load_recipe("tiny", _overrides("rloo", False, "policy"))
    store = _simulated_store(home, recipe, "r")
    store.db.execute("update turns set cut = 1 where idx = 0 and role = 'questioner'")  # every first question
    store.db.execute("update conversations set answer_cut = 1 where answer is not null")
    store.insert_rows("scores", [{"conversation_id": c["id"], "run_id": "r", "iteration": 1, "logprob": -50.0 - k,
                                  "n_tokens": 20} for k, c in enumerate(store.conversations("r", 1))],
                      pk="conversation_id")
    end_of_turn = questioner.tokenizer.eos_token
    for messages, _ in training_method("rloo").samples(store, recipe, "r", 1):
        encoded = questioner.encode_for_training(messages)
        trained = questioner.tokenizer.decode([encoded.input_ids[p] for p in encoded.target_positions])
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        assert trained.count(end_of_turn) == assistant.count(SECOND), trained  # every turn is cut but a second
        assert all(text in trained for text in assistant)
    store.insert_rows("selections", [{"pair_id": "r/1/t0|p0", "run_id": "r", "iteration": 1,
                                      "conversation_id": "r/1/t0|p0#002", "logprob": -52.0}], pk="pair_id")
    sft = load_recipe("tiny", _overrides("sft", False, "policy") + ["train.target=none"])
    (example,) = training_examples(store, sft, "r", 1)
    encoded = questioner.encode_for_training(example)
    trained = questioner.tokenizer.decode([encoded.input_ids[p] for p in encoded.target_positions])
    assert trained.count(end_of_turn) == 2  # sft: each of the kept conversation's two questions ends with it


def test_item10_a_batch_whose_only_targets_are_at_position_0_scores_to_nothing(base_model):
    """Issue 45, item 10 (hardening: no encoding the stages make has it): an item with no target after position 0
    (nothing before it to predict it) has no log-probs, and a batch of only such items scores without error."""
    from stargate_lite.engines.encoded import Encoded
    from stargate_lite.stages.score import token_logprobs

    scored = token_logprobs(base_model, [Encoded([5, 6, 7], [0]), Encoded([8, 9], [0])], batch_size=2,
                            vocab_chunk_tokens=512)
    assert [len(s) for s in scored] == [0, 0]


def test_item10_turns_of_a_conversation_named_twice_come_once(home):
    """Issue 45, item 10 (hardening: no caller passes an id twice today): Store.turns reads ids in chunks of the
    SQLite variable limit, and an id named in two chunks got its turns twice."""
    from stargate_lite.store import VARIABLES_PER_QUERY, Store

    store = Store(home)
    store.save_conversations([{"id": "c", "run_id": "r", "iteration": 1, "pair_id": "p", "sample": 0, "turns": 1,
                               "policy": "base", "answer": None, "roleplayer": "x",
                               "messages": [{"role": "questioner", "text": QUESTION},
                                            {"role": "roleplayer", "text": REPLY}]}])
    ids = ["c", *(f"missing-{i}" for i in range(VARIABLES_PER_QUERY)), "c"]
    assert [t["text"] for t in store.turns(ids)["c"]] == [QUESTION, REPLY]
