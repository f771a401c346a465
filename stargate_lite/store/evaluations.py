"""An evaluation's records, under a namespace per run and roleplayer ("RUN#eval:NAME"; its conversations are in the
conversations family's tables under that namespace): gold log-probs per condition, responses, the judge's verdicts;
and the transcripts of `stargate-lite chat`, a policy tried by hand.
"""

from __future__ import annotations

from .core import StoreCore, like_prefix


class EvaluationRecords(StoreCore):
    """Tables eval_scores, eval_responses, judgments and chats."""

    def eval_namespaces(self, run_id: str) -> list[str]:
        """The evaluation namespaces ("RUN#eval:ROLEPLAYER") that hold conversations of a run."""
        sql = "select distinct run_id from pairs where run_id like ? escape '\\' order by run_id"
        return [r["run_id"] for r in self.rows(sql, [like_prefix(f"{run_id}#eval:")])]

    def eval_score_ids(self, ns: str, iteration: int) -> set[str]:
        sql = "select id from eval_scores where ns = ? and iteration = ?"
        return {r["id"] for r in self.rows(sql, [ns, iteration])}

    def eval_logprobs(self, ns: str, iteration: int, condition: str) -> list[dict]:
        """[{pair_key, logprob}] of one condition's gold log-probs."""
        sql = "select pair_key, logprob from eval_scores where ns = ? and iteration = ? and condition = ? order by id"
        return self.rows(sql, [ns, iteration, condition])

    def eval_response_keys(self, ns: str, iteration: int, responder: str) -> set[str]:
        sql = "select pair_key from eval_responses where ns = ? and iteration = ? and responder = ?"
        return {r["pair_key"] for r in self.rows(sql, [ns, iteration, responder])}

    def eval_response_texts(self, ns: str, iterations: list[int]) -> dict[tuple[int, str, str], str]:
        """{(iteration, responder, pair key): response}"""
        sql = f"select * from eval_responses where ns = ? and iteration in ({','.join('?' * len(iterations))})"
        return {(r["iteration"], r["responder"], r["pair_key"]): r["text"] for r in self.rows(sql, [ns, *iterations])}

    def eval_response_lengths(self, ns: str, iteration: int, responder: str) -> list[dict]:
        """{pair_key, turns, n_tokens} of each evaluation response, with the turns of the conversation it
        followed."""
        sql = ("select r.pair_key, c.turns, r.n_tokens from eval_responses r join conversations c "
               "on c.id = r.conversation_id where r.ns = ? and r.iteration = ? and r.responder = ?")
        return self.rows(sql, [ns, iteration, responder])

    def judgments(self, ns: str, iteration: int, responder: str, judge: str, protocol: str) -> list[dict]:
        sql = ("select * from judgments where ns = ? and iteration = ? and responder = ? and judge = ? "
               "and protocol = ? order by id")
        return self.rows(sql, [ns, iteration, responder, judge, protocol])

    def save_chat(self, row: dict) -> None:
        with self.transaction():
            self.db["chats"].insert(row, pk="id", replace=True)
