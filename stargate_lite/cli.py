"""The `stargate-lite` command: a thin shell over the library. Heavy imports happen inside commands."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import StargateError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Teach a language model to ask good questions.")
data_app = typer.Typer(no_args_is_help=True, help="Tasks, personas and gold responses.")
recipe_app = typer.Typer(no_args_is_help=True, help="Shipped and custom recipes.")
app.add_typer(data_app, name="data")
app.add_typer(recipe_app, name="recipe")
out = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="STARGATE_HOME", help="Project home holding the store [default: ./.stargate]."),
]
RecipeOption = Annotated[str, typer.Option("--recipe", "-r", help="A shipped recipe's name or a YAML path.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable).")
]


def user_errors(command):
    """Show StargateError as one line and exit 2; Ctrl-C says how to resume."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StargateError as e:
            err.print(f"[red]Error:[/red] {e}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("Interrupted. Finished work is saved: run the same command again to resume.")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def _main() -> None:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env")


@app.command()
@user_errors
def run(
    iterations: Annotated[int, typer.Option("--iterations", "-n", help="Iterations to reach (paper: 3).")] = 3,
    recipe: RecipeOption = "tiny",
    set_: SetOption = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id [default: the recipe's name].")] = None,
    home: HomeOption = None,
) -> None:
    """Run STaR-GATE, or resume it: the same command after a crash continues where it stopped."""
    from .loop import run as run_loop
    from .recipe import load_recipe
    from .status import run_status
    from .store import Store

    resolved = load_recipe(recipe, set_ or [])
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
    from .status import run_status
    from .store import Store

    report = run_status(Store(home), run_id)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)


def _print_status(report: dict) -> None:
    if not report["runs"]:
        out.print(f"No runs in {report['home']} yet: start one with `stargate-lite run`.")
    for run in report["runs"]:
        table = Table(title=f"run {run['id']} (recipe {run['recipe']}, data {run['dataset']})")
        for column in ("iteration", "split", "pairs", "conversations", "scored", "selected", "responses",
                       "train loss", "adapter", "complete"):
            table.add_column(column, justify="right" if column not in ("adapter", "split") else "left")
        for it in run["iterations"]:
            loss = f"{it['train_loss']:.3f}" if it["train_loss"] is not None else "-"
            table.add_row(str(it["iteration"]), it["split"], str(it["pairs"]), str(it["conversations"]),
                          str(it["scored"]), str(it["selected"]), str(it["responses"]), loss,
                          it["adapter"] or "-", "yes" if it["complete"] else "no")
        out.print(table)


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
    home: HomeOption = None,
) -> None:
    """Import one split of a data set (JSONL, or the STaR-GATE authors' JSON files)."""
    from .data import import_data
    from .store import Store

    counts = import_data(Store(home), dataset, split, tasks, personas, names, golds)
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

    rows = Store(home).dataset_counts()
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
    app()
