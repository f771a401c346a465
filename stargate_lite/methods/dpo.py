"""train.method dpo: Direct Preference Optimization, each pair's best conversation by reward preferred to its
worst, each followed by the same final turn, against the base (the adapter switched off) as the reference."""

from __future__ import annotations

from ..engines.training import Step, Trainee, keep_last
from ..recipe import Recipe
from ..store import Store
from . import Method, at_least_one
from .sft import conversation_example, final_turn


def preference_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[tuple[list[dict], ...]]:
    """(chosen, rejected) per pair: the kept conversation, the best by reward, against the worst, each followed by
    the same final turn (the regularizer's response to the kept one, or the gold).

    Left out: pairs whose best and worst conversations have the same reward (no preference to learn, e.g. a
    single conversation per pair), and, by the rule for empty generations (sft.training_examples), pairs where
    either conversation has an empty question or the final turn is empty."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    worst = {w["pair_id"]: w for w in store.best_scores(run_id, iteration, recipe.reward.terms, worst=True)}
    selections = [s for s in store.selections(run_id, iteration)
                  if s["pair_id"] in worst and worst[s["pair_id"]]["reward"] < s["reward"]]
    turns = store.turns([c for s in selections for c in (s["conversation_id"], worst[s["pair_id"]]["conversation_id"])])
    responses = store.responses(run_id, iteration)
    examples = []
    for s in selections:
        pair = pairs[s["pair_id"]]
        final = final_turn(recipe, pair, responses)
        chosen = conversation_example(recipe, pair, turns[s["conversation_id"]], final)
        rejected = conversation_example(recipe, pair, turns[worst[s["pair_id"]]["conversation_id"]], final)
        if chosen and rejected:
            examples.append((chosen, rejected))
    return at_least_one(examples, run_id, iteration)


def log_ratios(trainee: Trainee, pairs: list, batch: list[int], reference: dict):
    """Each of the batch's (chosen, rejected) pairs' log-ratios log pi(y) - log pi_ref(y) over the trained tokens
    (with grad): two tensors, the chosen's and the rejected's. pi_ref is the base: the same model with its adapter
    switched off, so no second copy is held; its log-probs are computed once per pair, without grad, and kept in
    `reference` (pair index -> (chosen's, rejected's))."""
    import torch

    missing = [i for i in batch if i not in reference]
    if missing:
        trainee.model.eval()
        with torch.no_grad(), trainee.model.disable_adapter():
            base = trainee.sequence_logprobs([pairs[i][0] for i in missing] + [pairs[i][1] for i in missing])
        trainee.model.train()
        for k, i in enumerate(missing):
            reference[i] = (float(base[k]), float(base[k + len(missing)]))
    ours = trainee.sequence_logprobs([pairs[i][0] for i in batch] + [pairs[i][1] for i in batch])
    chosen, rejected = ours[: len(batch)], ours[len(batch) :]
    base = torch.tensor([reference[i] for i in batch], device=ours.device, dtype=ours.dtype)
    return chosen - base[:, 0], rejected - base[:, 1]


class DPO(Method):
    """An example is a (chosen, rejected) pair of sequences; the loss is over the same tokens SFT trains."""

    name = "dpo"

    def examples(self, store, recipe, run_id, iteration, encode):
        return [(encode(chosen), encode(rejected))
                for chosen, rejected in preference_examples(store, recipe, run_id, iteration)]

    def sequences_per_pair(self, conversations_per_pair):
        return 2

    def passes_without_grad(self, train):
        return 1  # the reference's log-probs, once per sequence

    def sequences(self, example):
        return example

    def cut(self, example, max_length):
        return tuple(keep_last(sequence, max_length) for sequence in example)

    def before_steps(self, trainee, examples, batches):
        return {}  # the reference log-probs (`log_ratios`), filled as each pair is first met

    def loss(self, trainee: Trainee, examples, batch, state, step: Step):
        """-log sigmoid(beta * (chosen's log-ratio - rejected's)), summed over the batch's pairs and divided by the
        step's: the mean over the step's pairs, however the step is split."""
        import torch

        chosen, rejected = log_ratios(trainee, examples, batch, state)
        margin = chosen - rejected
        return -torch.nn.functional.logsigmoid(trainee.config.dpo_beta * margin).sum() / step.examples, []


METHOD = DPO()
