"""End to end through the CLI on the real tiny models: two iterations, resume after SIGKILL, no duplicates."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, run_args, tensorboard_points, wait_for

import stargate_lite
from stargate_lite.runs import STAGES
from stargate_lite.store import Store

TABLES = ("tasks", "personas", "golds", "pairs", "conversations", "turns", "scores", "selections", "responses",
          "trainings")


# Evaluation rows (run ids "RUN#eval:...") may share the home; these tests compare the run's own rows.
NOT_EVAL = {"pairs": "id", "conversations": "id", "turns": "conversation_id", "scores": "conversation_id",
            "selections": "pair_id", "responses": "pair_id"}


def counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "stargate.db") as db:
        return {t: db.execute(f"select count(*) from {t} where {NOT_EVAL.get(t, '1')} not like '%#eval:%'")
                .fetchone()[0] for t in TABLES}


def snapshot(home: Path) -> dict:
    """Everything generated, by key: two runs with the same seed must agree on all of it."""
    with sqlite3.connect(home / "stargate.db") as db:
        return {
            "turns": db.execute("select conversation_id, idx, role, text from turns "
                                "where conversation_id not like '%#eval:%' order by 1, 2").fetchall(),
            "scores": db.execute("select conversation_id, logprob from scores "
                                 "where conversation_id not like '%#eval:%' order by 1").fetchall(),
            "selections": db.execute("select pair_id, conversation_id from selections order by 1").fetchall(),
            "responses": db.execute("select pair_id, text from responses order by 1").fetchall(),
            "golds": db.execute("select id, text from golds order by 1").fetchall(),
        }


def test_two_iterations_complete_with_consistent_records(finished):
    report = json.loads(cli("status", "--json", home=finished).stdout)
    (run,) = report["runs"]
    assert run["id"] == "tiny"
    assert [it["iteration"] for it in run["iterations"]] == [1, 2]
    assert [it["split"] for it in run["iterations"]] == ["A", "B"]
    for it in run["iterations"]:
        assert it["complete"]
        assert it["pairs"] == 2  # 2 tasks x 1 persona
        assert it["conversations"] == it["scored"] == 2 * it["pairs"]
        assert it["selected"] == it["responses"] == it["pairs"]
        assert Path(it["adapter"], "adapter_config.json").is_file()
        assert math.isfinite(it["train_loss"])
    with sqlite3.connect(finished / "stargate.db") as db:
        logprobs = [r[0] for r in db.execute("select logprob from scores")]
        assert logprobs and all(math.isfinite(lp) and lp < 0 for lp in logprobs)
        # Iteration 2 worked on split B: its pairs' tasks and personas are B's.
        splits = db.execute(
            "select distinct t.split, pe.split from pairs p join tasks t on t.id = p.task_id "
            "join personas pe on pe.id = p.persona_id where p.run_id = 'tiny' and p.iteration = 2").fetchall()
        assert splits == [("B", "B")]
        # Every conversation has its pair's number of question/answer turns and ends with an answer.
        rows = db.execute(
            "select c.turns, count(t.idx), max(t.idx), "
            "(select role from turns t2 where t2.conversation_id = c.id order by idx desc limit 1) "
            "from conversations c join turns t on t.conversation_id = c.id group by c.id").fetchall()
        assert rows and all(n == 2 * k and last == n - 1 and role == "roleplayer" for k, n, last, role in rows)
        # The selected conversation is the best-scoring of its pair.
        best = db.execute(
            "select s.pair_id, s.logprob, (select max(sc.logprob) from scores sc join conversations c "
            "on c.id = sc.conversation_id where c.pair_id = s.pair_id) from selections s").fetchall()
        assert best and all(lp == top for _, lp, top in best)
        policies = dict(db.execute("select iteration, policy from responses group by iteration"))
        assert policies == {1: "base", 2: "iteration-1"}
    assert (finished / "runs" / "tiny" / "recipe.json").is_file()
    # Before any evaluation, the report still states the run; the evaluation's section says there is none yet.
    written = stargate_lite.report(finished)
    assert written["summary"] is None and not written["plots"]
    text = written["report"].read_text()
    assert "No evaluation with this roleplayer yet" in text and "**Where the time went**" in text


def test_status_reports_each_iterations_efficiency(finished, questioner):
    """The metrics of `status`, recomputed here from the stored texts with the Questioner's tokenizer."""
    from statistics import fmean

    def tokens(text: str) -> int:
        return len(questioner.tokenizer(text, add_special_tokens=False)["input_ids"])

    report = json.loads(cli("status", "--json", home=finished).stdout)
    table = cli("status", home=finished).stdout
    assert "questions" in table and "user" in table and "response" in table  # every figure: test_cli.py
    with sqlite3.connect(finished / "stargate.db") as db:
        for it in report["runs"][0]["iterations"]:
            eff, n = it["efficiency"], it["iteration"]
            conversations = db.execute("select id, turns from conversations where run_id = 'tiny' and iteration = ?",
                                       [n]).fetchall()
            questions, typed = [], []
            for cid, _ in conversations:
                turns = db.execute("select role, text from turns where conversation_id = ?", [cid]).fetchall()
                questions.append(sum(role == "questioner" and "?" in text for role, text in turns))
                typed.append(sum(tokens(text) for role, text in turns if role == "roleplayer"))
            responses = [tokens(text) for (text,) in db.execute(
                "select text from responses where run_id = 'tiny' and iteration = ?", [n])]
            assert eff["questions"]["n"] == len(conversations) == it["conversations"]
            assert eff["questions"]["mean"] == pytest.approx(fmean(questions))
            assert eff["user_tokens"]["mean"] == pytest.approx(fmean(typed)) and min(typed) > 0
            assert eff["response_tokens"]["mean"] == pytest.approx(fmean(responses))
            assert eff["response_tokens"]["n"] == it["responses"]
            assert eff["turns"]["mean"] == pytest.approx(fmean(k for _, k in conversations))
            # The simulator audit, per Roleplayer, over the same conversations (the status sample holds them all).
            ((name, audit),) = it["audit"].items()
            assert name == "smollm2" and audit["conversations"] == len(conversations)
            assert audit["answers"] > 0 and 0 <= audit["role_breaks"] <= 1
            assert audit["leakage"]["n"] > 0 and 0 <= audit["leakage"]["mean"] <= 1
            assert set(eff["by_turns"]) == {str(k) for _, k in conversations}
            assert {int(q): c for q, c in eff["question_counts"].items()} == {
                q: questions.count(q) for q in set(questions)}


def test_adapters_load_and_differ_from_the_base(finished, questioner):
    import torch

    report = json.loads(cli("status", "--json", home=finished).stdout)
    adapter = report["runs"][0]["iterations"][1]["adapter"]
    policy = questioner.load_policy(adapter)
    ids = torch.tensor([questioner.tokenizer("My name is Mei. Plan my week.")["input_ids"]])
    with torch.no_grad():
        tuned = policy(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
    assert not torch.allclose(tuned, base)


def test_rerunning_a_finished_run_adds_nothing(finished):
    before = counts(finished)
    cli(*run_args(), home=finished)
    assert counts(finished) == before


def test_a_third_iteration_continues_a_finished_run_from_its_second_policy(finished):
    before = snapshot(finished)
    with sqlite3.connect(finished / "stargate.db") as db:
        adapters = db.execute("select iteration, adapter from trainings order by 1").fetchall()
    args = run_args()
    cli(*args[:2], "3", *args[3:], home=finished)
    assert snapshot(finished)["turns"][: len(before["turns"])] == before["turns"]  # iterations 1-2 untouched
    with sqlite3.connect(finished / "stargate.db") as db:
        assert db.execute("select iteration, adapter from trainings where iteration < 3 order by 1").fetchall() == \
            adapters
        assert db.execute("select split from iterations where iteration = 3").fetchone()[0] == "A"  # A, B, A
        policies = {p for (p,) in db.execute("select distinct policy from conversations where iteration = 3 "
                                             "and run_id = 'tiny'")}
        assert policies == {"iteration-2"}  # simulated by Q_2, trained again from the base
        assert db.execute("select count(*) from trainings where iteration = 3").fetchone()[0] == 1
    report = json.loads(cli("status", "--json", home=finished).stdout)
    assert [it["iteration"] for it in report["runs"][0]["iterations"]] == [1, 2, 3]
    assert all(it["complete"] for it in report["runs"][0]["iterations"])


def _not_done(stage: str, iteration: int) -> str:
    return f"not exists (select 1 from stages where iteration = {iteration} and stage = '{stage}')"


# The tables each chunked stage writes to, chunk by chunk.
CHUNKED = {"pairs": "pairs", "simulate": "conversations", "score": "scores", "select": "selections",
           "respond": "responses"}


def _hit(point: str) -> str:
    """What the store holds once a run is stopped at a named point (runs.stop_point): that stage's first rows
    committed and the stage not yet marked done; for training, its record not yet written."""
    if point == "personas":
        return "select count(*) between 1 and 3 from personas"  # 4 wanted
    if point == "golds":
        return "select count(*) > 0 and not exists (select 1 from pairs) from golds"
    stage, iteration = point.split("/")
    if stage in CHUNKED:
        return (f"select count(*) > 0 and {_not_done(stage, int(iteration))} from {CHUNKED[stage]} "
                f"where iteration = {iteration}")
    trained = f"not exists (select 1 from trainings where iteration = {iteration})"
    return f"select {_not_done('train', int(iteration))} and {trained}" if stage == "train" else f"select {trained}"


# Every named point of a run, in order, with the signal the run gets there: personas a Ctrl-C and then a SIGKILL
# (the rerun gets one persona further), golds a Ctrl-C (at this scale they are one chunk: nothing is left for a
# second stop), iteration 1's stages a Ctrl-C, iteration 2's a SIGKILL; RANDOM is a SIGKILL at a seeded random
# moment of iteration 2's training, at no named point.
RANDOM = "random"
WALK = [("personas", "INT"), ("personas", "KILL"), ("golds", "INT"),
        *[(f"{stage}/1", "INT") for stage in (*CHUNKED, "train", "trained")],
        *[(f"{stage}/2", "KILL") for stage in CHUNKED], (RANDOM, "KILL"), ("train/2", "KILL"), ("trained/2", "KILL")]
ORPHANS = [
    "select count(*) from turns t left join conversations c on c.id = t.conversation_id where c.id is null",
    "select count(*) from scores s left join conversations c on c.id = s.conversation_id where c.id is null",
    "select count(*) from conversations c left join pairs p on p.id = c.pair_id where p.id is null",
    "select count(*) from selections s left join pairs p on p.id = s.pair_id where p.id is null",
    "select count(*) from responses r left join selections s on s.pair_id = r.pair_id where s.pair_id is null",
    ("select count(*) from pairs p left join golds g on g.task_id = p.task_id and g.persona_id = p.persona_id "
     "where g.id is null"),
]


def _random_kill(args: list[str], home: Path) -> None:
    """Start the run, and SIGKILL it at a seeded random moment once its training of iteration 2 has begun."""
    process = subprocess.Popen([sys.executable, "-m", "stargate_lite", *args],
                               env={**os.environ, "STARGATE_HOME": str(home)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(home, "select count(*) from stage_starts where iteration = 2 and stage = 'train'", process)
    time.sleep(random.Random(1234).uniform(0, 1.5))
    assert process.poll() is None, "the run ended before the random kill"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_run_stopped_by_ctrl_c_or_sigkill_at_every_named_point_resumes_to_the_uninterrupted_result(finished,
                                                                                                    tmp_path):
    """One run from nothing, stopped at every named point in turn (each rerun gets further; WALK), and once at a
    random moment; the store shows each point hit. A last run must give the uninterrupted run, record for record,
    with no orphan rows, and its curves (track tensorboard, which changes no record) hold every point once."""
    home = tmp_path / "stopped"
    tracked = run_args("track=tensorboard")
    for point, how in WALK:
        if point == RANDOM:
            _random_kill(tracked, home)
            continue
        # A Ctrl-C'd run starts with SIGINT ignored: before the CLI took the signal back, a Ctrl-C was lost there
        # and the run went on to finish with exit 0.
        result = cli(*tracked, home=home, check=False, stop_at=f"{point}={how}", sigint_ignored=how == "INT")
        if how == "INT":
            assert result.returncode == 130, f"interrupted at {point}: exit {result.returncode}\n{result.stderr[-2000:]}"
            assert "run the same command again to resume" in result.stderr and "Traceback" not in result.stderr, point
        else:
            assert result.returncode == -signal.SIGKILL, f"the run never reached {point}: {result.stderr[-2000:]}"
        with sqlite3.connect(home / "stargate.db") as db:
            assert db.execute(_hit(point)).fetchone()[0], f"stopped at {point}, the store does not show it"
        if point.startswith("trained/"):  # the adapter in place, its record not yet
            assert (home / "runs" / "tiny" / f"iteration-{point[-1]}" / "adapter" / "adapter_config.json").is_file()
        if point == "trained/1":  # what `status` shows of it
            report = json.loads(cli("status", "--json", home=home).stdout)
            assert [it["stages_done"] for it in report["runs"][0]["iterations"]] == [
                ["pairs", "simulate", "score", "select", "respond"]]
    cli(*tracked, home=home)
    assert counts(home) == counts(finished)
    assert snapshot(home) == snapshot(finished)
    _each_point_once(home)
    with sqlite3.connect(home / "stargate.db") as db:
        orphans = [db.execute(sql).fetchone()[0] for sql in ORPHANS]
    assert orphans and not any(orphans)
    # Each stage's recorded start is its last attempt's: every stage has one, before its end.
    times = Store(home).stage_times("tiny")
    assert len(times) == 1 + 2 * len(STAGES) and all(t["started_at"] <= t["done_at"] for t in times)
    report = json.loads(cli("status", "--json", home=home).stdout)
    assert report["runs"][0]["iterations"] and all(it["complete"] for it in report["runs"][0]["iterations"])
    assert not list(home.rglob("*.tmp"))  # no half-written adapter or model left behind as if finished


def _each_point_once(home: Path) -> None:
    """The killed run's curves: the train loss of every optimizer step of both iterations once, equal to the
    trainings' (the same seed in every attempt), its tokens summing to theirs; each stage's and iteration's
    points once."""
    points = tensorboard_points(home / "runs" / "tiny" / "tensorboard")
    assert all(len({s for s, _ in values}) == len(values) for values in points.values())
    store = Store(home)
    trainings = [store.training("tiny", i) for i in (1, 2)]
    losses = [loss for t in trainings for loss in json.loads(t["losses"])]
    assert [s for s, _ in points["train/loss"]] == list(range(1, len(losses) + 1))
    assert [v for _, v in points["train/loss"]] == pytest.approx(losses, rel=1e-5)
    tokens = [v for _, v in points["train/tokens"]]
    steps = trainings[0]["steps"]
    assert [sum(tokens[:steps]), sum(tokens[steps:])] == [t["trained_tokens"] for t in trainings]
    assert len(points["train/lr"]) == len(losses)
    assert [s for s, _ in points["stage/data/seconds"]] == [0]
    for stage in STAGES:
        assert [s for s, _ in points[f"stage/{stage}/seconds"]] == [1, 2], stage
    assert [s for s, _ in points["stage/simulate/tokens_per_s"]] == [1, 2]
    assert [s for s, _ in points["iteration/mean_reward"]] == [1, 2]
    assert [v for _, v in points["iteration/train_loss"]] == pytest.approx([t["final_loss"] for t in trainings])


def test_a_changed_recipe_does_not_silently_resume(finished):
    result = cli(*run_args(), "--set", "simulate.max_turns=3", home=finished, check=False)
    assert result.returncode == 2
    assert "different recipe" in result.stderr and "simulate.max_turns" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_trained_iteration_left_unfinished_is_finished_on_resume(finished, tmp_path):
    """Stores from before training and finish were one transaction can hold a trained, unfinished iteration:
    the next run finishes it without training again."""

    from stargate_lite.loop import run
    from stargate_lite.progress import Progress
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.store import Store

    home = finished  # this test's own copy
    store = Store(home)
    trained_at = store.training("tiny", 2)["finished_at"]
    with store.transaction():
        store.db.execute("update iterations set finished_at = null where run_id = 'tiny' and iteration = 2")
    run(recipe_of_run(store.get_run("tiny")), 2, home=home, run_id="tiny", progress=Progress(enabled=False))
    iterations = store.iterations("tiny")
    assert len(iterations) == 2 and all(it["finished_at"] is not None for it in iterations)
    assert store.training("tiny", 2)["finished_at"] == trained_at  # not trained again


def test_a_resumed_score_stage_redoes_whole_chunks_at_fixed_indices(finished, questioner, tmp_path, monkeypatch):
    """Chunks sit at fixed indices of the iteration's conversations, as simulate's do: whatever was left, the
    rerun scores the chunks an uninterrupted run scores, so forms the same batches and stores the same floats."""

    from stargate_lite.progress import Progress
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages import score
    from stargate_lite.store import Store

    home = finished  # this test's own copy
    monkeypatch.setattr(score, "SCORE_CHUNK", 2)
    batches, real = [], score.score_sums
    monkeypatch.setattr(score, "score_sums", lambda model, encoded, **kw: batches.append(len(encoded))
                        or real(model, encoded, **kw))
    model = questioner.load_base()

    def scores_after_deleting(sql: str) -> dict[str, float]:
        with sqlite3.connect(home / "stargate.db") as db:
            db.execute(sql)
        score.score_stage(Store(home), "tiny", 1, model, questioner, load_recipe("tiny").score,
                          Progress(enabled=False))
        with sqlite3.connect(home / "stargate.db") as db:
            return dict(db.execute("select conversation_id, logprob from scores where iteration = 1"))

    uninterrupted = scores_after_deleting("delete from scores where iteration = 1")
    assert len(uninterrupted) == 4 and batches == [2, 2]
    second = sorted(uninterrupted)[1]
    batches.clear()
    resumed = scores_after_deleting(f"delete from scores where conversation_id = '{second}'")  # half a chunk left
    assert batches == [2]  # the whole first chunk again, not its missing half alone
    assert resumed == uninterrupted  # raw floats


def test_training_starts_with_the_earlier_stages_models_and_chat_models_released(finished, monkeypatch):
    """The memory hand-over (loop.hand_over_memory): when the train stage begins, every model the iteration's
    earlier stages loaded (the policy and the Roleplayer) is gone, weak references dead."""
    import shutil
    import weakref

    from stargate_lite import loop
    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.progress import Progress
    from stargate_lite.runs import recipe_of_run
    from stargate_lite.store import Store

    home = finished  # this test's own copy, with iteration 2 undone after its pairs
    with sqlite3.connect(home / "stargate.db") as db:
        db.execute("delete from turns where conversation_id in (select id from conversations where iteration = 2)")
        for table in ("conversations", "scores", "selections", "responses", "trainings"):
            db.execute(f"delete from {table} where iteration = 2")
        db.execute("delete from stages where iteration = 2 and stage != 'pairs'")
        db.execute("update iterations set finished_at = null where iteration = 2")
    shutil.rmtree(home / "runs" / "tiny" / "iteration-2")

    loaded = []  # (kind, weak reference) of each model and chat model loaded, once each

    def track(model):
        if not any(ref() is model for _, ref in loaded):
            loaded.append((type(model).__name__, weakref.ref(model)))
        return model

    load_base, get = Questioner.load_base, ChatModels.get
    monkeypatch.setattr(Questioner, "load_base", lambda self: track(load_base(self)))
    monkeypatch.setattr(ChatModels, "get", lambda self, name: track(get(self, name)))
    alive_at_training = []

    class TrainingBegins(Exception):
        """Ends the run where training would begin: the training itself is not this test's subject."""

    def checked(*args, **kwargs):
        alive_at_training.append([kind for kind, ref in loaded if ref() is not None])
        raise TrainingBegins

    monkeypatch.setattr(loop, "train_adapter", checked)
    store = Store(home)
    with pytest.raises(TrainingBegins):
        loop.run(recipe_of_run(store.get_run("tiny")), 2, home=home, run_id="tiny", progress=Progress(enabled=False))
    kinds = [kind for kind, _ in loaded]
    # The policy that simulate, score and respond share, and the Roleplayer (training loads its own base).
    assert kinds == ["LlamaForCausalLM", "LlamaCppChat"], kinds
    assert alive_at_training == [[]], f"still alive when training began: {alive_at_training}"
    assert store.responses("tiny", 2) and store.training("tiny", 2) is None
