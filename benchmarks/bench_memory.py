"""Peak resident memory per stage of a real `stargate-lite run`, for recipe variants side by side.

    python -m benchmarks.bench_memory                                   # tiny recipe, one iteration
    python -m benchmarks.bench_memory --iterations 2 --variant "--set train.batch_size=4"

Without --variant, the recipe as shipped is compared with its training settings before issue 13 (batch 4, no
accumulation, no gradient checkpointing).

Each variant runs the command in a fresh home (the converted model cache shared, so no variant pays for the
conversion) while a sampler reads the resident memory of the process and its children from /proc every 0.2 s;
the store's stage marks then say which stage each sample belongs to. Linux only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its direct children, KiB."""
    total = 0
    for proc in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(args: list[str], home: Path, cache: Path) -> tuple[float, list[tuple[str, float, float]]]:
    """Run one variant; returns (wall seconds, [(stage, seconds, peak GiB)])."""
    env = {**os.environ, "STARGATE_HOME": str(home), "STARGATE_MODEL_CACHE": str(cache)}
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "stargate_lite", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while process.poll() is None:
        samples.append((time.time(), tree_rss_kib(process.pid)))
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"stargate-lite {' '.join(args)} failed: {process.stderr.read()[-2000:]}")
    wall = time.time() - started
    with sqlite3.connect(home / "stargate.db") as db:
        marks = [("data", db.execute("select min(started_at) from iterations").fetchone()[0])]
        marks += [(f"{it}: {stage}", t) for it, stage, t in
                  db.execute("select iteration, stage, done_at from stages order by done_at")]
    rows, previous = [], started
    for name, end in marks:
        inside = [rss for t, rss in samples if previous <= t <= end]
        if end - previous > 0.5:
            rows.append((name, end - previous, max(inside, default=0) / 2**20))
        previous = end
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--variant", action="append", default=None,
                        help="extra `run` arguments of one variant (repeatable); the recipe as shipped runs first")
    parser.add_argument("--without-shipped", action="store_true", help="only the variants, not the recipe as shipped")
    a = parser.parse_args()
    before = "--set train.gradient_checkpointing=false --set train.batch_size=4 --set train.gradient_accumulation=1"
    variants = [*([] if a.without_shipped else [""]), *(a.variant or [before])]
    work = Path(tempfile.mkdtemp(prefix="stargate-bench-memory-"))
    cache = work / "models"
    os.environ["STARGATE_MODEL_CACHE"] = str(cache)  # convert the tiny model's GGUF once, outside the timings
    from stargate_lite.engines.models import questioner_source
    from stargate_lite.recipe import load_recipe

    questioner = load_recipe("tiny").questioner
    questioner_source(questioner.model, questioner.gguf_file, work)
    results = []
    for i, variant in enumerate(variants):
        args = ["run", "--iterations", str(a.iterations), *shlex.split(variant)]
        results.append((variant or "(recipe as shipped)", *measure(args, work / f"home-{i}", cache)))
    print(f"peak resident memory per stage, `stargate-lite run --iterations {a.iterations}` (tiny recipe)")
    for variant, wall, rows in results:
        peak = max(r[2] for r in rows)
        print(f"\n{variant}: {wall:.0f} s, peak {peak:.2f} GiB")
        for name, seconds, gib in rows:
            print(f"  {name:<14} {seconds:7.1f} s  {gib:6.2f} GiB")


if __name__ == "__main__":
    main()
