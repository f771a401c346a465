"""The store's schema as named migrations, applied in order, each once, by the Store as it opens a home.

A migration is frozen once released: stores made by earlier versions have run it as it was, so a change to the
schema is a new migration at the end of MIGRATIONS, never an edit of an old one. Its name is what a store records
in `_migrations`; a store that names one this version lacks was written by a newer version and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlite_utils

from ..facts import persona_facts


def _m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {"id": str, "recipe_name": str, "recipe": str, "dataset": str, "seed": int, "created_at": float},
        pk="id",
    )
    db["tasks"].create({"id": str, "dataset": str, "split": str, "idx": int, "text": str}, pk="id")
    db["tasks"].create_index(["dataset", "split", "idx"], unique=True)
    db["personas"].create(
        {"id": str, "dataset": str, "split": str, "idx": int, "name": str, "text": str, "source": str}, pk="id"
    )
    db["personas"].create_index(["dataset", "split", "idx"], unique=True)
    # status: ok | empty (the oracle or an imported file gave no text; the pair is left out of every split)
    db["golds"].create(
        {"id": str, "dataset": str, "task_id": str, "persona_id": str, "text": str, "status": str, "source": str},
        pk="id",
    )
    db["golds"].create_index(["task_id", "persona_id"], unique=True)
    db["iterations"].create(
        {"run_id": str, "iteration": int, "split": str, "started_at": float, "finished_at": float},
        pk=("run_id", "iteration"),
    )
    db["pairs"].create(
        {"id": str, "run_id": str, "iteration": int, "task_id": str, "persona_id": str, "turns": int, "idx": int},
        pk="id",
    )
    db["pairs"].create_index(["run_id", "iteration", "idx"], unique=True)
    db["conversations"].create(
        {"id": str, "run_id": str, "iteration": int, "pair_id": str, "sample": int, "turns": int, "policy": str},
        pk="id",
    )
    db["conversations"].create_index(["pair_id", "sample"], unique=True)
    db["conversations"].create_index(["run_id", "iteration"])
    # One row per message: role is 'questioner' or 'roleplayer'; is_question flags whether a question mark
    # appears, since small models often answer or ramble instead of asking.
    db["turns"].create(
        {"conversation_id": str, "idx": int, "role": str, "text": str, "is_question": int},
        pk=("conversation_id", "idx"),
    )
    db["scores"].create(
        {"conversation_id": str, "run_id": str, "iteration": int, "logprob": float, "n_tokens": int},
        pk="conversation_id",
    )
    db["scores"].create_index(["run_id", "iteration"])
    db["selections"].create(
        {"pair_id": str, "run_id": str, "iteration": int, "conversation_id": str, "logprob": float}, pk="pair_id"
    )
    db["responses"].create(
        {"pair_id": str, "run_id": str, "iteration": int, "conversation_id": str, "text": str, "policy": str},
        pk="pair_id",
    )
    db["trainings"].create(
        {
            "run_id": str,
            "iteration": int,
            "adapter": str,
            "examples": int,
            "trained_tokens": int,
            "steps": int,
            "final_loss": float,
            "losses": str,
            "seconds": float,
            "finished_at": float,
        },
        pk=("run_id", "iteration"),
    )
    db["stages"].create({"run_id": str, "iteration": int, "stage": str, "done_at": float}, pk=("run_id", "iteration", "stage"))


def _m002_eval(db: sqlite_utils.Database) -> None:
    # Evaluation rows live under a namespace per run and roleplayer ("RUN#eval:NAME"); eval conversations reuse
    # the pairs/conversations/turns/scores tables with that namespace as their run_id.
    db["eval_scores"].create(
        {"id": str, "ns": str, "iteration": int, "condition": str, "pair_key": str, "conversation_id": str,
         "logprob": float, "n_tokens": int},
        pk="id",
    )
    db["eval_scores"].create_index(["ns", "iteration", "condition"])
    db["eval_responses"].create(
        {"id": str, "ns": str, "iteration": int, "responder": str, "pair_key": str, "conversation_id": str,
         "text": str},
        pk="id",
    )
    db["judgments"].create(
        {"id": str, "ns": str, "iteration": int, "responder": str, "judge": str, "pair_key": str, "turns": int,
         "policy_is_a": int, "verdict": str, "winner": str, "status": str, "raw": str},
        pk="id",
    )
    db["judgments"].create_index(["ns", "iteration", "responder", "judge"])


def _m003_chats(db: sqlite_utils.Database) -> None:
    # Transcripts of `stargate-lite chat`; turns as JSON [{"role": "questioner"|"roleplayer", "text": ...}].
    db["chats"].create(
        {"id": str, "policy": str, "name": str, "persona": str, "task": str, "turns": str, "response": str,
         "started_at": float, "updated_at": float},
        pk="id",
    )


def _m004_failures(db: sqlite_utils.Database) -> None:
    # Items a service failed on after every retry, from a stage's latest attempt; a rerun retries only these.
    db["failures"].create(
        {"id": str, "scope": str, "stage": str, "item": str, "reason": str, "at": float}, pk="id"
    )
    db["failures"].create_index(["scope", "stage"])


def _m005_trimmed_answers(db: sqlite_utils.Database) -> None:
    # 1 where the Roleplayer's answer was cut to simulate.max_answer_sentences; NULL in runs made before.
    db["turns"].add_column("trimmed", int)


def _m006_training_backend(db: sqlite_utils.Database) -> None:
    # Which trainer ran ("peft" or "unsloth") and its peak GPU memory; NULL in runs made before.
    db["trainings"].add_column("backend", str)
    db["trainings"].add_column("peak_gpu_bytes", int)


def _m007_judge_protocol(db: sqlite_utils.Database) -> None:
    # How a verdict was made (judge template, reading, budget: judge.judge_protocol), which of the two orders it
    # judged (0: the seeded one, 1: the other) and, for log-prob verdicts, log P(A) - log P(B).
    db["judgments"].add_column("protocol", str)
    db["judgments"].add_column("swapped", int)
    db["judgments"].add_column("margin", float)
    db["judgments"].create_index(["ns", "iteration", "responder", "judge", "protocol"])


def _m008_training_format(db: sqlite_utils.Database) -> None:
    # The prompt format an adapter was trained in (train.format); NULL in runs made before: "instructed".
    db["trainings"].add_column("format", str)


def _m009_adapter_paths_in_home(db: sqlite_utils.Database) -> None:
    # Adapter paths are kept relative to the home. Before, they were as the run wrote them: relative to the
    # directory it started in (".stargate/runs/RUN/iteration-N/adapter") or absolute; every adapter is written at
    # HOME/runs/RUN/iteration-N/adapter, so its last four parts are the path from the home.
    for row in list(db.query("select run_id, iteration, adapter from trainings")):
        parts = Path(row["adapter"]).parts
        if len(parts) >= 4 and parts[-4] == "runs" and parts[-2].startswith("iteration-") and parts[-1] == "adapter":
            db["trainings"].update((row["run_id"], row["iteration"]), {"adapter": str(Path(*parts[-4:]))})


def _m010_scale_indexes(db: sqlite_utils.Database) -> None:
    # Per-iteration reads of selections, responses and eval responses scanned the whole table; at the paper's
    # scale an iteration adds 12,500 of each, and a user's data can be ten times that (benchmarks/bench_store.py).
    # An iteration's conversations are read in (pair, sample) order, which this index gives without a sort
    # (score's read of 1,000,000: 3.1 s before, 1.8 s); before, score read them in id order.
    db.execute("drop index if exists idx_conversations_run_id_iteration")
    db["conversations"].create_index(["run_id", "iteration", "pair_id", "sample"], if_not_exists=True)
    db["selections"].create_index(["run_id", "iteration"], if_not_exists=True)
    db["responses"].create_index(["run_id", "iteration"], if_not_exists=True)
    db["eval_responses"].create_index(["ns", "iteration", "responder"], if_not_exists=True)


def _m011_training_processes(db: sqlite_utils.Database) -> None:
    # How many processes trained the adapter together (train.processes); NULL in runs made before: one.
    db["trainings"].add_column("processes", int)


def _m012_efficiency(db: sqlite_utils.Database) -> None:
    # Token counts in the Questioner's tokenizer, for the efficiency metrics (how much the user typed, how long the
    # final response is): of each turn, each regularizer response and each evaluation response; NULL in rows
    # written before. And each conversation's number of questions (Questioner turns with a question mark), which
    # selection charges for (reward.question_cost): filled in here for conversations written before.
    db["turns"].add_column("n_tokens", int)
    db["responses"].add_column("n_tokens", int)
    db["eval_responses"].add_column("n_tokens", int)
    db["conversations"].add_column("questions", int)
    db.execute("update conversations set questions = (select coalesce(sum(t.is_question), 0) from turns t "
               "where t.conversation_id = conversations.id)")


def _m013_question_cost(db: sqlite_utils.Database) -> None:
    # simulate.turns policy: the Questioner's turn that answered instead of asking, which ended the conversation
    # (NULL where it asked to the end). And each selection's reward: its log-prob less reward.question_cost per
    # question; NULL in runs made before, whose reward was the log-prob.
    db["conversations"].add_column("answer", str)
    db["selections"].add_column("reward", float)


def _m014_roleplayers(db: sqlite_utils.Database) -> None:
    # Which chat model played the persona in a conversation (roles.roleplayer may name several); NULL in runs made
    # before: the recipe's one roleplayer (an evaluation's: the one in its namespace).
    db["conversations"].add_column("roleplayer", str)


def _m015_training_method(db: sqlite_utils.Database) -> None:
    # How the adapter was trained (train.method: sft or dpo); NULL in runs made before: sft.
    db["trainings"].add_column("method", str)


def _m016_policy_steps(db: sqlite_utils.Database) -> None:
    # train.method rloo and grpo: per optimizer step, the mean |importance ratio - 1|, the share of clipped tokens
    # and the mean KL estimate to the base (JSON); NULL for the other methods and in runs made before.
    db["trainings"].add_column("policy_steps", str)


def _m017_turn_scores(db: sqlite_utils.Database) -> None:
    # reward.per_turn: the gold's log-prob after each of a conversation's first `turns` question-and-answer turns
    # (1 .. its turns - 1; after all of them is its score), for each turn's reward-to-go.
    db["turn_scores"].create({"conversation_id": str, "turns": int, "run_id": str, "iteration": int,
                              "logprob": float, "n_tokens": int}, pk=("conversation_id", "turns"))
    db["turn_scores"].create_index(["run_id", "iteration"])


def _m018_stage_starts(db: sqlite_utils.Database) -> None:
    # Where a run's time and hardware went (`stargate-lite report`). run_sessions: one row per process that
    # worked on a run, with the code, packages and machine it ran on. stage_starts: when the latest attempt at a
    # stage began, in which session, on how many GPUs (its end is the stages table's done_at).
    db["run_sessions"].create({"id": str, "run_id": str, "started_at": float, "host": str, "commit": str,
                               "dirty": int, "versions": str, "hardware": str}, pk="id")
    db["run_sessions"].create_index(["run_id"])
    db["stage_starts"].create({"run_id": str, "iteration": int, "stage": str, "started_at": float,
                               "session_id": str, "gpus": int}, pk=("run_id", "iteration", "stage"))


def _m019_tracked(db: sqlite_utils.Database) -> None:
    # The last point each curve of a run has written to a tracker (recipe track), so a resumed run logs none twice.
    db["tracked"].create({"run_id": str, "tracker": str, "series": str, "step": int},
                         pk=("run_id", "tracker", "series"))


def _m020_tracked_points(db: sqlite_utils.Database) -> None:
    # Each point sent to a tracker: a curve's value (series and name) at a step. A series' last step (m019's
    # table) lost the points that came after a later one (an evaluation of iteration 1 after one of iteration 2)
    # or beside one sent (the counterbalanced win rate of an evaluation in both orders after one in one order).
    # The rows of `tracked` stay as they were: each point at or before a series' step there counts as sent.
    db["tracked_points"].create({"run_id": str, "tracker": str, "series": str, "name": str, "step": int},
                                pk=("run_id", "tracker", "series", "name", "step"))


def _m021_cut_turns(db: sqlite_utils.Database) -> None:
    # 1 where generation cut a Questioner turn (turns.cut) or its answer (conversations.answer_cut) at its token
    # limit, with no end-of-turn sampled: rloo and grpo train no end-of-turn after it. NULL in rows written before
    # (and for Roleplayer turns): read as not cut, as training did before.
    db["turns"].add_column("cut", int)
    db["conversations"].add_column("answer_cut", int)


def _m022_persona_facts(db: sqlite_utils.Database) -> None:
    # A persona's atomic facts (facts.persona_facts), JSON, derived here for the personas a store already holds
    # (their text stays as it was); turns.facts: the indices of the facts a gated user (simulate.reveal asked) was
    # given for that reply, NULL for a free user's reply and for Questioner turns.
    db["personas"].add_column("facts", str)
    for persona_id, text in db.execute("select id, text from personas").fetchall():
        db.execute("update personas set facts = ? where id = ?", [json.dumps(persona_facts(text)), persona_id])
    db["turns"].add_column("facts", str)


MIGRATIONS = [
    ("m001_initial", _m001_initial),
    ("m002_eval", _m002_eval),
    ("m003_chats", _m003_chats),
    ("m004_failures", _m004_failures),
    ("m005_trimmed_answers", _m005_trimmed_answers),
    ("m006_training_backend", _m006_training_backend),
    ("m007_judge_protocol", _m007_judge_protocol),
    ("m008_training_format", _m008_training_format),
    ("m009_adapter_paths_in_home", _m009_adapter_paths_in_home),
    ("m010_scale_indexes", _m010_scale_indexes),
    ("m011_training_processes", _m011_training_processes),
    ("m012_efficiency", _m012_efficiency),
    ("m013_question_cost", _m013_question_cost),
    ("m014_roleplayers", _m014_roleplayers),
    ("m015_training_method", _m015_training_method),
    ("m016_policy_steps", _m016_policy_steps),
    ("m017_turn_scores", _m017_turn_scores),
    ("m018_stage_starts", _m018_stage_starts),
    ("m019_tracked", _m019_tracked),
    ("m020_tracked_points", _m020_tracked_points),
    ("m021_cut_turns", _m021_cut_turns),
    ("m022_persona_facts", _m022_persona_facts),
]
