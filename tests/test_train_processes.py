"""The train stage in two processes (train.processes=2), for real: accelerate's launcher, two CPU workers (gloo) on
the tiny model. It trains the adapter one process trains, and a killed launcher or stargate-lite leaves no worker
behind and costs only a rerun."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GOLD, TASK, TINY_CI_OVERRIDES, TURNS, cli, gone, running
from safetensors.torch import load_file

from stargate_lite.prompts import questioner_messages
from stargate_lite.recipe import TrainConfig
from stargate_lite.stages.train import train_adapter

# Dropout on, its masks seeded per sequence: each sequence gets the masks it gets in one process.
CONFIG = TrainConfig(lora_r=8, lora_alpha=16, lora_dropout=0.1, dropout_masks="sequence", batch_size=3,
                     gradient_accumulation=2, epochs=2)
# Measured without dropout (2026-12-03): 5.5e-7 at most in sft, 6.7e-6 in dpo, on weights up to 0.042 (float sums in
# another order).
TOLERANCE = 1e-4


def _examples(questioner, final=lambda i: GOLD[: 40 + 7 * i]) -> list:
    names = ["Ravi", "Mei", "Dana", "Tomas", "Hanna"]
    examples = []
    # 7 sequences in micro-batches of 3: the last one leaves one process without a sequence. Bare prompts (no
    # instruction): the same code path, a third fewer tokens (the three tests took 157 s against 203, 2026-12-03).
    for i in range(7):
        messages = questioner_messages(names[i % 5], TASK, TURNS[: 2 * (1 + i % 2)], final=True, instruction=False)
        examples.append(questioner.encode_for_training([*messages, {"role": "assistant", "content": final(i)}]))
    return examples


@pytest.mark.parametrize("method", ["sft", "dpo", "rloo"])
def test_two_processes_train_the_adapter_that_one_process_trains(questioner, tmp_path, method):
    examples = _examples(questioner)
    sampling = None
    if method == "dpo":  # 7 pairs: each conversation's plan preferred to a refusal after it
        examples = list(zip(examples, _examples(questioner, lambda i: "I cannot help with meal plans.")))
    if method == "rloo":  # 7 samples, of advantages either side of 0; no dropout (the method's rule)
        examples = [(e, (-1) ** i * (0.5 + i / 4)) for i, e in enumerate(examples)]
        sampling = (0.9, 0.9)
    # DPO and RLOO in one epoch: the epoch's part of each mask's seed is sft's to check; each of dpo's 7 steps is
    # two sequences a pair (89 s in two epochs, 2026-12-02).
    config = CONFIG.model_copy(update={"method": method, "epochs": 1 if method != "sft" else CONFIG.epochs,
                                       **({"lora_dropout": 0.0} if method == "rloo" else {})})
    one = train_adapter(questioner, examples, config, seed=5, out_dir=tmp_path / "one", sampling=sampling)
    steps = []
    two = train_adapter(questioner, examples, config.model_copy(update={"processes": 2}), seed=5,
                        out_dir=tmp_path / "two", on_step=steps.append,
                        sampling=sampling)
    assert (one["processes"], two["processes"]) == (1, 2)
    total = one["steps"]
    # Progress reaches this process as workers step, with each step's loss, rate and tokens
    assert [(s["step"], s["total"]) for s in steps] == [(step, total) for step in range(1, total + 1)]
    assert [s["loss"] for s in steps] == two["losses"] and sum(s["tokens"] for s in steps) == two["trained_tokens"]
    assert all(s["lr"] > 0 for s in steps)
    assert total == {1: 2, 2: 3}[config.epochs]  # 7 sequences: 3 micro-batches an epoch, 2 accumulated a step
    assert two["steps"] == one["steps"] and two["trained_tokens"] == one["trained_tokens"]
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one["losses"]), atol=TOLERANCE)
    if method == "rloo":  # the record's sums, gathered from both processes: the second step has moved from 1
        drift = [[step["ratio_drift"] for step in record["policy_steps"]] for record in (one, two)]
        assert drift[0][0] == drift[1][0] == 0 and drift[0][1] > 1e-4
        assert drift[1][1] == pytest.approx(drift[0][1], rel=1e-2)
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    assert max(a[k].abs().max().item() for k in a) > 100 * TOLERANCE  # the adapter did move
    assert not (tmp_path / "train-job").exists() and (tmp_path / "train.log").is_file()


RUN_ARGS = ["run", "--iterations", "1", *[a for o in TINY_CI_OVERRIDES for a in ("--set", o)],
            "--set", "train.processes=2", "--set", "train.dropout_masks=sequence"]


def _workers_started(run: subprocess.Popen, timeout: float = 600) -> tuple[int, list[int]]:
    """The launcher under `run` and its two workers, once both workers exist."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        for launcher in running(run.pid, "accelerate.commands.launch"):
            workers = running(launcher, "stargate_lite.stages.train_processes")
            if len(workers) == 2:
                return launcher, workers
        time.sleep(0.1)
    raise AssertionError(f"the workers never started (run exit code {run.poll()})")



def test_a_killed_launcher_or_run_leaves_no_worker_and_a_rerun_trains(with_data):
    home = with_data
    env = {**os.environ, "STARGATE_HOME": str(home)}
    command = [sys.executable, "-m", "stargate_lite", *RUN_ARGS]

    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    launcher, workers = _workers_started(run)
    os.kill(launcher, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 2 and "training in 2 processes failed" in stderr and "rerun" in stderr
    assert gone(workers, timeout=20), "a worker outlived its launcher"

    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher, workers = _workers_started(run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone([launcher, *workers], timeout=20), "the launcher or a worker outlived stargate-lite"

    cli(*RUN_ARGS, home=home)
    with sqlite3.connect(home / "stargate.db") as db:
        adapter, processes = db.execute("select adapter, processes from trainings").fetchone()
    assert processes == 2
    assert (home / adapter / "adapter_model.safetensors").is_file()
    assert not list(home.rglob("*.tmp")) and not list(home.rglob("train-job"))
    assert Path(home / adapter).parent.joinpath("train.log").is_file()



# Under a subreaper (a container's init, a service manager) an orphan's new parent is not pid 1. This script,
# a subreaper, starts a "launcher" that starts a worker and exits once the worker has frozen at its first named
# point; the worker, adopted by the script, is then let go and must end at once, before it loads anything.
ORPHANED_WORKER = """
import ctypes, os, signal, subprocess, sys
from pathlib import Path
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
job = sys.argv[1]
launcher = subprocess.run([sys.executable, "-c", sys.argv[2], job], capture_output=True, text=True, check=True)
worker = int(launcher.stdout)  # frozen, and now this script's child
os.kill(worker, signal.SIGCONT)
_, status = os.waitpid(worker, 0)
print(os.waitstatus_to_exitcode(status))
"""
LAUNCHER = """
import os, subprocess, sys, time
from pathlib import Path
env = {**os.environ, "STARGATE_LAUNCHER_PID": str(os.getpid()), "STARGATE_STOP_AT": "train-worker=STOP"}
with open(Path(sys.argv[1]) / "worker.err", "w") as err:
    worker = subprocess.Popen([sys.executable, "-m", "stargate_lite.stages.train_processes", sys.argv[1]], env=env,
                              stdout=subprocess.DEVNULL, stderr=err)  # not the pipe its caller reads to the end
while Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
    time.sleep(0.05)
print(worker.pid)
"""


def test_a_worker_whose_launcher_died_before_it_looked_ends_before_loading_anything(tmp_path):
    job = tmp_path / "train-job"  # no job.pkl: a worker that went on would fail reading it, with a traceback
    job.mkdir()
    done = subprocess.run([sys.executable, "-c", ORPHANED_WORKER, str(job), LAUNCHER], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.split() == ["1"]
    assert (job / "worker.err").read_text() == ""  # ended by the check, not by going on
