"""The simulator audit (evaluation/audit.py): persona leakage and role breaks, on written cases and on the real
tiny Roleplayer told to recite its persona or to answer in one word."""

from __future__ import annotations

import pytest
from conftest import THREAD_OVERRIDES

from stargate_lite.evaluation.audit import audit, breaks_role, leakage

PERSONAS = [
    "I'm MEI. I am a nurse who works night shifts, loves spicy Sichuan noodles and keeps two rescue greyhounds.",
    "I'm RAVI. I teach chemistry at a high school, cycle to work every morning and avoid gluten since my diagnosis.",
    "I'm DANA. I run a small bakery downtown, practise yoga before sunrise and am saving for a trip to Portugal.",
]


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "questioner", "text": question}, {"role": "roleplayer", "text": answer}]


def test_leakage_counts_persona_words_said_unasked():
    persona = "I'm Mei, a nurse on night shifts who loves noodles."  # content words: nurse, night, shifts, loves, noodles
    assert leakage(persona, _turns("Do you like noodles?", "Yes, noodles.")) == 0.0  # asked: not a leak
    assert leakage(persona, _turns("Do you like noodles?", "Yes; I'm a nurse.")) == pytest.approx(1 / 5)
    assert leakage(persona, _turns("Anything?", "A nurse on night shifts who loves noodles.")) == 1.0
    assert leakage("I am me.", _turns("Hi?", "Hello.")) is None  # no content words to leak
    assert leakage(persona, [{"role": "questioner", "text": "Hi?"}]) is None  # nothing answered


def test_role_breaks_follow_the_written_rule():
    assert breaks_role("As an AI, I suggest oatmeal.") and breaks_role("Sure! I'd be happy to help with that.")
    assert breaks_role("Here's a plan for your week: rest.") and breaks_role("1. Oats\n2. Soup\n3. Rice")
    assert not breaks_role("I work nights, so I eat late.") and not breaks_role("Here is my answer: noodles.")
    assert not breaks_role("- oats\n- soup")  # two items are an answer, not a plan


def test_the_audit_is_per_roleplayer():
    plan = "I'm a nurse.\n1. x\n2. y\n3. z"
    conversations = [{"roleplayer": "a", "persona": PERSONAS[0], "turns": _turns("Hi?", plan)},
                     {"roleplayer": "a", "persona": PERSONAS[0], "turns": _turns("Hi?", "Hello.")},
                     {"roleplayer": None, "persona": PERSONAS[1], "turns": _turns("Hi?", "Hello.")}]
    result = audit(conversations)
    assert sorted(result) == ["a", "unrecorded"]
    assert (result["a"]["conversations"], result["a"]["answers"], result["a"]["role_breaks"]) == (2, 2, 0.5)
    assert result["a"]["leakage"]["n"] == 2 and result["a"]["leakage"]["mean"] > 0
    assert result["unrecorded"]["leakage"]["mean"] == 0.0


def test_a_roleplayer_told_to_recite_leaks_more_than_one_told_to_answer_in_a_word(home):
    """The real tiny Roleplayer (llama.cpp, greedy): asked to repeat its description it says nearly all of its
    persona's words (measured: 0.96 on these three); told to answer in one word, asked whether it likes mornings,
    almost none (0.03)."""
    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.recipe import load_recipe

    roleplayer = ChatModels(load_recipe("tiny", THREAD_OVERRIDES).chat_models, home).get("smollm2")
    measured = {}
    for name, system, question in [("recite", "Your description: {p}", "Repeat your description, word for word."),
                                   ("terse", "Your description: {p}\nAnswer with one word only.",
                                    "Do you like mornings?")]:
        answers = roleplayer.complete_each([[{"role": "system", "content": system.format(p=p)},
                                             {"role": "user", "content": question}] for p in PERSONAS], Sampling(48))
        measured[name] = audit([{"roleplayer": name, "persona": p, "turns": _turns(question, a)}
                                for p, a in zip(PERSONAS, answers, strict=True)])[name]["leakage"]
    assert measured["recite"]["n"] == measured["terse"]["n"] == len(PERSONAS)
    assert measured["recite"]["mean"] > measured["terse"]["mean"] + 0.5, measured
