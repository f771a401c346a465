"""Elicitation per conversation (evaluation/elicitation.py): facts told when asked (active), told unasked
(passive) and never told, for a gated user (the facts it was given) and a free one (the facts its replies state),
on written conversations with the real gate (all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest

from stargate_lite.evaluation.elicitation import conversation_elicitation, elicitation
from stargate_lite.facts import persona_facts

MEI = ("I'm MEI. I'm 33 and work as a data engineer in Singapore. I share a small flat with my partner and our cat. "
       "I was diagnosed with type 1 diabetes as a teenager. I'm saving hard for a deposit on a home.")
FACTS = persona_facts(MEI)  # 0 work, 1 flat and partner, 2 diabetes, 3 saving


@pytest.fixture(scope="module")
def gate(model_cache):
    from stargate_lite.engines.gate import Gate

    return Gate(cache=model_cache)


def _turns(*exchanges: tuple) -> list[dict]:
    turns = []
    for question, reply, *given in exchanges:
        turns.append({"role": "questioner", "text": question})
        turns.append({"role": "roleplayer", "text": reply, **({"facts": given[0]} if given else {})})
    return turns


def test_a_free_users_facts_are_those_its_replies_state(gate):
    """Asked where she lives, Mei says so (active); asked what she would like to eat, she says she is saving
    (passive); the later turn asking about her flat again does not make the saving active; work and health are
    never said."""
    turns = _turns(("Who else lives with you?", "I live with my partner and our cat in a small flat."),
                   ("What would you like to eat?", "I'm saving hard for a deposit on a home, so cheap food please."),
                   ("Who lives with you, again?", "My partner and our cat in a small flat, as I said."))
    assert conversation_elicitation(turns, FACTS, gate) == {"facts": 4, "active": 1, "passive": 1, "never": 2}


def test_a_fact_asked_earlier_and_told_later_is_active(gate):
    turns = _turns(("Tell me about your health.", "Hmm, let me think."),
                   ("Anything else?", "I was diagnosed with type 1 diabetes when I was a teenager."))
    assert conversation_elicitation(turns, FACTS, gate) == {"facts": 4, "active": 1, "passive": 0, "never": 3}


def test_a_gated_users_facts_are_those_it_was_given(gate):
    """Its reply's words do not count: a gated reply tells the facts it was given (turns.facts), here the flat
    when asked, and the saving on a turn that asked nothing (a gate run with other settings gave it)."""
    turns = _turns(("Who else lives with you?", "Just us.", [1]),
                   ("Anything else?", "I work as a data engineer in Singapore.", []),
                   ("What would you like to eat?", "Something cheap.", [3]))
    assert conversation_elicitation(turns, FACTS, gate) == {"facts": 4, "active": 1, "passive": 1, "never": 2}


def test_a_fact_counts_once_and_a_reply_without_a_question_asked_nothing(gate):
    turns = [{"role": "roleplayer", "text": "I work as a data engineer in Singapore."},
             *_turns(("What do you do for a living?", "I work as a data engineer in Singapore.")),
             *_turns(("Who else lives with you?", "Nobody else.", []))]
    assert conversation_elicitation(turns, FACTS, gate) == {"facts": 4, "active": 0, "passive": 1, "never": 3}
    assert conversation_elicitation([], [], gate) == {"facts": 0, "active": 0, "passive": 0, "never": 0}


def test_the_aggregate_is_a_mean_per_conversation_and_a_share_of_the_facts():
    summary = elicitation([{"facts": 4, "active": 2, "passive": 0, "never": 2},
                           {"facts": 2, "active": 0, "passive": 1, "never": 1},
                           {"facts": 0, "active": 0, "passive": 0, "never": 0}])
    assert summary["conversations"] == 3
    assert summary["active"]["mean"] == pytest.approx(2 / 3) and summary["active"]["n"] == 3
    assert summary["active_share"]["mean"] == pytest.approx(0.25) and summary["active_share"]["n"] == 2
    assert summary["never_share"]["mean"] == pytest.approx(0.5)
    assert summary["passive"]["sem"] is not None
