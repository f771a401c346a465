import sqlite3

import pytest

from stargate_lite.errors import StargateError
from stargate_lite.store import Store
from stargate_lite.store.reward import RewardTerms


def test_migrations_create_the_schema_once(home):
    store = Store(home)
    Store(home)  # a second open applies nothing twice
    names = [r["name"] for r in store.rows("select name from _migrations")]
    assert names == ["m001_initial", "m002_eval", "m003_chats", "m004_failures", "m005_trimmed_answers",
                     "m006_training_backend", "m007_judge_protocol", "m008_training_format",
                     "m009_adapter_paths_in_home", "m010_scale_indexes",
                     "m011_training_processes", "m012_efficiency", "m013_question_cost", "m014_roleplayers",
                     "m015_training_method", "m016_policy_steps", "m017_turn_scores", "m018_stage_starts",
                     "m019_tracked", "m020_tracked_points", "m021_cut_turns", "m022_persona_facts"]
    assert store.db["turns"].columns_dict == {
        "conversation_id": str, "idx": int, "role": str, "text": str, "is_question": int, "trimmed": int,
        "n_tokens": int, "cut": int, "facts": str,
    }
    assert store.db["conversations"].columns_dict == {
        "id": str, "run_id": str, "iteration": int, "pair_id": str, "sample": int, "turns": int, "policy": str,
        "questions": int, "answer": str, "roleplayer": str, "answer_cut": int,
    }
    assert store.db["turns"].pks == ["conversation_id", "idx"]
    assert store.db["judgments"].columns_dict == {
        "id": str, "ns": str, "iteration": int, "responder": str, "judge": str, "pair_key": str, "turns": int,
        "policy_is_a": int, "verdict": str, "winner": str, "status": str, "raw": str, "protocol": str, "swapped": int,
        "margin": float,
    }
    assert store.db["trainings"].columns_dict["format"] is str
    assert store.value("pragma journal_mode") == "wal"


def test_a_store_from_a_newer_version_is_refused(home):
    Store(home)
    with sqlite3.connect(home / "stargate.db") as conn:
        conn.execute("insert into _migrations values ('m999_future', 0)")
    with pytest.raises(StargateError, match="newer stargate-lite"):
        Store(home)


def test_inserting_the_same_rows_twice_keeps_one_copy(home):
    store = Store(home)
    row = {"id": "d/A/task-0000", "dataset": "d", "split": "A", "idx": 0, "text": "Plan my week."}
    store.insert_rows("tasks", [row], pk="id")
    store.insert_rows("tasks", [row], pk="id")
    assert store.value("select count(*) from tasks") == 1


def test_training_done_and_iteration_finished_are_one_transaction(home):
    """A crash while the train stage records itself leaves no half: a trigger makes the finish fail, and the
    training row and the stage mark written before it in the same transaction are rolled back."""
    store = Store(home)
    store.start_iteration("r", 1, "A")
    record = {"run_id": "r", "iteration": 1, "adapter": "a", "examples": 1, "trained_tokens": 1, "steps": 1,
              "final_loss": 0.5, "losses": [0.5], "seconds": 1.0, "format": "bare"}
    with store.transaction():
        store.db.execute("create trigger fail before update on iterations begin select raise(abort, 'disk full'); end")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.finish_training(record)
    assert store.training("r", 1) is None and not store.stage_done("r", 1, "train")
    with store.transaction():
        store.db.execute("drop trigger fail")
    store.finish_training(record)
    assert store.training("r", 1)["format"] == "bare" and store.stage_done("r", 1, "train")
    assert store.iterations("r")[0]["finished_at"] is not None


def test_selection_keeps_each_pairs_best_conversation_ties_to_the_lowest_sample(home):
    from stargate_lite.stages.select import select_best

    store = Store(home)
    logprobs = {("p1", 0): -5.0, ("p1", 1): -3.0, ("p1", 2): -3.0, ("p2", 0): -1.0, ("p2", 1): -2.0}
    store.save_conversations([{"id": f"{p}#{s:03d}", "run_id": "r", "iteration": 1, "pair_id": p, "sample": s,
                               "turns": 1, "policy": "base", "messages": []} for p, s in logprobs])
    store.insert_rows("scores", [{"conversation_id": f"{p}#{s:03d}", "run_id": "r", "iteration": 1, "logprob": lp,
                                  "n_tokens": 1} for (p, s), lp in logprobs.items()], pk="conversation_id")
    assert select_best(store, "r", 1) == 2
    assert [(s["pair_id"], s["conversation_id"], s["logprob"]) for s in store.selections("r", 1)] == [
        ("p1", "p1#001", -3.0), ("p2", "p2#000", -1.0)]


def test_a_store_from_before_efficiency_gets_each_conversations_question_count(home):
    """m012 counts the questions of conversations stored before it, from their turns' flags."""
    from stargate_lite.store import migrations

    all_migrations = migrations.MIGRATIONS
    migrations.MIGRATIONS = [m for m in all_migrations if m[0] != "m012_efficiency"]
    try:
        old = Store(home)
        old.db["conversations"].insert({"id": "c", "run_id": "r", "iteration": 1, "pair_id": "p", "sample": 0,
                                        "turns": 2, "policy": "base"})
        turns = [("questioner", "Where?"), ("roleplayer", "Rome."), ("questioner", "Noted."), ("roleplayer", "OK.")]
        old.db["turns"].insert_all([{"conversation_id": "c", "idx": i, "role": role, "text": text,
                                     "is_question": int("?" in text)} for i, (role, text) in enumerate(turns)])
    finally:
        migrations.MIGRATIONS = all_migrations
    store = Store(home)
    assert store.value("select questions from conversations where id = 'c'") == 1
    (row,) = store.conversation_efficiency("r", 1)
    assert row == {"turns": 2, "questions": 1, "questioner_turns": 2, "user_tokens": None}  # tokens: not counted then


def test_a_question_cost_makes_selection_prefer_the_shorter_of_two_equally_good_conversations(home):
    from stargate_lite.stages.select import select_best

    store = Store(home)
    ask = [{"role": "questioner", "text": "Which city?"}, {"role": "roleplayer", "text": "Rome."}]
    asked = {0: ask * 2, 1: ask, 2: []}  # sample: its turns; the three explain the gold equally well
    store.save_conversations([{"id": f"p#{s:03d}", "run_id": "r", "iteration": 1, "pair_id": "p", "sample": s,
                               "turns": len(m) // 2, "policy": "base", "messages": m} for s, m in asked.items()])
    store.insert_rows("scores", [{"conversation_id": f"p#{s:03d}", "run_id": "r", "iteration": 1, "logprob": -7.25,
                                  "n_tokens": 1} for s in asked], pk="conversation_id")
    select_best(store, "r", 1)  # no cost: the log-prob alone, the tie to the lowest sample
    assert [(s["conversation_id"], s["reward"]) for s in store.selections("r", 1)] == [("p#000", -7.25)]
    store.db.execute("delete from selections")
    select_best(store, "r", 1, RewardTerms(question_cost=0.5))
    assert [(s["conversation_id"], s["logprob"], s["reward"]) for s in store.selections("r", 1)] == [
        ("p#002", -7.25, -7.25)]
    store.db.execute("delete from selections")
    store.db.execute("update scores set logprob = -6.5 where conversation_id = 'p#000'")  # two questions, 0.75 better
    select_best(store, "r", 1, RewardTerms(question_cost=0.25))
    assert [(s["conversation_id"], s["reward"]) for s in store.selections("r", 1)] == [("p#000", -7.0)]


def test_a_fact_credit_makes_selection_prefer_the_conversation_whose_gated_user_was_told_more(home):
    """reward.fact_credit: each persona fact a gated user was given (turns.facts, counted once however often it
    was given) adds its credit to the reward selection ranks by, and to the reward rloo and grpo read."""
    from stargate_lite.stages.select import select_best

    store = Store(home)

    def asked(*given: list[int]) -> list[dict]:
        return [t for facts in given for t in ({"role": "questioner", "text": "Who lives with you?"},
                                               {"role": "roleplayer", "text": "Nobody else.", "facts": facts})]

    told = {0: asked([], []), 1: asked([2], [2]), 2: asked([0, 1], [])}  # 0, 1 and 2 distinct facts told
    store.save_conversations([{"id": f"p#{s:03d}", "run_id": "r", "iteration": 1, "pair_id": "p", "sample": s,
                               "turns": 2, "policy": "base", "messages": m} for s, m in told.items()])
    logprobs = {0: -10.0, 1: -12.0, 2: -13.0}
    store.insert_rows("scores", [{"conversation_id": f"p#{s:03d}", "run_id": "r", "iteration": 1, "logprob": lp,
                                  "n_tokens": 1} for s, lp in logprobs.items()], pk="conversation_id")
    select_best(store, "r", 1)  # no credit: the log-prob alone
    assert [s["conversation_id"] for s in store.selections("r", 1)] == ["p#000"]
    store.db.execute("delete from selections")
    select_best(store, "r", 1, RewardTerms(fact_credit=2.5))  # -10, -12 + 2.5, -13 + 5
    assert [(s["conversation_id"], s["logprob"], s["reward"]) for s in store.selections("r", 1)] == [
        ("p#002", -13.0, -8.0)]
    assert [r["reward"] for r in store.rewards("r", 1, RewardTerms(fact_credit=2.5))] == [-10.0, -9.5, -8.0]
    (worst,) = store.best_scores("r", 1, RewardTerms(fact_credit=2.5), worst=True)
    assert worst["conversation_id"] == "p#000"


def test_the_reward_sqlite_reckons_from_reward_sql_is_the_one_python_reckons_to_the_last_bit():
    """Selection ranks in SQL, the probe and training reckon in Python: one formula, two spellings, same floats
    (costs with no exact binary form, many questions, no cost at all)."""
    import random

    from stargate_lite.store.reward import reward, reward_sql

    rng = random.Random(0)
    rows = [(-rng.uniform(0, 500), rng.randrange(0, 12)) for _ in range(200)] + [(-7.25, 0), (-1e-12, 3)]
    db = sqlite3.connect(":memory:")
    db.execute("create table c (logprob real, questions integer)")
    db.executemany("insert into c values (?, ?)", rows)
    for cost in (0.0, 0, 0.1, 1 / 3, 0.25, 2.7e-5, 17.0):
        sql = f"select logprob, questions, {reward_sql('logprob', 'questions', '?')} from c order by rowid"
        computed = db.execute(sql, [cost]).fetchall()
        assert [r for _, _, r in computed] == [reward(logprob, questions, RewardTerms(cost)) for logprob, questions in rows]
    facts = [rng.randrange(0, 7) for _ in rows]
    db.execute("create table f (logprob real, questions integer, facts integer)")
    db.executemany("insert into f values (?, ?, ?)", [(*row, n) for row, n in zip(rows, facts)])
    for cost, credit in ((0.0, 0.0), (0.1, 1 / 3), (0.25, 2.7e-5), (0.0, 17.0)):
        sql = f"select {reward_sql('logprob', 'questions', '?', 'facts', '?')} from f order by rowid"
        computed = [r for (r,) in db.execute(sql, [cost, credit])]
        assert computed == [reward(lp, q, RewardTerms(cost, credit), n) for (lp, q), n in zip(rows, facts)]
    assert reward(-7.25, 4, RewardTerms()) == -7.25 and reward(-7.25, 2, RewardTerms(0.5)) == -8.25
    assert reward(-7.25, 2, RewardTerms(0.5, 1.0), 3) == -5.25


def test_exports_and_browse_show_q0s_response_beside_every_verdict_of_either_responder(home, tmp_path):
    """An evaluation judged with `--responder policy` and with `--responder base`: Q_0's own responses are stored
    once, at iteration 0 under responder `policy` (evaluate._respond, whichever responder is judged), and every
    verdict's row, in the dataset export and in browse's canned query, has both responses beside it."""
    import pyarrow.parquet as pq

    from stargate_lite.commands.dataset import DATA_FILE, export_dataset
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run
    from stargate_lite.store import BROWSE_QUERIES

    store = Store(home)
    run_id = open_run(store, load_recipe("tiny"))
    ns = f"{run_id}#eval:smollm2"
    keys = ["t0|p0", "t1|p1"]
    # The responses as evaluate stores them: Q_0's own (iteration 0, policy), then after Q_1's conversations
    # Q_1's (policy) and Q_0's (base, the response-model ablation).
    responses = {(0, "policy"): "Q_0 after its own conversation", (1, "policy"): "Q_1 after its own conversation",
                 (1, "base"): "Q_0 after Q_1's conversation"}
    store.insert_rows("eval_responses", [
        {"id": f"{ns}/{it}/{responder}/{key}", "ns": ns, "iteration": it, "responder": responder, "pair_key": key,
         "conversation_id": f"{ns}/{it}/{key}#000", "text": f"{text}, {key}", "n_tokens": 5}
        for (it, responder), text in responses.items() for key in keys], pk="id")
    store.insert_rows("judgments", [
        {"id": f"{ns}/1/{responder}/smollm2/p/{key}/{order}", "ns": ns, "iteration": 1, "responder": responder,
         "judge": "smollm2", "protocol": "p", "pair_key": key, "turns": 1, "swapped": swapped,
         "policy_is_a": swapped, "verdict": "A", "winner": "base" if swapped else "policy", "margin": None,
         "status": "valid", "raw": "A"}
        for responder in ("policy", "base") for key in keys for swapped, order in enumerate(("seeded", "swapped"))],
        pk="id")

    def expected(row: dict) -> tuple:
        key = row["pair_key"]
        return (responses[(1, row["responder"])] + f", {key}", responses[(0, "policy")] + f", {key}")

    exported = store.export_judgments(run_id)
    assert len(exported) == 8 and {r["responder"] for r in exported} == {"policy", "base"}
    assert [(r["policy_response"], r["base_response"]) for r in exported] == [expected(r) for r in exported]

    sql = BROWSE_QUERIES["judgments_side_by_side"]["sql"]
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        browsed = [dict(r) for r in db.execute(sql, {"namespace": ns})]
    assert len(browsed) == 8  # the query shows no responder: both responses of each verdict, by pair
    assert all(r["base_response"] == responses[(0, "policy")] + f", {r['pair_key']}" for r in browsed)
    assert sorted(r["policy_response"] for r in browsed) == sorted(expected(r)[0] for r in exported)

    export_dataset(home, tmp_path / "data", run_id)
    rows = pq.read_table(tmp_path / "data" / "judgments" / DATA_FILE).to_pylist()
    assert len(rows) == 8
    assert [(r["policy_response"], r["base_response"]) for r in rows] == [expected(r) for r in rows]
