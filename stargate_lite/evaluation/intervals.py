"""Confidence intervals for figures over (task, persona) pairs.

Pairs are not independent draws: every task appears with several personas and every persona with several tasks,
so a task that is easy for every policy, or a persona that answers well, moves many pairs at once. An interval
that resamples pairs treats them as independent and comes out too narrow. `crossed_bootstrap` resamples tasks
and personas instead, each with replacement and independently of the other (the "pigeonhole" bootstrap for
crossed designs, Owen 2007), and weights each observed pair by how often its task and its persona were drawn.
On 200 simulated data sets with task and persona effects (tests/test_intervals.py) its 95% interval covered the
true mean 190 times, the pairs' bootstrap 120 times. It errs on the wide side, the side to err on for a claimed
gain: where no task or persona repeats it is about sqrt(3) times as wide as the pairs' bootstrap (1.75 measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A mean over n pairs, with the bootstrap's interval at `confidence` (percentile method)."""

    mean: float
    low: float
    high: float
    n: int
    tasks: int
    personas: int
    confidence: float
    resamples: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return (f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] ({self.confidence:.0%}; n={self.n} pairs of "
                f"{self.tasks} tasks x {self.personas} personas)")


def crossed_bootstrap(values: Sequence[float], tasks: Sequence[str], personas: Sequence[str], *,
                      confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> Interval:
    """The mean of `values` (one per pair; for a gain, the paired difference of two policies on that pair) with an
    interval from resampling the pairs' tasks and personas. A resample that draws no observed pair (possible
    where few tasks meet few personas) has no mean and is drawn again."""
    import numpy as np

    if not len(values) == len(tasks) == len(personas):
        raise ValueError("one task and one persona per value")
    if not values:
        raise ValueError("no values to take an interval of")
    y = np.asarray(values, dtype=np.float64)
    task_names, task_of = np.unique(np.asarray(tasks, dtype=str), return_inverse=True)
    persona_names, persona_of = np.unique(np.asarray(personas, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)

    def draws(names, size: int):
        """How often each name is drawn, per resample: len(names) draws with replacement."""
        return rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=size)

    means: list = []
    while len(means) < resamples:
        size = resamples - len(means)
        task_weight = draws(task_names, size)  # tasks first, then personas: the seed's draws stay as they were
        persona_weight = draws(persona_names, size)
        weight = task_weight[:, task_of] * persona_weight[:, persona_of]  # [resamples, pairs]
        total = weight.sum(axis=1)
        drawn = total > 0
        means.extend((weight[drawn] @ y) / total[drawn])
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(means), [tail, 1 - tail])
    return Interval(mean=float(y.mean()), low=float(low), high=float(high), n=len(y), tasks=len(task_names),
                    personas=len(persona_names), confidence=confidence, resamples=resamples)
