"""A run's records read whole, across its namespaces (its own, and "RUN#..." for evaluations and probes), for
`stargate-lite export --data` (commands/dataset.py): one read per table of the dataset.
"""

from __future__ import annotations

from .core import StoreCore, like_prefix
from .reward import RewardTerms, facts_told_sql, reward_sql


class ExportReads(StoreCore):
    """Reads only: a run's pairs, conversations (with their reward), selections, responses and verdicts."""

    def _of_run(self, column: str, run_id: str) -> tuple[str, list[str]]:
        """A WHERE clause for the rows of a run's namespaces: the run's own and "RUN#..." (evaluation, probe)."""
        return f"({column} = ? or {column} like ? escape '\\')", [run_id, like_prefix(f"{run_id}#")]

    def export_pairs(self, run_id: str) -> list[dict]:
        """Every pair of a run's namespaces with its task, persona and gold."""
        where, params = self._of_run("p.run_id", run_id)
        return self.rows(
            f"""
            select p.id, p.run_id as namespace, p.iteration, t.split, p.task_id, t.text as task, p.persona_id,
              pe.name as persona_name, pe.text as persona, g.text as gold, p.turns
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
            left join golds g on g.task_id = p.task_id and g.persona_id = p.persona_id
            where {where} order by p.run_id, p.iteration, p.idx
            """,
            params,
        )

    def export_conversations(self, run_id: str, terms: RewardTerms) -> list[dict]:
        """Every conversation of a run's namespaces: its gold log-prob (the score stage's, or an evaluation's
        experimental one), its reward as selection reckons it, whether selection kept it, and its persona (text,
        facts) for the elicitation counts."""
        where, params = self._of_run("c.run_id", run_id)
        return self.rows(
            f"""
            select c.id, c.run_id as namespace, c.iteration, c.pair_id, c.sample, c.policy, c.roleplayer,
              c.turns as turn_count, c.questions, c.answer, coalesce(s.logprob, e.logprob) as logprob,
              {reward_sql("coalesce(s.logprob, e.logprob)", "coalesce(c.questions, 0)", "?", facts_told_sql("c.id"),
                          "?")} as reward,
              k.conversation_id is not null as kept, pe.text as persona, pe.facts as persona_facts
            from conversations c join pairs p on p.id = c.pair_id join personas pe on pe.id = p.persona_id
            left join scores s on s.conversation_id = c.id
            left join eval_scores e on e.conversation_id = c.id and e.condition = 'experimental'
            left join selections k on k.conversation_id = c.id
            where {where} order by c.run_id, c.iteration, c.pair_id, c.sample
            """,
            [terms.question_cost, terms.fact_credit, *params],
        )

    def export_selections(self, run_id: str) -> list[dict]:
        return self.rows("select * from selections where run_id = ? order by iteration, pair_id", [run_id])

    def export_responses(self, run_id: str) -> list[dict]:
        return self.rows("select * from responses where run_id = ? order by iteration, pair_id", [run_id])

    def export_judgments(self, run_id: str) -> list[dict]:
        """Every verdict of a run's evaluations, with the two responses it compared side by side: the responder's
        after Q_eta's conversation, and Q_0's own (iteration 0, stored under responder 'policy' whichever responder
        was judged: evaluate._respond)."""
        where, params = self._of_run("j.ns", run_id)
        return self.rows(
            f"""
            select j.id, j.ns as namespace, j.iteration, j.responder, j.judge, j.protocol, j.pair_key, j.turns,
              j.swapped, j.policy_is_a, j.verdict, j.winner, j.status, j.margin,
              p.text as policy_response, b.text as base_response
            from judgments j
            left join eval_responses p on p.ns = j.ns and p.iteration = j.iteration and p.responder = j.responder
              and p.pair_key = j.pair_key
            left join eval_responses b on b.ns = j.ns and b.iteration = 0 and b.responder = 'policy'
              and b.pair_key = j.pair_key
            where {where} order by j.ns, j.iteration, j.id
            """,
            params,
        )
