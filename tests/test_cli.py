"""CLI behaviour that needs no model: one-line errors, exit codes, empty stores."""

import json

from typer.testing import CliRunner

from stargate_lite.cli import app
from stargate_lite.store import Store

runner = CliRunner()


def test_bad_recipe_value_is_one_line_exit_2():
    result = runner.invoke(app, ["run", "--set", "simulate.max_turns=0"])
    assert result.exit_code == 2
    assert "simulate.max_turns" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # rich may wrap one long line


def test_status_of_a_missing_home_an_empty_one_and_an_unknown_run(tmp_path):
    missing = tmp_path / "missing"
    result = runner.invoke(app, ["status", "--json", "--home", str(missing)])
    assert result.exit_code == 2 and "no stargate-lite store in" in result.output and not missing.exists()
    Store(tmp_path / "empty")
    result = runner.invoke(app, ["status", "--json", "--home", str(tmp_path / "empty")])
    assert result.exit_code == 0 and json.loads(result.output)["runs"] == []
    result = runner.invoke(app, ["status", "--run", "nope", "--home", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no run 'nope'" in result.output


def test_recipe_list_and_show():
    result = runner.invoke(app, ["recipe", "list"])
    assert result.exit_code == 0 and "tiny" in result.output and "paper" in result.output
    result = runner.invoke(app, ["recipe", "show", "tiny", "--set", "train.target=gold"])
    assert result.exit_code == 0 and "target: gold" in result.output


def test_a_refused_command_makes_no_home(tmp_path):
    """Bad input is refused before a store is opened: no empty home is left behind to confuse the next command."""
    tasks = tmp_path / "tasks.json"
    tasks.write_text('["Plan my week."]', encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2", encoding="utf-8")
    home = tmp_path / "home"
    for args, message in [
        (["data", "import", "--dataset", "d", "--split", "C", "--tasks", str(tasks)], "unknown split 'C'"),
        (["data", "import", "--dataset", "d", "--split", "A", "--tasks", str(broken)], "not valid JSON"),
        (["data", "import", "--dataset", "d", "--split", "A", "--tasks", str(tmp_path)], "is a folder, not a file"),
        (["browse", "--port", "70000"], "--port 70000 is not a port"),
        (["browse", "--port", "-1"], "--port -1 is not a port"),
        (["browse", "--port", "0"], "--port 0 is not a port"),
        (["eval"], "no stargate-lite store in"),
        (["chat"], "no stargate-lite store in"),
        (["export", "--out", str(tmp_path / "merged")], "no stargate-lite store in"),
    ]:
        result = runner.invoke(app, [*args, "--home", str(home)])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not home.exists(), args
    result = runner.invoke(app, ["data", "import", "--dataset", "d", "--split", "A", "--tasks", str(tasks),
                                 "--home", str(home)])
    assert result.exit_code == 0 and Store(home).value("select count(*) from tasks") == 1


def test_help_shows_each_options_default():
    """Defaults that are not values ("the latest") are shown as defaults, not swallowed as markup."""
    for command, option, default in (("run", "--run", "the recipe's name"), ("eval", "--iteration", "all"),
                                     ("chat", "--max-questions", "recipe's K"), ("export", "--iteration",
                                                                                  "the latest trained")):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        (line,) = [line for line in result.output.splitlines() if f" {option} " in line]
        assert f"[default: ({default})]" in line, line
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "[default: (./.stargate)]" in result.output


def test_probe_help_shows_the_learning_probes_options():
    """`stargate-lite probe` is the learning probe's command: its help loads no model and names every option."""
    result = runner.invoke(app, ["probe", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--run", "--iteration", "--tasks", "--personas", "--conversations", "--roleplayer", "--control",
                   "--no-questions", "--q0-from", "--json", "--plot", "--home"):
        assert f" {option} " in result.output, option
    (line,) = [line for line in result.output.splitlines() if " --tasks " in line]
    assert "[default: (A=6 B=6 test=6)]" in line, line


def test_eval_and_the_probe_refuse_an_unknown_chat_model_or_an_untrained_iteration(tmp_path):
    import pytest

    from stargate_lite.errors import StargateError
    from stargate_lite.evaluation.evaluate import evaluate
    from stargate_lite.evaluation.probe import probe
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run

    open_run(Store(tmp_path), load_recipe("tiny"))  # a run with nothing trained yet
    for command in (evaluate, probe):
        with pytest.raises(StargateError, match="--roleplayer 'nope' is not a chat model of run tiny: choose one"):
            command(tmp_path, roleplayer="nope")
        with pytest.raises(StargateError, match=r"run tiny has no trained iteration 1 \(trained: none\)"):
            command(tmp_path, iterations=[1])
    with pytest.raises(StargateError, match="--judge 'nope' is not a chat model"):
        evaluate(tmp_path, judge="nope")



def test_a_path_the_system_refuses_is_one_line_naming_it_and_other_os_errors_still_show(tmp_path, capsys):
    """Whatever command meets a path it may not use (permissions, a read-only disk, a file where a folder belongs
    or a folder where a file does) says so in one line with the path; an OSError of another kind is a bug to see."""
    import errno
    import os

    import pytest
    import typer

    from stargate_lite.cli import user_errors

    def command(error: OSError):
        @user_errors
        def failing(home=None):
            raise error
        return failing

    path = tmp_path / "somewhere" / "file"
    for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        with pytest.raises(typer.Exit) as stopped:
            command(OSError(code, os.strerror(code), str(path)))()
        assert stopped.value.exit_code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"Error: cannot use {path}: {os.strerror(code)}", line
    with pytest.raises(OSError, match="Input/output error"):
        command(OSError(errno.EIO, os.strerror(errno.EIO), str(path)))()
    with pytest.raises(PermissionError):  # naming no path, it says nothing the user can act on: shown as it is
        command(PermissionError(errno.EACCES, os.strerror(errno.EACCES)))()


def _figures(iteration: dict, gated: bool = False) -> dict[str, str]:
    """What `status` shows of one iteration of `status --json`, by column (facts given: a run whose users were
    gated)."""
    eff = iteration["efficiency"]

    def mean(stat: dict, digits: int = 0) -> str:
        return "-" if stat["mean"] is None else f"{stat['mean']:.{digits}f}"

    loss = iteration["train_loss"]
    return {"iteration": str(iteration["iteration"]), "split": iteration["split"],
            **{column: str(iteration[key]) for column, key in (("pairs", "pairs"), ("conversations", "conversations"),
                                                               ("scored", "scored"), ("selected", "selected"),
                                                               ("responses", "responses"))},
            "train loss": "-" if loss is None else f"{loss:.3f}", "questions per conv": mean(eff["questions"], 2),
            "question counts": " ".join(f"{q}:{n}" for q, n in eff["question_counts"].items()) or "-",
            "user tokens": mean(eff["user_tokens"]), "response tokens": mean(eff["response_tokens"]),
            "done": "yes" if iteration["complete"] else "no",
            **({"facts given": mean(iteration["facts_given"], 2) if iteration["facts_given"] else "-"}
               if gated else {})}


def _shown(text: str, width: int, key: str = "iteration") -> dict[str, dict[str, str]]:
    """What `status`'s tables whose first column is `key` (each iteration's, or each environment's "name") say of
    each row, by column: a cell or header wrapped over several lines is read whole (its lines joined with spaces).
    Every line fits `width`, and nothing is cut short ("…")."""
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width, text
    tables, last = [], None
    for line in text.splitlines():
        kind = {"┃": "head", "│": "body"}.get(line[:1])  # Rich's default box: the header between ┃, rows between │
        if kind:
            cells = [cell.strip() for cell in line[1:-1].split(line[0])]
            if kind == "head" and last != "head":
                tables.append([cells, []])
            elif kind == "body" and cells[0]:
                tables[-1][1].append(cells)
            else:  # the next line of a wrapped header or row
                part = tables[-1][0] if kind == "head" else tables[-1][1][-1]
                part[:] = [f"{a} {b}".strip() for a, b in zip(part, cells, strict=True)]
        last = kind
    shown: dict[str, dict[str, str]] = {}
    for header, rows in tables:
        assert rows, tables
        if header[0] != key:
            continue
        for row in rows:
            shown.setdefault(row[0], {}).update(zip(header, row, strict=True))
    return shown


def _synthetic_status() -> dict:
    """`status --json`'s shape (commands/status.py) with figures of the paper's scale, each column's its own."""
    def stat(mean: float | None) -> dict:
        return {"mean": mean, "sem": None, "n": 0}

    def iteration(n: int, split: str, loss: float | None, means: tuple, counts: dict) -> dict:
        return {"iteration": n, "split": split, "pairs": 12500 + n, "conversations": 125000 + n,
                "scored": 124000 + n, "selected": 12400 + n, "responses": 12300 + n, "train_loss": loss,
                "adapter": f"runs/paper/iteration-{n}/adapter" if loss is not None else None,
                "format": "bare" if loss is not None else None, "method": "sft" if loss is not None else None,
                "roleplayers": {"mixtral": 125000 + n}, "audit": {}, "stages_done": [], "complete": loss is not None,
                "facts_given": None,
                "efficiency": {"questions": stat(means[0]), "question_share": stat(None), "user_tokens": stat(means[1]),
                               "response_tokens": stat(means[2]), "turns": stat(2.0), "by_turns": {},
                               "question_counts": counts}}

    return {"home": "/home/someone/projects/stargate", "runs": [{
        "id": "paper", "recipe": "paper", "dataset": "assistant-gate", "created_at": 0.0, "iterations": [
            iteration(1, "A", 1.2345, (2.3456, 118.4, 152.6), {"0": 1200, "1": 30000, "2": 50000, "3": 43800}),
            iteration(2, "B", None, (None, None, None), {})]}],
        "environments": [{"namespace": "paper#env:test", "name": "paper", "split": "test", "episodes": 125000,
                          "scored": 124999, "logprob": stat(-123.4567),
                          "efficiency": {"questions": stat(2.3456), "question_share": stat(None),
                                         "user_tokens": stat(118.4), "response_tokens": stat(None),
                                         "turns": stat(2.0), "by_turns": {}, "question_counts": {"2": 125000}}}]}


def test_status_tables_show_every_figure_at_80_columns():
    """In an 80-column terminal or a pipe (Rich's width there), each iteration's every figure, whole, and each
    environment namespace's."""
    from io import StringIO

    from rich.console import Console

    from stargate_lite.commands.status import status_tables

    report = _synthetic_status()
    gated = _synthetic_status()  # a run whose users were gated (simulate.reveal asked): the facts each was given
    gated["runs"][0]["iterations"][0]["facts_given"] = {"mean": 2.3456, "sem": 0.1, "n": 125001}
    for width in (80, 250):
        for shape, facts in ((report, False), (gated, True)):
            console = Console(width=width, file=StringIO())
            for table in status_tables(shape):
                console.print(table)
            shown = _shown(console.file.getvalue(), width)
            assert shown == {str(it["iteration"]): _figures(it, facts) for it in shape["runs"][0]["iterations"]}
            assert _shown(console.file.getvalue(), width, key="name") == {"paper": {
                "name": "paper", "split": "test", "episodes": "125000", "scored": "124999", "gold logprob": "-123.46",
                "questions per conv": "2.35", "user tokens": "118"}}


def test_status_through_a_pipe_shows_every_figure_of_a_two_iteration_run_at_80_columns(finished):
    from conftest import cli

    (run,) = json.loads(cli("status", "--json", home=finished).stdout)["runs"]
    assert [it["iteration"] for it in run["iterations"]] == [1, 2]
    shown = _shown(cli("status", home=finished, columns=80).stdout, 80)
    assert shown == {str(it["iteration"]): _figures(it) for it in run["iterations"]}
