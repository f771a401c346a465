"""The environment driven by TRL's GRPOTrainer (stargate_lite/environment/trl.py) on the tiny models: SmolLM2-135M
with LoRA trained for two steps on CPU through the rollout function, the user's turns masked from the loss, each
turn sampled from the ids the trainer scores, and each episode's reward the one the project's score stage gives
its conversation."""

from __future__ import annotations

import pytest
from conftest import TINY_CI_OVERRIDES
from scored_elsewhere import score_stage_rewards

from stargate_lite import StargateError, UserEnvironment
from stargate_lite.progress import Progress
from stargate_lite.recipe import load_recipe
from stargate_lite.store import Store

QUIET = Progress(enabled=False)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


def _trainer(env, rollouts, output_dir, rollout_func=None):
    """A GRPOTrainer of SmolLM2-135M (the recipe's Questioner) with LoRA, driven by `rollouts` (or `rollout_func`
    that calls them): two steps of four episodes, two per pair."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    args = GRPOConfig(output_dir=str(output_dir), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                      num_generations=2, max_steps=2, learning_rate=5e-3, beta=0.0, logging_steps=1,
                      report_to="none", save_strategy="no", seed=0, temperature=env.recipe.simulate.temperature,
                      top_p=env.recipe.simulate.top_p, reward_weights=rollouts.reward_weights)
    return GRPOTrainer(AutoModelForCausalLM.from_pretrained(env.questioner.source),
                       reward_funcs=rollouts.reward_funcs, args=args, train_dataset=rollouts.dataset(),
                       processing_class=env.questioner.tokenizer, rollout_func=rollout_func or rollouts,
                       peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                              task_type="CAUSAL_LM"))


def _runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values in a mask."""
    runs, start = [], 0
    for k in range(1, len(mask) + 1):
        if k == len(mask) or mask[k] != mask[start]:
            runs.append((mask[start], start, k))
            start = k
    return runs


def test_grpo_trains_smollm2_through_the_environment_on_its_reward_with_the_users_turns_masked(with_data, tmp_path,
                                                                                             monkeypatch):
    """Two GRPO steps of two episodes per pair, each asking to its pair's turn limit (uniform turns: under policy
    turns, two episodes that answer at once have the same conversation, none, and the same reward, so a group can
    have no advantage to follow). What the trainer trains on is the Questioner's turns as sampled (env_mask 1: they
    decode to the episode's questions, and their log-probs are the policy's at the trainer's temperature given the
    ids before them), what it does not is the template and the user's replies (env_mask 0: each reply in its turn);
    each episode's reward is the score stage's on the same conversation, to 1e-4; the trainer logs that reward's
    mean and the metrics at weight 0; the LoRA weights move; and every episode is recorded under the environment's
    namespace."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    from stargate_lite.environment.trl import GRPORollouts
    from stargate_lite.prompts import questioner_messages

    # Questions of up to 24 tokens: some turns stop on their end-of-turn marker, some are cut at the limit.
    recipe = load_recipe("tiny", [*TINY_CI_OVERRIDES, "simulate.question_max_tokens=24"])
    played = []
    with UserEnvironment(recipe, with_data, record=True, progress=QUIET) as env:
        rollouts = GRPORollouts(env)

        def rollout(prompts, trainer):  # the rollouts as the trainer calls them, each call's result kept
            out = rollouts(prompts, trainer)
            played.append((out, rollouts.episodes))
            return out

        trainer = _trainer(env, rollouts, tmp_path / "grpo", rollout)
        lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_B" in name}
        trainer.train()
        moved = [name for name, p in trainer.model.named_parameters() if "lora_B" in name
                 and not torch.equal(p.detach(), lora[name])]
        assert moved, "no LoRA weight changed in two GRPO steps"

        tokenizer = env.questioner.tokenizer
        stopped = cut = 0
        assert len(played) == 2 and all(len(out["completion_ids"]) == 4 for out, _ in played)
        for out, episodes in played:
            for k, episode in enumerate(episodes):
                assert out["prompt_ids"][k] == tokenizer(env.questioner.render(env.opening(env.pairs.index(
                    episode.pair)), add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                ids, mask = out["completion_ids"][k], out["env_mask"][k]
                runs = _runs(mask)
                asked = [tokenizer.decode(ids[a:b], skip_special_tokens=True).strip() for v, a, b in runs if v]
                between = [tokenizer.decode(ids[a:b]) for v, a, b in runs if not v]
                turns = episode.messages
                final = [episode.answer] if episode.answer is not None else []
                assert asked == [m["text"] for m in turns if m["role"] == "questioner"] + final
                replies = [m["text"] for m in turns if m["role"] == "roleplayer"]
                assert len(between) == len(replies) == episode.turns
                assert final or episode.turns == episode.pair["turns"]
                assert all(reply in gap for reply, gap in zip(replies, between, strict=True)), (replies, between)
                assert len(out["logprobs"][k]) == len(ids)
                # The whole sequence is the conversation as the Questioner's template renders it, marker for
                # marker, whether a turn stopped on its end-of-turn or was cut (whitespace aside: a stored turn
                # is its sampled text stripped, and a turn may be sampled with a newline before its marker).
                whole = tokenizer.decode(out["prompt_ids"][k] + ids)
                rendered = env.questioner.render(questioner_messages(
                    episode.pair["persona_name"], episode.pair["task"], turns, final=False, decide=env.decide))
                assert "".join(whole.split()) == "".join(rendered.split()), (whole, rendered)
                stopped += sum(m.get("cut") == 0 for m in turns if m["role"] == "questioner")
                cut += sum(m.get("cut") == 1 for m in turns if m["role"] == "questioner")

        assert stopped and cut, (stopped, cut)  # both ends of a turn were met

        # The first call's turns were sampled from the policy before any step: their log-probs are its log-probs given
        # the ids before them (at the trainer's temperature), so the trainer scores what was sampled.
        out, _ = played[0]
        model = trainer.model
        with torch.no_grad(), model.disable_adapter():  # LoRA starts as the identity: the policy before any step
            for k in range(4):
                ids = out["prompt_ids"][k] + out["completion_ids"][k]
                logits = model(torch.tensor([ids])).logits[0, len(out["prompt_ids"][k]) - 1: -1].float()
                logps = torch.log_softmax(logits / recipe.simulate.temperature, -1)
                logps = logps.gather(-1, torch.tensor(out["completion_ids"][k]).unsqueeze(-1)).squeeze(-1)
                model_turns = [i for i, v in enumerate(out["env_mask"][k]) if v]
                assert logps[model_turns].tolist() == pytest.approx([out["logprobs"][k][i] for i in model_turns],
                                                                    abs=2e-3)

        # The reward the trainer got, beside the score stage's on the same conversations.
        episodes = [e for _, call in played for e in call]
        given = [r for out, _ in played for r in out["stargate_reward"]]
        assert given == pytest.approx(score_stage_rewards(env, [e.id for e in episodes]), abs=1e-4)
        assert {c["id"] for c in Store(with_data).conversations("tiny#env:A", 0)} == {e.id for e in episodes}

    logged = [entry for entry in trainer.state.log_history if "rewards/stargate_reward/mean" in entry]
    assert [entry["rewards/stargate_reward/mean"] for entry in logged] == pytest.approx(
        [sum(out["stargate_reward"]) / 4 for out, _ in played], abs=1e-4)
    assert all("rewards/questions_asked/mean" in e and "rewards/facts_elicited_actively/mean" in e for e in logged)
    assert [entry["reward"] for entry in logged] == pytest.approx(
        [entry["rewards/stargate_reward/mean"] for entry in logged], abs=1e-4)  # the metrics weigh nothing


def test_a_prompt_of_no_pair_or_a_weighted_metric_is_refused_in_one_line(with_data, tmp_path, monkeypatch):
    """A trainer given another dataset, or the metrics weighted into the reward, is told so before any episode is
    played; pairs that open alike cannot be told apart by their prompt and are refused when the rollouts are made."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    from stargate_lite.environment.trl import GRPORollouts

    recipe = load_recipe("tiny", TINY_CI_OVERRIDES)
    with UserEnvironment(recipe, with_data, record=True, progress=QUIET) as env:
        rollouts = GRPORollouts(env)
        trainer = _trainer(env, rollouts, tmp_path / "grpo")
        with pytest.raises(StargateError, match="opens none of split A's pairs") as stranger:
            rollouts([[{"role": "user", "content": "Plan my week."}]], trainer)
        _one_line(stranger)
        weighted = _trainer(env, rollouts, tmp_path / "weighted")
        weighted.reward_weights = torch.ones(3)
        with pytest.raises(StargateError, match="the metric questions_asked is weighted") as metric:
            rollouts([env.opening(0)], weighted)
        _one_line(metric)
        env.pairs = [env.pairs[0], {**env.pairs[0], "id": "tiny#env:A/twin"}]
        with pytest.raises(StargateError, match="open alike") as twins:
            GRPORollouts(env)
        _one_line(twins)
    assert Store(with_data).conversations("tiny#env:A", 0) == []


def test_without_trl_the_rollouts_name_the_install_command(monkeypatch):
    """A missing TRL (its distribution not found) or an older one than the rollout function needs: one line that
    says what to install."""
    from importlib.metadata import PackageNotFoundError

    import stargate_lite.environment.trl as adapter

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(adapter, "version", missing)
    with pytest.raises(StargateError, match=r"TRL is not installed: pip install 'stargate-lite\[trl\]'") as absent:
        adapter.require_trl()
    _one_line(absent)
    monkeypatch.setattr(adapter, "version", lambda name: "0.19.1")
    with pytest.raises(StargateError, match=r"TRL 0.19.1 is older than 1.16") as old:
        adapter.require_trl()
    _one_line(old)
    monkeypatch.undo()
    assert adapter.require_trl() >= "1.16"
