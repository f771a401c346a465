"""The train stage in several processes (train.processes): `accelerate launch` starts them, each loads the base
model with the same adapter (fresh, or the last one) and trains on its share of every micro-batch (engines/training.py), and the main
one writes the adapter and the training record.

The launcher is a tied child (processes.py), and each worker dies with the launcher, so killing stargate-lite or
the launcher, even by SIGKILL, leaves no worker behind; the stage then counts as not done and a rerun trains again
from the start (the adapter folder appears complete or not at all).

Run as a worker: python -m stargate_lite.stages.train_processes JOB_DIR (by accelerate launch, never by hand).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..engines.processes import EXEC_WITH_PID, die_with_parent, free_port, log_cause, spawn_tied, stop
from ..engines.questioner import Questioner
from ..errors import StargateError
from ..recipe import TrainConfig
from ..runs import stop_point
from ..training_methods import training_method

LAUNCHER_PID_ENV = "STARGATE_LAUNCHER_PID"
STEPS_FILE = "steps.jsonl"  # one line per optimizer step, written by the main worker
RECORD_FILE = "record.json"


def launch_command(processes: int, job_dir: Path, device_type: str) -> list[str]:
    """accelerate's multi-process launcher (torch elastic underneath) on this machine, one process per GPU; on CPU
    the same launcher with the cores split between the processes (accelerate's --cpu launches only one). It runs
    with its pid in $STARGATE_LAUNCHER_PID, for the workers to check before anything else."""
    command = [sys.executable, "-c", EXEC_WITH_PID, LAUNCHER_PID_ENV, sys.executable,
               "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--machine_rank", "0", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if device_type == "cpu":
        command += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    return [*command, "-m", "stargate_lite.stages.train_processes", str(job_dir)]


def train_in_processes(
    questioner: Questioner,
    examples: list,
    config: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    on_step: Callable[[dict], None] | None = None,
    start_from: str | None = None,
    sampling: tuple[float, float] | None = None,
) -> dict:
    """Train the iteration's adapter (fresh, or `start_from` trained further) in config.processes processes;
    returns the training record."""
    import torch

    processes = config.processes
    if questioner.device.type == "cuda" and torch.cuda.device_count() < processes:
        raise StargateError(f"train.processes is {processes}, but {torch.cuda.device_count()} CUDA GPU(s) are "
                            "visible: one process per GPU (set train.processes, or CUDA_VISIBLE_DEVICES)")
    job_dir = out_dir.with_name("train-job")
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    job = {"questioner": questioner.config, "home": str(questioner.home), "examples": examples, "config": config,
           "seed": seed, "out_dir": str(out_dir), "start_from": start_from, "sampling": sampling}
    (job_dir / "job.pkl").write_bytes(pickle.dumps(job))
    log = job_dir.parent / "train.log"
    process = spawn_tied(launch_command(processes, job_dir, questioner.device.type), log)
    steps_seen = 0
    try:
        while True:
            finished = process.poll() is not None
            steps_seen = _report_steps(job_dir / STEPS_FILE, steps_seen, on_step)
            if finished:
                break
            time.sleep(0.5)
    finally:
        stop(process)
    record_path = job_dir / RECORD_FILE
    if process.returncode != 0 or not record_path.is_file():
        raise StargateError(f"training in {processes} processes failed (exit code {process.returncode}): "
                            f"{log_cause(log)} (log: {log}); rerun the same command to train again")
    record = json.loads(record_path.read_text())
    shutil.rmtree(job_dir, ignore_errors=True)
    return record


def _report_steps(path: Path, seen: int, on_step) -> int:
    """Pass steps the main worker has finished since `seen` to on_step; returns how many are reported now."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return seen
    complete = [line for line in lines if line.endswith("}")]  # a line being written is read next time
    for line in complete[seen:]:
        if on_step:
            on_step(json.loads(line))
    return len(complete)


def _worker(job_dir: Path) -> None:
    from accelerate import Accelerator

    from ..engines.training import attach_lora, train_lora

    job = pickle.loads((job_dir / "job.pkl").read_bytes())
    config: TrainConfig = job["config"]
    questioner = Questioner(job["questioner"], Path(job["home"]))
    accelerator = Accelerator(cpu=questioner.device.type == "cpu")
    questioner.device = accelerator.device  # this process's GPU
    main = accelerator.is_main_process
    steps = (job_dir / STEPS_FILE).open("a") if main else None

    def on_step(step: dict) -> None:
        steps.write(json.dumps(step) + "\n")
        steps.flush()

    model = attach_lora(questioner.load_base(), config, job["seed"], job["start_from"])
    record = train_lora(model, job["examples"], config, method=training_method(config.method), seed=job["seed"],
                        out_dir=Path(job["out_dir"]),
                        pad_token_id=questioner.tokenizer.pad_token_id, backend="peft",
                        on_step=on_step if main else None, accelerator=accelerator, sampling=job["sampling"])
    if main:
        tmp = job_dir / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.rename(job_dir / RECORD_FILE)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    # Before torch and accelerate load (seconds): a worker whose launcher is gone, even if it died before this
    # line, ends here instead of waiting in the rendezvous for peers that never come; and never outlives it after.
    stop_point("train-worker")
    die_with_parent(int(os.environ[LAUNCHER_PID_ENV]))
    _worker(Path(sys.argv[1]))
