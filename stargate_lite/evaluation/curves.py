"""What a run's curves show (recipe track; tracking.py writes them), each point read from the store or an
evaluation's summary:

- `train` (per optimizer step over the run): loss, lr, tokens, and rloo's and grpo's ratio_drift, clipped, kl;
- `stage/NAME` (per iteration; the data stage at 0): seconds, tokens where the store counts them, tokens_per_s,
  gpu_seconds;
- `iteration`: mean reward of all conversations and of the kept ones, the efficiency metrics' means
  (efficiency.py), and the training's final loss, examples and steps;
- `eval/ROLEPLAYER` (per evaluated iteration): each log-prob condition's mean, the paired gain over Q_0 with its
  interval, and the efficiency metrics' means; and
  `eval/ROLEPLAYER/judged/...` (one per judge, responder and judging protocol): the win rates and, with both
  orders judged, the judge's consistency.
"""

from __future__ import annotations

import json
import re
import statistics

from ..store import Store
from ..store.reward import RewardTerms
from ..tracking import Tracker
from .efficiency import METRICS, efficiency


def train_step_offset(store: Store, run_id: str, iteration: int) -> int:
    """The train curve's steps before this iteration's: its earlier iterations' optimizer steps."""
    return sum((store.training(run_id, i) or {}).get("steps") or 0 for i in range(1, iteration))


def log_train_step(tracker: Tracker, offset: int, step: dict) -> None:
    """One optimizer step as the trainer reports it (engines/training.py's on_step)."""
    tracker.log("train", offset + step["step"], {k: v for k, v in step.items() if k not in ("step", "total")})


def log_stage(tracker: Tracker, store: Store, run_id: str, iteration: int, stage: str) -> None:
    """A stage of an iteration, once it is marked done: its latest attempt's time, tokens and throughput."""
    if not tracker.active:
        return
    for row in store.stage_times(run_id):
        if row["iteration"] == iteration and row["stage"] == stage:
            _log_stage_row(tracker, store, run_id, row)


def _log_stage_row(tracker: Tracker, store: Store, run_id: str, row: dict) -> None:
    """One of store.stage_times' rows as its stage's point (none for a stage finished before starts were kept)."""
    if row["started_at"] is None:
        return
    iteration, stage = row["iteration"], row["stage"]
    seconds = row["done_at"] - row["started_at"]
    tokens = store.stage_tokens(run_id, iteration).get(stage) if iteration else None
    tracker.log(f"stage/{stage}", iteration, {
        "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds if tokens and seconds > 0 else None,
        "gpu_seconds": seconds * row["gpus"] if row["gpus"] else None})


def log_iteration(tracker: Tracker, store: Store, run_id: str, iteration: int, terms: RewardTerms) -> None:
    """A trained iteration: its rewards, efficiency and training."""
    if not tracker.active:
        return
    rewards = [r["reward"] for r in store.rewards(run_id, iteration, terms)]
    kept = [s["reward"] if s.get("reward") is not None else s["logprob"] for s in store.selections(run_id, iteration)]
    eff = efficiency(store.conversation_efficiency(run_id, iteration), store.response_lengths(run_id, iteration))
    training = store.training(run_id, iteration) or {}
    tracker.log("iteration", iteration, {
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "mean_reward_kept": statistics.fmean(kept) if kept else None,
        **{metric: eff[metric]["mean"] for metric in METRICS},
        "train_loss": training.get("final_loss"), "train_examples": training.get("examples"),
        "train_steps": training.get("steps")})


def log_finished(tracker: Tracker, store: Store, run_id: str, terms: RewardTerms) -> None:
    """What the store holds and the tracker has not been sent, when a run starts or resumes: the points of a
    process killed between its stage's mark and their writing, or of a run that turns tracking on late (its
    earlier train steps then with their loss only: the training record keeps no more)."""
    if not tracker.active:
        return
    for row in store.stage_times(run_id):
        _log_stage_row(tracker, store, run_id, row)
    offset = 0
    for it in store.iterations(run_id):
        training = store.training(run_id, it["iteration"])
        if training is None:
            break
        for step, loss in enumerate(json.loads(training["losses"]), start=1):
            tracker.log("train", offset + step, {"loss": loss})
        offset += training["steps"]
        log_iteration(tracker, store, run_id, it["iteration"], terms)


def log_evaluation(tracker: Tracker, summary: dict) -> None:
    """An evaluation's figures (evaluate.summarize) per iteration: the log-prob table and the win rates. Each
    point not sent before is sent (Tracker.log): iterations evaluated in any order, and the counterbalanced rate
    of a later evaluation in both orders beside the win rate of an earlier one in one order."""
    base = f"eval/{summary['roleplayer']}"
    judged = f"{base}/judged/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(
        (summary["judge"], summary["responder"], summary["protocol"])))
    # The final responses are the responder's (Q_eta's, or Q_0's after Q_eta's conversation): their length is a
    # series per responder; the conversations' figures are the same whichever responder answers after them.
    responses = f"{base}/responses/{summary['responder']}"
    for it in summary["iterations"]:
        gain = it["gain"] or {}
        tracker.log(base, it["iteration"], {**{f"logprob_{c}": v["mean"] for c, v in it["logprob"].items()},
                                            "gain": gain.get("mean"), "gain_low": gain.get("low"),
                                            "gain_high": gain.get("high"),
                                            **{m: it["efficiency"][m]["mean"] for m in METRICS
                                               if m != "response_tokens"}})
        tracker.log(responses, it["iteration"], {"response_tokens": it["efficiency"]["response_tokens"]["mean"]})
        if it["iteration"] == 0:
            continue
        both = it["win_rate_counterbalanced"] or {}
        tracker.log(judged, it["iteration"], {"win_rate": it["win_rate"]["rate"],
                                              "win_rate_counterbalanced": both.get("rate"),
                                              "consistency": both.get("consistency")})
