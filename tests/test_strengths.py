"""The Bradley-Terry fit over all iterations' judgments (evaluation/strengths.py): strengths on one scale with the
judge's position effect, each with a crossed-bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stargate_lite.evaluation.strengths import bradley_terry


def _judgments(shown_first: bool, wins: int, losses: int, tag: str) -> list[dict]:
    return [{"pair_key": f"{tag}{i}|persona-{i % 3}", "policy_is_a": int(shown_first),
             "winner": "policy" if i < wins else "base"} for i in range(wins + losses)]


def test_a_hand_computed_fit_splits_the_win_rates_into_strength_and_position():
    """Shown first, Q_1 wins 9 of 10; shown second, 5 of 10. So s + position = logit(0.9), s - position = 0:
    both are logit(0.9) / 2 (the weak prior moves them by less than 0.02)."""
    fit = bradley_terry({1: _judgments(True, 9, 1, "a") + _judgments(False, 5, 5, "b")})
    half = math.log(9) / 2
    assert fit["strengths"][1].mean == pytest.approx(half, abs=0.02)
    assert fit["position_a"].mean == pytest.approx(half, abs=0.02)
    assert fit["judgments"] == 20 and fit["position_a"].tasks == 20 and fit["position_a"].personas == 3
    assert fit["strengths"][1].low < fit["strengths"][1].mean < fit["strengths"][1].high


def test_one_fit_puts_iterations_on_one_scale_and_shares_the_position_effect():
    """Known truth: s_1 = 0, s_2 = 1.5, a judge that favours the first response by 1.0; many judgments each."""
    rng = np.random.default_rng(0)
    truth = {1: 0.0, 2: 1.5}
    judged = {}
    for it, strength in truth.items():
        rows = []
        for i in range(400):
            first = bool(i % 2)
            p = 1 / (1 + math.exp(-(strength + (1.0 if first else -1.0))))
            rows.append({"pair_key": f"task-{i % 40}|persona-{i % 7}", "policy_is_a": int(first),
                         "winner": "policy" if rng.random() < p else "base"})
        judged[it] = rows
    judged[2].append({"pair_key": "task-0|persona-0", "policy_is_a": 1, "winner": None})  # unparsable: left out
    fit = bradley_terry(judged, resamples=300)
    assert fit["judgments"] == 800
    for it, strength in truth.items():
        assert fit["strengths"][it].low < strength < fit["strengths"][it].high
    assert fit["position_a"].low < 1.0 < fit["position_a"].high and fit["position_a"].low > 0.5
    assert fit["strengths"][2].low > fit["strengths"][1].high  # Q_2 is stronger, on the same scale


def test_nothing_judged_validly_has_no_fit_and_a_clean_sweep_stays_finite():
    assert bradley_terry({}) is None and bradley_terry({1: [{"pair_key": "t|p", "policy_is_a": 1,
                                                               "winner": None}]}) is None
    sweep = bradley_terry({1: _judgments(True, 4, 0, "a") + _judgments(False, 4, 0, "b")}, resamples=200)
    assert math.isfinite(sweep["strengths"][1].mean) and sweep["strengths"][1].mean > 2


def test_item8_the_balanced_win_rate_averages_both_orders_and_eval_prints_it_beside_the_strength():
    """Issue 45, item 8: with a position term, sigmoid(strength) is not the win rate with the order balanced out;
    that rate is the mean of sigmoid(s + position) and sigmoid(s - position). Hand case: shown first Q_1 wins 9 of
    10, shown second 5 of 10, so the balanced rate is (0.9 + 0.5) / 2 = 0.7, where sigmoid(s) is 0.75."""
    from stargate_lite.evaluation.evaluate import _strengths_dict
    from stargate_lite.evaluation.report import strengths_table

    fit = bradley_terry({1: _judgments(True, 9, 1, "a") + _judgments(False, 5, 5, "b")}, resamples=300)
    balanced = fit["balanced_win_rates"][1]
    assert balanced.mean == pytest.approx(0.7, abs=0.005)
    assert 1 / (1 + math.exp(-fit["strengths"][1].mean)) == pytest.approx(0.75, abs=0.005)
    assert balanced.low < balanced.mean < balanced.high and 0 <= balanced.low and balanced.high <= 1
    summary = {"bradley_terry": _strengths_dict(fit), "judge": "smollm2"}
    assert summary["bradley_terry"]["balanced_win_rates"]["1"]["mean"] == balanced.mean  # eval --json
    rows = {row[0]: row[1] for row in strengths_table(summary).rows}
    assert rows["Q_1 win rate, position balanced out"].startswith(f"{balanced.mean:.2f} [")
