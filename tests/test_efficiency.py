"""The efficiency metrics' arithmetic, on rows made by hand (the end-to-end checks are in test_loop and test_eval)."""

from __future__ import annotations

import math

import pytest

from stargate_lite.evaluation.efficiency import efficiency, mean_sem


def test_metrics_overall_per_turn_count_and_the_question_count_distribution():
    conversations = [
        {"turns": 1, "questions": 1, "questioner_turns": 1, "user_tokens": 10},
        {"turns": 1, "questions": 0, "questioner_turns": 1, "user_tokens": 20},
        {"turns": 2, "questions": 2, "questioner_turns": 2, "user_tokens": 30},
        {"turns": 0, "questions": 0, "questioner_turns": 0, "user_tokens": 0},  # answered at once
    ]
    responses = [{"turns": 1, "n_tokens": 100}, {"turns": 2, "n_tokens": 50}, {"turns": 2, "n_tokens": None}]
    eff = efficiency(conversations, responses)
    assert eff["questions"]["mean"] == pytest.approx(0.75) and eff["questions"]["n"] == 4
    assert eff["questions"]["sem"] == pytest.approx(math.sqrt((0.0625 + 0.5625 * 2 + 1.5625) / 3) / 2)
    assert eff["question_share"]["mean"] == pytest.approx((1 + 0 + 1) / 3)  # a conversation without turns: no share
    assert eff["user_tokens"]["mean"] == 15 and eff["turns"]["mean"] == 1
    assert eff["response_tokens"] == {"mean": 75, "sem": 25, "n": 2}  # an uncounted (older) response is left out
    assert list(eff["by_turns"]) == ["0", "1", "2"]
    assert eff["by_turns"]["1"]["questions"]["mean"] == 0.5 and eff["by_turns"]["1"]["user_tokens"]["mean"] == 15
    assert eff["by_turns"]["2"]["response_tokens"] == {"mean": 50, "sem": None, "n": 1}
    assert eff["by_turns"]["0"]["question_share"]["n"] == 0
    assert eff["question_counts"] == {"0": 2, "1": 1, "2": 1}


def test_no_conversations_gives_empty_metrics():
    eff = efficiency([], [])
    assert eff["questions"] == mean_sem([]) == {"mean": None, "sem": None, "n": 0}
    assert eff["by_turns"] == {} and eff["question_counts"] == {}
