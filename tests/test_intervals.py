"""Intervals over (task, persona) pairs: the crossed bootstrap covers the true mean where pairs share tasks and
personas, which an interval over pairs alone does not."""

from __future__ import annotations

import numpy as np
import pytest

from stargate_lite.evaluation.intervals import crossed_bootstrap, crossed_resamples


def _crossed_data(rng, tasks: int = 10, personas: int = 8, observed: float = 0.6):
    """y = task effect (sd 1) + persona effect (sd 0.5) + noise (sd 0.5), true mean 0, over a random subset of the
    task x persona grid (as pairs are drawn)."""
    task_effect, persona_effect = rng.normal(0, 1.0, tasks), rng.normal(0, 0.5, personas)
    cells = [(t, p) for t in range(tasks) for p in range(personas) if rng.random() < observed]
    values = [task_effect[t] + persona_effect[p] + rng.normal(0, 0.5) for t, p in cells]
    return values, [f"task-{t}" for t, _ in cells], [f"persona-{p}" for _, p in cells]


def test_the_crossed_interval_covers_the_true_mean_where_the_pairs_interval_does_not():
    rng = np.random.default_rng(1)
    covered = {"crossed": 0, "pairs": 0}
    datasets = 200
    for i in range(datasets):
        values, tasks, personas = _crossed_data(rng)
        crossed = crossed_bootstrap(values, tasks, personas, resamples=1000, seed=i)
        # Each pair its own task and one persona for all: the ordinary bootstrap over pairs.
        pairs = crossed_bootstrap(values, [str(j) for j in range(len(values))], ["all"] * len(values),
                                  resamples=1000, seed=i)
        covered["crossed"] += crossed.low <= 0 <= crossed.high
        covered["pairs"] += pairs.low <= 0 <= pairs.high
    # Expected from the variances: pairs about 0.55 (its standard error a third of the truth's), crossed about 0.95.
    assert 0.92 <= covered["crossed"] / datasets <= 0.98, covered
    assert covered["pairs"] / datasets <= 0.70, covered


def test_the_resamples_follow_the_hand_computed_distribution():
    """A full 2 x 2 grid, y = task index + 10 x persona index: a resample's mean is (tasks drawn' mean) + 10 x
    (personas drawn' mean), each 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4 (two draws from two), so the nine
    outcomes have known probabilities."""
    tasks, personas = ["t0", "t1", "t0", "t1"], ["p0", "p0", "p1", "p1"]
    y = np.array([0.0, 1.0, 10.0, 11.0])
    means = crossed_resamples(tasks, personas, lambda w: (w @ y) / w.sum(axis=1), resamples=20_000, seed=5)
    half = {0.0: 0.25, 0.5: 0.5, 1.0: 0.25}
    for t, pt in half.items():
        for p, pp in half.items():
            share = float(np.mean(np.isclose(means, t + 10 * p)))
            assert share == pytest.approx(pt * pp, abs=0.015), (t, p)
    # The extremes each have probability 1/16, more than the 2.5% in each tail: the interval spans them.
    interval = crossed_bootstrap(list(y), tasks, personas, resamples=20_000, seed=5)
    assert (interval.low, interval.mean, interval.high) == (0.0, 5.5, 11.0)


def test_the_interval_is_seeded_and_centred_on_the_plain_mean():
    values, tasks, personas = _crossed_data(np.random.default_rng(7))
    first = crossed_bootstrap(values, tasks, personas, seed=3)
    assert first == crossed_bootstrap(values, tasks, personas, seed=3)
    assert first.mean == pytest.approx(float(np.mean(values)))
    assert first.low < first.mean < first.high and first.n == len(values) and first.resamples == 4000
    assert (first.tasks, first.personas) == (len(set(tasks)), len(set(personas)))
    shifted = crossed_bootstrap([v + 10 for v in values], tasks, personas, seed=3)
    assert shifted.excludes_zero() and shifted.low == pytest.approx(first.low + 10)
    assert "pairs of" in str(first) and "95%" in str(first)


def test_a_sparse_design_still_gives_an_interval():
    """Two tasks that meet two personas once each: most resamples draw no observed pair and are drawn again."""
    interval = crossed_bootstrap([1.0, 2.0], ["t1", "t2"], ["p1", "p2"], resamples=200, seed=0)
    assert 1.0 <= interval.low <= interval.high <= 2.0 and interval.mean == 1.5


@pytest.mark.parametrize(("values", "tasks", "personas"), [([], [], []), ([1.0], ["t"], [])])
def test_bad_input_is_refused(values, tasks, personas):
    with pytest.raises(ValueError):
        crossed_bootstrap(values, tasks, personas)
