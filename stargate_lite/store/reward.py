"""The reward selection ranks conversations by, written once: the gold's log-prob under the base model less
reward.question_cost nats per question the Questioner asked, plus reward.fact_credit nats per persona fact a gated
user was told (each fact once, however often it was given: turns.facts). The two rates travel together as one
`RewardTerms` (the recipe's `recipe.reward.terms`), so a new term is added here and in the recipe, not to the
signature of every function that ranks conversations.

`reward` reckons it in Python and `reward_sql` writes it for the store's queries, side by side so the two cannot
drift apart (tests/test_store.py checks that SQLite's arithmetic gives what Python's does, to the last bit).
A turn's reward-to-go under reward.per_turn (`rewards_to_go`, which rloo and grpo train on and the environment
reports) is `reward` of the log-prob the gold gained from that turn on and of the questions from that turn on."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StargateError
from ..prompts import is_question


@dataclass(frozen=True)
class RewardTerms:
    """What the reward adds to the gold's log-prob, in nats: `question_cost` per question asked, `fact_credit` per
    persona fact a gated user was told. The default, neither, makes the reward the log-prob itself."""

    question_cost: float = 0.0
    fact_credit: float = 0.0


LOGPROB_ONLY = RewardTerms()


def reward(logprob: float, questions: int, terms: RewardTerms, facts: int = 0) -> float:
    """A conversation's reward: its gold log-prob less the cost of its questions, plus the credit of the facts it
    was told. With neither, the log-prob itself (x - 0.0 * n + 0.0 * m is x, exactly)."""
    return logprob - terms.question_cost * questions + terms.fact_credit * facts


def reward_sql(logprob: str, questions: str, cost: str, facts: str = "0", credit: str = "0") -> str:
    """The reward as an SQL expression of SQL expressions (columns, a bound `?`, a coalesce(...)), bracketed so it
    stands anywhere an expression can (a window's ORDER BY, a product)."""
    return f"({logprob} - {cost} * {questions} + {credit} * {facts})"


def facts_told_sql(conversation_id: str) -> str:
    """The number of distinct persona facts a conversation's gated user was given over its replies, as an SQL
    expression of the conversation's id (0 for a free user's, whose replies record none)."""
    return (f"(select count(distinct j.value) from turns ft, json_each(ft.facts) j "
            f"where ft.conversation_id = {conversation_id} and ft.facts is not null)")


def facts_told(turns: list[dict]) -> int:
    """facts_told_sql in Python, over a conversation's turns as Store.turns reads them."""
    return len({i for t in turns for i in t.get("facts") or ()})


def rewards_to_go(row: dict, turns: list[dict], after: dict[int, float], terms: RewardTerms) -> list[float]:
    """Each Questioner turn's reward-to-go, the answer's (0) last where there is one. row: {conversation_id,
    logprob (the gold's after the whole conversation), answer}; turns: its {role, text, facts (a gated user's
    replies)}; after: the gold's log-prob after each turn k but the last (the turn scores). A fact's credit goes
    to the turns up to the one whose reply first told it."""
    questions = [is_question(t["text"]) for t in turns if t["role"] == "questioner"]
    told = facts_told(turns)
    final = row["logprob"]  # the gold's, after the whole conversation
    if any(k not in after for k in range(1, len(questions))):
        raise StargateError(f"conversation {row['conversation_id']} has no per-turn scores: was it scored with "
                            "reward.per_turn?")
    # phi(h_k), the gold's log-prob after the first k turns: 0 before any (the pair's constant), the per-turn
    # scores between, `final` after the last turn. Turn k + 1's reward-to-go is final - phi(h_k), less the cost of
    # the questions from it on; an answer after n turns leaves final - phi(h_n): 0 after a question turn, the whole
    # reward where it is the conversation's first turn.
    before = [0.0, *(after[k] for k in range(1, len(questions)))][: len(questions)]
    to_go = [reward(final - b, sum(questions[k:]), terms, told - facts_told(turns[: 2 * k]))
             for k, b in enumerate(before)]
    if row["answer"] is None:
        return to_go
    return [*to_go, 0.0 if questions else final]
