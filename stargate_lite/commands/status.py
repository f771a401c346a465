"""What the store holds per run and iteration: the numbers behind `stargate-lite status`."""

from __future__ import annotations

from ..errors import StargateError
from ..evaluation.audit import STATUS_SAMPLE, audit
from ..evaluation.efficiency import efficiency
from ..runs import STAGES, recipe_of_run, split_for, training_format
from ..store import Store


def run_status(store: Store, run_id: str | None = None) -> dict:
    """{"runs": [{"id", "recipe", "created_at", "iterations": [{iteration, split, pairs, ...}]}]}"""
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
                    "stages_done": done,
                    "complete": it["finished_at"] is not None,
                }
            )
        out.append({"id": run["id"], "recipe": run["recipe_name"], "dataset": run["dataset"],
                    "created_at": run["created_at"], "iterations": iterations})
    return {"home": str(store.home), "runs": out}
