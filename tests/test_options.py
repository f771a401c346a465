"""Options that do what they say: a count of 0 means none, a name the recipe lacks is refused with the names it
has, an import of nothing imports nothing, every split with data is shown, and a busy port is said before a URL is
printed. Each refusal is one line, exit 2, and leaves the home as it was."""

from __future__ import annotations

import json
import socket
import sqlite3

from conftest import NumberedQuestioner, cli, one_line

from stargate_lite.recipe import load_recipe
from stargate_lite.runs import open_run
from stargate_lite.store import Store


def test_chat_with_max_questions_0_answers_at_once_and_a_negative_count_is_refused(home, tmp_path):
    from stargate_lite.commands.chat import Transcript, chat_loop

    recipe = load_recipe("tiny")
    store = Store(home)
    said = iter(["Plan my week.", "/quit"])
    questioner = NumberedQuestioner(recipe.respond.max_tokens)
    chat_loop(questioner, None, recipe, Transcript(store, "base", "Ana", None), read=lambda prompt: next(said),
              write=print, stream="".join, max_questions=0)
    (turns, response), = [(json.loads(t), r) for t, r in store.db.execute("select turns, response from chats")]
    assert (questioner.questions, turns, response) == (0, [], "Here is a plan.")  # no question: the answer at once

    elsewhere = tmp_path / "new-home"
    line = one_line(cli("chat", "--base", "--max-questions", "-1", home=elsewhere, check=False,
                               stdin="Plan my week.\n"))
    assert "--max-questions" in line and "-1" in line
    assert not elsewhere.exists()  # refused before --base makes a home


def test_report_refuses_a_roleplayer_judge_or_responder_the_run_lacks_naming_the_valid_ones(home):
    open_run(Store(home), load_recipe("tiny"))  # a run with no evaluation
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    for option, name, valid in (("--roleplayer", "nope", "gemma, smollm2, smollm2-hf, smollm2-plain"),
                                ("--judge", "nope", "gemma, smollm2, smollm2-hf, smollm2-plain"),
                                ("--responder", "nope", "policy, base")):
        line = one_line(cli("report", option, name, home=home, check=False))
        assert f"{option} 'nope'" in line and valid in line, line
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # no report.md, no plots


def test_data_import_of_no_file_or_an_empty_one_is_refused_and_makes_no_home(tmp_path):
    home = tmp_path / "home"
    line = one_line(cli("data", "import", "--dataset", "mine", "--split", "A", home=home, check=False))
    assert "--tasks" in line and "--personas" in line and "--golds" in line
    assert not home.exists()
    for name, content, what in (("tasks.json", "[]", "tasks"), ("tasks.jsonl", "\n\n", "tasks"),
                                ("personas.jsonl", "", "personas"), ("gold.json", "{}", "gold")):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        option = {"tasks": "--tasks", "personas": "--personas", "gold": "--golds"}[what]
        line = one_line(cli("data", "import", "--dataset", "mine", "--split", "A", option, str(path),
                                   home=home, check=False))
        assert f"{path} holds no {what}" in line, line
        assert not home.exists()


def test_data_show_lists_a_split_that_has_personas_but_no_tasks(home, tmp_path):
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"name": "Ana", "text": "I paint."}\n', encoding="utf-8")
    cli("data", "import", "--dataset", "mine", "--split", "B", "--personas", str(personas), home=home)
    rows = json.loads(cli("data", "show", "--json", home=home).stdout)
    assert [(r["dataset"], r["split"], r["tasks"], r["personas"], r["golds"]) for r in rows] == [
        ("mine", "B", 0, 1, 0)]
    assert "mine" in cli("data", "show", home=home).stdout


def test_browse_on_a_busy_port_says_so_before_printing_a_url(home):
    Store(home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("browse", "--port", str(port), home=home, check=False)
    line = one_line(result)
    assert f"port {port}" in line and "in use" in line, line
    assert "Serving" not in result.stdout
    with sqlite3.connect(home / "stargate.db") as db:  # the store was only read
        assert db.execute("select count(*) from runs").fetchone() == (0,)
