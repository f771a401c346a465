"""train.method rloo: a clipped policy gradient on every conversation of a pair (methods/_policy_gradient.py),
each advantaged by REINFORCE leave-one-out: its reward less the mean of the pair's other conversations'."""

from __future__ import annotations

from ._policy_gradient import PolicyGradient


def leave_one_out(rewards: list[float], mean: float) -> list[float]:
    n = len(rewards)
    return [(r - mean) * n / (n - 1) for r in rewards]  # r - (sum - r) / (n - 1), exactly rearranged


METHOD = PolicyGradient("rloo", leave_one_out)
