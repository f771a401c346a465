"""The paper's protocol is untouched by what issue 12 added (efficiency counts, simulate.turns, question cost):
the default recipe gives, bit for bit, what the code before it gave: the same conversations, scores, selections,
responses, losses and adapter bytes. The code before is taken from this repository's history."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import run_args, skip_or_fail

BEFORE = "1d3ff07"  # main before issue 12
ROOT = Path(__file__).resolve().parents[1]


def results(home: Path) -> dict:
    """Everything the run generated, by key (the run's own rows: evaluations may share the home)."""
    with sqlite3.connect(home / "stargate.db") as db:
        mine = "where {} not like '%#eval:%'"
        out = {
            "pairs": db.execute(f"select id, turns from pairs {mine.format('id')} order by 1").fetchall(),
            "turns": db.execute(f"select conversation_id, idx, role, text, is_question, trimmed from turns "
                                f"{mine.format('conversation_id')} order by 1, 2").fetchall(),
            "scores": db.execute(f"select conversation_id, logprob, n_tokens from scores "
                                 f"{mine.format('conversation_id')} order by 1").fetchall(),
            "selections": db.execute("select pair_id, conversation_id, logprob from selections order by 1").fetchall(),
            "responses": db.execute("select pair_id, text from responses order by 1").fetchall(),
            "trainings": db.execute("select iteration, losses, trained_tokens from trainings order by 1").fetchall(),
        }
    out["adapters"] = sorted((str(p.relative_to(home)), hashlib.sha256(p.read_bytes()).hexdigest())
                             for p in (home / "runs").rglob("adapter_model.safetensors"))
    return out


def test_the_default_recipe_gives_what_the_code_before_issue_12_gave(finished, tmp_path, model_cache):
    if not shutil.which("git") or not (ROOT / ".git").exists():
        skip_or_fail("needs the repository's git history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "stargate_lite", "recipes"],
                             capture_output=True)
    if archive.returncode != 0:
        skip_or_fail(f"commit {BEFORE} is not in this clone's history (a shallow clone?)")
    before = tmp_path / "before"
    before.mkdir()
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    home = tmp_path / "home"
    env = {**os.environ, "STARGATE_HOME": str(home), "STARGATE_MODEL_CACHE": str(model_cache),
           "PYTHONPATH": str(before)}
    # The code before has no gemma chat model, so no setting of one (the tests' thread count) can reach it.
    args = run_args()
    args = [a for i, a in enumerate(args) if "chat_models.gemma." not in a
            and not (a == "--set" and i + 1 < len(args) and "chat_models.gemma." in args[i + 1])]
    run = subprocess.run([sys.executable, "-m", "stargate_lite", *args], env=env, capture_output=True,
                         text=True, timeout=900, cwd=before)  # not this checkout: `-m` puts the cwd first on the path
    assert run.returncode == 0, run.stderr[-3000:]
    with sqlite3.connect(home / "stargate.db") as db:  # the code before made this store, not today's
        assert "m012_efficiency" not in {name for (name,) in db.execute("select name from _migrations")}
    old, new = results(home), results(finished)
    assert old["turns"] and old["adapters"]
    for key in old:
        assert old[key] == new[key], key
