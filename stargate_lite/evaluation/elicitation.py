"""Elicitation: which of a persona's facts a conversation drew out, and whether by asking.

Per conversation, each of the persona's facts (facts.persona_facts) is one of

- **active**: told in a reply to a turn that asked for it, or after an earlier turn had asked for it;
- **passive**: told although no Questioner turn had asked for it yet (the user volunteered it);
- **never**: not told at all.

What a reply tells: for a gated user (simulate.reveal asked), the facts it was given (turns.facts); for a free
user, who sees its whole persona, the facts its reply states, found by the gate (engines/gate.py, `Gate.stated`).
What a turn asks for is `Gate.asked`, the rule that selects a gated user's facts, so the two users are measured
alike. A fact counts once per conversation: the first reply that tells it decides. The gate is the run's recipe's
(simulate.gate), built for every user, free ones included (stages/simulate.py, `recipe_gate`).

This is the headline measure of how much a Questioner learnt by asking; the content-word leakage of the audit
(audit.py) stays beside it, a lexical figure that needs no model.
"""

from __future__ import annotations

from ..engines.gate import Gate
from ..stages.simulate import pair_facts
from .efficiency import mean_sem

KINDS = ("active", "passive", "never")


def conversation_elicitation(turns: list[dict], facts: list[str], gate: Gate) -> dict:
    """{facts, active, passive, never}: how many of the persona's facts the conversation's replies told, asked
    for or not, and how many it never told. `turns` are {role, text} with "facts" on a gated user's replies (the
    indices it was given), as Store.turns reads them.

        questioner "Who else lives with you?"   asks fact 1
        roleplayer "My partner and our cat."    tells fact 1: active
        questioner "Anything else?"             asks nothing
        roleplayer "I'm saving for a home."     tells fact 3: passive
    """
    asked: set[int] = set()
    told: dict[int, str] = {}
    question = None
    for turn in turns:
        if turn["role"] == "questioner":
            question = turn["text"]
            continue
        if question is not None:
            asked.update(gate.asked(question, facts))
        given = turn["facts"] if "facts" in turn else gate.stated(turn["text"], facts)
        for fact in given:
            told.setdefault(fact, "active" if fact in asked else "passive")
        question = None
    counts = {kind: sum(k == kind for k in told.values()) for kind in ("active", "passive")}
    return {"facts": len(facts), **counts, "never": len(facts) - len(told)}


def each_elicitation(conversations: list[dict], gate: Gate) -> list[dict]:
    """conversation_elicitation of each conversation {persona, persona_facts (stored JSON, or None), turns}."""
    return [conversation_elicitation(c["turns"], pair_facts(c), gate) for c in conversations]


def elicitation(counts: list[dict]) -> dict:
    """Over conversations' counts (conversation_elicitation): the mean per conversation with its SEM of facts,
    active, passive and never, and the same as shares of each conversation's persona facts ("active_share", ...;
    over the conversations whose persona has a fact)."""
    with_facts = [c for c in counts if c["facts"]]
    return {"conversations": len(counts), "facts": mean_sem([c["facts"] for c in counts]),
            **{kind: mean_sem([c[kind] for c in counts]) for kind in KINDS},
            **{f"{kind}_share": mean_sem([c[kind] / c["facts"] for c in with_facts]) for kind in KINDS}}
