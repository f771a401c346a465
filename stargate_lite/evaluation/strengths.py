"""One Bradley-Terry fit over every evaluated iteration's judgments (beyond the paper).

Each judgment compares Q_eta's response with Q_0's, one of them shown first (as A). The model:

    P(the judge prefers Q_eta's) = sigmoid(s_eta + position * (+1 if Q_eta's was shown as A, else -1))

with s_0 = 0, so every iteration gets a strength on one logit scale against the base model (s_eta = 0: no better
than Q_0), and `position` is the judge's lean towards the response it reads first, estimated from all iterations'
judgments at once (0 for a judge that reads only content). What a strength means as a win rate: with the order
balanced out (each pair judged once each way), Q_eta wins (sigmoid(s_eta + position) + sigmoid(s_eta - position)) / 2
of the time, which is sigmoid(s_eta) only where position is 0: the further the judge leans, the nearer to 0.5 the
balanced rate, whatever the strength. Fitted
by Newton's method on the log-likelihood with a weak normal prior (standard deviation PRIOR_SD on the logit
scale), which keeps a strength finite when an iteration wins or loses every comparison. Intervals: the crossed
bootstrap (intervals.crossed_resamples: tasks and personas resampled, the fit done again on each), as the win
rates' are.
"""

from __future__ import annotations

from .intervals import Interval, crossed_resamples, percentile_interval

PRIOR_SD = 10.0
RESAMPLES = 2000


def fit_strengths(iteration_index, shown_first, outcome, weight, k: int):
    """The maximum a posteriori [s_1 .. s_k, position] for judgments of iterations `iteration_index` (0-based
    into the k iterations), `shown_first` (True where Q_eta's response was A), `outcome` (1: Q_eta preferred,
    0: Q_0) and `weight` (per judgment: 1, or a resample's count)."""
    import numpy as np

    n = len(outcome)
    x = np.zeros((n, k + 1))
    x[np.arange(n), iteration_index] = 1.0
    x[:, k] = np.where(shown_first, 1.0, -1.0)
    precision = 1.0 / PRIOR_SD**2

    def objective(beta) -> float:
        z = x @ beta
        return float(weight @ (outcome * z - np.logaddexp(0.0, z)) - 0.5 * precision * beta @ beta)

    beta = np.zeros(k + 1)
    current = objective(beta)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (weight * (outcome - p)) - precision * beta
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + precision * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        while True:  # the objective is concave: halve a step that overshoots until it gains
            candidate = objective(beta + step)
            if candidate >= current or np.abs(step).max() < 1e-12:
                break
            step = step / 2
        beta, current = beta + step, candidate
        if np.abs(step).max() < 1e-9:
            break
    return beta


def bradley_terry(judged: dict[int, list[dict]], *, confidence: float = 0.95, resamples: int = RESAMPLES,
                  seed: int = 0) -> dict | None:
    """Strengths per iteration and the judge's position effect, each an Interval, from the judgments of each
    iteration (store rows: pair_key "TASK|PERSONA", policy_is_a, winner); None when nothing was judged validly."""
    import numpy as np

    iterations = sorted(it for it, rows in judged.items() if it and any(r["winner"] for r in rows))
    rows = [(i, r) for i, it in enumerate(iterations) for r in judged[it] if r["winner"] in ("policy", "base")]
    if not rows:
        return None
    index = np.array([i for i, _ in rows])
    shown_first = np.array([bool(r["policy_is_a"]) for _, r in rows])
    outcome = np.array([1.0 if r["winner"] == "policy" else 0.0 for _, r in rows])
    tasks, _, personas = zip(*(r["pair_key"].partition("|") for _, r in rows), strict=True)
    k = len(iterations)
    estimate = fit_strengths(index, shown_first, outcome, np.ones(len(rows)), k)
    fits = crossed_resamples(tasks, personas,
                             lambda weights: [fit_strengths(index, shown_first, outcome, w, k) for w in weights],
                             resamples=resamples, seed=seed)

    def interval(estimated, resampled, column: int) -> Interval:
        low, high = percentile_interval(resampled[:, column], confidence)
        return Interval(mean=float(estimated[column]), low=low, high=high, n=len(rows), tasks=len(set(tasks)),
                        personas=len(set(personas)), confidence=confidence, resamples=resamples)

    balanced, balanced_resampled = balanced_win_rates(estimate[None, :])[0], balanced_win_rates(fits)
    return {"strengths": {it: interval(estimate, fits, i) for i, it in enumerate(iterations)},
            "balanced_win_rates": {it: interval(balanced, balanced_resampled, i) for i, it in enumerate(iterations)},
            "position_a": interval(estimate, fits, k), "judgments": len(rows)}


def balanced_win_rates(fits):
    """Each iteration's win rate with the order balanced out, per fit [s_1 .. s_k, position] (rows of `fits`):
    the mean of its two orders' modelled rates, sigmoid(s + position) and sigmoid(s - position)."""
    import numpy as np

    strengths, position = fits[:, :-1], fits[:, -1:]
    return (1 / (1 + np.exp(-(strengths + position))) + 1 / (1 + np.exp(-(strengths - position)))) / 2
