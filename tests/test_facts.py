"""A persona as its facts (stargate_lite.facts), the written personas a gated user plays, and the labelled turns
(tests/data/gate_cases.json) that a gate, which tells a turn's asked facts, is chosen on."""

import json
from pathlib import Path

import pytest

from stargate_lite.facts import persona_facts
from stargate_lite.stages.builtin_data import PERSONA_NAMES, SEED_PERSONAS, WRITTEN_PERSONAS

GATE_CASES = json.loads((Path(__file__).parent / "data" / "gate_cases.json").read_text(encoding="utf-8"))
WRITTEN = [(split, name, text) for split, personas in WRITTEN_PERSONAS.items() for name, text in personas]


def test_the_name_introduction_is_no_fact():
    assert persona_facts("I'm MEI. I work as a data engineer in Singapore.") == [
        "I work as a data engineer in Singapore."]
    assert persona_facts("My name is Mei. I keep a cat.") == ["I keep a cat."]


def test_facts_are_the_sentences_in_the_order_stated():
    persona = "I'm ANA. I'm 30 and teach music. I live in Lisbon! Do I like jazz? I love it.\nI cycle to work."
    assert persona_facts(persona) == [
        "I'm 30 and teach music.", "I live in Lisbon!", "Do I like jazz?", "I love it.", "I cycle to work."]


def test_a_persona_with_no_fact_gives_none():
    assert persona_facts("I'm ANA.") == []
    assert persona_facts("I'm ANA. Yes. Truly!") == []  # pieces under three words carry no circumstance
    assert persona_facts("") == []


def test_the_written_personas_are_eight_eight_and_four_under_new_names():
    assert {split: len(personas) for split, personas in WRITTEN_PERSONAS.items()} == {"A": 8, "B": 8, "test": 4}
    names = [name.lower() for _, name, _ in WRITTEN]
    taken = {name.lower() for name, _ in SEED_PERSONAS} | {name.lower() for name in PERSONA_NAMES}
    assert len(set(names)) == len(names) == 20 and not set(names) & taken


@pytest.mark.parametrize(("split", "name", "text"), WRITTEN, ids=[name for _, name, _ in WRITTEN])
def test_each_written_persona_gives_its_five_or_six_sentences_as_facts(split, name, text):
    intro = f"I'm {name.upper()}. "
    assert text.startswith(intro)
    facts = persona_facts(text)
    assert 5 <= len(facts) <= 6
    assert " ".join(facts) == text.removeprefix(intro)  # every sentence a fact, none split or lost


def test_the_labelled_gate_cases_are_enough_and_valid():
    assert len(GATE_CASES) >= 100
    kinds = [case["kind"] for case in GATE_CASES]
    assert set(kinds) == {"real", "clean"} and kinds.count("real") >= 50
    for case in GATE_CASES:
        n_facts = len(persona_facts(case["persona"]))
        assert case["turn"] and n_facts, case
        assert case["asks"] == sorted(set(case["asks"])) and all(0 <= i < n_facts for i in case["asks"]), case
    written = {text for _, _, text in WRITTEN}
    assert all(case["persona"] in written for case in GATE_CASES if case["kind"] == "clean")
    asking = [case for case in GATE_CASES if case["asks"]]
    assert asking and len(GATE_CASES) - len(asking) >= 0.4 * len(GATE_CASES)
