"""The tests' commands started fresh (`python -m stargate_lite ...`) against forked from a warm interpreter that has
imported torch, transformers and the rest once (tests/prewarmed.py, conftest.cli), side by side in one run, with
the output of each compared.

    PYTHONPATH=tests python -m benchmarks.warm_commands              # 3 rounds of each command both ways
    PYTHONPATH=tests python -m benchmarks.warm_commands --rounds 5

It times the tests' own harness, so it imports tests/conftest.py as pytest does: as a top-level module beside its
siblings (PYTHONPATH=tests).

The commands: `--help`, `status` of an empty home, and the tests' tiny run (TINY_CI_OVERRIDES) made again on a
copy of a finished one, which finds its work done (what a test's resume or "adds nothing" check pays on top of
its real work). The finished run is made first, outside the timings. Each round runs the two ways one after the
other, alternating which goes first. As the tests run them: one thread (OMP_NUM_THREADS=1, as under
`pytest -n 2`). Run it alone: two jobs on 2 cores distort each other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["OMP_NUM_THREADS"] = "1"  # as in the tests' processes under xdist; before conftest is imported
os.environ["PYTEST_XDIST_WORKER"] = "gw0"  # conftest's one-thread settings for the tests' own chat models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stargate-bench-warm-"))
    os.environ["STARGATE_MODEL_CACHE"] = str(work / "models")
    os.chdir(ROOT)
    try:
        from conftest import WARM, cli, copy_home, run_args
    except ModuleNotFoundError as missing:
        raise SystemExit(f"{missing}: run it as `PYTHONPATH=tests python -m benchmarks.warm_commands`") from None

    started = time.perf_counter()
    assert WARM.usable(dict(os.environ)), f"the warm interpreter holds {WARM.threads} threads after its imports"
    print(f"warm interpreter started in {time.perf_counter() - started:.1f} s (once per test process)")
    finished = work / "finished"
    cli(*run_args(), home=finished)
    commands = {"--help": (["--help"], None), "status, empty home": (["status"], None),
                "run, its work done": (run_args(), finished)}
    print(f"\n{'command':<22} {'fresh s':>8} {'warm s':>8} {'warm/fresh':>11}  output")
    for name, (args, source) in commands.items():
        seconds: dict[bool, list[float]] = {True: [], False: []}
        outputs: dict[bool, set] = {True: set(), False: set()}
        for round_ in range(a.rounds):
            for warm in (round_ % 2 == 0, round_ % 2 == 1):
                home = work / "home"  # one path for both ways: outputs that name it compare equal
                if source:
                    copy_home(source, home)
                started = time.perf_counter()
                result = cli(*args, home=home, check=False, warm=warm)
                seconds[warm].append(time.perf_counter() - started)
                outputs[warm].add((result.returncode, result.stdout, result.stderr))
                shutil.rmtree(home, ignore_errors=True)
        fresh, warm = statistics.median(seconds[False]), statistics.median(seconds[True])
        same = "the same" if outputs[True] == outputs[False] else "DIFFERENT"
        print(f"{name:<22} {fresh:8.2f} {warm:8.2f} {warm / fresh:11.2f}  {same} "
              f"(fresh {min(seconds[False]):.2f}-{max(seconds[False]):.2f}, warm {min(seconds[True]):.2f}-"
              f"{max(seconds[True]):.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
