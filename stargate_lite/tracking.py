"""A run's curves in TensorBoard or Weights & Biases (recipe `track`), written as the run goes.

A series is logged as points (step, values): `train` per optimizer step over the whole run (iteration 2's steps
follow iteration 1's), every other series per iteration (`stage/NAME`, `iteration`, `eval/...`; what each holds:
evaluation/curves.py); each value is a curve, SERIES/NAME. No point is logged twice: the store keeps each point
sent per tracker, its series, name and step (table `tracked_points`), and one sent before is skipped, whatever
order the points come in (an evaluation of iteration 1 after one of iteration 2) and whichever of a step's values
came before (an evaluation in both judging orders, whose counterbalanced rate joins the win rate an evaluation
in one order sent). The point is stored before it is written, so a process killed between the two loses that
one point rather than writing it again; a train stage that is killed and rerun continues its curve with the
rerun's steps after those written (same seed, same examples). A store from before m020 kept only each series'
last step (table `tracked`): a point at or before it counts as sent.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import re
from pathlib import Path
from typing import Self
from urllib.parse import urlparse

from .errors import StargateError
from .store import Store

TRACKERS = ("none", "tensorboard", "wandb")
PROJECT = "stargate-lite"  # the W&B project, unless WANDB_PROJECT names another
X_AXES = {"train": "train/step"}  # W&B: each family's x-axis; families not named here are per "iteration"
FAMILIES = ("train", "stage", "iteration", "eval")


class Tracker:
    """Sends points to a writer once each; with no writer (track: none) it does nothing."""

    def __init__(self, store: Store, run_id: str, kind: str = "none", writer=None):
        self.store, self.run_id, self.kind, self._writer = store, run_id, kind, writer
        # Each series' points sent, {(name, step)}, and its step sent up to by a store from before m020 (None:
        # none), read from the store once.
        self._sent: dict[str, tuple[set[tuple[str, int]], int | None]] = {}

    @property
    def active(self) -> bool:
        return self._writer is not None

    def log(self, series: str, step: int, values: dict[str, float | None]) -> None:
        """Send the values of a series at a step that are not sent yet (a None value is not sent at all)."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        if not self.active or not values:
            return
        if series not in self._sent:
            self._sent[series] = (self.store.tracked_points(self.run_id, self.kind, series),
                                  self.store.tracked_until(self.run_id, self.kind, series))
        sent, until = self._sent[series]
        if until is not None and step <= until:
            return
        values = {k: v for k, v in values.items() if (k, step) not in sent}
        if not values:
            return
        self.store.add_tracked(self.run_id, self.kind, series, step, list(values))
        sent.update((k, step) for k in values)
        self._writer.write(series, step, values)

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close(failed)
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(failed=kind is not None)


def open_tracker(store: Store, run_id: str, kind: str, directory: Path) -> Tracker:
    """The run's tracker, writing into `directory` (the run's folder); W&B shows the recipe as stored beside it."""
    if kind == "none":
        return Tracker(store, run_id)
    if kind == "tensorboard":
        return Tracker(store, run_id, kind, _TensorBoard(directory / "tensorboard"))
    if kind == "wandb":
        return Tracker(store, run_id, kind, _Wandb(directory, run_id, _wandb_id(store, run_id),
                                                 json.loads(store.get_run(run_id)["recipe"])))
    raise StargateError(f"track must be one of {', '.join(TRACKERS)}, not {kind!r}")


def _missing(kind: str, package: str) -> StargateError:
    return StargateError(f"track: {kind} needs the {package} package: pip install 'stargate-lite[track]' (or "
                         "set track: none)")


class _TensorBoard:
    """Event files in RUN/tensorboard, one per process that worked on the run (TensorBoard reads them together);
    each point is flushed as it is written, so a kill loses none that the store counts as written."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def write(self, series: str, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{series}/{name}", value, step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class _Wandb:
    """One W&B run per stargate-lite run, resumed by every process that works on it (its id is stable: the run's
    id and a hash of where and when it was made). Offline into RUN/wandb, unless WANDB_MODE says otherwise or
    the user is logged in (WANDB_API_KEY, or `wandb login`'s netrc entry); each process then writes its own
    offline folder, and `wandb sync` uploads them in order."""

    def __init__(self, directory: Path, run_id: str, wandb_id: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        mode = None if os.environ.get("WANDB_MODE") else ("online" if _wandb_logged_in() else "offline")
        quiet = wandb.Settings(console="off", silent=True, disable_git=True)  # report.md states the commit
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=run_id, id=wandb_id,
                              resume="allow", dir=str(directory), config=config, mode=mode, settings=quiet)
        for family in FAMILIES:
            self.run.define_metric(f"{family}/*", step_metric=X_AXES.get(family, "iteration"))

    def write(self, series: str, step: int, values: dict[str, float]) -> None:
        family = series.partition("/")[0]
        self.run.log({X_AXES.get(family, "iteration"): step, **{f"{series}/{k}": v for k, v in values.items()}})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _wandb_id(store: Store, run_id: str) -> str:
    """W&B run ids are unique per project: the run's id and a hash of its home and creation time."""
    made = store.get_run(run_id)["created_at"]
    digest = hashlib.sha1(f"{store.home.resolve()}|{run_id}|{made}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', run_id)[:48]}-{digest}"


def _wandb_logged_in() -> bool:
    """An API key in the environment or in the netrc entry `wandb login` writes for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
