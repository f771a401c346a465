"""`stargate-lite eval` and `report` end to end on a finished tiny run, and the judge's verdict parser."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from conftest import cli
from stargate_lite.judge import parse_verdict, policy_is_a

EVAL_TABLES = ("eval_scores", "eval_responses", "judgments")


def eval_counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "stargate.db") as db:
        counts = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in EVAL_TABLES}
        counts["conversations"] = db.execute("select count(*) from conversations where run_id like '%#eval:%'"
                                             ).fetchone()[0]
        return counts


@pytest.fixture(scope="module")
def evaluated(finished) -> dict:
    return json.loads(cli("eval", "--json", home=finished).stdout)


def test_eval_reports_four_conditions_and_win_rates(evaluated, finished):
    assert [it["iteration"] for it in evaluated["iterations"]] == [0, 1, 2]
    assert evaluated["roleplayer"] == "smollm2" and evaluated["judge"] == "smollm2"
    for it in evaluated["iterations"]:
        for condition in ("negative", "positive", "experimental", "experimental_best_of_n", "random"):
            stat = it["logprob"][condition]
            assert stat["n"] >= 2 and math.isfinite(stat["mean"]) and stat["mean"] < 0, condition
            assert stat["sem"] is not None and stat["sem"] >= 0
        assert it["logprob"]["experimental_best_of_n"]["mean"] >= it["logprob"]["experimental"]["mean"]
    # Test split: 1 task x 2 personas, 2 conversations each.
    assert evaluated["iterations"][0]["logprob"]["experimental"]["n"] == 4
    for it in evaluated["iterations"][1:]:
        win = it["win_rate"]
        assert win["valid"] + win["unparsable"] == 2  # every judged pair is counted, none silently dropped
        if win["valid"]:
            assert 0 <= win["rate"] <= 1 and win["wins"] <= win["valid"]
        assert sum(g["valid"] + g["unparsable"] for g in win["by_turns"].values()) == 2
    for path in evaluated["plots"]:
        assert Path(path).stat().st_size > 1000
    with sqlite3.connect(finished / "stargate.db") as db:
        raw = db.execute("select count(*) from judgments where raw is null").fetchone()[0]
        assert raw == 0  # the judge's own words are kept for every verdict


def test_a_second_eval_reuses_everything(evaluated, finished, monkeypatch):
    """No model is built when every row exists: constructors that fail prove it."""
    from stargate_lite import chat, evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded on a rerun")

    before = eval_counts(finished)
    monkeypatch.setattr(evaluate, "Questioner", refuse)
    monkeypatch.setattr(chat, "LlamaCppChat", refuse)
    again = evaluate.evaluate(home=finished)
    assert eval_counts(finished) == before
    assert again["iterations"] == [{k: v for k, v in it.items()} for it in evaluated["iterations"]]


def test_another_roleplayer_adds_rows_and_keeps_the_old(evaluated, finished):
    before = eval_counts(finished)
    other = json.loads(cli("eval", "--json", "--roleplayer", "smollm2-plain", "--iteration", "2", home=finished).stdout)
    assert other["roleplayer"] == "smollm2-plain"
    assert [it["iteration"] for it in other["iterations"]] == [0, 2]
    after = eval_counts(finished)
    assert all(after[t] > before[t] for t in after)
    # The first evaluation is untouched.
    report = cli("report", home=finished).stdout
    assert "smollm2" in report and "win rate" in report


def test_eval_errors_are_one_line(finished):
    result = cli("eval", "--roleplayer", "gemma", home=finished, check=False)
    assert result.returncode == 2 and "gemma" in result.stderr and "Traceback" not in result.stderr
    result = cli("eval", "--iteration", "7", home=finished, check=False)
    assert result.returncode == 2 and "no trained iteration 7" in result.stderr


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A", "A"), ("B.", "B"), ("**B**", "B"), ("(A)", "A"), ("a", "A"), ("Response A", "A"), ("Answer: B", "B"),
        ("The better response is A because it mentions her diet.", "A"), ("I prefer Response B.", "B"),
        ("Final answer: A", "A"), ("Option B fits better.", "B"), ("I would choose A.", "A"),
        ("Response A is vague, Response B is tailored. Answer: B", "B"), ("Response A. It fits.", "A"),
        ("Both are good; it is a tie.", None), ("I cannot decide.", None), ("", None), ("Neither A nor B", None),
        ("A is better than B", None), ("asdf qwerty", None), ("As an AI I cannot judge.", None),
        ("Response A and Response B are equally good.", None), ("Answer: A. Final answer: B", None),
    ],
)
def test_verdict_parser(text, verdict):
    assert parse_verdict(text) == verdict


def test_judge_order_is_seeded_and_balanced():
    items = [f"item-{i}" for i in range(2000)]
    first = [policy_is_a(0, i) for i in items]
    assert first == [policy_is_a(0, i) for i in items]
    assert 0.45 < sum(first) / len(first) < 0.55
    assert first != [policy_is_a(1, i) for i in items]
