"""Efficiency metrics: what a conversation costs the user and what it yields, per iteration and per evaluation.

- questions: Questioner turns that ask something (prompts.is_question), per conversation;
- question_share: the share of a conversation's Questioner turns that are questions;
- user_tokens: tokens the user typed, i.e. the Roleplayer's answers, per conversation;
- response_tokens: tokens of the final response (the regularizer's in training, the responder's in evaluation);
- turns: the conversation's length in question/answer turns.

Each is a mean with its standard error over conversations (responses), overall and per number of turns; token
counts are in the Questioner's tokenizer. Computed from the store alone.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

METRICS = ("questions", "question_share", "user_tokens", "response_tokens", "turns")


def mean_sem(values: list[float]) -> dict:
    """{mean, sem, n}: the mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    sem = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "sem": sem, "n": n}


def _metrics(conversations: list[dict], responses: list[dict]) -> dict:
    def present(values) -> list[float]:
        return [v for v in values if v is not None]

    return {
        "questions": mean_sem([c["questions"] for c in conversations]),
        "question_share": mean_sem([c["questions"] / c["questioner_turns"] for c in conversations
                                    if c["questioner_turns"]]),
        "user_tokens": mean_sem(present(c["user_tokens"] for c in conversations)),
        "response_tokens": mean_sem(present(r["n_tokens"] for r in responses)),
        "turns": mean_sem([c["turns"] for c in conversations]),
    }


def efficiency(conversations: list[dict], responses: list[dict]) -> dict:
    """The metrics over all conversations, per number of turns ("by_turns", keyed by the count as a string), and
    how many conversations asked 0, 1, 2, ... questions ("question_counts").

    conversations: store.conversation_efficiency rows; responses: {turns, n_tokens} rows."""
    turn_counts = sorted({c["turns"] for c in conversations} | {r["turns"] for r in responses})
    return {
        **_metrics(conversations, responses),
        "by_turns": {str(k): _metrics([c for c in conversations if c["turns"] == k],
                                      [r for r in responses if r["turns"] == k]) for k in turn_counts},
        "question_counts": {str(q): n for q, n in sorted(Counter(c["questions"] for c in conversations).items())},
    }
