"""Records a tiny run makes, pinned as a file (tests/data/pinned_records.json) made before issue 48 moved the
store, the training methods and the benchmarks: the same run must give the same conversations, scores,
selections, responses and losses token for token after any move that claims to change no number.

A pin is keyed by the run it describes ("sft" for the finished run, "rloo", "dpo"). To pin again after a change
that is meant to change numbers, run the pinning tests with STARGATE_REPIN=1 and commit the file with the reason:
they then write what the run made and skip (a skip fails under .ci/run, so a forgotten variable cannot pass CI)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

PINNED = Path(__file__).parent / "data" / "pinned_records.json"
TOLERANCE = 1e-4  # nats: the scores and losses are float32 sums, written through JSON


def records(home: Path) -> dict:
    """What the home's run generated, in a stable order; an evaluation sharing the home is left out."""
    mine = "where {} not like '%#eval:%'"
    with sqlite3.connect(home / "stargate.db") as db:
        return {
            "pairs": db.execute(f"select id, turns from pairs {mine.format('id')} order by 1").fetchall(),
            "turns": db.execute(f"select conversation_id, idx, role, text from turns "
                                f"{mine.format('conversation_id')} order by 1, 2").fetchall(),
            "scores": db.execute(f"select conversation_id, logprob, n_tokens from scores "
                                 f"{mine.format('conversation_id')} order by 1").fetchall(),
            "selections": db.execute("select pair_id, conversation_id, reward from selections order by 1").fetchall(),
            "responses": db.execute("select pair_id, text from responses order by 1").fetchall(),
            "trainings": db.execute("select iteration, method, examples, trained_tokens, losses from trainings "
                                    "order by 1").fetchall(),
        }


def _normal(value):
    """JSON's view of a value: tuples as lists, the losses' JSON text as its numbers."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


def _differences(pinned, got, where: str = "") -> list[str]:
    if isinstance(pinned, float) or isinstance(got, float):
        if isinstance(got, (int, float)) and math.isclose(pinned, got, rel_tol=0, abs_tol=TOLERANCE):
            return []
        return [f"{where}: pinned {pinned!r}, got {got!r}"]
    if isinstance(pinned, list) and isinstance(got, list):
        if len(pinned) != len(got):
            return [f"{where}: pinned {len(pinned)} rows, got {len(got)}"]
        return [d for i, (p, g) in enumerate(zip(pinned, got, strict=True)) for d in _differences(p, g, f"{where}[{i}]")]
    return [] if pinned == got else [f"{where}: pinned {pinned!r}, got {got!r}"]


def assert_pinned(home: Path, key: str) -> None:
    got = {table: _normal(rows) for table, rows in records(home).items()}
    if os.environ.get("STARGATE_REPIN") == "1":
        with FileLock(Path(tempfile.gettempdir()) / "stargate-pinned.lock"):  # two test processes may pin (xdist)
            pins = json.loads(PINNED.read_text()) if PINNED.exists() else {}
            PINNED.write_text(json.dumps({**pins, key: got}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"pinned {key} again in {PINNED}")
    pins = json.loads(PINNED.read_text())
    assert key in pins, f"nothing pinned for {key} in {PINNED}"
    assert all(got[table] for table in ("turns", "scores", "selections", "trainings")), "the run made no records"
    wrong = [d for table in pins[key] for d in _differences(pins[key][table], got.get(table), table)]
    assert not wrong, f"{len(wrong)} differences from the pinned records, the first:\n" + "\n".join(wrong[:10])
