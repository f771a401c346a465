"""The reward selection ranks conversations by, written once: the gold's log-prob under the base model less
reward.question_cost nats per question the Questioner asked.

`reward` reckons it in Python and `reward_sql` writes it for the store's queries, side by side so the two cannot
drift apart (tests/test_store.py checks that SQLite's arithmetic gives what Python's does, to the last bit).
A turn's reward-to-go under reward.per_turn (methods/_policy_gradient.py) is `reward` of the log-prob the gold gained
from that turn on and of the questions from that turn on."""

from __future__ import annotations


def reward(logprob: float, questions: int, cost: float) -> float:
    """A conversation's reward: its gold log-prob less `cost` per question. With no cost, the log-prob itself
    (x - 0.0 * n is x, exactly)."""
    return logprob - cost * questions


def reward_sql(logprob: str, questions: str, cost: str) -> str:
    """The reward as an SQL expression of three SQL expressions (columns, a bound `?`, a coalesce(...)), bracketed
    so it stands anywhere an expression can (a window's ORDER BY, a product)."""
    return f"({logprob} - {cost} * {questions})"
