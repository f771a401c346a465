"""`stargate-lite chat` through a pipe and in watch mode, and `export` reloading with the same log-probs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import NumberedQuestioner, cli, files, one_line, run_home, skip_or_fail, trained_home

from stargate_lite.stages.score import encode_gold, score_sums


def chat(home, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return cli("chat", *args, home=home, stdin=stdin, check=False)


def transcripts(home) -> list[dict]:
    with sqlite3.connect(home / "stargate.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from chats order by started_at")]


def test_chat_through_a_pipe_asks_then_answers_on_request(finished):
    result = chat(finished, "Can you suggest a weekly meal plan for me?\nI love spicy food.\n/answer\n/quit\n",
                  "--max-questions", "3", "--name", "Mei")
    assert result.returncode == 0, result.stderr[-2000:]
    # A question, the user's answer, a second question left unanswered by /answer, then the final answer.
    assert result.stdout.count("questioner> ") == 3
    (saved,) = [t for t in transcripts(finished) if t["name"] == "Mei"]
    turns = json.loads(saved["turns"])
    assert [t["role"] for t in turns] == ["questioner", "roleplayer"]
    assert turns[1]["text"] == "I love spicy food."
    assert saved["task"] == "Can you suggest a weekly meal plan for me?" and saved["response"]
    assert saved["policy"] == "tiny/iteration-2"


def test_chat_with_an_adapter_folder_needs_no_run_and_a_folder_without_one_is_refused(finished, tmp_path):
    adapter = finished / "runs" / "tiny" / "iteration-1" / "adapter"
    home = tmp_path / "elsewhere"
    refused = chat(home, "hello\n", "--adapter", str(adapter.parent))
    assert refused.returncode == 2 and "is not a LoRA adapter folder" in refused.stderr and not home.exists()
    result = chat(home, "Can you suggest a weekly meal plan for me?\n/answer\n/quit\n", "--adapter", str(adapter),
                  "--name", "Mei")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "questioner> " in result.stdout
    (saved,) = transcripts(home)
    assert saved["policy"] == f"adapter:{adapter}" and saved["response"]


def test_watch_mode_lets_the_roleplayer_answer(finished):
    result = chat(finished, "", "--persona", "I'm ANA. I am a retired nurse who loves gardening.",
                  "--task", "What should I do this weekend?", "--max-questions", "1", "--name", "Ana", "--base")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "roleplayer> " in result.stdout
    (saved,) = [t for t in transcripts(finished) if t["name"] == "Ana"]
    assert len(json.loads(saved["turns"])) == 2 and saved["response"] and saved["policy"] == "base"


LONG_ANSWER = ("I'm a retired nurse, so my weekends are slow: I garden in the morning, walk the dogs by the river "
               "after lunch, and like a quiet dinner with two or three friends.")


def test_watch_mode_through_a_pipe_prints_each_message_as_said(home):
    """Through a pipe at 80 columns (a terminal's width), a Roleplayer's answer longer than a line is one line, as
    stored. The Roleplayer is an OpenAI-compatible endpoint here, a fake at the boundary, so that its answer is
    long; the Questioner is the real tiny model."""
    from conftest import QuietHandler, serve

    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run
    from stargate_lite.store import Store

    class Endpoint(QuietHandler):
        def do_GET(self):
            self.send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": LONG_ANSWER}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    httpd, root = serve(Endpoint)
    try:
        open_run(Store(home), load_recipe("tiny", [
            f"chat_models.remote={{backend: openai, model: m, base_url: '{root}/v1', max_retries: 0}}",
            "roles.roleplayer=remote", "simulate.question_max_tokens=8", "respond.max_tokens=8"]))
        result = cli("chat", "--base", "--persona", "I'm ANA. I am a retired nurse who loves gardening.", "--task",
                     "What should I do this weekend?", "--max-questions", "1", home=home, check=False, columns=80)
    finally:
        httpd.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(LONG_ANSWER) > 80 and f"roleplayer> {LONG_ANSWER}\n" in result.stdout, result.stdout


def test_chat_without_a_trained_adapter_says_so(home):
    from stargate_lite.store import Store

    Store(home)  # a project with no run yet
    result = chat(home, "hello\n")
    assert result.returncode == 2 and "no runs" in result.stderr and "Traceback" not in result.stderr


def test_export_reloads_with_the_same_logprobs(finished, questioner, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    cli("export", "--out", str(out), home=finished)
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert "iteration 2" in (out / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert AutoTokenizer.from_pretrained(out).chat_template == questioner.tokenizer.chat_template
    report = json.loads(cli("status", "--json", home=finished).stdout)
    policy = questioner.load_policy(report["runs"][0]["iterations"][1]["adapter"])
    item = [encode_gold(questioner, "Mei", "Plan my week.", [], "Start each day with a walk.")]
    (merged_lp, n), = score_sums(reloaded, item, batch_size=1, vocab_chunk_tokens=64)
    (adapter_lp, _), = score_sums(policy, item, batch_size=1, vocab_chunk_tokens=64)
    assert abs(merged_lp - adapter_lp) < 1e-3 * n
    result = cli("export", "--out", str(out), home=finished, check=False)
    assert result.returncode == 2 and "exists" in result.stderr


def test_the_model_card_says_how_to_prompt_in_the_format_the_adapter_was_trained_in(finished, tmp_path):
    from stargate_lite.commands.export import export
    from stargate_lite.prompts import QUESTION_INSTRUCTION
    from stargate_lite.store import Store

    instructed = (export(finished, tmp_path / "instructed") / "README.md").read_text()
    assert "(instructed format)" in instructed and QUESTION_INSTRUCTION in instructed
    store = Store(finished)
    with store.transaction():
        store.db.execute("update trainings set format = 'bare' where iteration = 2")
    bare = (export(finished, tmp_path / "bare") / "README.md").read_text()
    assert "(bare format)" in bare and "nothing else: it asks its questions by itself" in bare
    assert QUESTION_INSTRUCTION not in bare


def test_the_trained_format_travels_with_the_adapter(finished, tmp_path):
    """chat and export greet a checkpoint in the format it was trained in (trainings.format), status shows it."""

    from stargate_lite.runs import resolve_checkpoint
    from stargate_lite.store import Store

    assert [it["format"] for it in json.loads(cli("status", "--json", home=finished).stdout)["runs"][0]["iterations"]
            ] == ["instructed", "instructed"]
    home = finished  # this test's own copy
    store = Store(home)
    with store.transaction():
        store.db.execute("update trainings set format = 'bare' where iteration = 2")
    assert resolve_checkpoint(store, None, None, None, False)[3] == "bare"
    assert resolve_checkpoint(store, None, 1, None, False)[3] == "instructed"
    with store.transaction():  # a run trained before the format was recorded: it was trained instructed
        store.db.execute("update trainings set format = null")
    assert resolve_checkpoint(store, None, None, None, False)[3] == "instructed"


def test_a_moved_home_finds_its_adapters_from_any_directory(finished, tmp_path):
    """Adapter paths are kept relative to the home: a home copied elsewhere and named by a relative --home from
    another directory still serves chat and status; a store written before (a path relative to the directory
    the run started in) is upgraded on open."""
    import shutil

    home = tmp_path / "project" / ".stargate"
    shutil.copytree(finished, home)
    with sqlite3.connect(home / "stargate.db") as db:
        db.execute("update trainings set adapter = '.stargate/runs/tiny/iteration-1/adapter' where iteration = 1")
        db.execute("delete from _migrations where name = 'm009_adapter_paths_in_home'")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "STARGATE_HOME"}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stargate_lite", *args, "--home", "../project/.stargate"],
                              input=stdin, env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600,
                              check=True)

    status = json.loads(run("status", "--json").stdout)
    adapters = [it["adapter"] for it in status["runs"][0]["iterations"]]
    assert adapters == [str(home / "runs" / "tiny" / f"iteration-{i}" / "adapter") for i in (1, 2)]
    result = run("chat", "--iteration", "1", stdin="Can you suggest a weekly meal plan for me?\n/quit\n")
    assert "questioner>" in result.stdout
    with sqlite3.connect(home / "stargate.db") as db:
        assert {r[0] for r in db.execute("select adapter from trainings")} == {
            "runs/tiny/iteration-1/adapter", "runs/tiny/iteration-2/adapter"}


def test_export_under_a_file_is_refused_in_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    home = tmp_path / "home"
    result = cli("export", "--out", str(blocker / "model"), home=home, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{blocker} is a file" in result.stderr
    assert not home.exists()  # refused before the home or its store is made



def test_both_exports_leave_a_folder_named_like_their_temporary_one_as_it_was(home, questioner, tmp_path):
    """`OUT.tmp` is the user's, not the export's: each export writes aside under a fresh name of its own. (The run
    has no records yet: its dataset is a card alone.)"""
    trained_home(home, questioner)
    for option, out in (("--out", tmp_path / "merged"), ("--data", tmp_path / "records")):
        theirs = out.with_name(out.name + ".tmp")
        theirs.mkdir()
        (theirs / "notes.txt").write_text("a week of notes")
        cli("export", option, str(out), home=home)
        assert (theirs / "notes.txt").read_text() == "a week of notes", option
        assert out.is_dir() and (out / "README.md").is_file(), option
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [  # nothing else left beside them
        "merged", "merged.tmp", "records", "records.tmp"]




def test_export_data_under_a_file_is_one_line_and_writes_nothing(home, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    before = files(run_home(home))
    line = one_line(cli("export", "--data", str(blocker / "records"), home=home, check=False))
    assert f"{blocker} is a file" in line and "--data" in line
    assert files(home) == before and blocker.read_text() == "not a folder"


@contextmanager
def read_only_folder(folder: Path):
    """A folder this process may not write in: chmod'ed, or for root (whom permissions do not stop) a read-only
    file system mounted there."""
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                 capture_output=True, check=False)
        if mounted.returncode != 0:
            skip_or_fail(f"root without mount rights: cannot make a read-only folder ({mounted.stderr!r})")
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.mark.root  # as root, read_only_folder mounts a file system (the tier of tests/test_homes.py's read-only home)
@pytest.mark.parametrize("option", ["--out", "--data"])
def test_exports_into_a_read_only_folder_are_refused_before_any_work(home, tmp_path, option):
    """The destination is checked first: `--out` says so before it looks for an adapter or loads a model (the
    run here has none), where it would otherwise merge the whole model and fail writing it."""
    before = files(run_home(home))
    with read_only_folder(tmp_path / "shared") as shared:
        line = one_line(cli("export", option, str(shared / "sub" / "mine"), home=home, check=False))
        assert f"cannot write in {shared}" in line and option in line
        assert not any(shared.iterdir())
    assert files(home) == before


def adapter_folder(questioner, folder: Path) -> Path:
    """A fresh LoRA of the tiny model, saved as training saves one (adapter_config.json and the weights)."""
    from stargate_lite.engines.training import attach_lora, save_adapter
    from stargate_lite.recipe import load_recipe

    save_adapter(attach_lora(questioner.load_base(), load_recipe("tiny").train, seed=0), folder)
    return folder


def test_chat_with_a_broken_or_incomplete_adapter_folder_is_one_line(questioner, tmp_path):
    """Each says what is wrong with the folder, before a home is made or a model loaded; without its weights,
    peft would look the folder's name up on the Hub as a repo id."""
    good = adapter_folder(questioner, tmp_path / "adapter")
    weights = (good / "adapter_model.safetensors").read_bytes()
    config = json.loads((good / "adapter_config.json").read_text())
    cases = {
        "no-weights": ({"adapter_config.json": json.dumps(config)}, "has no adapter weights"),
        "bad-config": ({"adapter_config.json": '{"peft_type": "LO', "adapter_model.safetensors": weights},
                       "adapter_config.json is not valid JSON"),
        "not-lora": ({"adapter_config.json": "{}", "adapter_model.safetensors": weights},
                     "adapter_config.json is not a LoRA adapter's"),
        "cut-short": ({"adapter_config.json": json.dumps(config), "adapter_model.safetensors": weights[:5000]},
                      "adapter_model.safetensors cannot be read"),
    }
    home = tmp_path / "home"
    for name, (contents, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, content in contents.items():
            (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        line = one_line(chat(home, "hello\n", "--adapter", str(folder)))
        assert str(folder) in line and message in line, (name, line)
        assert not home.exists(), name


def test_chat_with_an_adapter_of_another_base_model_says_so(questioner, tmp_path):
    good = adapter_folder(questioner, tmp_path / "adapter")
    config = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] * 2}))  # shapes that differ
    line = one_line(chat(tmp_path / "home", "hello\n", "--adapter", str(good)))
    assert f"adapter {good} does not fit the base model" in line and "--run" in line


def test_reset_starts_over_and_keeps_the_abandoned_chat_as_it_was(home):
    from stargate_lite.commands.chat import Transcript, chat_loop
    from stargate_lite.recipe import load_recipe
    from stargate_lite.store import Store

    recipe = load_recipe("tiny")
    store = Store(home)
    said = iter(["Plan my week.", "/reset", "Cook dinner.", "I like pasta.", "/answer", "/quit"])
    chat_loop(NumberedQuestioner(recipe.respond.max_tokens), None, recipe, Transcript(store, "base", "Ana", None),
              read=lambda prompt: next(said), write=print, stream="".join)
    chats = transcripts(home)
    assert [(c["task"], json.loads(c["turns"]), c["response"]) for c in chats] == [
        ("Plan my week.", [{"role": "questioner", "text": "Question 1?"}], None),  # abandoned: no answer, no plan
        ("Cook dinner.", [{"role": "questioner", "text": "Question 2?"},
                          {"role": "roleplayer", "text": "I like pasta."}], "Here is a plan."),
    ]
