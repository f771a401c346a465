"""train.method kto: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
Theoretic Optimization") on each pair's best conversation by reward, desirable, and its worst, undesirable, each
followed by the same final turn: dpo's examples and reference (the base, the adapter switched off), but each
conversation is scored on its own, against a reference point, rather than against the other.

With r(y) = log pi(y) - log pi_ref(y) over the trained tokens, beta = train.dpo_beta and z0 the reference point,
a desirable conversation's loss is 1 - sigmoid(beta * (r(y) - z0)) and an undesirable one's 1 - sigmoid(beta *
(z0 - r(y))); the loss is their mean over the step's conversations. Both weights (the paper's lambda_D and
lambda_U) are 1: every example has one conversation of each kind, so they are balanced.

Simplified from the paper: z0 is the micro-batch's mean r(y) over its own conversations, clamped at 0 and
detached (no gradient flows through it). The paper estimates KL(pi || pi_ref) from mismatched pairs, each output
scored after another example's input, which here would be one conversation's turns after another pair's task and
persona, at a third forward pass per conversation. Because z0 is a micro-batch's, train.processes above 1 (each
process seeing a share of the micro-batch) is refused rather than giving another result than one process.
"""

from __future__ import annotations

from ..engines.training import Step, Trainee
from ..errors import StargateError
from ..recipe import Recipe
from .dpo import DPO, log_ratios


class KTO(DPO):
    name = "kto"

    def check(self, recipe: Recipe, source: str) -> None:
        super().check(recipe, source)
        if recipe.train.processes > 1:
            raise StargateError(f"{source}: train.method kto takes its reference point from a whole micro-batch, "
                                "which several processes would split: set train.processes=1")

    def loss(self, trainee: Trainee, examples, batch, state, step: Step):
        import torch

        desirable, undesirable = log_ratios(trainee, examples, batch, state)
        with torch.no_grad():
            reference_point = torch.cat([desirable, undesirable]).mean().clamp(min=0)
        beta = trainee.config.dpo_beta
        losses = torch.cat([1 - torch.sigmoid(beta * (desirable - reference_point)),
                            1 - torch.sigmoid(beta * (reference_point - undesirable))])
        return losses.sum() / (2 * step.examples), []


METHOD = KTO()
