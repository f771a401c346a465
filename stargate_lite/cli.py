"""The `stargate-lite` command: a thin shell over the library. Heavy imports happen inside commands."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .engines.chat_models import ChatFailure
from .errors import FallbackNotice, StargateError
from .store import DB_NAME, default_home, store_error

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Teach a language model to ask good questions.")
data_app = typer.Typer(no_args_is_help=True, help="Tasks, personas and gold responses.")
recipe_app = typer.Typer(no_args_is_help=True, help="Shipped and custom recipes.")
app.add_typer(data_app, name="data")
app.add_typer(recipe_app, name="recipe")
out = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="STARGATE_HOME", help="Project home holding the store.", show_default="./.stargate"),
]
EvalSetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Judge this run another way: judge.template, judge.read, judge.label, "
                 "judge.max_tokens or eval.judge_orders=value (repeatable); stored beside earlier verdicts."),
]
RecipeOption = Annotated[str, typer.Option("--recipe", "-r", help="A shipped recipe's name or a YAML path.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable).")
]


# OSErrors that name a path the user gave or can fix: permissions, a read-only disk, a file where a folder belongs
# or a folder where a file does.
REFUSED_PATH = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR)
RESUME = "Interrupted. Finished work is saved: run the same command again to resume."


def user_errors(command=None, *, interrupted: str = RESUME):
    """Show StargateError as one line and exit 2; Ctrl-C prints `interrupted` (how to resume, by default)."""
    if command is None:
        return functools.partial(user_errors, interrupted=interrupted)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StargateError as e:
            err.print(f"[red]Error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ChatFailure as e:
            err.print(f"[red]Error:[/red] a chat model failed after its retries: {escape(str(e))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None
        except sqlite3.Error as e:  # mid-command: the store locked by another program, a full disk
            message = store_error(Path(kwargs.get("home") or default_home()) / DB_NAME, e)
            if message is None:
                raise
            err.print(f"[red]Error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                message = (f"the disk is full writing {e.filename or 'a file'}: free space and run the command again "
                           "(finished work is kept)")
            elif e.errno in REFUSED_PATH and e.filename:  # a path the system will not let us use, whichever it is
                message = f"cannot use {e.filename}: {e.strerror}"
            else:  # anything else is a bug to see whole
                raise
            err.print(f"[red]Error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(interrupted)
            raise typer.Exit(130) from None

    return wrapper


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"stargate-lite {version('stargate-lite')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("stargate-lite (not installed: no version recorded)")
        raise typer.Exit()


@app.callback()
def _main(_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="Print the version and exit.")] = False) -> None:
    from dotenv import load_dotenv

    # Our own progress bars say what is loading; transformers' tqdm bars (GGUF conversion) would only add noise.
    os.environ.setdefault("TQDM_DISABLE", "1")
    load_dotenv(Path.cwd() / ".env")
    warnings.formatwarning = _format_warning


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A FallbackNotice prints as 'Notice: ...' (Python shows each message once); other warnings as before."""
    if issubclass(category, FallbackNotice):
        return f"Notice: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


@app.command()
@user_errors
def run(
    iterations: Annotated[int, typer.Option("--iterations", "-n", help="Iterations to reach (paper: 3).")] = 3,
    recipe: RecipeOption = "tiny",
    set_: SetOption = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id.", show_default="the recipe's name")] = None,
    home: HomeOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Estimate one iteration's calls, tokens and time "
                                          "(throughputs measured now with the recipe's models); run nothing.")] = False,
) -> None:
    """Run STaR-GATE, or resume it: the same command after a crash continues where it stopped."""
    from .commands.status import run_status
    from .loop import run as run_loop
    from .recipe import load_recipe
    from .store import Store

    resolved = load_recipe(recipe, set_ or [])
    if dry_run:
        _print_estimate(resolved, home)
        return
    run_id = run_loop(resolved, iterations, home=home, run_id=run_id)
    _print_status(run_status(Store(home), run_id))


@app.command()
@user_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    home: HomeOption = None,
) -> None:
    """Per run and iteration: split, pairs, conversations, scored, selected, responses, loss, adapter."""
    from .commands.status import run_status
    from .store import Store

    report = run_status(Store(home, read_only=True), run_id)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)


def _print_estimate(recipe, home) -> None:
    from .commands.dryrun import estimate
    from .engines.chat_models import preflight
    from .store import default_home

    preflight(recipe.chat_models, {recipe.roles.oracle, *recipe.roles.roleplayer_weights})
    rows = estimate(recipe, Path(home) if home else default_home())
    table = Table(title=f"One iteration of recipe {recipe.name} (estimate; token counts at the recipe's limits)")
    for column in ("stage", "model", "calls", "tokens", "tokens/s here", "time"):
        table.add_column(column, justify="left" if column in ("stage", "model") else "right")
    for r in rows:
        rate = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "not measured"
        seconds = _duration(r["seconds"]) if r["seconds"] is not None else "?"
        table.add_row(r["stage"], r["model"], f"{r['calls']:,}", f"{r['tokens']:,}", rate, seconds)
    out.print(table)
    known = sum(r["seconds"] for r in rows if r["seconds"] is not None)
    out.print(f"Measured stages: about {_duration(known)} in all (data stages run once per project home)."
              + ("" if all(r["seconds"] is not None for r in rows) else
                 " Rows marked ? use a remote endpoint, which a dry run does not call."))
    weights = recipe.roles.roleplayer_weights
    for name, weight in weights.items():
        roleplayer = recipe.chat_models[name]
        per_chunk = recipe.simulate.pairs_per_chunk * recipe.simulate.conversations_per_pair
        theirs = int(per_chunk * weight / sum(weights.values()))
        if roleplayer.backend == "llama-server" and theirs < roleplayer.slots:
            holds = (f"a chunk holds {theirs} conversations, fewer than the Roleplayer's" if len(weights) == 1 else
                     f"a chunk holds about {theirs} conversations for Roleplayer {name}, fewer than its")
            out.print(f"Note: {holds} {roleplayer.slots} slots, so some slots idle: raise simulate.pairs_per_chunk.")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_status(report: dict) -> None:
    from .commands.status import status_tables

    if not report["runs"]:
        out.print(f"No runs in {report['home']} yet: start one with `stargate-lite run`.")
    for table in status_tables(report):
        out.print(table)


@app.command("eval")
@user_errors
def eval_(
    run_id: Annotated[str | None, typer.Option("--run", help="Run to evaluate.", show_default="the latest")] = None,
    iterations: Annotated[
        list[int] | None,
        typer.Option("--iteration", "-i", help="Iterations to evaluate (repeatable).", show_default="all"),
    ] = None,
    roleplayer: Annotated[
        str | None, typer.Option(help="Chat model (from the run's recipe) that plays the test personas.")
    ] = None,
    judge: Annotated[str | None, typer.Option(help="Chat model that judges win rates.")] = None,
    responder: Annotated[
        str, typer.Option(help="policy: Q_eta answers after its questions; base: Q_0 answers after them (ablation).")
    ] = "policy",
    set_: EvalSetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Evaluate on the test split: gold log-probs in four conditions, and win rates against the base model."""
    from .evaluation.evaluate import evaluate
    from .evaluation.report import plot, tables
    from .runs import run_dir
    from .store import Store

    summary = evaluate(home, run_id, iterations, roleplayer, judge, responder, set_)
    summary["plots"] = [str(p) for p in plot(summary, run_dir(Store(home), summary["run"]))]
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for table in tables(summary):
            out.print(table)
        out.print("Plots: " + ", ".join(summary["plots"]))


@app.command()
@user_errors
def report(
    run_id: Annotated[str | None, typer.Option("--run", help="Run.", show_default="the latest")] = None,
    roleplayer: Annotated[str | None, typer.Option(help="Roleplayer of the evaluation.")] = None,
    judge: Annotated[str | None, typer.Option(help="Judge of the win rates.")] = None,
    responder: Annotated[str, typer.Option(help="policy or base.")] = "policy",
    set_: EvalSetOption = None,
    home: HomeOption = None,
) -> None:
    """Redraw the evaluation table and plots from the store, loading no model but the gate's small sentence embedder
    (it counts elicitation), and write report.md beside them: the run's code, machine, stage times, GPU-hours,
    evaluation and sample conversations."""
    from .evaluation.report import report as write_run_report
    from .evaluation.report import tables

    written = write_run_report(home, run_id, roleplayer, judge, responder, set_)
    summary = written["summary"]
    if summary is None:
        out.print("No evaluation with that roleplayer yet: `stargate-lite eval` adds it.")
    else:
        for table in tables(summary):
            out.print(table)
    if written["unwritten"]:  # a read-only home: what the store holds is above
        err.print(f"Notice: {escape(written['unwritten'])}", highlight=False, soft_wrap=True)
        return
    if written["plots"]:
        out.print("Plots: " + ", ".join(str(p) for p in written["plots"]))
    out.print(f"Report: {written['report']}")


@app.command()
@user_errors
def probe(
    run_id: Annotated[str | None, typer.Option("--run", help="Run to probe.", show_default="the latest")] = None,
    iterations: Annotated[
        list[int] | None,
        typer.Option("--iteration", "-i", help="Policies besides Q_0 (repeatable).", show_default="every trained one"),
    ] = None,
    tasks: Annotated[list[str] | None, typer.Option(
        "--tasks", metavar="SPLIT=N", help="The split's first N tasks make the probe's pairs (repeatable).",
        show_default="A=6 B=6 test=6")] = None,
    personas: Annotated[list[str] | None, typer.Option(
        "--personas", metavar="SPLIT=N", help="The split's first N personas make the probe's pairs (repeatable).",
        show_default="A=4 B=4 test=2")] = None,
    conversations: Annotated[int, typer.Option(help="Fresh conversations per pair and policy.")] = 3,
    roleplayer: Annotated[
        str | None, typer.Option(help="Chat model (from the run's recipe) that plays the personas.",
                                 show_default="the run's main one")
    ] = None,
    control: Annotated[bool, typer.Option(
        "--control", help="Also the positive control: Q_0 with a Roleplayer that recites its persona.")] = False,
    no_questions: Annotated[bool, typer.Option(
        "--no-questions", help="Also Q_0 answering at once, no question (with --control: the room to learn).")] = False,
    q0_from: Annotated[str | None, typer.Option(
        "--q0-from", metavar="RUN", help="Take Q_0's conversations from this run's probe (a run of the home whose "
        "recipe differs only after simulation).")] = None,
    adapters: Annotated[list[str] | None, typer.Option(
        "--adapter", metavar="NAME=FOLDER", help="Also a LoRA adapter trained elsewhere on the run's base "
        "Questioner (TRL on the environment, say), probed as a policy by that name (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also draw the gains per iteration to this PNG.")] = None,
    home: HomeOption = None,
) -> None:
    """Does the loop teach? Each policy's fresh conversations on fixed A, B and test pairs, under the seeds Q_0's
    had: its reward's gain over Q_0 per pair with a 95% interval, and the share of turns that ask. Stored: a rerun
    resumes."""
    import dataclasses

    from .evaluation.probe import plot_probe, probe_table, split_sizes
    from .evaluation.probe import probe as run_probe

    if plot is not None and not plot.parent.is_dir():
        raise StargateError(f"--plot {plot}: there is no folder {plot.parent} to write it in")
    named = {}
    for item in adapters or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise StargateError(f"--adapter {item}: write it NAME=FOLDER (--adapter trl=runs/trl/adapter)")
        if name in named:
            raise StargateError(f"--adapter {name} is given twice: give each adapter a name of its own")
        named[name] = folder
    summary = run_probe(home, run_id, iterations, split_sizes(tasks or [], "--tasks"),
                        split_sizes(personas or [], "--personas"), conversations, roleplayer, control, q0_from,
                        no_questions=no_questions, adapters=named)
    if plot is not None:
        plot_probe(summary, plot)
    if as_json:
        print(json.dumps(summary, indent=2, default=dataclasses.asdict))
        return
    out.print(probe_table(summary), markup=False, highlight=False, soft_wrap=True)
    if plot is not None:
        out.print(f"Plot: {plot}")


@app.command()
@user_errors(interrupted="Interrupted. Every message so far is saved in the store (table chats).")
def chat(
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run whose Questioner to load.", show_default="the latest")
    ] = None,
    iteration: Annotated[int | None, typer.Option(help="Iteration's adapter.", show_default="the latest")] = None,
    adapter: Annotated[str | None, typer.Option(help="A LoRA adapter folder instead of a run's.")] = None,
    base: Annotated[bool, typer.Option("--base", help="Talk with the base model Q_0.")] = False,
    name: Annotated[str, typer.Option(help="Your name, as the Questioner is greeted.")] = "Alex",
    persona: Annotated[
        str | None, typer.Option(help="Watch mode: a persona (text or a file) the Roleplayer plays instead of you.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Watch mode: the request the Roleplayer makes.")] = None,
    max_questions: Annotated[
        int | None, typer.Option(help="Questions before it answers (0: it answers at once).", show_default="recipe's K")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Talk with a trained Questioner: it asks its questions, then answers. Works through a pipe too."""
    import sys

    from .commands.chat import COMMANDS, Transcript, chat_loop, check_max_questions
    from .engines.chat_models import ChatModels
    from .engines.questioner import Questioner
    from .runs import check_adapter, resolve_checkpoint
    from .stages.data import check_lengths, check_persona_facts
    from .stages.simulate import check_gate, user_gate
    from .store import Store

    check_max_questions(max_questions)
    if (persona is None) != (task is None):
        raise StargateError("watch mode needs both --persona and --task")
    if persona and Path(persona).is_file():
        persona = Path(persona).read_text(encoding="utf-8").strip()
    if adapter:
        check_adapter(adapter)
    # --adapter and --base need no run (their chats start a home); a run's checkpoint needs the run's home.
    store = Store(home, create=bool(adapter or base))
    recipe, adapter_path, policy_name, prompt_format = resolve_checkpoint(store, run_id, iteration, adapter, base)
    if persona:  # before any model is loaded: the Roleplayer must hold them and the questions
        check_lengths(recipe, [("--task", task)], [("--persona", persona)], roleplayers=[recipe.roles.main_roleplayer],
                      turns=max_questions)
        if recipe.simulate.reveal == "asked":  # a gated user: its persona must have facts, its gate a model
            check_persona_facts([{"id": "--persona", "name": name, "text": persona}])
            check_gate(recipe.simulate)
    questioner = Questioner(recipe.questioner, store.home)
    model = questioner.load_policy(adapter_path)
    interactive = sys.stdin.isatty()

    def read(prompt: str) -> str | None:
        if interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    def stream(pieces) -> str:
        out.print("questioner> ", end="")
        text = ""
        for piece in pieces:
            text += piece
            out.print(piece, end="", markup=False, highlight=False, soft_wrap=not out.is_terminal)
        out.print()
        return text.strip()

    with ChatModels(recipe.chat_models, store.home) as chat_models:
        roleplayer = chat_models.get(recipe.roles.main_roleplayer) if persona else None
        transcript = Transcript(store, policy_name, name, persona)
        if interactive:
            err.print(f"Chatting with {policy_name}. {COMMANDS}")
        # Through a pipe each message is one line, as said; a terminal wraps it at its width, between words.
        write = lambda s: out.print(s, end="", markup=False, soft_wrap=not out.is_terminal)
        chat_loop(questioner, model, recipe, transcript, read, write, stream,
                  roleplayer=roleplayer, task=task, max_questions=max_questions, prompt_format=prompt_format,
                  gate=user_gate(recipe.simulate, store.home) if persona else None)


@app.command("export")
@user_errors
def export_(
    out_dir: Annotated[Path | None, typer.Option("--out", help="New folder for the merged model.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data", help="New folder for the run's records as a dataset (Parquet and a card) instead of the model."
    )] = None,
    push_to_hub: Annotated[str | None, typer.Option(
        help="With --data: also upload it to this Hugging Face dataset repo (user/name; private if new).")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run.", show_default="the latest")] = None,
    iteration: Annotated[int | None, typer.Option(help="Iteration.", show_default="the latest trained")] = None,
    home: HomeOption = None,
) -> None:
    """Write base + adapter merged (safetensors, tokenizer, chat template, model card), or with --data the run's
    conversations, pairs, selections, responses and verdicts as a Hugging Face dataset."""
    if (out_dir is None) == (data_dir is None):
        raise StargateError("give one of --out (the merged model) or --data (the run's records as a dataset)")
    if data_dir is None:
        if push_to_hub:
            raise StargateError("--push-to-hub goes with --data: it uploads the dataset")
        from .commands.export import export

        out.print(f"Exported to {export(home, out_dir, run_id, iteration)}")
        return
    if iteration is not None:
        raise StargateError("--data exports every iteration of the run: leave out --iteration")
    from .commands.dataset import export_dataset

    counts = export_dataset(home, data_dir, run_id, push_to_hub)
    out.print(f"Exported the dataset to {data_dir}: " + ", ".join(f"{n} {name}" for name, n in counts.items())
              + (f"; pushed to {push_to_hub}" if push_to_hub else ""))


@app.command()
@user_errors
def browse(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8001,
    host: Annotated[str, typer.Option(help="Address to serve on (0.0.0.0: every interface).")] = "127.0.0.1",
    home: HomeOption = None,
) -> None:
    """Open the store read-only in Datasette: every table described, and canned queries (a pair's conversations
    by reward, an evaluation's verdicts side by side, failures, stage times). Needs the browse extra."""
    from .commands.browse import browse as serve

    serve(home, host, port, on_ready=lambda url: out.print(f"Serving the store at {url} (Ctrl-C stops it)"))


@data_app.command("import")
@user_errors
def data_import(
    dataset: Annotated[str, typer.Option(help="Name of the data set to import into.")],
    split: Annotated[str, typer.Option(help="A, B or test.")],
    tasks: Annotated[Path | None, typer.Option(help="Tasks: a JSON list of strings, or JSONL.")] = None,
    personas: Annotated[
        Path | None, typer.Option(help="Personas: JSON list of strings (with --names), or JSONL of {name, text}.")
    ] = None,
    names: Annotated[Path | None, typer.Option(help="Persona names: a JSON list of strings.")] = None,
    golds: Annotated[
        Path | None, typer.Option(help='Gold responses: {"prompt-I persona-J": ["text"]} (the authors\' layout).')
    ] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="The recipe whose models' contexts the texts must "
                                        "fit (a shipped recipe's name or a YAML path).")] = "tiny",
    set_: SetOption = None,
    home: HomeOption = None,
) -> None:
    """Import one split of a data set (JSONL, or the STaR-GATE authors' JSON files)."""
    from .recipe import load_recipe
    from .stages.data import read_split, write_split
    from .store import Store

    resolved = load_recipe(recipe, set_ or [])
    files = read_split(dataset, split, tasks, personas, names, golds, resolved)  # refused before a home is made
    counts = write_split(Store(home), files, resolved)
    out.print(f"Imported into {dataset}/{split}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if k != "golds_skipped_empty"))
    if counts.get("golds_skipped_empty"):
        out.print(f"Skipped {counts['golds_skipped_empty']} empty gold response(s): those pairs are left out.")


@data_app.command("show")
@user_errors
def data_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Counts of tasks, personas and gold responses per data set and split."""
    from .store import Store

    rows = Store(home, read_only=True).dataset_counts()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="data sets")
    for column in ("dataset", "split", "tasks", "personas", "golds", "golds_skipped"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("dataset", "split", "tasks", "personas", "golds", "golds_skipped")))
    out.print(table if rows else "No data yet: `stargate-lite run` makes the built-in set, `data import` adds yours.")


@recipe_app.command("list")
def recipe_list() -> None:
    """The shipped recipes."""
    from .recipe import load_recipe, shipped_recipes

    for name in shipped_recipes():
        out.print(f"[bold]{name}[/bold]: {load_recipe(name).description}")


@recipe_app.command("show")
@user_errors
def recipe_show(recipe: Annotated[str, typer.Argument(help="Name or YAML path.")] = "tiny",
                set_: SetOption = None) -> None:
    """Print a recipe resolved, with overrides applied and defaults filled in."""
    import yaml

    from .recipe import load_recipe

    print(yaml.safe_dump(load_recipe(recipe, set_ or []).model_dump(mode="json"), sort_keys=False), end="")


def main() -> None:
    # A process started in the background of a script inherits SIGINT ignored, and Python then installs no
    # handler: Ctrl-C, or a SIGINT sent to the run, would be lost and the run go on to the end. Every command
    # stops cleanly on it (finished work is committed), so take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Not standalone: Typer would show a usage error (an unknown option, a value of the wrong type) as a
        # boxed panel of five lines; every other mistake is one line, and so is this.
        code = app(standalone_mode=False)
    except typer.TyperException as mistake:  # Typer's usage errors (its own copy of Click's)
        if type(mistake).__name__ == "NoArgsIsHelpError":  # a bare command group: its help, as before
            mistake.show()
        else:
            command = mistake.ctx.command_path if getattr(mistake, "ctx", None) else "stargate-lite"
            err.print(f"[red]Error:[/red] {escape(mistake.format_message())} (see `{escape(command)} --help`)",
                      highlight=False, soft_wrap=True)
        sys.exit(mistake.exit_code)
    except typer.Abort:  # Ctrl-D at a prompt of Typer's own
        err.print("Aborted.")
        sys.exit(1)
    except KeyboardInterrupt:  # outside a command's own handler: while arguments are parsed or modules load
        err.print(RESUME)
        _exit_interrupted()
    if code == 130:
        _exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _exit_interrupted() -> None:
    """Exit with 130 at once. An interrupt caught inside some extension code (seen in torch's import, right after
    the data stage) can make CPython end a clean exit by killing itself with SIGINT, status -2. Skipping
    interpreter shutdown is safe here: finished work is already committed to the store."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
