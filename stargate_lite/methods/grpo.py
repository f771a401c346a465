"""train.method grpo: a clipped policy gradient on every conversation of a pair (methods/_policy_gradient.py),
each advantaged as GRPO does: its reward less the pair's mean, over the pair's standard deviation."""

from __future__ import annotations

import math

from ._policy_gradient import PolicyGradient

STD_EPSILON = 1e-4  # added to a group's standard deviation, as TRL's GRPOTrainer does


def normalised(rewards: list[float], mean: float) -> list[float]:
    """Less the mean, over the standard deviation (the sample's, n - 1) plus STD_EPSILON."""
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + STD_EPSILON) for r in rewards]


METHOD = PolicyGradient("grpo", normalised)
