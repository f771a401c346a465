"""simulate.turns policy with a question cost, end to end on the tiny model: the Questioner chooses when to stop
asking, selection charges for questions, and training and evaluation answer after the conversation as it ended."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import TINY_CI_OVERRIDES, cli, copy_home

from stargate_lite.engines.encoded import Completions
from stargate_lite.prompts import DECIDE_INSTRUCTION, QUESTION_INSTRUCTION

# Turn limit, conversations per pair (2 pairs). At this scale the tiny model answered at its first turn in all 8
# conversations (2026-12-04, with the tests' 6-token questions and with 12): these tests check what the stages do
# with the turns as they ended; the scripted tests below pin down where a conversation stops.
K, N = 2, 4
POLICY = ["simulate.turns=policy", "reward.question_cost=1.0", f"simulate.max_turns={K}",
          f"simulate.conversations_per_pair={N}"]


def policy_args(iterations: int = 1) -> list[str]:
    return ["run", "--iterations", str(iterations), *[a for o in TINY_CI_OVERRIDES + POLICY for a in ("--set", o)]]


@pytest.fixture(scope="module")
def stopped_run(data_home, tmp_path_factory) -> Path:
    home = copy_home(data_home, tmp_path_factory.mktemp("policy-turns") / "home")
    cli(*policy_args(), home=home)
    return home


@pytest.fixture
def stopped(stopped_run, tmp_path) -> Path:
    """A copy of the module's run, this test's own."""
    return copy_home(stopped_run, tmp_path / "policy-turns")


def test_conversations_end_where_the_questioner_answers_or_at_the_turn_limit(stopped):
    with sqlite3.connect(stopped / "stargate.db") as db:
        assert {k for (k,) in db.execute("select turns from pairs")} == {K}  # the limit, for every pair
        rows = db.execute("select c.id, c.turns, c.questions, c.answer, count(t.idx), "
                          "sum(t.role = 'questioner' and t.is_question = 0) from conversations c "
                          "left join turns t on t.conversation_id = c.id group by c.id").fetchall()
    assert len(rows) == 2 * N
    for cid, turns, questions, answer, messages, not_questions in rows:
        assert messages == 2 * turns and questions == turns and not not_questions, cid  # every kept turn asks
        if answer is None:
            assert turns == K, cid  # asked to the limit
        else:
            assert "?" not in answer and turns < K, cid  # its answer ended the conversation, kept beside it
    report = json.loads(cli("status", "--json", home=stopped).stdout)
    (it,) = report["runs"][0]["iterations"]
    counts = it["efficiency"]["question_counts"]
    assert sum(counts.values()) == 2 * N and counts == {
        str(q): sum(1 for r in rows if r[2] == q) for q in {r[2] for r in rows}}


def test_selection_charges_each_question_and_training_answers_after_the_conversation_as_it_ended(stopped):
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store

    with sqlite3.connect(stopped / "stargate.db") as db:
        chosen = db.execute("select s.pair_id, s.conversation_id, s.reward, s.logprob, c.questions from selections s "
                            "join conversations c on c.id = s.conversation_id").fetchall()
        for pair_id, _, reward, logprob, questions in chosen:
            assert reward == pytest.approx(logprob - 1.0 * questions)
            others = db.execute("select sc.logprob - c.questions from conversations c join scores sc "
                                "on sc.conversation_id = c.id where c.pair_id = ?", [pair_id]).fetchall()
            assert reward == pytest.approx(max(r for (r,) in others))
    store = Store(stopped)
    recipe = recipe_of_run(pick_run(store, None))
    turns = store.selected_turns("tiny", 1)
    for (_, cid, *_), example in zip(sorted(chosen), training_examples(store, recipe, "tiny", 1)):
        assert DECIDE_INSTRUCTION in example[0]["content"] and QUESTION_INSTRUCTION not in example[0]["content"]
        conversation = turns.get(cid, [])
        assert [m["content"] for m in example[1:-1]] == [t["text"] for t in conversation]  # the request not repeated
        assert example[-1]["role"] == "assistant"


def test_eval_judges_by_the_turns_each_conversation_took(stopped):
    summary = json.loads(cli("eval", "--json", home=stopped).stdout)
    with sqlite3.connect(stopped / "stargate.db") as db:
        taken = dict(db.execute("select r.pair_key, c.turns from eval_responses r join conversations c "
                                "on c.id = r.conversation_id where r.iteration = 1").fetchall())
        judged = db.execute("select pair_key, turns from judgments").fetchall()
    assert judged and all(turns == taken[key] for key, turns in judged)
    win = summary["iterations"][1]["win_rate"]
    assert sorted(win["by_turns"]) == sorted({str(t) for t in taken.values()})
    assert summary["iterations"][1]["efficiency"]["turns"]["n"] == 2 * 2  # 2 test pairs, 2 conversations each


class ScriptedQuestioner:
    """Asks as many questions as the task's script says, then answers (fault injection's kind of fake: it pins
    down the stopping rule exactly; the tests above run the real model)."""

    def __init__(self, questions_by_task: dict[str, int]):
        self.questions_by_task = questions_by_task

    def generate(self, policy, prompts, *, on_batch=None, **sampling):
        out = []
        for messages in prompts:
            task = next(t for t in self.questions_by_task if t in messages[0]["content"])
            asked = sum(m["role"] == "assistant" for m in messages)
            out.append(f"Question {asked + 1}?" if asked < self.questions_by_task[task] else "Here is my answer.")
        if on_batch:
            on_batch(len(prompts))
        return Completions(out, [False] * len(out))  # whole turns, as the real generation reports them

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


class EchoRoleplayer:
    def __init__(self):
        self.requests = 0

    def complete_each(self, conversations, sampling):
        self.requests += len(conversations)
        return [f"My answer to {c[-1]['content']}" for c in conversations]


@pytest.mark.parametrize("mode", ["uniform", "policy"])
def test_the_questioner_stops_where_it_answers_only_in_policy_mode(mode):
    from stargate_lite.recipe import SimulateConfig
    from stargate_lite.stages.simulate import Roleplayers, simulate_chunk

    script = {"Plan a trip.": 0, "Cook dinner.": 1, "Pick a book.": 5}
    pairs = [{"id": task, "task": task, "persona": "I'm ANA.", "persona_name": "Ana", "turns": 3} for task in script]
    config = SimulateConfig(turns=mode, max_turns=3, conversations_per_pair=2)
    roleplayer, progress = EchoRoleplayer(), []
    convs = simulate_chunk(pairs, None, ScriptedQuestioner(script), Roleplayers({"echo": 1.0}, lambda _: roleplayer, 0),
                           config, seed=0, on_message=progress.append)
    assert sum(progress) == 2 * 3 * len(convs)  # the progress bar's total, whatever the conversations took
    taken = {c["pair"]["task"]: (len(c["messages"]) // 2, c["answer"]) for c in convs}
    if mode == "policy":
        assert taken == {"Plan a trip.": (0, "Here is my answer."), "Cook dinner.": (1, "Here is my answer."),
                         "Pick a book.": (3, None)}
        assert roleplayer.requests == 2 * (0 + 1 + 3)  # only questions are answered
    else:  # the paper's protocol: k turns whatever the Questioner says, the answer turn kept as a turn
        assert taken == {task: (3, None) for task in script}
        assert roleplayer.requests == 2 * 3 * 3
    for c in convs:
        assert [m["role"] for m in c["messages"]] == ["questioner", "roleplayer"] * (len(c["messages"]) // 2)
        assert all("n_tokens" in m for m in c["messages"])


def test_chat_and_export_of_a_policy_turns_run_let_the_model_choose_when_to_answer(stopped, tmp_path):
    result = cli("chat", "--name", "Mei", home=stopped, check=False,
                 stdin="Plan my week.\nI work nights.\nI like quiet evenings.\n/answer\n/quit\n")
    assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(stopped / "stargate.db") as db:
        first = db.execute("select turns, response from chats order by started_at limit 1").fetchone()
    turns = json.loads(first[0])
    assert first[1]  # it answered: on its own turn, or when asked to with /answer
    asked = [t["text"] for t in turns if t["role"] == "questioner"]
    assert all("?" in text for text in asked)  # a turn without one is its answer (none, where it answered at once)
    out = tmp_path / "merged"
    cli("export", "--out", str(out), home=stopped)
    card = (out / "README.md").read_text()
    assert DECIDE_INSTRUCTION in card and "a turn without a question is its answer" in card


def test_in_chat_a_turn_that_is_not_a_question_is_the_answer():
    from stargate_lite.commands.chat import chat_loop
    from stargate_lite.recipe import load_recipe

    class Streaming(ScriptedQuestioner):
        def stream(self, model, messages, **sampling):
            return iter(self.generate(model, [messages]))

    class Transcript:
        name, persona, task, turns, response = "Ana", None, None, [], None

        def save(self):
            pass

        def new(self):
            pass

    transcript, said = Transcript(), iter(["Cook dinner.", "Pasta, please.", "/quit"])
    chat_loop(Streaming({"Cook dinner.": 1}), None, load_recipe("tiny", ["simulate.turns=policy"]), transcript,
              read=lambda prompt: next(said), write=print, stream="".join)
    assert [t["text"] for t in transcript.turns] == ["Question 1?", "Pasta, please."]
    assert transcript.response == "Here is my answer."


def test_the_questioner_asks_under_the_recipes_own_instruction_in_either_mode():
    """simulate.instruction: every prompt simulation gives the Questioner opens with the greeting and the recipe's
    instruction, in place of the shipped one for its turns."""
    from stargate_lite.recipe import SimulateConfig
    from stargate_lite.stages.simulate import Roleplayers, simulate_chunk

    class Recording(ScriptedQuestioner):
        def generate(self, policy, prompts, **kwargs):
            self.prompts = [*getattr(self, "prompts", []), *prompts]
            return super().generate(policy, prompts, **kwargs)

    mine = "Ask me who I live with."
    pairs = [{"id": "p", "task": "Cook dinner.", "persona": "I'm ANA.", "persona_name": "Ana", "turns": 2}]
    for mode in ("uniform", "policy"):
        questioner = Recording({"Cook dinner.": 2})
        config = SimulateConfig(turns=mode, max_turns=2, conversations_per_pair=1, instruction=mine)
        simulate_chunk(pairs, None, questioner, Roleplayers({"echo": 1.0}, lambda _: EchoRoleplayer(), 0), config,
                       seed=0)
        firsts = {messages[0]["content"] for messages in questioner.prompts}
        assert firsts == {f"My name is Ana.\n\nCook dinner.\n\n{mine}"}, firsts
        assert len(questioner.prompts) == 2  # both turns asked under it
