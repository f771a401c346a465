"""Small things people expect: --version, a word while waiting on a locked store, YAML errors with their line, JSON
with a repeated key refused, and a chat's Ctrl-C that does not promise a resume."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version

import pytest
from conftest import cli
from typer.testing import CliRunner

from stargate_lite.errors import StargateError
from stargate_lite.store import Store


def test_version_prints_the_installed_package_version(home):
    result = cli("--version", home=home)
    assert result.stdout.strip() == f"stargate-lite {version('stargate-lite')}"
    assert not home.exists()


def test_a_command_waiting_on_a_locked_store_says_so_then_goes_on_when_it_is_free(tmp_path):
    home = tmp_path / "home"
    Store(home)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(["Plan my week."]))
    holder = sqlite3.connect(home / "stargate.db", isolation_level=None)
    holder.execute("begin immediate")  # another program holds the write lock
    command = subprocess.Popen(
        [sys.executable, "-m", "stargate_lite", "data", "import", "--dataset", "mine", "--split", "A", "--tasks",
         str(tasks)], env={**os.environ, "STARGATE_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        first = command.stderr.readline()  # blocks until the command writes to stderr (or ends)
        assert "waiting for the store" in first and "locked by another process" in first, first
    finally:
        holder.execute("rollback")
        holder.close()
    out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    assert "Imported into mine/A: 1 tasks" in out
    assert Store(home).value("select count(*) from tasks") == 1


def test_bad_yaml_in_a_recipe_or_a_set_value_is_one_error_with_its_line(tmp_path):
    from stargate_lite.cli import app
    from stargate_lite.recipe import load_recipe

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nseed: 0\nroles:\n  oracle: [a\n  judge: b\n", encoding="utf-8")
    with pytest.raises(StargateError, match=r"recipe .*mine.yaml is not valid YAML: line \d+, column \d+: "):
        load_recipe(str(recipe))
    with pytest.raises(StargateError, match=r"--set 'data.tasks=\{A: 1' is not valid YAML: line 1, column \d+"):
        load_recipe("tiny", ["data.tasks={A: 1"])
    result = CliRunner().invoke(app, ["recipe", "show", "tiny", "--set", "data.tasks={A: 1"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_json_with_a_repeated_key_is_refused_naming_it(tmp_path, home):
    from stargate_lite.stages.data import import_data

    tasks = tmp_path / "tasks.json"
    tasks.write_text('["Plan my week.", "Cook dinner."]', encoding="utf-8")
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"name": "Ana", "text": "I paint."}\n{"name": "Bo", "text": "I run.", "text": "I swim."}\n',
                        encoding="utf-8")
    with pytest.raises(StargateError, match=r"personas.jsonl:2 repeats the key 'text'"):
        import_data(Store(home), "mine", "A", tasks=tasks, personas=personas)
    golds = tmp_path / "gold.json"
    golds.write_text('{"prompt-0 persona-0": ["Rest."],\n "prompt-0 persona-0": ["Work."]}', encoding="utf-8")
    with pytest.raises(StargateError, match=r"gold.json repeats the key 'prompt-0 persona-0'"):
        import_data(Store(home), "mine", "A", tasks=tasks, golds=golds)
    assert Store(home).value("select count(*) from tasks") == 0  # nothing of either import kept


class _CtrlC(io.RawIOBase):
    """A terminal where the user presses Ctrl-C at the first prompt."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not len(buffer):
            return 0
        raise KeyboardInterrupt


def test_ctrl_c_in_chat_says_the_chat_is_saved_not_to_resume_it(home):
    from click.testing import CliRunner as ClickRunner  # typer's runner takes text only, not a stream
    from typer.main import get_command

    from stargate_lite.cli import app

    result = ClickRunner().invoke(get_command(app), ["chat", "--base", "--home", str(home)], input=_CtrlC())
    assert result.exit_code == 130, result.output
    assert "Interrupted" in result.output and "saved" in result.output
    assert "resume" not in result.output and "run the same command again" not in result.output
