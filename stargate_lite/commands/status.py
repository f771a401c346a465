"""What the store holds per run and iteration: the numbers behind `stargate-lite status`."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..errors import StargateError
from ..evaluation.audit import STATUS_SAMPLE, audit
from ..evaluation.efficiency import efficiency, mean_sem
from ..runs import ENVIRONMENT_MARK, STAGES, recipe_of_run, split_for, training_format
from ..store import Store


def run_status(store: Store, run_id: str | None = None) -> dict:
    """{"runs": [{"id", "recipe", "created_at", "iterations": [{iteration, split, pairs, ...}]}], "environments":
    [{namespace, episodes, scored, logprob, efficiency}]}: the environments' namespaces (NAME#env:SPLIT), those of
    the run alone with run_id, hold the episodes a UserEnvironment recorded."""
    runs = store.list_runs()
    if run_id is not None:
        runs = [r for r in runs if r["id"] == run_id]
        if not runs:
            known = ", ".join(r["id"] for r in store.list_runs()) or "none yet"
            raise StargateError(f"no run {run_id!r} in {store.path} (runs: {known})")
    out = []
    for run in runs:
        iterations = []
        recipe = recipe_of_run(run)
        for it in store.iterations(run["id"]):
            n = it["iteration"]
            training = store.training(run["id"], n)
            done = [s for s in STAGES if store.stage_done(run["id"], n, s)]
            counts = store.iteration_counts(run["id"], n)
            given = store.facts_given(run["id"], n)
            iterations.append(
                {
                    "iteration": n,
                    "split": it["split"] or split_for(n),
                    "pairs": counts["pairs"],
                    "conversations": counts["conversations"],
                    "scored": counts["scores"],
                    "selected": counts["selections"],
                    "responses": counts["responses"],
                    "train_loss": training["final_loss"] if training else None,
                    "adapter": training["adapter"] if training else None,
                    "format": training_format(training, recipe) if training else None,
                    "method": (training["method"] or "sft") if training else None,
                    "roleplayers": store.roleplayer_counts(run["id"], n),
                    "efficiency": efficiency(store.conversation_efficiency(run["id"], n),
                                             store.response_lengths(run["id"], n)),
                    "audit": audit(store.audit_conversations(run["id"], n, STATUS_SAMPLE)),
                    # a gated user's conversations (simulate.reveal asked): the facts it was given, per conversation
                    "facts_given": mean_sem([float(g) for g in given]) if given else None,
                    "stages_done": done,
                    "complete": it["finished_at"] is not None,
                }
            )
        out.append({"id": run["id"], "recipe": run["recipe_name"], "dataset": run["dataset"],
                    "created_at": run["created_at"], "iterations": iterations})
    return {"home": str(store.home), "runs": out, "environments": environments(store, run_id)}


def environments(store: Store, run_id: str | None = None) -> list[dict]:
    """Per environment namespace (of the run alone, given run_id), its name (a run's id or a recipe's) and split:
    the episodes recorded, how many were scored,
    their gold log-prob (mean and standard error) and their efficiency, as for an iteration's conversations."""
    out = []
    for namespace in store.namespaces_holding(ENVIRONMENT_MARK):
        if run_id is not None and not namespace.startswith(f"{run_id}{ENVIRONMENT_MARK}"):
            continue
        scores = [s["logprob"] for s in store.scores(namespace, 0)]
        name, _, split = namespace.rpartition(ENVIRONMENT_MARK)
        out.append({"namespace": namespace, "name": name, "split": split,
                    "episodes": store.iteration_counts(namespace, 0)["conversations"], "scored": len(scores),
                    "logprob": mean_sem(scores),
                    "efficiency": efficiency(store.conversation_efficiency(namespace, 0), [])})
    return out


def _mean(stat: dict, digits: int = 0) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.{digits}f}"


def status_tables(report: dict) -> list[Table]:
    """`stargate-lite status`'s tables: two per run, each narrow enough for an 80-column terminal or a pipe (Rich's
    width there), so that every figure shows whole: the records each stage of an iteration made, then its
    training and the efficiency of its conversations (means per conversation)."""
    tables = []
    for run in report["runs"]:
        adapters = {str(Path(it["adapter"]).parent.parent) for it in run["iterations"] if it["adapter"]}
        where = f"; adapters in {adapters.pop()}" if len(adapters) == 1 else ""
        records = Table(title=f"run {run['id']} (recipe {run['recipe']}, data {run['dataset']}{where})")
        for column in ("iteration", "split", "pairs", "conversations", "scored", "selected", "responses"):
            records.add_column(column, justify="left" if column == "split" else "right")
        trained = Table(title=f"run {run['id']}: training, and the conversations' efficiency (means)")
        gated = any(it.get("facts_given") for it in run["iterations"])  # a column only where a user was gated
        columns = ["iteration", "train loss", "questions per conv", "question counts", "user tokens",
                   *(["facts given"] if gated else []), "response tokens", "done"]
        for column in columns:
            # Headers of two words on two lines, and only the question counts wrap: where Rich narrows several
            # wrapping columns, it cuts them all alike once they are equally wide.
            trained.add_column(column.replace(" ", "\n"), justify="left" if column == "question counts" else "right",
                               no_wrap=column != "question counts")
        for it in run["iterations"]:
            eff = it["efficiency"]
            records.add_row(str(it["iteration"]), it["split"], str(it["pairs"]), str(it["conversations"]),
                            str(it["scored"]), str(it["selected"]), str(it["responses"]))
            given = [_mean(it["facts_given"], 2) if it.get("facts_given") else "-"] if gated else []
            trained.add_row(str(it["iteration"]), "-" if it["train_loss"] is None else f"{it['train_loss']:.3f}",
                            _mean(eff["questions"], 2),
                            " ".join(f"{q}:{n}" for q, n in eff["question_counts"].items()) or "-",
                            _mean(eff["user_tokens"]), *given, _mean(eff["response_tokens"]),
                            "yes" if it["complete"] else "no")
        tables += [records, trained]
    if report["environments"]:
        played = Table(title="episodes environments recorded (NAME#env:SPLIT), and their means")
        for column in ("name", "split", "episodes", "scored", "gold logprob", "questions per conv", "user tokens"):
            played.add_column(column.replace(" ", "\n"), justify="left" if column in ("name", "split") else "right",
                              no_wrap=column != "name")
        for env in report["environments"]:
            eff = env["efficiency"]
            played.add_row(env["name"], env["split"], str(env["episodes"]), str(env["scored"]),
                           _mean(env["logprob"], 2), _mean(eff["questions"], 2), _mean(eff["user_tokens"]))
        tables.append(played)
    return tables
