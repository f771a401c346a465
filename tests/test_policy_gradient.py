"""train.method rloo and grpo on the tiny model: group advantages, the sampler's log-probs, the loss against a
direct computation, its gradient against finite differences, the first step's ratio of 1, and what one step
does to the conversations it was given."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import cli, copy_home, run_args
from pinned import assert_pinned

from stargate_lite.engines.training import train_lora
from stargate_lite.methods._policy_gradient import policy_terms
from stargate_lite.recipe import TrainConfig
from stargate_lite.training_methods import training_method

TEMPERATURE, TOP_P = 0.9, 0.9  # the recipe's simulate.temperature and top_p
RLOO = ["train.method=rloo", "train.init=previous", "train.lora_dropout=0", "train.target=none",
        "simulate.conversations_per_pair=3"]


def _samples(questioner, advantages: list[float]) -> list:
    """Conversations of one pair with the given advantages (one per target token, as train_lora passes them on),
    each asking something else."""
    from stargate_lite.prompts import questioner_messages

    questions = ["Which city are you in?", "Do you have a budget in mind?", "What did you enjoy last time?",
                 "How many people are coming?"]
    encoded = [questioner.encode_for_training(questioner_messages(
        "Mei", "Plan a weekend trip for me.",
        [{"role": "questioner", "text": q}, {"role": "roleplayer", "text": "Lisbon, I think."}], final=False))
        for q in questions[: len(advantages)]]
    return [(e, [a] * len(e.target_positions)) for e, a in zip(encoded, advantages, strict=True)]


def test_group_advantages_are_leave_one_out_or_normalised_within_the_group():
    rewards = [-10.0, -12.0, -11.0, -7.0]
    rloo = training_method("rloo").group_advantages(rewards)
    for i, r in enumerate(rewards):
        others = [x for j, x in enumerate(rewards) if j != i]
        assert rloo[i] == pytest.approx(r - sum(others) / len(others), abs=1e-12)
    grpo = training_method("grpo").group_advantages(rewards)
    mean = sum(rewards) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 3)
    assert grpo == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards], abs=1e-12)
    assert training_method("rloo").group_advantages([-3.0, -3.0, -3.0]) == [0.0, 0.0, 0.0]
    assert training_method("grpo").group_advantages([-3.0, -3.0]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="at least two"):
        training_method("rloo").group_advantages([-1.0])


def test_the_sampling_logprob_is_the_log_of_what_the_decoder_draws_from():
    """The decoder's own nucleus (decode.py) at temperature 0.9, top-p 0.9 on random logits: inside it, the
    log-prob is that of the renormalised probabilities the decoder passes to multinomial; outside it, the token
    is counted in and its log-prob stays finite."""
    import torch

    from stargate_lite.engines.logits import in_nucleus, sampling_logprobs

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 1.5
    probs = torch.softmax(logits / TEMPERATURE, dim=-1)
    drawn = probs.masked_fill(~in_nucleus(probs, TOP_P), 0.0)
    drawn = drawn / drawn.sum(-1, keepdim=True)
    kept = (drawn > 0).sum(-1)
    assert bool(((kept > 1) & (kept < 50)).all())  # the nucleus cuts something from every row
    rows = torch.arange(6)
    tokens = torch.stack([drawn[r].nonzero().squeeze(1)[-1] for r in rows])  # each row's least likely kept token
    got = sampling_logprobs(logits, tokens, TEMPERATURE, TOP_P)
    assert torch.allclose(got, drawn[rows, tokens].log(), atol=1e-5)
    outside = torch.stack([(drawn[r] == 0).nonzero().squeeze(1)[0] for r in rows])
    forced = sampling_logprobs(logits, outside, TEMPERATURE, TOP_P)
    assert bool(torch.isfinite(forced).all()) and bool((forced < got).all())
    plain = sampling_logprobs(logits, tokens, 1.0, 1.0)
    assert torch.allclose(plain, torch.log_softmax(logits, -1)[rows, tokens], atol=1e-5)


def _moved_policy(questioner, config: TrainConfig, dtype=None):
    """A policy with a LoRA adapter that is not the base (its B matrices drawn at random, not zero)."""
    import torch

    from stargate_lite.engines.training import attach_lora

    model = attach_lora(questioner.load_base(), config, seed=0)
    if dtype is not None:
        model = model.to(dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.02)
    return model


def _direct_loss(model, samples, batch, behaviour, config) -> float:
    """The loss written out token by token from the model's own full forward, in float64."""
    import torch

    total = 0.0
    for i in batch:
        encoded, advantages = samples[i]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0].double()
        old, ref = behaviour[i]
        for k, position in enumerate(encoded.target_positions):
            z = logits[position - 1] / TEMPERATURE
            p = torch.softmax(z, -1)
            order = p.argsort(descending=True)
            before = 0.0
            keep = []
            for token in order.tolist():
                if before <= TOP_P:
                    keep.append(token)
                before += float(p[token])
            token = encoded.input_ids[position]
            if token not in keep:
                keep.append(token)
            new = float(z[token] - torch.logsumexp(z[keep], -1))
            ratio = math.exp(new - float(old[k]))
            clipped = min(max(ratio, 1 - config.clip_epsilon), 1 + config.clip_epsilon)
            surrogate = min(ratio * advantages[k], clipped * advantages[k])
            gap = float(ref[k]) - new
            total -= surrogate - config.kl_beta * (math.exp(gap) - gap - 1)
    return total


def test_the_loss_equals_a_direct_computation_with_ratios_away_from_one(questioner):
    """Behaviour log-probs from the base (adapter off), the loss at a moved adapter: ratios away from 1, some of
    them clipped, each token's term as written in policy_terms' docstring."""
    import torch

    from stargate_lite.engines.training import precision
    from stargate_lite.methods._policy_gradient import behaviour_logprobs

    config = TrainConfig(method="rloo", init="previous", lora_dropout=0.0, target="none", lora_r=4, lora_alpha=8,
                         kl_beta=0.5, clip_epsilon=0.05)
    samples = _samples(questioner, [1.5, -0.5, -1.0, 0.25])
    samples[3] = (samples[3][0], [0.1 * k - 0.5 for k in range(len(samples[3][1]))])  # per token (reward.per_turn)
    model = _moved_policy(questioner, config)
    decoder = model.get_base_model()
    pad = questioner.tokenizer.pad_token_id
    with model.disable_adapter():  # an old policy that is not the current one
        behaviour = behaviour_logprobs(model, decoder, samples, [[0, 1], [2, 3]], config, (TEMPERATURE, TOP_P),
                                       pad, True, precision("cpu"))
    behaviour = {i: (old, old + 0.3) for i, (old, _) in behaviour.items()}  # a reference apart from both
    batch = [0, 1, 2, 3]
    with torch.no_grad():
        loss, (drift, clipped, kl) = policy_terms(model, decoder, samples, batch, behaviour, config,
                                                  (TEMPERATURE, TOP_P), pad, True)
    tokens = sum(len(samples[i][0].target_positions) for i in batch)
    assert drift / tokens > 0.01 and 0 < clipped < tokens and kl > 0
    assert float(loss) == pytest.approx(_direct_loss(model, samples, batch, behaviour, config), rel=1e-4)


def test_the_losss_gradient_matches_finite_differences(questioner, monkeypatch):
    """In float64, the gradient of the loss in a few LoRA weights against central differences of the loss.
    Llama's RMSNorm computes in float32 whatever its input; here it keeps float64, or the differences would be
    float32's rounding."""
    import torch
    from transformers.models.llama import modeling_llama

    from stargate_lite.engines.training import precision
    from stargate_lite.methods._policy_gradient import behaviour_logprobs

    def rms_norm_in_the_inputs_precision(self, hidden):
        return self.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_in_the_inputs_precision)
    config = TrainConfig(method="grpo", init="previous", lora_dropout=0.0, target="none", lora_r=4, lora_alpha=8,
                         kl_beta=0.3, clip_epsilon=0.2)
    samples = _samples(questioner, [1.0, -1.0, 0.5])
    model = _moved_policy(questioner, config, dtype=torch.float64)
    decoder = model.get_base_model()
    pad = questioner.tokenizer.pad_token_id
    with model.disable_adapter():
        behaviour = behaviour_logprobs(model, decoder, samples, [[0, 1, 2]], config, (TEMPERATURE, TOP_P), pad,
                                       True, precision("cpu"))
    behaviour = {i: (old, old - 0.02) for i, (old, _) in behaviour.items()}

    def loss() -> torch.Tensor:
        return policy_terms(model, decoder, samples, [0, 1, 2], behaviour, config, (TEMPERATURE, TOP_P), pad,
                            True)[0]

    model.train()
    loss().backward()
    checked = [(name, p) for name, p in model.named_parameters() if p.requires_grad][:: 40][:4]
    assert checked
    for name, parameter in checked:
        flat = parameter.data.view(-1)
        index = int(parameter.grad.abs().view(-1).argmax())
        step = 1e-5
        with torch.no_grad():
            flat[index] += step
            up = float(loss())
            flat[index] -= 2 * step
            down = float(loss())
            flat[index] += step
        numeric = (up - down) / (2 * step)
        assert float(parameter.grad.view(-1)[index]) == pytest.approx(numeric, rel=1e-5), name


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_one_step_starts_at_ratio_one_and_favours_the_better_conversations(questioner, tmp_path, method):
    """One optimizer step from the sampler's own weights: its ratios are all 1, nothing clipped, no KL yet; after
    it, the positive-advantage conversations' log-probs rose relative to the negative ones'."""
    import torch

    from stargate_lite.engines.training import attach_lora, sequence_logprobs

    config = TrainConfig(method=method, init="previous", lora_dropout=0.0, target="none", lora_r=4, lora_alpha=8,
                         learning_rate=2e-3, batch_size=4, warmup_ratio=0.0)
    rewards = [-20.0, -26.0, -23.0, -21.0]
    advantages = training_method(method).group_advantages(rewards)
    samples = [(e, a[0]) for e, a in _samples(questioner, advantages)]  # one advantage a sequence, as sft's loop
    pad = questioner.tokenizer.pad_token_id
    model = attach_lora(questioner.load_base(), config, seed=0)
    sequences = [e for e, _ in samples]

    def logprobs() -> torch.Tensor:
        with torch.no_grad():
            return sequence_logprobs(model, model.get_base_model(), sequences, pad, True)

    before = logprobs()
    record = train_lora(model, samples, config, method=training_method(method), seed=0,
                        out_dir=tmp_path / "adapter", pad_token_id=pad, sampling=(TEMPERATURE, TOP_P))
    assert record["steps"] == 1 and record["method"] == method
    (first,) = record["policy_steps"]
    assert first["ratio_drift"] < 1e-6 and first["clipped"] == 0 and abs(first["kl"]) < 1e-6
    moved = logprobs() - before
    better = [moved[i] for i, a in enumerate(advantages) if a > 0]
    worse = [moved[i] for i, a in enumerate(advantages) if a < 0]
    assert better and worse
    assert min(better) > max(worse), (moved.tolist(), advantages)


def test_each_turn_gets_its_reward_to_go_against_the_pairs_other_conversations_at_that_turn():
    """Three conversations of one pair, gold log-probs after each turn given: reward-to-go per turn (question
    cost 1, one turn without a question mark), and the last conversation's answer with its 0."""
    from stargate_lite.store.reward import RewardTerms, rewards_to_go

    def turns(*asked: bool) -> list[dict]:
        return [t for a in asked for t in ({"role": "questioner", "text": "Why?" if a else "Fine."},
                                           {"role": "roleplayer", "text": "Because."})]

    rows = [({"conversation_id": "a", "logprob": -10.0, "answer": None}, turns(True, True, True), {1: -30.0, 2: -20.0}),
            ({"conversation_id": "b", "logprob": -16.0, "answer": None}, turns(True, False, True), {1: -25.0, 2: -15.0}),
            ({"conversation_id": "c", "logprob": -40.0, "answer": "Here is a plan."}, turns(True), {})]
    to_go = [rewards_to_go(row, t, after, RewardTerms(question_cost=1.0)) for row, t, after in rows]
    assert to_go[0] == [-10.0 - 3, -10.0 + 30 - 2, -10.0 + 20 - 1]
    assert to_go[1] == [-16.0 - 2, -16.0 + 25 - 1, -16.0 + 15 - 1]
    assert to_go[2] == [-40.0 - 1, 0.0]  # its answer ends it: nothing to go
    with pytest.raises(Exception, match="no per-turn scores"):
        rewards_to_go(rows[0][0], rows[0][1], {}, RewardTerms(question_cost=1.0))


def test_a_fact_credit_goes_to_the_turn_whose_reply_told_the_fact_and_to_the_turns_before_it():
    """reward.fact_credit under reward.per_turn: a turn's reward-to-go holds the credit of the facts first told
    from its reply on (a fact told again later counts once, where it was first told), so the to-go of the first
    turn holds the whole conversation's credit, as its reward does."""
    from stargate_lite.store.reward import RewardTerms, rewards_to_go

    turns = [{"role": "questioner", "text": "Who?"}, {"role": "roleplayer", "text": "A.", "facts": [1]},
             {"role": "questioner", "text": "What?"}, {"role": "roleplayer", "text": "B.", "facts": [1, 3]},
             {"role": "questioner", "text": "Fine."}, {"role": "roleplayer", "text": "Nothing.", "facts": []}]
    row = {"conversation_id": "a", "logprob": -10.0, "answer": None}
    to_go = rewards_to_go(row, turns, {1: -30.0, 2: -20.0}, RewardTerms(question_cost=1.0, fact_credit=4.0))
    assert to_go == [-10.0 - 2 + 2 * 4.0, -10.0 + 30 - 1 + 4.0, -10.0 + 20 - 0]


def test_a_turns_advantage_covers_exactly_that_turns_tokens(questioner):
    from stargate_lite.methods._policy_gradient import token_advantages
    from stargate_lite.prompts import questioner_messages

    messages = questioner_messages("Mei", "Plan a trip.", [
        {"role": "questioner", "text": "Where to?"}, {"role": "roleplayer", "text": "Lisbon."},
        {"role": "questioner", "text": ""}, {"role": "roleplayer", "text": "Hello?"}], final=False)
    encoded = questioner.encode_for_training([*messages, {"role": "assistant", "content": "A plan."}])
    per_token = token_advantages(encoded, [1.0, 2.0, 3.0])
    assert len(per_token) == len(encoded.target_positions)
    for value, turn in ((1.0, "Where to?"), (2.0, ""), (3.0, "A plan.")):
        ids = [encoded.input_ids[p] for p, a in zip(encoded.target_positions, per_token, strict=True) if a == value]
        assert questioner.tokenizer.decode(ids).startswith(turn) and ids  # the turn's text and its end-of-turn
    with pytest.raises(Exception, match="3 Questioner turns"):
        token_advantages(encoded, [1.0, 2.0])


def test_policy_gradient_methods_refuse_what_breaks_their_ratio():
    from stargate_lite.errors import StargateError
    from stargate_lite.recipe import check_new_work, load_recipe

    recipe = load_recipe("tiny")
    sound = {"method": "rloo", "init": "previous", "lora_dropout": 0.0, "target": "none"}
    check_new_work(recipe.model_copy(update={"train": recipe.train.model_copy(update=sound)}), "r")
    for key, value, says in (("init", "base", "train.init previous"), ("lora_dropout", 0.05, "lora_dropout 0"),
                             ("target", "response", "train.target none"), ("backend", "unsloth", "peft")):
        train = recipe.train.model_copy(update={**sound, key: value})
        with pytest.raises(StargateError, match=says):
            check_new_work(recipe.model_copy(update={"train": train}), "r")
    for key, value, says in (("conversations_per_pair", 1, "at least 2"), ("temperature", 0.0, "above 0")):
        recipe_with = recipe.model_copy(update={"train": recipe.train.model_copy(update=sound),
                                                "simulate": recipe.simulate.model_copy(update={key: value})})
        with pytest.raises(StargateError, match=says):
            check_new_work(recipe_with, "r")
    per_turn = recipe.model_copy(update={"reward": recipe.reward.model_copy(update={"per_turn": True})})
    with pytest.raises(StargateError, match="per_turn credits the turns of a policy gradient"):
        check_new_work(per_turn, "r")
    with pytest.raises(ValueError, match="temperature and top-p"):
        train_lora(None, [1], TrainConfig(**sound), method=training_method("rloo"), seed=0, out_dir=None,
                   pad_token_id=0)


@pytest.fixture(scope="module")
def rloo_run(data_home, tmp_path_factory) -> Path:
    home = copy_home(data_home, tmp_path_factory.mktemp("rloo") / "home")
    cli(*run_args(*RLOO), home=home)
    return home


def _trained(home: Path) -> dict:
    with sqlite3.connect(home / "stargate.db") as db:
        trainings = db.execute("select iteration, method, examples, losses, policy_steps from trainings "
                               "order by iteration").fetchall()
    adapters = [hashlib.sha256((home / "runs" / "tiny" / f"iteration-{i}" / "adapter" /
                                "adapter_model.safetensors").read_bytes()).hexdigest() for i in (1, 2)]
    return {"trainings": trainings, "adapters": adapters}


def test_an_rloo_run_gives_the_pinned_records(rloo_run):
    """Its samples, advantages' effect (the losses) and records, token for token as pinned (tests/pinned.py)."""
    assert_pinned(rloo_run, "rloo")


def test_a_run_learns_from_every_conversation_and_each_iteration_starts_on_policy(rloo_run):
    """Two iterations: every conversation of a pair whose rewards differ is a sample, and each iteration's first
    step sees ratios of exactly 1, iteration 2's from iteration 1's adapter, which sampled its conversations
    (and is not the base: a KL above 0)."""
    with sqlite3.connect(rloo_run / "stargate.db") as db:
        samples = dict(db.execute(
            "select c.iteration, count(*) from conversations c join scores s on s.conversation_id = c.id where "
            "c.pair_id in (select c2.pair_id from conversations c2 join scores s2 on s2.conversation_id = c2.id "
            "group by c2.pair_id having count(distinct s2.logprob) > 1) group by c.iteration").fetchall())
    trainings = _trained(rloo_run)["trainings"]
    assert [(i, method) for i, method, *_ in trainings] == [(1, "rloo"), (2, "rloo")]
    for iteration, _, examples, losses, steps in trainings:
        steps = json.loads(steps)
        assert examples == samples[iteration] and examples % 3 == 0  # whole pairs, three conversations each
        assert len(steps) == len(json.loads(losses)) > 1
        assert steps[0]["ratio_drift"] == 0 and steps[0]["clipped"] == 0
        assert steps[-1]["ratio_drift"] > 0  # later steps weigh samples of a policy that has moved
    assert json.loads(trainings[0][4])[0]["kl"] == 0 and json.loads(trainings[1][4])[0]["kl"] > 0


def test_an_rloo_run_killed_in_training_resumes_to_the_uninterrupted_adapter(rloo_run, tmp_path):
    """SIGKILL after iteration 2's first optimizer step: the rerun trains again from iteration 1's adapter and
    ends with the uninterrupted run's adapter, losses and steps. (A kill with the adapter written but not recorded
    is the same for every method: test_loop makes it.)"""
    home = copy_home(rloo_run, tmp_path / "rloo")
    shutil.rmtree(home / "runs" / "tiny" / "iteration-2" / "adapter")
    with sqlite3.connect(home / "stargate.db") as db:
        db.execute("delete from trainings where iteration = 2")
        db.execute("delete from stages where stage = 'train' and iteration = 2")
        db.execute("update iterations set finished_at = null where iteration = 2")
    stopped = cli(*run_args(*RLOO), home=home, check=False, stop_at="train/2")
    assert stopped.returncode == -signal.SIGKILL, f"the run never reached train/2: {stopped.stderr[-2000:]}"
    cli(*run_args(*RLOO), home=home)
    assert _trained(home) == _trained(rloo_run)


def test_grpo_with_per_turn_credit_runs_and_scores_the_gold_after_each_turn(data_home, tmp_path, questioner):
    """One iteration of grpo with reward.per_turn on the tiny recipe (up to 3 turns): the gold scored after each
    turn but the last, as scoring that prefix directly gives; each turn's advantage over its tokens, the first
    turn's equal to its conversation's (what comes before turn 1 is the pair's, and cancels); on policy at the
    first step."""
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.stages.score import encode_gold, score_sums
    from stargate_lite.store import Store

    home = copy_home(data_home, tmp_path / "grpo")
    per_turn = ["train.method=grpo", "reward.per_turn=true", "simulate.max_turns=3", *RLOO[1:]]
    cli(*run_args(*per_turn, iterations=1), home=home)
    store = Store(home)
    recipe = recipe_of_run(pick_run(store, None))
    after = store.turn_scores("tiny", 1)
    conversations = {c["id"]: c for c in store.conversations("tiny", 1)}
    turns = store.turns(list(conversations))
    assert sum(len(v) for v in after.values()) == sum(len(t) // 2 - 1 for t in turns.values()) > 0
    pairs = {p["id"]: p for p in store.pairs("tiny", 1)}
    some = [(c, k) for c, ks in after.items() for k in ks][:4]
    direct = score_sums(questioner.load_base(), [encode_gold(
        questioner, pairs[conversations[c]["pair_id"]]["persona_name"], pairs[conversations[c]["pair_id"]]["task"],
        turns[c][: 2 * k], pairs[conversations[c]["pair_id"]]["gold"]) for c, k in some], batch_size=4,
        vocab_chunk_tokens=512)
    assert [after[c][k] for c, k in some] == pytest.approx([lp for lp, _ in direct], abs=1e-3)

    grpo = training_method("grpo")
    samples = grpo.samples(store, recipe, "tiny", 1)
    whole = grpo.samples(store, recipe.model_copy(update={"reward": recipe.reward.model_copy(
        update={"per_turn": False})}), "tiny", 1)
    by_turns = [a for _, a in samples]
    assert len(samples) >= len(whole) and any(len(set(a)) > 1 for a in by_turns)  # turns credited apart
    first = {tuple(m["content"] for m in messages): a[0] for messages, a in samples}
    assert whole
    for messages, advantages in whole:
        assert advantages[0] == pytest.approx(first[tuple(m["content"] for m in messages)], abs=1e-9)
    ((method, steps),) = sqlite3.connect(home / "stargate.db").execute(
        "select method, policy_steps from trainings").fetchall()
    assert method == "grpo" and json.loads(steps)[0]["ratio_drift"] == 0
