"""An iteration's records from its conversations to its training: the conversations and their turns, their scores
(and after each turn), the selections by reward, the regularizer's responses, and the training record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..prompts import is_question
from .core import VARIABLES_PER_QUERY, StoreCore, like_prefix
from .reward import LOGPROB_ONLY, RewardTerms, facts_told_sql, reward_sql


class ConversationRecords(StoreCore):
    """Tables conversations, turns, scores, turn_scores, selections, responses and trainings: what simulate, score,
    select, respond and train write and the later stages, status and the report read."""

    def save_conversations(self, conversations: list[dict]) -> None:
        """Store finished conversations and their turns together: one chunk, one transaction.

        A message is {role, text, trimmed, cut, n_tokens, facts}; whether a Questioner turn is a question
        (prompts.is_question), and how many a conversation asked, are worked out here."""
        turn_rows = [
            {
                "conversation_id": c["id"],
                "idx": i,
                "role": t["role"],
                "text": t["text"],
                "is_question": int(t["role"] == "questioner" and is_question(t["text"])),
                "trimmed": t.get("trimmed", 0),
                "cut": t.get("cut"),
                "n_tokens": t.get("n_tokens"),
                "facts": json.dumps(t["facts"]) if t.get("facts") is not None else None,
            }
            for c in conversations
            for i, t in enumerate(c["messages"])
        ]
        conv_rows = [{**{k: v for k, v in c.items() if k != "messages"},
                      "questions": sum(t["role"] == "questioner" and is_question(t["text"]) for t in c["messages"])}
                     for c in conversations]
        with self.transaction():
            self.db["conversations"].insert_all(conv_rows, pk="id", ignore=True)
            self.db["turns"].insert_all(turn_rows, pk=("conversation_id", "idx"), ignore=True)

    def conversation_ids(self, run_id: str, iteration: int) -> set[str]:
        sql = "select id from conversations where run_id = ? and iteration = ?"
        return {conversation for (conversation,) in self.db.execute(sql, [run_id, iteration])}

    def conversations(self, run_id: str, iteration: int) -> list[dict]:
        sql = "select * from conversations where run_id = ? and iteration = ? order by pair_id, sample"
        return self.rows(sql, [run_id, iteration])

    def turns(self, conversation_ids: list[str]) -> dict[str, list[dict]]:
        conversation_ids = list(dict.fromkeys(conversation_ids))  # an id named twice, maybe in two chunks: once
        out: dict[str, list[dict]] = {cid: [] for cid in conversation_ids}
        for start in range(0, len(conversation_ids), VARIABLES_PER_QUERY):
            ids = conversation_ids[start : start + VARIABLES_PER_QUERY]
            sql = f"select * from turns where conversation_id in ({','.join('?' * len(ids))}) order by idx"
            for row in self.rows(sql, ids):
                turn = {"role": row["role"], "text": row["text"]}
                if row.get("facts") is not None:  # a gated user's reply: the facts it was given
                    turn["facts"] = json.loads(row["facts"])
                out[row["conversation_id"]].append(turn)
        return out

    def cut_turns(self, run_id: str, iteration: int) -> set[tuple[str, int]]:
        """(conversation, turn index) of an iteration's Questioner turns that generation cut at its token limit."""
        sql = ("select t.conversation_id, t.idx from conversations c join turns t on t.conversation_id = c.id "
               "where c.run_id = ? and c.iteration = ? and t.cut = 1")
        return {(conversation, idx) for conversation, idx in self.db.execute(sql, [run_id, iteration])}

    def roleplayer_counts(self, run_id: str, iteration: int) -> dict[str, int]:
        """How many of an iteration's conversations each Roleplayer answered (None: stored before this was)."""
        sql = ("select roleplayer, count(*) as n from conversations where run_id = ? and iteration = ? "
               "group by roleplayer order by roleplayer")
        return {r["roleplayer"]: r["n"] for r in self.rows(sql, [run_id, iteration])}

    def conversation_efficiency(self, run_id: str, iteration: int) -> list[dict]:
        """Per conversation of an iteration (or evaluation): {turns, questions, questioner_turns, user_tokens};
        user_tokens (the Roleplayer's answers) is NULL for conversations stored before token counts were."""
        return self.rows(
            """
            select c.turns, c.questions, count(case when t.role = 'questioner' then 1 end) as questioner_turns,
              case when count(case when t.role = 'roleplayer' and t.n_tokens is null then 1 end) > 0 then null
                   else coalesce(sum(case when t.role = 'roleplayer' then t.n_tokens end), 0) end as user_tokens
            from conversations c left join turns t on t.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? group by c.id
            """,
            [run_id, iteration],
        )

    def namespaces_holding(self, marker: str) -> list[str]:
        """The namespaces whose name holds `marker` (say "#env:", the environment's) and that hold conversations."""
        sql = "select distinct run_id from conversations where run_id like ? escape '\\' order by run_id"
        return [r["run_id"] for r in self.rows(sql, ["%" + like_prefix(marker)])]

    def facts_given(self, run_id: str, iteration: int) -> list[int]:
        """Per conversation of an iteration whose user was gated (simulate.reveal asked), how many of its persona's
        facts the user was given over its replies (each fact once); empty for a free user's conversations."""
        sql = """
            select c.id, count(distinct j.value) as given
            from conversations c join turns t on t.conversation_id = c.id, json_each(t.facts) j
            where c.run_id = ? and c.iteration = ? and t.facts is not null group by c.id
        """
        gated = """
            select c.id from conversations c join turns t on t.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? and t.facts is not null group by c.id
        """
        given = {row["id"]: row["given"] for row in self.rows(sql, [run_id, iteration])}
        return [given.get(conversation, 0) for (conversation,) in self.db.execute(gated, [run_id, iteration])]

    def audit_conversations(self, run_id: str, iteration: int, limit: int | None = None) -> list[dict]:
        """{roleplayer, persona, persona_facts (JSON), turn_count, turns} of an iteration's conversations: all, or
        the first `limit` stored."""
        sql = ("select c.id, c.roleplayer, c.turns as turn_count, pe.text as persona, pe.facts as persona_facts "
               "from conversations c join pairs p on p.id = c.pair_id join personas pe on pe.id = p.persona_id "
               "where c.run_id = ? and c.iteration = ? limit ?")
        rows = self.rows(sql, [run_id, iteration, -1 if limit is None else limit])
        turns = self.turns([r["id"] for r in rows])
        return [{**{k: v for k, v in r.items() if k != "id"}, "turns": turns[r["id"]]} for r in rows]

    def conversations_to_score(self, run_id: str, iteration: int) -> list[dict]:
        """Every conversation of an iteration as {id, pair_id, scored (0 or 1)}, in (pair, sample) order."""
        return self.rows(
            """
            select c.id, c.pair_id, s.conversation_id is not null as scored
            from conversations c left join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [run_id, iteration],
        )

    def scores(self, run_id: str, iteration: int) -> list[dict]:
        return self.rows(
            """
            select s.conversation_id, s.logprob, s.n_tokens, c.pair_id, c.sample
            from conversations c join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [run_id, iteration],
        )

    def turn_scores(self, run_id: str, iteration: int) -> dict[str, dict[int, float]]:
        """reward.per_turn: each conversation's gold log-prob after its first k turns, {conversation: {k: logprob}}."""
        out: dict[str, dict[int, float]] = {}
        sql = "select conversation_id, turns, logprob from turn_scores where run_id = ? and iteration = ?"
        for conversation, turns, logprob in self.db.execute(sql, [run_id, iteration]):
            out.setdefault(conversation, {})[turns] = logprob
        return out

    def pair_extremes(self, run_id: str, iteration: int, pairs: int) -> list[dict]:
        """The first `pairs` scored pairs of an iteration, each with its best and worst conversation by gold
        log-prob: {task, persona_name, best: {logprob, turns}, worst: {logprob, turns}}."""
        rows = self.rows(
            """
            select p.id, p.idx, t.text as task, pe.name as persona_name, s.conversation_id, s.logprob
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
              join conversations c on c.pair_id = p.id join scores s on s.conversation_id = c.id
            where p.run_id = ? and p.iteration = ? and p.id in (
              select p2.id from pairs p2 where p2.run_id = ? and p2.iteration = ?
                and exists (select 1 from conversations c2 join scores s2 on s2.conversation_id = c2.id
                            where c2.pair_id = p2.id)
              order by p2.idx limit ?)
            order by p.idx, s.logprob desc, s.conversation_id
            """,
            [run_id, iteration, run_id, iteration, pairs],
        )
        by_pair: dict[str, list[dict]] = {}
        for row in rows:
            by_pair.setdefault(row["id"], []).append(row)
        turns = self.turns([r["conversation_id"] for group in by_pair.values() for r in (group[0], group[-1])])
        return [{"task": group[0]["task"], "persona_name": group[0]["persona_name"],
                 **{end: {"logprob": row["logprob"], "turns": turns[row["conversation_id"]]}
                    for end, row in (("best", group[0]), ("worst", group[-1]))}}
                for group in by_pair.values()]

    def best_scores(self, run_id: str, iteration: int, terms: RewardTerms = LOGPROB_ONLY,
                    worst: bool = False) -> list[dict]:
        """Each pair's best conversation {pair_id, conversation_id, logprob, reward} by reward (its log-prob less
        terms.question_cost per question, plus terms.fact_credit per fact its gated user was told), ties to the
        lowest sample, by pair: the selection, chosen in SQL (an iteration can hold a million scores). With neither
        the reward is the log-prob itself (x - 0.0 is x, exactly), and the facts are not counted.
        `worst`: each pair's worst instead (ties to the lowest sample too), for preference training."""
        order = "asc" if worst else "desc"
        reward, params = _reward_of_conversation(terms)
        return self.rows(
            f"""
            select pair_id, conversation_id, logprob, reward from (
              select c.pair_id, s.conversation_id, s.logprob, {reward} as reward,
                row_number() over (partition by c.pair_id order by {reward} {order}, c.sample) as place
              from conversations c join scores s on s.conversation_id = c.id
              where c.run_id = ? and c.iteration = ?
            ) where place = 1 order by pair_id
            """,
            [*params, *params, run_id, iteration],
        )

    def rewards(self, run_id: str, iteration: int, terms: RewardTerms = LOGPROB_ONLY) -> list[dict]:
        """Every scored conversation of an iteration {pair_id, conversation_id, answer, answer_cut, logprob, reward},
        its reward as selection reckons it (best_scores), in (pair, sample) order: the samples of rloo and grpo."""
        reward, params = _reward_of_conversation(terms)
        return self.rows(
            f"""
            select c.pair_id, c.id as conversation_id, c.answer, c.answer_cut, s.logprob, {reward} as reward
            from conversations c join scores s on s.conversation_id = c.id
            where c.run_id = ? and c.iteration = ? order by c.pair_id, c.sample
            """,
            [*params, run_id, iteration],
        )

    def selections(self, run_id: str, iteration: int) -> list[dict]:
        sql = "select * from selections where run_id = ? and iteration = ? order by pair_id"
        return self.rows(sql, [run_id, iteration])

    def selected_turns(self, run_id: str, iteration: int) -> dict[str, list[dict]]:
        """The turns of an iteration's selected conversations, by conversation id (one query, no id list)."""
        rows: dict[str, list[tuple]] = {}
        sql = """
            select t.conversation_id, t.idx, t.role, t.text from selections s join turns t
            on t.conversation_id = s.conversation_id where s.run_id = ? and s.iteration = ?
        """  # ordered here, per conversation: an ORDER BY costs SQLite a sort of every turn
        for conversation, idx, role, text in self.db.execute(sql, [run_id, iteration]):
            rows.setdefault(conversation, []).append((idx, role, text))
        return {conversation: [{"role": role, "text": text} for _, role, text in sorted(turns)]
                for conversation, turns in rows.items()}

    def responses(self, run_id: str, iteration: int) -> dict[str, dict]:
        sql = "select * from responses where run_id = ? and iteration = ?"
        return {r["pair_id"]: r for r in self.rows(sql, [run_id, iteration])}

    def response_lengths(self, run_id: str, iteration: int) -> list[dict]:
        """{turns, n_tokens} of each regularizer response of an iteration, with its conversation's turns."""
        sql = ("select c.turns, r.n_tokens from responses r join conversations c on c.id = r.conversation_id "
               "where r.run_id = ? and r.iteration = ?")
        return self.rows(sql, [run_id, iteration])

    def training(self, run_id: str, iteration: int) -> dict | None:
        """The training record, its adapter as an absolute path (stored relative to the home, so a home that
        moves, or a command started from another directory, still finds it)."""
        rows = self.rows("select * from trainings where run_id = ? and iteration = ?", [run_id, iteration])
        if not rows:
            return None
        return {**rows[0], "adapter": os.path.abspath(self.home / rows[0]["adapter"])}

    def finish_training(self, row: dict) -> None:
        """The training record, the train stage's mark and the iteration's finish, in one transaction: a crash
        leaves an iteration either trained and finished or to be trained again."""
        now = time.time()
        adapter = Path(row["adapter"])
        if adapter.is_relative_to(self.home):
            adapter = adapter.relative_to(self.home)
        steps = row.get("policy_steps")
        row = {**row, "adapter": str(adapter), "losses": json.dumps(row["losses"]),
               "policy_steps": json.dumps(steps) if steps else None, "finished_at": now}
        with self.transaction():
            self.db["trainings"].insert(row, pk=("run_id", "iteration"), replace=True)
            self.db["stages"].insert({"run_id": row["run_id"], "iteration": row["iteration"], "stage": "train",
                                      "done_at": now}, pk=("run_id", "iteration", "stage"), replace=True)
            self.db["iterations"].update((row["run_id"], row["iteration"]), {"finished_at": now})


def _reward_of_conversation(terms: RewardTerms) -> tuple[str, list[float]]:
    """The reward of conversation `c` scored in `s`, as SQL and its parameters; its facts are counted only where
    they are credited (a subquery per conversation)."""
    if not terms.fact_credit:
        return reward_sql("s.logprob", "c.questions", "?"), [terms.question_cost]
    return (reward_sql("s.logprob", "c.questions", "?", facts_told_sql("c.id"), "?"),
            [terms.question_cost, terms.fact_credit])
