"""The environment as TRL's GRPOTrainer drives a multi-turn task: a rollout function (GRPOTrainer's
`rollout_func`) that plays each prompt's episode with the policy being trained, and reward functions that hand
the trainer the environment's reward and, at weight 0, its figures.

A rollout function rather than TRL's `environment_factory`, because the factory has the policy call the
environment's methods as tools: that needs a chat template that renders tool calls (SmolLM2's does not) and would
make each question a tool call, which is not how a STaR-GATE Questioner talks to its user.

The completion handed to the trainer is the whole conversation after the opening prompt, in the policy's tokens:
each Questioner turn as it was sampled (env_mask 1, trained), and between turns the chat template's text that
closes the turn and the user's reply (env_mask 0, never trained). Each turn is sampled from exactly the ids that
come before it in that completion, so the log-probs the trainer recomputes are those of what was sampled. The
sampling temperature and top-p are the trainer's (GRPOConfig temperature and top_p; TRL reckons its log-probs at
that temperature), with no top-k, min-p or repetition penalty unless GRPOConfig sets them, as the simulate stage
samples: set them to the recipe's simulate.temperature and simulate.top_p to play as the simulate stage plays.
A question's token limit is the recipe's simulate.question_max_tokens; GRPOConfig's max_completion_length does not
bound a rollout, the pair's turn limit does. The reward is the episode's (UserEnvironment.step): the base model's
log-prob of the gold given the conversation, less reward.question_cost per question, sequence-level (TRL's GRPO
has no per-turn reward).
"""

from __future__ import annotations

import json
import random
from importlib.metadata import PackageNotFoundError, version

from ..engines.encoded import PLAIN_SAMPLING
from ..errors import StargateError
from ..prompts import questioner_messages
from .user import Episode, UserEnvironment

TRL_INSTALL = "pip install 'stargate-lite[trl]' (or bash install.sh --test)"
OLDEST_TRL = (1, 16)  # the rollout_func contract this module follows (prompt_ids, completion_ids, logprobs, env_mask)


def require_trl() -> str:
    """TRL's version, or one line saying how to install it."""
    try:
        found = version("trl")
    except PackageNotFoundError:
        raise StargateError(f"TRL is not installed: {TRL_INSTALL}") from None
    if tuple(int(part) for part in found.split(".")[:2] if part.isdigit()) < OLDEST_TRL:
        raise StargateError(f"TRL {found} is older than {'.'.join(map(str, OLDEST_TRL))}, whose rollout_func this "
                            f"follows: {TRL_INSTALL.replace('pip install', 'pip install -U', 1)}")
    return found


# -- the reward functions GRPOTrainer calls: each reads what the rollout function returned for its completions --
def stargate_reward(completions, stargate_reward: list[float], **_) -> list[float]:
    """The environment's reward of each episode (weight 1)."""
    return list(stargate_reward)


def questions_asked(completions, stargate_questions: list[int], **_) -> list[float]:
    """How many questions each episode asked (a metric: weight 0)."""
    return [float(n) for n in stargate_questions]


def facts_elicited_actively(completions, stargate_elicitation: list[dict], **_) -> list[float]:
    """The share of the persona's facts the user told when asked for them (a metric: weight 0)."""
    return [e["active"] / e["facts"] if e["facts"] else 0.0 for e in stargate_elicitation]


class GRPORollouts:
    """GRPOTrainer's rollout function over a UserEnvironment, with the dataset and reward functions to go with it:

        env = UserEnvironment(load_recipe("tiny"), "my-home", split="A", record=True)
        rollouts = GRPORollouts(env)
        trainer = GRPOTrainer(model, reward_funcs=rollouts.reward_funcs, train_dataset=rollouts.dataset(),
                              args=GRPOConfig(..., reward_weights=rollouts.reward_weights), peft_config=...,
                              rollout_func=rollouts)

    The dataset has one row per pair of the split: its opening messages as the prompt. The rollout function knows
    a prompt's pair by its opening (the persona's name and the task), so two pairs that open alike are refused
    here. Each episode it plays is one of the environment's (recorded under its namespace with record=True)."""

    METRICS = (questions_asked, facts_elicited_actively)

    @property
    def reward_funcs(self) -> list:
        """GRPOTrainer's reward_funcs: the reward, then the metrics."""
        return [stargate_reward, *self.METRICS]

    @property
    def reward_weights(self) -> list[float]:
        """GRPOConfig's reward_weights for reward_funcs: the reward 1, each metric 0."""
        return [1.0] + [0.0] * len(self.METRICS)

    def __init__(self, env: UserEnvironment):
        require_trl()
        self.env = env
        self.tokenizer = env.questioner.tokenizer
        self._pair_of: dict[str, int] = {}
        for n in range(len(env.pairs)):
            other = self._pair_of.setdefault(self._key(env.opening(n)), n)
            if other != n:
                raise StargateError(f"pairs {env.pairs[other]['id']} and {env.pairs[n]['id']} open alike (the same "
                                    "name and task), so a prompt cannot say which of them to play: use a split "
                                    "whose pairs differ in task or persona name")
        self.episodes: list[Episode] = []  # the last call's, finished
        self._calls = 0

    @staticmethod
    def _key(messages: list[dict]) -> str:
        return json.dumps([[m["role"], m["content"]] for m in messages])

    def dataset(self):
        """The split's pairs as GRPOTrainer's train_dataset: {prompt: the opening messages, pair: its number}."""
        from datasets import Dataset

        return Dataset.from_list([{"prompt": self.env.opening(n), "pair": n} for n in range(len(self.env.pairs))])

    def __call__(self, prompts: list, trainer) -> dict:
        """Play one episode per prompt with the trainer's model; return what GRPOTrainer asks of a rollout function
        (prompt_ids, completion_ids, logprobs, env_mask) and, for the reward functions, each episode's reward,
        questions and elicitation figures."""
        self._check_weights(trainer)
        pairs = []
        for prompt in prompts:
            if self._key(prompt) not in self._pair_of:
                raise StargateError(f"a prompt that opens none of split {self.env.split}'s pairs: give GRPOTrainer "
                                    "the rollouts' own dataset (GRPORollouts.dataset())")
            pairs.append(self._pair_of[self._key(prompt)])
        sampling = self._sampling(trainer.args)
        # One seed for the call's episodes: the user's replies of one turn are then one request (UserEnvironment
        # groups them by seed and turn), whatever the batch.
        seed = random.Random(f"{self.env.recipe.seed}/trl/{self._calls}").randrange(2**31)
        self._calls += 1
        render = self.env.questioner.render
        episodes = [self.env.start(pair=n, seed=seed) for n in pairs]
        prompt_ids = [self._ids(render(self.env.opening(n), add_generation_prompt=True)) for n in pairs]
        completion_ids: list[list[int]] = [[] for _ in episodes]
        logprobs: list[list[float]] = [[] for _ in episodes]
        env_mask: list[list[int]] = [[] for _ in episodes]
        active = list(range(len(episodes)))
        while active:
            sampled = self._sample(trainer, [prompt_ids[i] + completion_ids[i] for i in active], sampling)
            texts = [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids, _, _ in sampled]
            before = [list(episodes[i].messages) for i in active]
            self.env.step_many([episodes[i] for i in active], texts, [not stopped for _, _, stopped in sampled])
            for i, (ids, lps, stopped), earlier in zip(active, sampled, before, strict=True):
                completion_ids[i] += ids
                logprobs[i] += lps
                env_mask[i] += [1] * len(ids)
                episode = episodes[i]
                if len(episode.messages) > len(earlier):  # the user answered: its reply, masked
                    between = self._between(episode, earlier, ids[-1] if stopped else None)
                    completion_ids[i] += between
                    logprobs[i] += [0.0] * len(between)
                    env_mask[i] += [0] * len(between)
            active = [i for i in active if not episodes[i].done]
        self.episodes = episodes
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                "env_mask": env_mask, "stargate_reward": [e.reward for e in episodes],
                "stargate_questions": [e.info["questions"] for e in episodes],
                "stargate_elicitation": [e.info["elicitation"] for e in episodes],
                "stargate_conversation_id": [e.id for e in episodes]}

    def _check_weights(self, trainer) -> None:
        weights = dict(zip(trainer.reward_funcs, trainer.reward_weights.tolist(), strict=True))
        added = [f.__name__ for f in self.METRICS if weights.get(f, 0.0) != 0.0]
        if added:
            raise StargateError(f"the metric {added[0]} is weighted into the reward: give GRPOConfig "
                                "reward_weights=GRPORollouts.reward_weights (the reward 1, each metric 0)")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _sampling(args) -> dict:
        """The trainer's sampling settings (GRPOConfig), the rest plain as the simulate stage samples (no top-k,
        min-p or repetition penalty a model's generation config may carry). generation_kwargs would set what TRL's
        log-probs do not follow, so they are refused."""
        if args.generation_kwargs:
            raise StargateError(f"GRPOConfig generation_kwargs {args.generation_kwargs!r}: the rollouts sample with "
                                "temperature, top_p, top_k, min_p and repetition_penalty alone; set those instead")
        return {**PLAIN_SAMPLING, "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k or 0,
                "min_p": args.min_p or 0.0, "repetition_penalty": args.repetition_penalty}

    def _sample(self, trainer, contexts: list[list[int]], sampling: dict) -> list:
        """One Questioner turn per context, sampled by the trainer's model (unwrapped as TRL's own generation
        unwraps it) up to the recipe's question_max_tokens: (its ids up to and with the stop token, each id's
        log-prob at the sampling temperature, whether it stopped)."""
        import torch
        from trl.models.utils import unwrap_model_for_generation

        pad = self.tokenizer.pad_token_id
        width = max(len(c) for c in contexts)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation) as model:
            device = next(model.parameters()).device
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
            stop_ids = self.env.questioner.stop_token_ids(model)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, **sampling,
                                     max_new_tokens=self.env.recipe.simulate.question_max_tokens, pad_token_id=pad,
                                     eos_token_id=stop_ids, output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        # One step's full-vocabulary log-probs at a time: all of them at once would be batch x tokens x vocabulary.
        logps = torch.stack([torch.log_softmax(step.float() / sampling["temperature"], dim=-1)
                             .gather(-1, new[:, k : k + 1]).squeeze(-1) for k, step in enumerate(out.logits)], dim=1)
        turns = []
        for row in range(len(contexts)):
            tokens = new[row].tolist()
            end = next((k + 1 for k, token in enumerate(tokens) if token in stop_ids), None)
            turns.append((tokens[:end] if end else tokens, logps[row, : end or len(tokens)].tolist(), end is not None))
        return turns

    def _between(self, episode: Episode, earlier: list[dict], stop_id: int | None) -> list[int]:
        """The tokens between a Questioner turn as sampled and the next turn (or the end): the template's close of
        the turn (less the stop token the turn ended with) and the user's reply as the Questioner reads it, with
        the next turn's generation prompt while the episode goes on."""
        p, env, render = episode.pair, self.env, self.env.questioner.render

        def view(messages):
            return questioner_messages(p["persona_name"], p["task"], messages, final=False, decide=env.decide,
                                       instruction_text=env.recipe.simulate.instruction)

        before = render(view(earlier), add_generation_prompt=True)
        after = render(view(episode.messages[:-1]))
        text = episode.messages[-2]["text"]
        found = after.find(text, len(before)) if after.startswith(before) else -1
        if found < 0:
            raise StargateError("the Questioner's chat template does not render a conversation as an extension of "
                                "its prefix: use a model with a standard chat template")
        close = after[found + len(text):]  # the first place the turn's text is after its prefix: the turn itself
        if stop_id is not None:
            close = close.removeprefix(self.tokenizer.decode([stop_id]))
        following = render(view(episode.messages), add_generation_prompt=not episode.done)
        if not following.startswith(after):
            raise StargateError("the Questioner's chat template does not render a conversation as an extension of "
                                "its prefix: use a model with a standard chat template")
        rest = following[len(after):]
        return self._ids(close + (rest.rstrip() if episode.done else rest))
