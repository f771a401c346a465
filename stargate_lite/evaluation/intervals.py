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
    """An estimate over n pairs (a mean, or a fitted strength), with the bootstrap's interval at `confidence`
    (percentile method)."""

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


def crossed_resamples(tasks: Sequence[str], personas: Sequence[str], statistic, *, resamples: int = 4000,
                      seed: int = 0):
    """`statistic` on `resamples` crossed resamples of the observations, as an array with one row per resample.

    Each resample draws the tasks and, apart, the personas with replacement; an observation's weight is how often
    its task was drawn times how often its persona was. `statistic` takes a [batch, observations] array of weights
    and returns one value, or one row of values, per resample. A resample that draws no observation (possible
    where few tasks meet few personas) has no weight and is drawn again."""
    import numpy as np

    if len(tasks) != len(personas):
        raise ValueError("one task and one persona per value")
    if not len(tasks):
        raise ValueError("no values to take an interval of")
    task_names, task_of = np.unique(np.asarray(tasks, dtype=str), return_inverse=True)
    persona_names, persona_of = np.unique(np.asarray(personas, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)

    def draws(names, size: int):
        """How often each name is drawn, per resample: len(names) draws with replacement."""
        return rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=size)

    estimates: list = []
    while len(estimates) < resamples:
        size = resamples - len(estimates)
        task_weight = draws(task_names, size)  # tasks first, then personas: the seed's draws stay as they were
        persona_weight = draws(persona_names, size)
        weight = task_weight[:, task_of] * persona_weight[:, persona_of]  # [resamples, observations]
        drawn = weight.sum(axis=1) > 0
        estimates.extend(statistic(weight[drawn]))
    return np.asarray(estimates)


def crossed_bootstrap(values: Sequence[float], tasks: Sequence[str], personas: Sequence[str], *,
                      confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> Interval:
    """The mean of `values` (one per pair; for a gain, the paired difference of two policies on that pair) with an
    interval from resampling the pairs' tasks and personas (`crossed_resamples`)."""
    import numpy as np

    if len(values) != len(tasks):
        raise ValueError("one task and one persona per value")
    y = np.asarray(values, dtype=np.float64)
    means = crossed_resamples(tasks, personas, lambda weight: (weight @ y) / weight.sum(axis=1),
                              resamples=resamples, seed=seed)
    low, high = percentile_interval(means, confidence)
    return Interval(mean=float(y.mean()), low=low, high=high, n=len(y), tasks=len(set(tasks)),
                    personas=len(set(personas)), confidence=confidence, resamples=resamples)


def percentile_interval(estimates, confidence: float) -> tuple[float, float]:
    """The percentile bootstrap's interval: the middle `confidence` of the resamples' estimates."""
    import numpy as np

    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(estimates), [tail, 1 - tail])
    return float(low), float(high)
