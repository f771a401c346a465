"""What rloo and grpo share (they differ only in each sample's advantage within its group: rloo.py, grpo.py): a
clipped policy gradient on every conversation of a pair, with a KL penalty to the base.

The samples are every scored conversation, as the Questioner sampled them; the sampler's log-probs are recomputed
before the first step (`behaviour_logprobs`); the loss is PPO's clipped surrogate per token (`policy_terms`)."""

from __future__ import annotations

from collections.abc import Callable

from ..engines.encoded import Encoded
from ..engines.logits import sampling_logprobs
from ..engines.training import Step, Trainee, keep_last, target_logits
from ..errors import StargateError
from ..prompts import questioner_messages
from ..recipe import Recipe, TrainConfig
from ..store import Store
from ..store.reward import rewards_to_go
from . import Method, at_least_one


def group_advantages(rewards: list[float], formula: Callable[[list[float], float], list[float]]) -> list[float]:
    """Each sample's advantage within its group (a pair's conversations), by the method's `formula` of the
    rewards and their mean. A group of equal rewards gets 0 everywhere."""
    n = len(rewards)
    if n < 2:
        raise ValueError("a group needs at least two samples to be its own baseline")
    if len(set(rewards)) == 1:
        return [0.0] * n  # exactly, where the mean's rounding would leave a few ulps
    return formula(rewards, sum(rewards) / n)


def policy_samples(store: Store, recipe: Recipe, run_id: str, iteration: int,
                   advantages_of: Callable[[list[float]], list[float]]) -> list[tuple[list[dict], list[float]]]:
    """(conversation, advantages) for every scored conversation: the Questioner's turns as it sampled them, after
    the prompt it sampled them from (the instructed one, whatever train.format), with its answer last where it gave
    one (simulate.turns policy); one advantage per Questioner turn, from its pair's rewards (`advantages_of`, the
    method's group advantages).

    Without reward.per_turn every turn gets its conversation's advantage. With it, turn k's reward-to-go is the
    conversation's final gold log-prob less the log-prob after its first k - 1 turns (nothing before turn 1: a
    constant of the pair, which the group's baseline removes), less the cost of its questions from turn k on; an
    answer that ends a conversation after its questions has a reward-to-go of 0, and one given at once (the
    conversation's only turn) the conversation's reward, as every first turn has. Its advantage is against the
    pair's other conversations at the same turn; a turn only one conversation reached has 0.

    Unlike sft and dpo, conversations with an empty question are kept: the policy sampled the empty turn, and
    its advantage says whether to make it likelier. A turn generation cut at its token limit is marked cut, so
    its end-of-turn marker, which the policy never sampled, is not trained (Questioner.encode_for_training); sft
    and dpo keep the paper's format, every turn ending with it. Pairs where every advantage is 0 teach nothing
    but the KL penalty, and are left out."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    groups: dict[str, list[dict]] = {}
    for row in store.rewards(run_id, iteration, recipe.reward.terms):
        groups.setdefault(row["pair_id"], []).append(row)
    turns = store.turns([r["conversation_id"] for rows in groups.values() for r in rows])
    cut = store.cut_turns(run_id, iteration)
    after = store.turn_scores(run_id, iteration) if recipe.reward.per_turn else {}
    decide = recipe.simulate.turns == "policy"
    samples = []
    for pair_id, rows in groups.items():
        if recipe.reward.per_turn:
            to_go = [rewards_to_go(r, turns[r["conversation_id"]], after.get(r["conversation_id"], {}),
                                   recipe.reward.terms) for r in rows]
        else:
            to_go = [[r["reward"]] for r in rows]
        advantages = [[] for _ in rows]
        for k in range(max(len(g) for g in to_go)):
            reached = [i for i, g in enumerate(to_go) if len(g) > k]
            values = advantages_of([to_go[i][k] for i in reached]) if len(reached) > 1 else [0.0]
            for i, value in zip(reached, values, strict=True):
                advantages[i].append(value)
        if not any(any(a) for a in advantages):
            continue
        pair = pairs[pair_id]
        for row, advantage in zip(rows, advantages, strict=True):
            conversation = turns[row["conversation_id"]]
            messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=False,
                                           instruction=True, decide=decide,
                                           instruction_text=recipe.simulate.instruction)
            for message, idx in zip(messages[1::2], range(0, len(conversation), 2), strict=True):
                message["cut"] = (row["conversation_id"], idx) in cut  # its Questioner turn's
            if row["answer"] is not None:
                messages.append({"role": "assistant", "content": row["answer"], "cut": bool(row["answer_cut"])})
            asked = sum(m["role"] == "assistant" for m in messages)
            samples.append((messages, advantage * asked if len(advantage) == 1 else advantage))
    return at_least_one(samples, run_id, iteration)


def token_advantages(encoded: Encoded, advantages: list[float]) -> list[float]:
    """One advantage per Questioner turn spread over that turn's target tokens (each turn's tokens are one run of
    consecutive positions, the Roleplayer's turns between them)."""
    runs: list[int] = []
    for k, position in enumerate(encoded.target_positions):
        if k == 0 or position != encoded.target_positions[k - 1] + 1:
            runs.append(0)
        runs[-1] += 1
    if len(runs) != len(advantages):
        raise StargateError(f"{len(advantages)} turn advantages for {len(runs)} Questioner turns in the encoding")
    return [a for a, n in zip(advantages, runs, strict=True) for _ in range(n)]


def keep_last_advantages(example: Encoded, advantage, max_length: int) -> tuple[Encoded, list[float]]:
    """`keep_last`, with the sample's advantage as one value per target token that is kept."""
    per_token = advantage if isinstance(advantage, list) else [advantage] * len(example.target_positions)
    if len(per_token) != len(example.target_positions):
        raise ValueError(f"{len(per_token)} advantages for {len(example.target_positions)} target tokens")
    cut = keep_last(example, max_length)
    return cut, per_token[len(per_token) - len(cut.target_positions) :]


def behaviour_logprobs(model, decoder, samples, batches: list[list[int]], config: TrainConfig, sampling,
                       pad_token_id: int, target_logits_only: bool, autocast) -> dict[int, tuple]:
    """Each sample's per-token log-probs under the policy that sampled it (the model as training starts: train.init
    previous) and under the base (its adapter off; only with a KL penalty), at the temperature and top-p it was
    sampled at, without grad, in the micro-batches training will use and in the precision context (`autocast`)
    the policy's own log-probs are computed in, so that the first step's importance ratios are 1 and its KL 0 to
    the last bit where the kernels are deterministic (outside bf16 autocast, the ratios drifted by 0.03).

    Recomputed rather than stored at simulation time: the stored turns are text, and re-encoding it need not
    give the sampled token ids back, so only log-probs of the re-encoded tokens make a ratio of the same tokens.
    The cost is one forward pass without grad per sample (two with the KL), next to the epochs' passes with it."""
    import torch

    out: dict[int, tuple] = {}
    model.eval()
    with torch.no_grad(), autocast:
        for batch in batches:
            if not batch:
                continue
            sequences = [samples[i][0] for i in batch]
            logits, tokens, rows = target_logits(model, decoder, sequences, pad_token_id, target_logits_only)
            old = sampling_logprobs(logits, tokens, *sampling)
            ref = old
            if config.kl_beta:
                with model.disable_adapter():
                    logits, _, _ = target_logits(model, decoder, sequences, pad_token_id, target_logits_only)
                ref = sampling_logprobs(logits, tokens, *sampling)
            counts = rows.bincount(minlength=len(batch)).tolist()
            for i, o, r in zip(batch, old.split(counts), ref.split(counts), strict=True):
                out[i] = (o, r)
    model.train()
    return out


def policy_terms(model, decoder, samples, batch: list[int], behaviour: dict, config: TrainConfig, sampling,
                 pad_token_id: int, target_logits_only: bool):
    """The summed clipped policy-gradient loss of these samples' target tokens, and the sums of |ratio - 1|, of
    clipped tokens and of the KL estimate, for the training record.

    Per token: ratio = pi(a) / pi_old(a), both at the sampling temperature and top-p; the PPO-style surrogate
    min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with A the sample's advantage; less kl_beta times the k3
    estimate of KL(pi || pi_base), exp(d) - d - 1 with d = log pi_base(a) - log pi(a) (as GRPO). The loss is
    summed over tokens; the caller divides by the step's target tokens, so every token weighs the same (as
    DAPO's, not GRPO's paper, which averages each sequence's tokens first)."""
    import torch

    logits, tokens, _ = target_logits(model, decoder, [samples[i][0] for i in batch], pad_token_id,
                                      target_logits_only)
    new = sampling_logprobs(logits, tokens, *sampling)
    old = torch.cat([behaviour[i][0] for i in batch]).to(new.device)
    ref = torch.cat([behaviour[i][1] for i in batch]).to(new.device)
    advantage = torch.tensor([a for i in batch for a in samples[i][1]], device=new.device, dtype=new.dtype)
    ratio = torch.exp(new - old)
    eps = config.clip_epsilon
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage)
    gap = ref - new
    kl = torch.exp(gap) - gap - 1
    loss = -(surrogate - config.kl_beta * kl).sum()
    with torch.no_grad():
        # Only where the clip binds, as TRL counts: the clipped term is the smaller one (and so the one taken)
        # above 1 + eps for a positive advantage and below 1 - eps for a negative one; elsewhere it changes nothing.
        clipped = (((ratio > 1 + eps) & (advantage > 0)) | ((ratio < 1 - eps) & (advantage < 0))).sum()
        terms = [float((ratio - 1).abs().sum()), float(clipped), float(kl.sum())]
    return loss, terms


class PolicyGradient(Method):
    """A clipped policy gradient whose advantages within a pair's group are `formula`'s (rewards, mean ->
    advantages). An example is (sequence, one advantage per target token, or one for the whole sequence)."""

    needs_sampling = True
    credits_turns = True
    step_terms = ("ratio_drift", "clipped", "kl")

    def __init__(self, name: str, formula: Callable[[list[float], float], list[float]]):
        self.name = name
        self.formula = formula

    def group_advantages(self, rewards: list[float]) -> list[float]:
        return group_advantages(rewards, self.formula)

    def samples(self, store: Store, recipe: Recipe, run_id: str, iteration: int):
        """The iteration's (messages, advantage per Questioner turn) samples (`policy_samples`)."""
        return policy_samples(store, recipe, run_id, iteration, self.group_advantages)

    def examples(self, store, recipe, run_id, iteration, encode):
        encoded = [(encode(messages), advantages)
                   for messages, advantages in self.samples(store, recipe, run_id, iteration)]
        return [(e, token_advantages(e, advantages)) for e, advantages in encoded]

    def sequences_per_pair(self, conversations_per_pair):
        return conversations_per_pair  # every conversation is a sample

    def passes_without_grad(self, train):
        return 1 + (train.kl_beta > 0)  # the sampler's log-probs, and the base's for the KL

    def check(self, recipe: Recipe, source: str) -> None:
        """The ratio weighs each sampled token by how much likelier the policy in training makes it than the policy
        that sampled it: that is only so if training starts from that policy, without dropout noise, on its own
        turns alone, and if they were sampled."""
        super().check(recipe, source)
        train = recipe.train
        needs = [setting for setting, missing in (
            ("train.init previous (a fresh LoRA is the base, not the policy that sampled)", train.init != "previous"),
            ("train.lora_dropout 0 (dropout would make the importance ratio noise)", train.lora_dropout > 0),
            ("train.target none (the Questioner's own turns are trained, not a response it did not sample)",
             train.target != "none"),
            ("simulate.conversations_per_pair of at least 2 (a pair's conversations are each other's baseline)",
             recipe.simulate.conversations_per_pair < 2),
            ("simulate.temperature above 0 (greedy questions have no sampling distribution to weigh)",
             recipe.simulate.temperature <= 0)) if missing]
        if needs:
            raise StargateError(f"{source}: train.method {train.method} needs " + "; ".join(needs))

    def cut(self, example, max_length):
        return keep_last_advantages(*example, max_length)

    def sequences(self, example):
        return (example[0],)

    def before_steps(self, trainee: Trainee, examples, batches):
        return behaviour_logprobs(trainee.model, trainee.decoder, examples, batches, trainee.config, trainee.sampling,
                                  trainee.pad_token_id, trainee.target_logits_only, trainee.autocast)

    def loss(self, trainee: Trainee, examples, batch, state, step: Step):
        """Like SFT's, the mean over the step's target tokens, however the step is split."""
        loss, terms = policy_terms(trainee.model, trainee.decoder, examples, batch, state, trainee.config,
                                   trainee.sampling, trainee.pad_token_id, trainee.target_logits_only)
        return loss / max(step.tokens, 1), terms
