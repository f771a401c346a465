"""`stargate-lite eval` and `report` end to end on a finished tiny run, and the judge's verdict parser."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from conftest import THREAD_OVERRIDES, TINY_CI_OVERRIDES, cli, copy_home, skip_or_fail, wandb_history

import stargate_lite
from stargate_lite.evaluation.judge import parse_last_line, parse_verdict, policy_is_a, read_verdict, winner_of
from stargate_lite.recipe import JudgeConfig
from stargate_lite.runs import STAGES, source_commit
from stargate_lite.store import Store

EVAL_TABLES = ("eval_scores", "eval_responses", "judgments")


def eval_counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "stargate.db") as db:
        counts = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in EVAL_TABLES}
        counts["conversations"] = db.execute("select count(*) from conversations where run_id like '%#eval:%'"
                                             ).fetchone()[0]
        return counts


@pytest.fixture(scope="module")
def eval_home(finished_run, tmp_path_factory) -> Path:
    """A copy of the finished run, evaluated once by `evaluated`; tests that write to it copy it first."""
    return copy_home(finished_run, tmp_path_factory.mktemp("evaluated") / "home")


@pytest.fixture(scope="module")
def evaluated(eval_home) -> dict:
    return json.loads(cli("eval", "--json", home=eval_home).stdout)


def test_eval_reports_four_conditions_and_win_rates(evaluated, eval_home):
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
    # The tiny recipe judges both orders, reading P(A) against P(B): every verdict is valid.
    for it in evaluated["iterations"][1:]:
        for key in ("win_rate", "win_rate_counterbalanced"):
            win = it[key]
            assert win["valid"] + win["unparsable"] == 2, key  # every judged pair is counted, none dropped
            assert win["unparsable"] == 0, key
            assert 0 <= win["rate"] <= 1 and win["wins"] + win["losses"] + win["ties"] == win["valid"]
            assert win["rate"] == pytest.approx((win["wins"] + 0.5 * win["ties"]) / win["valid"])
            assert sum(g["valid"] + g["unparsable"] for g in win["by_turns"].values()) == 2
        assert it["win_rate"]["ties"] == 0  # one order gives a verdict or none, never a tie
        both = it["win_rate_counterbalanced"]
        assert both["consistency"] == (both["wins"] + both["losses"]) / both["valid"]
    assert [Path(p).name.split("-")[0] for p in evaluated["plots"]] == ["gold", "win", "efficiency"]
    for path in evaluated["plots"]:
        assert Path(path).stat().st_size > 1000
    for it in evaluated["iterations"]:  # efficiency: over the experimental conversations and the judged responses
        eff = it["efficiency"]
        assert eff["questions"]["n"] == eff["turns"]["n"] == it["logprob"]["experimental"]["n"]
        assert eff["response_tokens"]["n"] == 2 and eff["response_tokens"]["mean"] > 0
        assert eff["user_tokens"]["mean"] > 0 and 0 <= eff["question_share"]["mean"] <= 1
        assert sum(eff["question_counts"].values()) == eff["questions"]["n"]
        assert sum(g["turns"]["n"] for g in eff["by_turns"].values()) == eff["turns"]["n"]
    with sqlite3.connect(eval_home / "stargate.db") as db:
        raw = db.execute("select count(*) from judgments where raw is null").fetchone()[0]
        assert raw == 0  # the judge's own words (here its letters' log-probs) are kept for every verdict
        rows = db.execute("select pair_key, iteration, swapped, policy_is_a, margin, verdict from judgments"
                          ).fetchall()
    assert len(rows) == 2 * 2 * 2  # 2 iterations x 2 pairs x 2 orders
    by_item = {}
    for key, iteration, swapped, first, margin, verdict in rows:
        assert verdict == ("A" if margin > 0 else "B")
        by_item.setdefault((key, iteration), {})[swapped] = first
    assert all(orders[0] != orders[1] for orders in by_item.values())  # the second order shows them the other way


def test_eval_gives_intervals_over_tasks_and_personas_a_paired_gain_and_strengths(evaluated, eval_home):
    store = Store(eval_home, create=False)
    ns = "tiny#eval:smollm2"
    by_pair = [{} for _ in evaluated["iterations"]]
    for it in evaluated["iterations"]:
        keys = {p["id"]: f"{p['task_id']}|{p['persona_id']}" for p in store.pairs(ns, it["iteration"])}
        for s in store.scores(ns, it["iteration"]):
            by_pair[it["iteration"]].setdefault(keys[s["pair_id"]], []).append(s["logprob"])
        for stat in [*it["logprob"].values(), *(it[k] for k in ("win_rate", "win_rate_counterbalanced") if it[k])]:
            interval, centre = stat["interval"], stat.get("mean", stat.get("rate"))
            if it["iteration"] == 0 and "rate" in stat:
                assert interval is None  # Q_0 against itself: 0.5 by definition
                continue
            # 1 test task x 2 personas: the pairs' personas resampled, each pair's mean once.
            assert (interval["tasks"], interval["personas"], interval["n"]) == (1, 2, 2)
            assert interval["low"] <= centre <= interval["high"]
    mean = [{k: sum(v) / len(v) for k, v in pairs.items()} for pairs in by_pair]
    assert evaluated["iterations"][0]["gain"] is None
    for it in evaluated["iterations"][1:]:  # Q_eta's experimental log-prob less Q_0's, paired per pair
        paired = [mean[it["iteration"]][k] - mean[0][k] for k in mean[0]]
        assert it["gain"]["mean"] == pytest.approx(sum(paired) / len(paired)) and it["gain"]["n"] == 2
    audit = evaluated["audit"]  # every Roleplayer evaluated, per iteration: here one, over Q_eta's conversations
    assert list(audit) == ["smollm2"] and sorted(audit["smollm2"]) == ["0", "1", "2"]
    for it in evaluated["iterations"]:
        (only,) = audit["smollm2"][str(it["iteration"])].values()
        assert only["conversations"] == it["logprob"]["experimental"]["n"] and 0 <= only["leakage"]["mean"] <= 1
        # Elicitation, the audit's headline: the same conversations as the efficiency figures', counted once.
        elicited = it["efficiency"]["elicitation"]
        assert only["elicitation"] == elicited and elicited["conversations"] == only["conversations"]
        assert sum(elicited[k]["mean"] for k in ("active", "passive", "never")) == pytest.approx(
            elicited["facts"]["mean"])
        assert sum(m["elicitation"]["conversations"] for m in it["efficiency"]["by_turns"].values()) == \
            elicited["conversations"]
    fit = evaluated["bradley_terry"]
    assert sorted(fit["strengths"]) == ["1", "2"] and fit["judgments"] == 2 * 2 * 2
    assert all(s["low"] <= s["mean"] <= s["high"] for s in [*fit["strengths"].values(), fit["position_a"]])


def test_eval_table_shows_both_win_rates(evaluated, eval_home):
    table = cli("report", home=eval_home).stdout
    assert f"Report: {eval_home / 'runs' / 'tiny' / 'report.md'}" in table.replace("\n", "")
    assert "win rate, random order" in table and "win rate, both orders" in table and "consistency" in table
    assert "Efficiency" in table and "tokens the user typed" in table
    assert "Bradley-Terry" in table and "Q_2 strength" in table and "paired" in table
    assert "Simulator audit" in table and "leak" in table and "facts told" in table and "facts a/p/n" in table


def test_the_run_report_states_code_machine_stage_times_evaluation_and_samples(evaluated, eval_home, tmp_path):
    home = copy_home(eval_home, tmp_path / "home")
    written = stargate_lite.report(home)
    path = written["report"]
    assert path == home / "runs" / "tiny" / "report.md" and written["summary"]["run"] == "tiny"
    text = path.read_text()
    store = Store(home)
    run = store.get_run("tiny")
    assert hashlib.sha256(run["recipe"].encode()).hexdigest()[:16] in text
    commit, dirty = source_commit()  # the code the fixture's run ran is this checkout's
    assert ((commit or "not a git checkout")[:12] + (" (dirty)" if dirty else "")) in text
    assert f"{os.cpu_count()} cores" in text and "no GPU" in text and f"torch {torch.__version__}" in text
    # Every stage of both iterations, and the data stage, with its time from its own start: none untimed.
    times = store.stage_times("tiny")
    assert [(t["iteration"], t["stage"]) for t in times] == [(0, "data")] + [(i, s) for i in (1, 2) for s in STAGES]
    assert all(t["started_at"] is not None and t["started_at"] <= t["done_at"] and t["gpus"] == 0 for t in times)
    table = text.split("**Where the time went**")[1].split("\n\n")[1].splitlines()[2:]
    assert len(table) == len(times) and all(row.split(" | ")[3] != "-" for row in table)
    assert "0.00 GPU-hours" in text and "finished before starts were stored" not in text
    tokens = store.stage_tokens("tiny", 1)
    assert tokens["train"] == store.training("tiny", 1)["trained_tokens"] and tokens["simulate"] > 0
    # The evaluation's tables and plots, and two pairs' best and worst conversations, best first.
    assert "Bradley-Terry" in text and "win rate, both orders" in text
    assert all(f"]({p.name})" in text for p in written["plots"]) and written["plots"]
    samples = [float(line.split("= ")[1].rstrip(":")) for line in text.splitlines() if "log p(gold) =" in line]
    assert len(samples) == 2 * 2 and samples[0] >= samples[1] and samples[2] >= samples[3]
    assert "> **Questioner:**" in text and "> **Roleplayer:**" in text


def test_a_second_eval_reuses_everything(evaluated, eval_home, monkeypatch):
    """No model is built when every row exists: constructors that fail prove it."""
    from stargate_lite.engines import chat_models
    from stargate_lite.evaluation import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded on a rerun")

    before = eval_counts(eval_home)
    monkeypatch.setattr(evaluate, "Questioner", refuse)
    monkeypatch.setattr(chat_models, "LlamaCppChat", refuse)
    again = evaluate.evaluate(home=eval_home)
    assert eval_counts(eval_home) == before
    assert again["iterations"] == [{k: v for k, v in it.items()} for it in evaluated["iterations"]]


def test_the_base_responder_answers_greedily_after_each_policys_own_conversations(evaluated, eval_home, tmp_path,
                                                                                   questioner, base_model):
    """`eval --responder base` (the response-model ablation): Q_0 writes the final response after Q_eta's
    conversations, and that is what is judged against Q_0's own."""
    from safetensors.torch import load_file, save_file

    from stargate_lite.evaluation.evaluate import namespace, pair_key
    from stargate_lite.prompts import questioner_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.store import Store

    home = copy_home(eval_home, tmp_path / "home")
    store = Store(home, create=False)
    # A tiny run's adapters barely move greedy text: make each policy plainly its own, so that a response written
    # by the policy instead of Q_0 could not pass for Q_0's.
    adapters = {it: Path(store.training("tiny", it)["adapter"]) for it in (1, 2)}
    for it, adapter in adapters.items():
        weights = load_file(adapter / "adapter_model.safetensors")
        generator = torch.Generator().manual_seed(it)
        save_file({name: torch.randn(w.shape, generator=generator) * 0.2 if "lora_B" in name else w
                   for name, w in weights.items()}, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    summary = json.loads(cli("eval", "--responder", "base", "--json", home=home).stdout)
    assert summary["responder"] == "base"
    assert [it["win_rate"]["valid"] for it in summary["iterations"][1:]] == [2, 2]
    ns = namespace("tiny", "smollm2")
    with sqlite3.connect(home / "stargate.db") as db:
        rows = {(it, who, key): (conversation, text) for it, who, key, conversation, text in db.execute(
            "select iteration, responder, pair_key, conversation_id, text from eval_responses")}
        judged = {who for (who,) in db.execute("select distinct responder from judgments")}
    assert judged == {"policy", "base"}
    base_rows = {(it, key): value for (it, who, key), value in rows.items() if who == "base"}
    assert sorted({it for it, _ in base_rows}) == [1, 2]
    recipe = load_recipe("tiny", TINY_CI_OVERRIDES)

    def greedy(model, prompt: list[dict]) -> str:
        (text,) = questioner.generate(model, [prompt], max_new_tokens=recipe.respond.max_tokens, temperature=0.0,
                                      top_p=1.0, batch_size=1, seed=0)
        return text

    prompts = {}
    for (it, key), (conversation, text) in base_rows.items():
        assert rows[(it, "policy", key)][0] == conversation  # after the policy's own conversation
        (pair,) = [p for p in store.pairs(ns, it) if pair_key(p) == key]
        prompts[it, key] = questioner_messages(pair["persona_name"], pair["task"],
                                               store.turns([conversation])[conversation], final=True, instruction=True)
        assert text == greedy(base_model, prompts[it, key])  # Q_0's greedy response
    policy = questioner.load_policy(str(adapters[2]))
    assert any(greedy(policy, prompt) != base_rows[key][1] for key, prompt in prompts.items() if key[0] == 2)


def test_another_roleplayer_adds_rows_and_keeps_the_old(evaluated, eval_home, tmp_path):
    finished = copy_home(eval_home, tmp_path / "home")
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
    result = cli("eval", "--roleplayer", "mixtral", home=finished, check=False)
    assert result.returncode == 2 and "mixtral" in result.stderr and "Traceback" not in result.stderr
    for settings, says in [(["simulate.max_turns=3"], "evaluation can change only"),  # changes conversations
                           (["judge.template=compare", "judge.read=last_line"], "judge.max_tokens 64 would cut")]:
        result = cli("eval", *[a for s in settings for a in ("--set", s)], home=finished, check=False)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, settings
    result = cli("eval", "--iteration", "7", home=finished, check=False)
    assert result.returncode == 2 and "no trained iteration 7" in result.stderr


def test_eval_set_judges_a_finished_run_another_way_beside_its_verdicts(evaluated, eval_home, tmp_path,
                                                                        monkeypatch):
    """And sends the evaluation's figures to W&B (offline) when asked to."""
    home = copy_home(eval_home, tmp_path / "home")
    before = eval_counts(home)
    monkeypatch.setenv("WANDB_MODE", "offline")
    again = json.loads(cli("eval", "--json", "--set", "judge.read=reply", "--set", "track=wandb", home=home).stdout)
    assert again["protocol"].startswith("letter/reply#") and again["protocol"] != evaluated["protocol"]
    after = eval_counts(home)
    assert after == {**before, "judgments": before["judgments"] + 2 * 2 * 2}  # new verdicts, nothing else made
    for it in again["iterations"][1:]:
        assert it["win_rate_counterbalanced"]["valid"] + it["win_rate_counterbalanced"]["unparsable"] == 2
    rows = wandb_history(home / "runs" / "tiny")
    logprobs = [r for r in rows if "eval/smollm2/logprob_experimental" in r]
    assert [r["iteration"] for r in logprobs] == [0, 1, 2]
    for row, it in zip(logprobs, again["iterations"], strict=True):
        assert row["eval/smollm2/logprob_experimental"] == pytest.approx(it["logprob"]["experimental"]["mean"])
        assert row.get("eval/smollm2/gain") == (pytest.approx(it["gain"]["mean"]) if it["gain"] else None)
    judged = [{k.rpartition("/")[2]: v for k, v in r.items() if "/judged/" in k or k == "iteration"}
              for r in rows if any("/judged/" in k for k in r)]
    rates = [{"iteration": it["iteration"], "win_rate": it["win_rate"]["rate"],
              "win_rate_counterbalanced": it["win_rate_counterbalanced"]["rate"],
              "consistency": it["win_rate_counterbalanced"]["consistency"]} for it in again["iterations"][1:]]
    assert judged == [{k: v for k, v in r.items() if v is not None} for r in rates
                      if any(v is not None for k, v in r.items() if k != "iteration")]  # None is not sent
    assert again["protocol"] in cli("report", "--set", "judge.read=reply", home=home).stdout
    assert evaluated["protocol"] in cli("report", home=home).stdout  # the first verdicts are read as before


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A", "A"), ("B.", "B"), ("**B**", "B"), ("(A)", "A"), ("a", None), ("Response A", "A"), ("Answer: B", "B"),
        ("The better response is A because it mentions her diet.", "A"), ("I prefer Response B.", "B"),
        ("Final answer: A", "A"), ("Option B fits better.", "B"), ("I would choose A.", "A"),
        ("Response A is vague, Response B is tailored. Answer: B", "B"), ("Response A. It fits.", "A"),
        ("Both are good; it is a tie.", None), ("I cannot decide.", None), ("", None), ("Neither A nor B", None),
        ("A is better than B", "A"), ("asdf qwerty", None), ("As an AI I cannot judge.", None),
        ("Response A and Response B are equally good.", None), ("Answer: A. Final answer: B", None),
    ],
)
def test_verdict_parser(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        # Articles are not verdicts.
        ("I prefer a response that is tailored. Response B is vague.", None), ("Winner: a tie", None),
        ("My choice is a hard one, but B", None), ("Answer: a", None), ("Response a is better.", None),
        ("A: it mentions a gluten-free diet.", None), (("Response A is a good start, but Response B is better for a "
                                                      "busy parent."), "B"),
        ("Response B is a better fit for her.", "B"), ("It is a close call, but A is better.", "A"),
        # Negations and indecision.
        ("A is not better than B.", None), ("B is not as good as A.", None), ("Tie.", None),
        ("Neither A nor B fits better.", None), ("I can't choose between A and B.", None),
        ("Both responses are helpful, but B is more specific.", "B"), ("A and B are equally good.", None),
        ("A or B? Hard to say.", None), ("Not A. B.", None),
        # Both letters, one declared.
        ("The answer is B, not A.", "B"), ("I'd pick A over B.", "A"), ("A wins.", "A"),
        ("B is the better response.", "B"), ("The winner is B.", "B"), ("Preferred response: B", "B"),
        ("Verdict: B", "B"), ("**Verdict:** A", "A"), ("B. It speaks to her budget and her schedule.", "B"),
        ("Response A would suit a parent; Response B fits her better.", "B"),
        ("Answer: A. Final answer: B", None), ("I prefer Response A, but the winner is B.", None),
    ],
)
def test_verdict_parser_further_phrasings(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        # Structured comparisons: a label names a response, praise within its part picks it.
        ("Response A: generic tips.\nResponse B: tailored to her vegan diet; it fits her better.", "B"),
        ("A: generic. B: tailored, so the second one is preferable.", "B"),
        ("Answer A is too generic; the second response is tailored to her.", "B"),
        ("Response A: tailored to her diet.\nResponse B: generic.", None), ("B: a vegan plan. It fits her better.", "B"),
        ("The first response is generic; the second is vague.", None), ("Answer A is too generic.", None),
        # Short verdicts.
        ("I think A.", "A"), ("Definitely B.", "B"), ("B, because it plans around her shifts.", "B"),
        ("I'd say B.", "B"), ("Clearly, Response B.", "B"), ("Probably A, since it is shorter.", "A"),
        ("A is more aligned with her background.", "A"), ("Response A is tailored to her vegan diet.", "A"),
        ("I think A is too long and B is better.", "B"),
        # Undecided words, then a contrast that decides; or not.
        ("Both have merit, but A is better.", "A"), ("Both are tailored, but the first one is better.", "A"),
        ("Neither is perfect; however, B is more specific.", "B"), ("B is better, but both are fine.", None),
        ("I think both are fine.", None), ("A and B both fit; I cannot choose.", None),
        # Refusals, negations and two winners.
        # Small judges label their answer "A:": "A: A" answers, a bare "A:" does not, "A: B" is unclear.
        ("A: A", "A"), ("A:", None), ("B:", None), ("A: B", None), ("Verdict: A (A)", "A"), ("Verdict: A (B)", None),
        ("I'm sorry, but I can't compare these responses.", None),
        ("As an AI language model, I cannot express preferences.", None), ("Definitely a tough call.", None),
        ("B is more generic than A.", None), ("The second response is not better.", None),
        ("A is better for a vegan, but B is better for her.", None),
    ],
)
def test_verdict_parser_reads_as_a_person_would_and_never_invents_a_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        # A praise the reply denies, doubts, gives to someone else or makes depend on something is no pick.
        ("I don't think A is better.", None), ("It is not true that A is better.", None),
        ("Nobody would say B is better.", None), ("No one could argue that Response A is superior.", None),
        ("I wouldn't say B is better.", None), ("I'm not sure that A is more helpful.", None),
        ("I doubt B is more tailored to her.", None), ("It's not clear to me that the answer is A.", None),
        ("I'm not convinced Response B is the better fit.", None), ("Hardly anyone would say B is preferable.", None),
        ("I never claimed that A is better.", None), ("i dont think B is more helpful", None),
        ("I'm not so sure B is better.", None), ("It's hard to say that A is better.", None),
        ("Some might say A is better, but I'm not sure.", None), ("I would hesitate to say that B is better.", None),
        ("I would not say the second response is better.", None),
        ("After careful consideration, I do not believe Response A is the better choice here.", None),
        ("Neither response is bad, but I don't think B is better than A.", None),
        # Conditions: the pick holds only in a case the reply does not claim.
        ("If she were vegan, I would pick A.", None), ("If she had no car, the better response would be B.", None),
        ("Unless she cares more about price than taste, A is better.", None),
        ("Assuming she eats meat, B is the better response.", None),
        ("A is better only if she has a car, and we don't know that.", None),
        ("B is more helpful if she is cooking for a family.", None),
        ("Whether B is better depends on her schedule.", None),
        # A negation or a condition elsewhere leaves a clear pick standing.
        ("A is not bad, but B is better.", "B"), ("I don't think A is better. B is more tailored to her.", "B"),
        ("Response A doesn't mention her diet, so Response B is better.", "B"),
        ("There is no doubt that B is better.", "B"), ("Without a doubt, A is better.", "A"),
        ("I can't say for sure, but A seems better.", "A"), ("If I had to choose, I'd go with B.", "B"),
        ("B is better, if you ask me.", "B"), ("Even if it is longer, A is better.", "A"),
    ],
)
def test_verdict_parser_negated_hedged_or_conditional_picks_are_unparsable(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        # "A) ..." and "B) ..." list the two responses: labels, like "A:", not the answer; the conclusion picks.
        ("A) Generic tips that would suit anyone.\nB) A plan built around her night shifts and her budget.\nB", "B"),
        ("A) Lists five gyms in the city.\nB) Picks one near her office and notes the early hours.\n\nVerdict: B",
         "B"),
        ("A) Talks about saving in general.\nB) Works with her rent and her student loan.\nSo, B.", "B"),
        (("(A) Suggests a road trip.\n(B) Suggests a quiet cabin, which fits someone who hates crowds.\n"
          "I'd go with B."), "B"),
        ("A) Mentions her daughter's allergy.\nB) Short and generic.\nAnswer: A", "A"),
        ("A) Short and generic.\nB) Mentions her daughter's allergy.\nB is the better response.", "B"),
        ("**A)** Gives a weekly schedule.\n**B)** Gives a schedule that skips the days she works late.\n**Winner: B**",
         "B"),
        (("A) The first response recommends a generic reading list.\nB) The second response picks novels set in "
          "places she has lived.\nThe second one is preferable."), "B"),
        ("A) ignores her budget\nB) stays under $50\n\n**B**", "B"),
        ("A) Recommends running.\nB) Recommends swimming, easier on her knee.\nFinal answer: B", "B"),
        ("A) Covers the basics.\nB) Covers the basics and her commute.\nTherefore: B", "B"),
        (("A) Fits a beginner.\nB) Fits someone training for a marathon, which she is.\nI choose B because she "
          "already runs 40 km a week."), "B"),
        ("A) generic advice. B) advice for a night-shift nurse. Verdict: B", "B"),
        ("A) vague about her budget\nB) specific but long\nA", "A"),
        # One "B)" alone still answers; a list with no conclusion picks neither.
        ("B) It plans around her shifts, which A ignores.", "B"),
        ("A) Generic.\nB) Tailored to her.\nBoth are fine.", None), ("A) Generic.\nB)", None),
    ],
)
def test_verdict_parser_reads_the_conclusion_after_a_parenthesised_list(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        # "Both" in a phrase that weighs the two, or in a description before the pick, decides nothing.
        ("Having weighed both, A is better.", "A"), ("After comparing both responses, I would choose B.", "B"),
        ("Having read both carefully, I'd go with A.", "A"),
        ("Looking at both side by side, Response B fits her better.", "B"),
        ("Of both responses, B is the better fit.", "B"), ("After considering both, my choice is B.", "B"),
        ("Weighing both options against her schedule, the second one is preferable.", "B"),
        ("Having evaluated both answers against her needs, I prefer A.", "A"),
        ("Both are fine; I'd pick B.", "B"), ("Both mention her budget. B is more specific about her shifts.", "B"),
        ("Both responses are polite and well written. Verdict: A", "A"),
        # A concession before the main clause is a contrast: "While neither is perfect, A is ...".
        ("While neither is perfect, A is more helpful.", "A"),
        ("Although both have strengths, B is the better response.", "B"),
        # A tie, a refusal or sameness before the verdict still gives none; so does "both" after it.
        ("Having weighed both, I can't pick one.", None), ("After comparing both, it's a tie.", None),
        ("Having weighed both, they are equally good. Verdict: A", None),
        ("Both are about the same. Verdict: B", None), ("A is better, though both would do.", None),
    ],
)
def test_verdict_parser_reads_a_plain_verdict_after_an_undecided_phrase(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A is vague about her budget; B plans around it.\nVerdict: B", "B"),
        ("B ignores that she is vegan.\n\nVerdict: A.\n", "A"),
        ("Both are fine.\nVerdict: b", "B"),  # after the label, any case
        ("Verdict: A\nOn reflection, B is better.", None),  # only the last line counts
        ("A mentions her dog.\n**Verdict: A**", "A"), ("Plan A.\n**Verdict:** B", "B"), ("x\nVerdict: **A**", "A"),
        ("A mentions her dog.\nVerdict: A, since", None),  # exactly the label and the letter
        ("Response A fits better.", None),  # no verdict line at all
        ("Close call.\nVerdict: A or B", None), ("Close call.\nVerdict: a tie", None), ("", None),
        ("A fits her better.\nWinner: A", None),  # another label than the template's
    ],
)
def test_last_line_verdicts_are_strict(text, verdict):
    assert parse_last_line(text, "Verdict:") == verdict


REAL_REPLIES = json.loads((Path(__file__).parent / "data" / "judge_replies.json").read_text())["replies"]


@pytest.mark.parametrize(("text", "verdict"), [
    ("Answer A: too generic.", None),
    ("Answer B: tailored to her diet.", None),
    ("Response B: it fits her diet.\nResponse A: generic.", None),
    ("Option A: a list of tips.", None),
    ("Answer A: too generic. Answer B: better, it fits her.", None),  # B praised under its label, but by "it"
    ("Answer: A", "A"),
    ("Answer: B, it fits her diet.", "B"),
    ("Final answer A: it fits her budget.", "A"),
    ("The answer is B: it fits her.", "B"),
    ("Answer A", "A"),
])
def test_verdict_parser_reads_a_labelled_description_as_no_pick(text, verdict):
    """Issue 45, item 10 (the parser read again): "Answer A:" opening a part of the reply labels what follows,
    as "Response A:" does; it picks nothing, where "Answer: A" and "Final answer A:" declare."""
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("n", range(len(REAL_REPLIES)))
def test_real_judge_replies_read_as_labelled_by_a_person(n):
    """The tiny judge's own replies (tests/data/judge_replies.json, labelled by reading them): `reply` reads the
    label a person reads, and `last_line` never reads another letter than it."""
    item = REAL_REPLIES[n]
    assert parse_verdict(item["reply"]) == item["label"]
    assert parse_last_line(item["reply"], "Verdict:") in (None, item["label"])


def test_logprob_verdicts_and_their_margin():
    config = JudgeConfig(template="letter", read="logprobs")
    assert read_verdict(config, {"A": -0.2, "B": -1.9, "floor": None})[:2] == ("A", pytest.approx(1.7))
    assert read_verdict(config, {"A": -3.0, "B": -0.1, "floor": None})[:2] == ("B", pytest.approx(-2.9))
    # A letter the endpoint did not list is at most as likely as the least likely listed token.
    assert read_verdict(config, {"A": -0.5, "B": None, "floor": -6.0})[:2] == ("A", pytest.approx(5.5))
    assert read_verdict(config, {"A": None, "B": None, "floor": -6.0})[:2] == (None, None)
    assert read_verdict(config, {"A": -1.0, "B": -1.0, "floor": None})[0] is None  # an exact tie is no verdict


def test_verdicts_map_to_the_model_shown_in_that_position():
    assert winner_of("A", policy_is_a=True) == "policy" and winner_of("B", policy_is_a=True) == "base"
    assert winner_of("A", policy_is_a=False) == "base" and winner_of("B", policy_is_a=False) == "policy"
    assert winner_of(None, policy_is_a=True) is None


def test_counterbalanced_outcomes():
    from stargate_lite.evaluation.evaluate import win_rates

    def row(key, swapped, winner, turns=1):
        return {"pair_key": key, "swapped": swapped, "winner": winner, "turns": turns}

    judged = [row("w", 0, "policy"), row("w", 1, "policy"),  # both orders pick Q_eta: a win
              row("l", 0, "base"), row("l", 1, "base"),  # both pick Q_0: a loss
              row("t", 0, "policy", 2), row("t", 1, "base", 2),  # they disagree: a tie
              row("u", 0, "policy", 2), row("u", 1, None, 2),  # one unparsable: out of the denominator
              {**row("r", 0, None), "status": "refused"}, row("r", 1, "policy")]  # refused: counted apart
    rates = win_rates(judged)
    randomized, both = rates["win_rate"], rates["win_rate_counterbalanced"]
    assert (randomized["wins"], randomized["losses"], randomized["valid"]) == (3, 1, 4)
    assert randomized["rate"] == 0.75 and randomized["sem"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    assert (both["wins"], both["losses"], both["ties"], both["unparsable"], both["refused"]) == (1, 1, 1, 1, 1)
    assert randomized["refused"] == 1 and randomized["unparsable"] == 0
    assert both["rate"] == 0.5 and both["consistency"] == pytest.approx(2 / 3)
    assert both["by_turns"]["2"] == {**both["by_turns"]["2"], "ties": 1, "unparsable": 1, "valid": 1}
    assert win_rates(judged[:2] + [row("x", 0, "base")])["win_rate_counterbalanced"]["valid"] == 1


def test_judge_order_is_seeded_and_balanced():
    items = [f"item-{i}" for i in range(2000)]
    first = [policy_is_a(0, i) for i in items]
    assert first == [policy_is_a(0, i) for i in items]
    assert 0.45 < sum(first) / len(first) < 0.55
    assert first != [policy_is_a(1, i) for i in items]


class TruthfulJudge:
    """A judge at the boundary that knows which response is Q_eta's and always prefers it: by log-probs, or
    in the compare template's shape (a comparison, then the verdict line)."""

    name = "truthful"

    def __init__(self, policy_texts: set[str]):
        self.policy_texts = policy_texts

    def _ours_is_a(self, messages) -> bool:
        return messages[0]["content"].split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0] in self.policy_texts

    def choice_logprobs(self, conversations, choices):
        return [{"A": -0.1, "B": -4.0, "floor": None} if self._ours_is_a(m) else {"A": -4.0, "B": -0.1, "floor": None}
                for m in conversations]

    def complete_each(self, conversations, sampling):
        assert all("Verdict: A" in m[0]["content"] for m in conversations)  # the compare template asks for it
        return ["Response A is a good start, but B is vague.\nVerdict: A" if self._ours_is_a(m) else
                "A is a generic answer for a busy parent.\n\nVerdict: B" for m in conversations]


@pytest.mark.parametrize("judge", [{"template": "letter", "read": "logprobs"},
                                   {"template": "compare", "read": "last_line", "max_tokens": 256}])
def test_a_judge_that_always_picks_the_policy_credits_the_policy_in_both_orders(evaluated, eval_home, tmp_path,
                                                                                judge):
    """Through the real judge stage: swapping how a verdict maps to a model would turn every win into a loss."""
    from stargate_lite.evaluation.evaluate import _judge, namespace, win_rates
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.progress import Progress
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.store import Store

    store = Store(copy_home(eval_home, tmp_path / "copy"))
    recipe = recipe_of_run(store.get_run("tiny")).model_copy(update={"judge": JudgeConfig(**judge)})
    ns = namespace("tiny", "smollm2")
    texts = store.eval_response_texts(ns, [0, 2])
    ours = {key: t for (it, responder, key), t in texts.items() if it == 2}
    distinct = {key for key, t in ours.items() if t != texts[(0, "policy", key)]}
    assert distinct, "Q_2 and Q_0 answered every test pair alike: nothing to tell apart"
    _judge(store, ns, 2, "policy", store.pairs(ns, 2), TruthfulJudge(set(ours.values())), recipe,
           Progress(enabled=False))
    rows = [r for r in store.judgments(ns, 2, "policy", "truthful", judge_protocol(recipe.judge))
            if r["pair_key"] in distinct]
    assert len(rows) == 2 * len(distinct) and {r["swapped"] for r in rows} == {0, 1}
    assert {r["policy_is_a"] for r in rows} == {0, 1}  # Q_eta was shown in both positions
    assert all(r["winner"] == "policy" for r in rows)
    rates = win_rates(rows)
    assert rates["win_rate"]["rate"] == 1.0 and rates["win_rate_counterbalanced"]["rate"] == 1.0
    assert rates["win_rate_counterbalanced"]["consistency"] == 1.0


def test_letter_logprobs_from_llamacpp_match_transformers_and_the_greedy_reply(home):
    """The same model's P(A) and P(B) through llama.cpp (Q4_1) and transformers (fp32), on real judge prompts."""
    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.prompts import JUDGE_TEMPLATES, judge_messages
    from stargate_lite.recipe import load_recipe

    chats = ChatModels(load_recipe("tiny", THREAD_OVERRIDES).chat_models, home)
    persona = "I'm ANA. I am a retired nurse who grows vegetables and cooks for my grandchildren on weekends."
    task = "Can you suggest a weekly meal plan for me?"
    replies = ["Here is a plan with vegetables from your garden that grandchildren enjoy.", "Eat pizza every day.",
               "I cannot help with that."]
    prompts = [judge_messages(JUDGE_TEMPLATES["letter"], persona, task, a, b, "Verdict:")
               for a in replies for b in replies if a != b][:4]
    llama = chats.get("smollm2").choice_logprobs(prompts, ("A", "B"))
    hf = chats.get("smollm2-hf").choice_logprobs(prompts, ("A", "B"))
    greedy = chats.get("smollm2").complete_each(prompts, Sampling(1))
    for ours, reference, reply in zip(llama, hf, greedy):
        assert math.exp(ours["A"]) + math.exp(ours["B"]) <= 1.0
        assert abs(ours["A"] - reference["A"]) < 0.3 and abs(ours["B"] - reference["B"]) < 0.3
        if reply.strip() in ("A", "B"):
            assert (ours["A"] > ours["B"]) == (reply.strip() == "A")
    said = [reply for reply in greedy if reply]
    assert said and all(reply.truncated for reply in said)  # one token, the budget: llama.cpp says it was cut


def test_win_rate_pairs_per_turn_samples_that_many_of_each_turn_count_by_seed():
    from stargate_lite.evaluation.evaluate import win_rate_pairs

    pairs = [{"idx": i, "turns": 1 + i % 3, "task_id": f"t{i}", "persona_id": f"p{i % 4}"} for i in range(30)]
    assert win_rate_pairs(pairs, None, seed=0) == pairs
    chosen = win_rate_pairs(pairs, 4, seed=0)
    assert sorted(p["turns"] for p in chosen) == [1] * 4 + [2] * 4 + [3] * 4
    assert [p["idx"] for p in chosen] == sorted(p["idx"] for p in chosen)
    assert chosen == win_rate_pairs(list(reversed(pairs)), 4, seed=0)  # the draw, not the order given, decides
    assert chosen != win_rate_pairs(pairs, 4, seed=1)
    assert len(win_rate_pairs(pairs, 50, seed=0)) == 30  # fewer than asked: all of them


def test_the_random_condition_scores_the_gold_after_another_personas_conversation_on_the_same_task(evaluated,
                                                                                                   eval_home):
    with sqlite3.connect(eval_home / "stargate.db") as db:
        rows = db.execute("select e.pair_key, p.task_id, p.persona_id from eval_scores e "
                          "join conversations c on c.id = e.conversation_id join pairs p on p.id = c.pair_id "
                          "where e.condition = 'random'").fetchall()
    assert rows
    for pair_key, task_id, persona_id in rows:
        task, persona = pair_key.split("|")
        assert task_id == task and persona_id != persona, pair_key


class CountingJudge:
    """A judge at the boundary that prefers response A, fails its first `fail` prompts and counts what it is asked."""

    name = "counting"

    def __init__(self, fail: int = 0, refuse: int = 0):
        self.fail, self.refuse, self.asked = fail, refuse, 0

    def choice_logprobs(self, conversations, choices):
        from stargate_lite.engines.chat_models import ChatFailure

        results = []
        for _ in conversations:
            self.asked += 1
            if self.fail:
                self.fail -= 1
                results.append(ChatFailure("the judge's server answered 503"))
            elif self.refuse:
                self.refuse -= 1
                results.append(ChatFailure("HTTP 400: flagged by the content filter", refused=True))
            else:
                results.append({"A": -0.1, "B": -3.0, "floor": None})
        return results


def test_a_failed_verdict_is_asked_again_and_a_second_order_adds_only_the_swapped_verdicts(evaluated, eval_home,
                                                                                         tmp_path):
    from stargate_lite.errors import StargateError
    from stargate_lite.evaluation.evaluate import _judge, namespace
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.progress import Progress
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.store import Store

    store = Store(copy_home(eval_home, tmp_path / "copy"))
    recipe = recipe_of_run(store.get_run("tiny"))
    one_order = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"judge_orders": 1})})
    ns, quiet = namespace("tiny", "smollm2"), Progress(enabled=False)
    pairs = store.pairs(ns, 1)
    assert len(pairs) >= 2

    def verdicts() -> dict:
        return {(r["pair_key"], r["swapped"]): r["verdict"]
                for r in store.judgments(ns, 1, "policy", "counting", judge_protocol(recipe.judge))}

    down = CountingJudge(fail=1)
    with pytest.raises(StargateError, match="1 judgments failed .*judge's server answered 503"):
        _judge(store, ns, 1, "policy", pairs, down, one_order, quiet)
    assert down.asked == len(pairs) and len(verdicts()) == len(pairs) - 1
    up = CountingJudge()
    _judge(store, ns, 1, "policy", pairs, up, one_order, quiet)
    assert up.asked == 1 and len(verdicts()) == len(pairs)  # only the failed verdict was asked again
    first = verdicts()
    both = CountingJudge()
    _judge(store, ns, 1, "policy", pairs, both, recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"judge_orders": 2})}), quiet)
    assert both.asked == len(pairs)  # the swapped order only
    after = verdicts()
    assert {k: v for k, v in after.items() if k[1] == 0} == first and {s for _, s in after} == {0, 1}


def test_a_refused_verdict_is_stored_counted_apart_and_not_asked_again(evaluated, eval_home, tmp_path):
    from stargate_lite.evaluation.evaluate import _judge, namespace, win_rates
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.progress import Progress
    from stargate_lite.runs import recipe_of_run

    store = Store(copy_home(eval_home, tmp_path / "copy"))
    recipe = recipe_of_run(store.get_run("tiny"))
    ns, quiet = namespace("tiny", "smollm2"), Progress(enabled=False)
    pairs = store.pairs(ns, 1)
    _judge(store, ns, 1, "policy", pairs, CountingJudge(refuse=1), recipe, quiet)  # no error: nothing to retry
    rows = store.judgments(ns, 1, "policy", "counting", judge_protocol(recipe.judge))
    assert len(rows) == 2 * len(pairs) and [r["status"] for r in rows].count("refused") == 1
    (refused,) = [r for r in rows if r["status"] == "refused"]
    assert refused["winner"] is None and "content filter" in refused["raw"]
    again = CountingJudge()
    _judge(store, ns, 1, "policy", pairs, again, recipe, quiet)
    assert again.asked == 0
    rates = win_rates(rows)
    for key in ("win_rate", "win_rate_counterbalanced"):  # its pair counts as refused, in neither denominator
        assert (rates[key]["refused"], rates[key]["unparsable"], rates[key]["valid"]) == (1, 0, len(pairs) - 1), key

    # A reply read as a whole that hit the judge's budget before naming a response is truncated, not unparsable.
    by_reply = recipe.model_copy(update={"judge": JudgeConfig(template="letter", read="reply")})
    _judge(store, ns, 1, "policy", pairs, CutJudge(), by_reply, quiet)
    cut = store.judgments(ns, 1, "policy", "cut", judge_protocol(by_reply.judge))
    assert cut and {r["status"] for r in cut} == {"truncated"} and {r["raw"] for r in cut} == {"Well, both of"}
    assert win_rates(cut)["win_rate"]["truncated"] == len(pairs)


class CutJudge:
    """A judge whose every reply stops at its token budget mid-sentence."""

    name = "cut"

    def complete_each(self, conversations, sampling):
        from stargate_lite.engines.chat_models import Reply

        return [Reply("Well, both of", truncated=True) for _ in conversations]


def test_a_store_with_rows_from_every_older_schema_level_upgrades_and_reads_as_it_was(evaluated, eval_home,
                                                                                    tmp_path):
    """For each level from m001 to the one before today's: a store holding the evaluated run's rows as far as that
    level's tables have columns for them, opened by today's code. It migrates, and status and the evaluation read the same run:
    the same counts, stages and log-probs; questions per conversation recomputed from the turns (m012); win
    rates from verdicts that carry a protocol (m007 on)."""
    import sqlite_utils

    from stargate_lite.commands.status import run_status
    from stargate_lite.evaluation.evaluate import summarize
    from stargate_lite.evaluation.judge import judge_protocol
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.store import MIGRATIONS, Store

    today = Store(eval_home)
    protocol = judge_protocol(recipe_of_run(today.get_run("tiny")).judge)
    expected_status = run_status(today)["runs"]
    expected_eval = summarize(today, "tiny", "smollm2", "smollm2", protocol)["iterations"]
    kept = ("iteration", "split", "pairs", "conversations", "scored", "selected", "responses", "train_loss",
            "stages_done", "complete")
    for level in range(1, len(MIGRATIONS)):
        home = tmp_path / f"level-{level}"
        home.mkdir()
        old = sqlite_utils.Database(home / "stargate.db")
        old["_migrations"].create({"name": str, "applied_at": float}, pk="name")
        for name, migrate in MIGRATIONS[:level]:
            migrate(old)
            old["_migrations"].insert({"name": name, "applied_at": 0.0})
        for table in old.table_names():
            if table == "_migrations":
                continue
            columns = [c.name for c in old[table].columns]
            rows = today.db.query(f"select {', '.join(f'[{c}]' for c in columns)} from [{table}]")  # e.g. `commit`
            old[table].insert_all(rows)
        old.conn.close()

        store = Store(home)
        assert {r["name"] for r in store.db["_migrations"].rows} == {name for name, _ in MIGRATIONS}
        ((run,), (want,)) = (run_status(store)["runs"], expected_status)
        assert [{k: it[k] for k in kept} for it in run["iterations"]] == \
            [{k: it[k] for k in kept} for it in want["iterations"]], level
        assert [it["efficiency"]["questions"] for it in run["iterations"]] == \
            [it["efficiency"]["questions"] for it in want["iterations"]], level
        if level >= 2:  # the evaluation's tables exist from m002
            got = summarize(store, "tiny", "smollm2", "smollm2", protocol)["iterations"]
            assert [it["logprob"] for it in got] == [it["logprob"] for it in expected_eval], level
            if level >= 7:  # verdicts carry their protocol from m007
                assert [it["win_rate"] for it in got] == [it["win_rate"] for it in expected_eval], level


def test_a_runs_records_export_as_a_dataset_that_datasets_loads(evaluated, eval_home, tmp_path):
    """`export --data`: every table of the run and its evaluation, one configuration each, read back by the
    `datasets` library as a user would, from the folder's card and from the Parquet files themselves."""
    from datasets import load_dataset

    out = tmp_path / "records"
    printed = cli("export", "--data", str(out), home=eval_home).stdout
    with sqlite3.connect(eval_home / "stargate.db") as db:
        stored = {table: db.execute(f"select count(*) from {table}").fetchone()[0]
                  for table in ("conversations", "pairs", "selections", "responses", "judgments")}
        turns = {cid: [{"role": role, "text": text} for role, text in db.execute(
            "select role, text from turns where conversation_id = ? order by idx", [cid])]
            for (cid,) in db.execute("select id from conversations")}
        kept = {cid for (cid,) in db.execute("select conversation_id from selections")}
    assert all(stored.values()) and ", ".join(f"{n} {t}" for t, n in stored.items()) in " ".join(printed.split())

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "license: unknown" in card and "config_name: judgments" in card
    assert "`facts_active`" in card and "`facts_passive`" in card and "`facts_never`" in card
    cache = tmp_path / "datasets-cache"
    loaded = {name: load_dataset(str(out), name, split="train", cache_dir=str(cache)) for name in stored}
    assert {name: len(rows) for name, rows in loaded.items()} == stored
    conversations = loaded["conversations"]
    assert sorted(conversations.unique("namespace")) == ["tiny", "tiny#eval:smollm2"]
    for row in conversations:
        # The tiny recipe's user is free: no turn was given facts; each conversation's persona facts are counted.
        assert row["turns"] == [{**t, "facts": None} for t in turns[row["id"]]] and row["kept"] == (row["id"] in kept)
        assert row["facts"] > 0 and row["facts_active"] + row["facts_passive"] + row["facts_never"] == row["facts"]
        assert row["reward"] == row["logprob"] is not None  # no question cost in the tiny recipe
    judgments = loaded["judgments"]
    assert all(j["policy_response"] and j["base_response"] and j["winner"] in ("base", "policy") for j in judgments)
    plain = load_dataset("parquet", data_files=str(out / "pairs" / "*.parquet"), split="train", cache_dir=str(cache))
    assert plain.to_list() == loaded["pairs"].to_list() and all(p["gold"] for p in plain)

    again = cli("export", "--data", str(out), home=eval_home, check=False)
    assert again.returncode == 2 and "exists: choose a new --data folder" in again.stderr
    both = cli("export", "--data", str(tmp_path / "x"), "--out", str(tmp_path / "y"), home=eval_home, check=False)
    assert both.returncode == 2 and "give one of --out" in both.stderr and not (tmp_path / "x").exists()


def _browse(home: Path, *paths: str) -> list:
    """Datasette's own test client on `browse`'s app: each path's response."""
    from stargate_lite.commands.browse import browse_app

    app = browse_app(home)

    async def get() -> list:
        await app.invoke_startup()
        return [await app.client.get(path) for path in paths]

    return asyncio.run(get())


def test_browse_serves_the_store_read_only_with_described_tables_and_a_researchers_queries(evaluated, eval_home,
                                                                                           tmp_path):
    home = copy_home(eval_home, tmp_path / "home")
    store = Store(home)
    (selection, *_) = store.selections("tiny", 1)
    conversations = store.rows("select id from conversations where pair_id = ?", [selection["pair_id"]])
    turns = store.turns([c["id"] for c in conversations])
    ns = "tiny#eval:smollm2"
    ranked, judged, failures, times, page, write = _browse(
        home, f"/stargate/pair_conversations.json?_shape=objects&pair_id={quote(selection['pair_id'])}",
        f"/stargate/judgments_side_by_side.json?_shape=objects&namespace={quote(ns)}",
        "/stargate/failures.json?_shape=objects", "/stargate/stage_times.json?_shape=objects&run_id=tiny",
        "/stargate/conversations", f"/stargate.json?sql={quote('delete from runs')}")
    # A pair's conversations, best reward first, the kept one marked, each with its turns in order.
    rows = ranked.json()["rows"]
    assert len(rows) == len(conversations) >= 2
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)
    assert [r["conversation_id"] for r in rows if r["kept"] == "kept"] == [selection["conversation_id"]]
    for row in rows:
        expected = [("Q" if t["role"] == "questioner" else "R") + ": " + t["text"] for t in turns[row["conversation_id"]]]
        assert expected and row["conversation"] == "\n".join(expected)
    # The evaluation's verdicts with both responses beside them: Q_eta's of its iteration, Q_0's of iteration 0.
    verdicts = judged.json()["rows"]
    stored = store.rows("select iteration, pair_key, text from eval_responses where ns = ? and responder = 'policy'",
                        [ns])
    texts = {(r["iteration"], r["pair_key"]): r["text"] for r in stored}
    assert len(verdicts) == store.value("select count(*) from judgments where ns = ?", [ns]) > 0
    assert all(v["policy_response"] == texts[v["iteration"], v["pair_key"]] and
               v["base_response"] == texts[0, v["pair_key"]] for v in verdicts)
    assert failures.status_code == 200 and failures.json()["rows"] == []
    assert [(t["iteration"], t["stage"]) for t in times.json()["rows"]] == \
        [(0, "data")] + [(i, s) for i in (1, 2) for s in STAGES]
    assert "The Questioner policy" in page.text or "the Questioner policy" in page.text
    assert write.status_code >= 400  # Datasette runs no statement that writes
    assert store.value("select count(*) from runs") == 1


def test_browse_renders_a_pairs_conversation_in_a_real_headless_browser(evaluated, eval_home, tmp_path):
    """`stargate-lite browse` as a user starts it, and the canned query's page as Chromium renders it (CI installs
    Debian's chromium; --no-sandbox: CI runs as root)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        skip_or_fail("no chromium on this machine (.ci/run installs Debian's)")
    home = copy_home(eval_home, tmp_path / "home")
    (selection, *_) = Store(home).selections("tiny", 1)
    answer = Store(home).turns([selection["conversation_id"]])[selection["conversation_id"]][-1]["text"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "stargate_lite", "browse", "--port", str(port)],
                              env={**os.environ, "STARGATE_HOME": str(home)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/stargate"
        assert f"Serving the store at {url}" in server.stdout.readline()
        deadline = time.monotonic() + 60
        while True:  # the line comes before uvicorn binds the port
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
                time.sleep(0.1)
        page = f"{url}/pair_conversations?pair_id={quote(selection['pair_id'])}"
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "A pair's conversations, best reward first" in dom
    assert html.escape(answer.split("\n")[0].strip()[:40], quote=False) in dom and ">kept<" in dom
