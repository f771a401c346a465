"""A newcomer's first `stargate-lite run`, per stage: the tiny recipe as it reads prompts now against every prompt
read from the start (the code before chat_models.*.prompt_cache), side by side in one run, and whether both made
the same records.

    python -m benchmarks.first_run                   # run --iterations 2, each variant in a fresh home
    python -m benchmarks.first_run --iterations 1

The work is the recipe's as shipped in both (pairs, conversations, turns, tokens, steps): only how llama.cpp
reads its prompts differs. Each variant starts from nothing (data stage included) with the converted model cache
shared, so neither pays for the conversion. The stage times come from the store's stage marks. Run it alone:
two jobs on 2 cores distort each other.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from pathlib import Path

from benchmarks.bench_memory import measure

VARIANTS = {
    "every prompt read whole (before)": ["--set", "chat_models.smollm2.prompt_cache=false"],
    "shared prefixes kept (shipped)": [],
}
# What a run computed, in an order that does not depend on when it was written.
RECORDS = {
    "personas": "select split, idx, text from personas order by split, idx",
    "golds": "select task_id, persona_id, text from golds order by task_id, persona_id",
    "turns": "select c.iteration, c.pair_id, c.sample, t.idx, t.text from turns t "
             "join conversations c on c.id = t.conversation_id order by 1, 2, 3, 4",
    "scores": "select conversation_id, logprob from scores order by 1",
    "responses": "select pair_id, text from responses order by 1",
    "trainings": "select iteration, final_loss, losses from trainings order by 1",
}


def records(home: Path) -> dict[str, list]:
    with sqlite3.connect(home / "stargate.db") as db:
        return {name: db.execute(sql).fetchall() for name, sql in RECORDS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2)
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stargate-bench-first-run-"))
    cache = work / "models"
    os.environ["STARGATE_MODEL_CACHE"] = str(cache)  # convert the tiny model's GGUF once, outside the timings
    from stargate_lite.engines.models import questioner_source
    from stargate_lite.recipe import load_recipe

    questioner = load_recipe("tiny").questioner
    questioner_source(questioner.model, questioner.gguf_file, work)
    results = {}
    for i, (name, extra) in enumerate(VARIANTS.items()):
        home = work / f"home-{i}"
        wall, rows = measure(["run", "--iterations", str(a.iterations), *extra], home, cache)
        results[name] = (wall, {stage: seconds for stage, seconds, _ in rows}, records(home))
    (before_wall, before, before_records), (after_wall, after, after_records) = results.values()
    print(f"`stargate-lite run --iterations {a.iterations}`, tiny recipe, each variant from a fresh home")
    print(f"\n{'stage':<14} {'before s':>9} {'after s':>9} {'after/before':>13}")
    for stage in before:
        print(f"{stage:<14} {before[stage]:9.1f} {after.get(stage, float('nan')):9.1f} "
              f"{after.get(stage, float('nan')) / before[stage]:13.2f}")
    print(f"{'whole run':<14} {before_wall:9.1f} {after_wall:9.1f} {after_wall / before_wall:13.2f}")
    for table in RECORDS:
        same = before_records[table] == after_records[table]
        print(f"{table}: {len(after_records[table])} rows, {'the same' if same else 'DIFFERENT'} in both")


if __name__ == "__main__":
    main()
