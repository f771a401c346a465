"""A tiny run gives, token for token, the records pinned before issue 48 moved the store, the training methods
and the benchmarks (tests/pinned.py says how a pin is made). The rloo and dpo runs are pinned beside their own
tests (test_policy_gradient.py, test_preference.py), which make those runs."""

from __future__ import annotations

import json

from pinned import PINNED, _differences, assert_pinned


def test_a_tiny_sft_run_gives_the_pinned_records(finished):
    assert_pinned(finished, "sft")


def test_the_comparison_finds_a_changed_token_and_a_moved_score():
    pins = json.loads(PINNED.read_text())["sft"]
    turns = [list(row) for row in pins["turns"]]
    turns[0][3] += "!"
    assert _differences(pins["turns"], turns, "turns") == \
        [f"turns[0][3]: pinned {pins['turns'][0][3]!r}, got {turns[0][3]!r}"]
    scores = [list(row) for row in pins["scores"]]
    scores[-1][1] += 2e-4
    assert len(_differences(pins["scores"], scores, "scores")) == 1
    scores[-1][1] -= 1.5e-4  # within the tolerance
    assert _differences(pins["scores"], scores, "scores") == []
