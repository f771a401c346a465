"""What `stargate-lite browse` (commands/browse.py) shows of a store beside its tables: a note on each table and
its less obvious columns, and the queries a researcher asks of a run. Their SQL lives here, in the store, as all
SQL does; browse only hands it to Datasette.
"""

from __future__ import annotations

from .reward import facts_told_sql, reward_sql

# Per table: (its description, {column: its description}), as Datasette shows them.
TABLE_NOTES = {
    "runs": ("One row per run: its recipe as stored (JSON) and seed.", {}),
    "tasks": ("The requests, by split (A and B are trained on in turn; test never is).", {}),
    "personas": ("The hidden personas the Roleplayer plays, by split.",
                 {"facts": "its atomic facts (JSON): its sentences, what a gated user tells one at a time"}),
    "golds": ("The Oracle's gold response per task and persona.", {"status": "ok, or empty: left out of every split"}),
    "iterations": ("One row per iteration of a run: the train split it worked on, when it started and finished.",
                   {}),
    "pairs": ("The (task, persona) pairs an iteration simulates; evaluation pairs are under RUN#eval:ROLEPLAYER.",
              {"turns": "how many question-and-answer turns its conversations have"}),
    "conversations": ("Simulated conversations: N per pair, their turns in `turns`.",
                      {"questions": "Questioner turns that ask something",
                       "answer": "the Questioner's own answer, where it chose to answer (policy turns)",
                       "answer_cut": "1 if the answer stopped at simulate.question_max_tokens, unfinished",
                       "roleplayer": "the chat model that played the persona", "policy": "the Questioner policy"}),
    "turns": ("Each message of a conversation, in order.",
              {"is_question": "1 if the Questioner's turn contains a question mark",
               "trimmed": "1 if the Roleplayer's answer was cut at a role break",
               "cut": "1 if the Questioner's turn stopped at simulate.question_max_tokens, unfinished",
               "n_tokens": "tokens of the message",
               "facts": "a gated user's reply: the indices (JSON) of the persona's facts it was given"}),
    "scores": ("log p_base(gold | task, conversation) per conversation: the reward.",
               {"n_tokens": "gold tokens scored"}),
    "turn_scores": ("The gold's log-prob after each turn but the last (reward.per_turn).", {}),
    "selections": ("The conversation kept per pair (the best reward), which training learns from.", {}),
    "responses": ("The previous policy's greedy response after a kept conversation (the regularizer).", {}),
    "trainings": ("One row per trained iteration: adapter path, tokens, steps, loss curve (JSON).", {}),
    "stages": ("Each finished stage of an iteration, marked done when all its rows are written.", {}),
    "stage_starts": ("When the latest attempt at each stage began, in which session, on how many GPUs.", {}),
    "run_sessions": ("Each process that worked on a run: commit, package versions and machine (JSON).", {}),
    "tracked_points": ("Each point a run has sent to TensorBoard or W&B (recipe track): none is sent twice.",
                       {"name": "the value's name in its series (the curve is SERIES/NAME)",
                        "step": "the curve's x: the optimizer step over the run for train, else the iteration"}),
    "tracked": ("Before m020, each series' last step sent to a tracker: its points up to it count as sent.", {}),
    "failures": (("Items a service failed on after every retry; a rerun retries only these. A reason that starts "
                  "'left out:' was refused for good (a prompt over its model's context): left out, the stage went "
                  "on."), {}),
    "eval_scores": ("Evaluation gold log-probs per condition (negative, positive, experimental, random).", {}),
    "eval_responses": ("Evaluation responses per iteration and responder (policy or base).", {}),
    "judgments": ("The judge's verdicts: Q_eta's response against Q_0's per test pair.",
                  {"policy_is_a": "1 if Q_eta's response was shown first", "winner": "policy, base or tie",
                   "margin": "the judge's log-prob margin for its verdict, where it gives log-probs",
                   "swapped": "1 for the second order of a counterbalanced pair"}),
    "chats": ("Transcripts of `stargate-lite chat`.", {}),
}
# A conversation's turns as one text, "Q: ..." and "R: ..." lines, for the queries below (c: its conversations row).
_TURNS_TEXT = ("(select group_concat(who || ': ' || text, char(10)) from (select case role when 'questioner' "
               "then 'Q' else 'R' end as who, text from turns t where t.conversation_id = c.id order by t.idx))")
# Datasette's canned queries, by name: a title, maybe a description, and the SQL (:name is a form field).
BROWSE_QUERIES = {
    "iteration_pairs": {
        "title": "An iteration's pairs, with the spread of their conversations' rewards",
        "sql": """
            select p.id as pair_id, t.text as task, pe.name as persona, count(c.id) as conversations,
              max(s.logprob) as best_logprob, min(s.logprob) as worst_logprob,
              max(s.logprob) - min(s.logprob) as spread
            from pairs p join tasks t on t.id = p.task_id join personas pe on pe.id = p.persona_id
              left join conversations c on c.pair_id = p.id left join scores s on s.conversation_id = c.id
            where p.run_id = :run_id and p.iteration = :iteration group by p.id order by p.idx""",
    },
    "pair_conversations": {
        "title": "A pair's conversations, best reward first, the kept one marked",
        "description": "reward: the gold's log-prob less reward.question_cost per question, plus "
                       "reward.fact_credit per fact a gated user was told (selection's).",
        "sql": f"""
            select c.sample, case when k.conversation_id is not null then 'kept' else '' end as kept,
              {reward_sql("coalesce(s.logprob, e.logprob)", "coalesce(c.questions, 0)",
                          "coalesce(json_extract(r.recipe, '$.reward.question_cost'), 0)", facts_told_sql("c.id"),
                          "coalesce(json_extract(r.recipe, '$.reward.fact_credit'), 0)")} as reward,
              coalesce(s.logprob, e.logprob) as gold_logprob, c.questions, c.roleplayer,
              {_TURNS_TEXT} as conversation, c.id as conversation_id
            from conversations c left join runs r on r.id = c.run_id
              left join scores s on s.conversation_id = c.id
              left join eval_scores e on e.conversation_id = c.id and e.condition = 'experimental'
              left join selections k on k.conversation_id = c.id
            where c.pair_id = :pair_id order by reward desc, c.sample""",
    },
    "judgments_side_by_side": {
        "title": "An evaluation's verdicts, Q_eta's and Q_0's responses side by side",
        "description": "namespace: RUN#eval:ROLEPLAYER (the roleplayer the evaluation used). base_response is "
                       "Q_0's own, after its own conversation; with responder base, policy_response is Q_0's too, "
                       "after Q_eta's conversation.",
        "sql": """
            select j.iteration, j.pair_key, j.winner, j.margin, j.swapped, p.text as policy_response,
              b.text as base_response, j.responder, j.judge, j.protocol, j.status, j.verdict
            from judgments j
              left join eval_responses p on p.ns = j.ns and p.iteration = j.iteration
                and p.responder = j.responder and p.pair_key = j.pair_key
              left join eval_responses b on b.ns = j.ns and b.iteration = 0 and b.responder = 'policy'
                and b.pair_key = j.pair_key
            where j.ns = :namespace order by j.iteration, j.pair_key, j.swapped""",
    },
    "failures": {
        "title": "What failed and will be retried by the next run",
        "sql": """
            select scope, stage, item, reason, datetime(at, 'unixepoch') as at_utc from failures
            order by at desc""",
    },
    "stage_times": {
        "title": "Where a run's time went: each stage's last attempt",
        "sql": """
            select s.iteration, s.stage, datetime(b.started_at, 'unixepoch') as started_utc,
              round(s.done_at - b.started_at, 1) as seconds, b.gpus
            from stages s left join stage_starts b on b.run_id = s.run_id and b.iteration = s.iteration
              and b.stage = s.stage
            where s.run_id = :run_id order by s.iteration, s.done_at""",
    },
}
