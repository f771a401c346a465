"""Curves in TensorBoard and W&B (recipe track): written by the real libraries, read back from their files; each
point once, however many processes resume the run. A whole run's curves, killed and resumed at every stage, are
checked in test_loop's kill test; an evaluation's in test_eval."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import tensorboard_points, wandb_history

from stargate_lite.errors import StargateError
from stargate_lite.store import Store
from stargate_lite.tracking import open_tracker

FIRST_THEN_RESUMED = [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 104.0), (5, 105.0)]


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


@pytest.fixture
def store(home) -> Store:
    store = Store(home)
    store.create_run("r", "tiny", json.dumps({"name": "tiny", "seed": 0}), "builtin", 0)
    return store


def _two_processes(store: Store, kind: str, directory) -> None:
    """A process logs three train steps and a stage, then a resumed one logs steps 1 to 5 (1 to 3 again, with
    other values) and the stage's next iteration."""
    with open_tracker(store, "r", kind, directory) as tracker:
        for step in (1, 2, 3):
            tracker.log("train", step, {"loss": 1.0 / step, "lr": 1e-4, "tokens": 10 * step})
        tracker.log("stage/simulate", 1, {"seconds": 4.0, "tokens": None})
    with open_tracker(store, "r", kind, directory) as tracker:
        for step in (1, 2, 3, 4, 5):
            tracker.log("train", step, {"loss": 100.0 + step, "lr": 2e-4, "tokens": 1})
        tracker.log("stage/simulate", 1, {"seconds": 99.0})
        tracker.log("stage/simulate", 2, {"seconds": 5.0})


def test_tensorboard_curves_hold_each_point_once_across_resumed_processes(store, run_dir):
    _two_processes(store, "tensorboard", run_dir)
    points = tensorboard_points(run_dir / "tensorboard")
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process
    assert [s for s, _ in points["train/loss"]] == [s for s, _ in FIRST_THEN_RESUMED]
    assert [v for _, v in points["train/loss"]] == pytest.approx([v for _, v in FIRST_THEN_RESUMED])
    assert [s for s, _ in points["train/lr"]] == [1, 2, 3, 4, 5]
    assert points["train/tokens"] == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 1.0), (5, 1.0)]
    assert points["stage/simulate/seconds"] == [(1, 4.0), (2, 5.0)]
    assert "stage/simulate/tokens" not in points  # a value the store does not count is left out, not logged as 0
    assert max(step for _, step in store.tracked_points("r", "tensorboard", "train")) == 5


def test_wandb_logs_offline_without_a_login_each_point_once_on_its_own_x_axis(store, run_dir, tmp_path,
                                                                              monkeypatch):
    import wandb

    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no netrc: nobody is logged in
    _two_processes(store, "wandb", run_dir)
    # run.finish() returns before W&B's service has closed the run's file (it is told, not waited for); a real
    # process's exit waits for the service to stop, and so does teardown: read the files only after it.
    wandb.teardown()
    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and len({p.name for p in logs}) == 1  # one folder per process, of one W&B run resumed
    rows = wandb_history(run_dir)
    train = [(r["train/step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert [s for s, _ in train] == [s for s, _ in FIRST_THEN_RESUMED]
    assert [v for _, v in train] == pytest.approx([v for _, v in FIRST_THEN_RESUMED])
    stages = [(r["iteration"], r["stage/simulate/seconds"]) for r in rows if "stage/simulate/seconds" in r]
    assert stages == [(1, 4.0), (2, 5.0)]


@pytest.mark.parametrize(("kind", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_tracker_whose_package_is_missing_is_one_clear_error(store, tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(StargateError, match=rf"track: {kind} needs .*stargate-lite\[track\]"):
        open_tracker(store, "r", kind, tmp_path)


def test_no_tracker_writes_nothing(store, run_dir):
    run_dir.mkdir()
    with open_tracker(store, "r", "none", run_dir) as tracker:
        tracker.log("train", 1, {"loss": 1.0})
    assert not list(run_dir.iterdir()) and not store.tracked_points("r", "none", "train")


ROLEPLAYER = "smollm2"
CONDITIONS = ("negative", "positive", "experimental", "experimental_best_of_n", "random")


def _summary(protocol: str, iterations: list[int], both_orders: bool) -> dict:
    """An evaluation's figures as evaluate.summarize gives them (the parts log_evaluation reads): the log-prob
    table depends on the iteration alone, the win rates on the judging protocol too, and the counterbalanced rate
    is there once both orders are judged (`eval --set eval.judge_orders=2` after an evaluation in one order)."""
    from stargate_lite.evaluation.efficiency import METRICS

    def figures(it: int) -> dict:
        rate = 0.5 + it / 10 + (0.01 if protocol.startswith("compare") else 0)
        return {"iteration": it,
                "logprob": {c: {"mean": -100.0 - 10 * it - i} for i, c in enumerate(CONDITIONS)},
                "gain": {"mean": 10.0 * it, "low": 10.0 * it - 1, "high": 10.0 * it + 1} if it else None,
                "efficiency": {m: {"mean": it + i / 10} for i, m in enumerate(METRICS)},
                "win_rate": {"rate": rate if it else 0.5},
                "win_rate_counterbalanced": {"rate": rate - 0.05, "consistency": 0.75} if it and both_orders else
                ({"rate": 0.5} if not it else None)}

    return {"roleplayer": ROLEPLAYER, "judge": "smollm2", "responder": "policy", "protocol": protocol,
            "iterations": [figures(it) for it in iterations]}


# The evaluations a user makes of one run, each its own `eval` process: iteration 2 first (`--iteration 2`), then
# every iteration, then in both orders, then with a second judge template.
EVALUATIONS = [("letter/logprobs#aaaaaa", [0, 2], False), ("letter/logprobs#aaaaaa", [0, 1, 2], False),
               ("letter/logprobs#aaaaaa", [0, 1, 2], True), ("compare/reply#bbbbbb", [0, 1, 2], True)]


def _expected_eval_points() -> dict[str, list[tuple[int, float]]]:
    """Every point those evaluations have, {tag: [(step, value)] by step}: each once."""
    points: dict[str, dict[int, float]] = {}
    for protocol, iterations, both_orders in EVALUATIONS:
        judged = f"eval/{ROLEPLAYER}/judged/smollm2-policy-" + protocol.replace("/", "-").replace("#", "-")
        for it in _summary(protocol, iterations, both_orders)["iterations"]:
            base = f"eval/{ROLEPLAYER}"
            values = {**{f"{base}/logprob_{c}": v["mean"] for c, v in it["logprob"].items()},
                      **{f"{base}/{m}": v["mean"] for m, v in it["efficiency"].items() if m != "response_tokens"},
                      f"{base}/responses/policy/response_tokens": it["efficiency"]["response_tokens"]["mean"]}
            if it["iteration"]:
                values |= {f"{base}/gain": it["gain"]["mean"], f"{base}/gain_low": it["gain"]["low"],
                           f"{base}/gain_high": it["gain"]["high"], f"{judged}/win_rate": it["win_rate"]["rate"]}
                if both_orders:
                    both = it["win_rate_counterbalanced"]
                    values |= {f"{judged}/win_rate_counterbalanced": both["rate"],
                               f"{judged}/consistency": both["consistency"]}
            for tag, value in values.items():
                points.setdefault(tag, {})[it["iteration"]] = value
    return _rounded({tag: list(steps.items()) for tag, steps in points.items()})


def _rounded(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Each tag's points by step, their values to 5 places (TensorBoard keeps 32-bit floats); a point written
    twice stays twice."""
    return {tag: sorted((step, round(value, 5)) for step, value in p) for tag, p in points.items()}


def _evaluate_each(store: Store, kind: str, directory) -> None:
    from stargate_lite.evaluation.curves import log_evaluation

    for protocol, iterations, both_orders in EVALUATIONS:
        with open_tracker(store, "r", kind, directory) as tracker:
            log_evaluation(tracker, _summary(protocol, iterations, both_orders))


def test_every_eval_point_reaches_tensorboard_once_whatever_order_the_evaluations_come_in(store, run_dir):
    """Evaluations of iteration 2 before iteration 1, in one judging order before both, with two judge templates:
    each point of each series is in the event files once, also after every evaluation is made again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = _expected_eval_points()
    assert len(expected) == 5 + 5 + 3 + 2 * 3  # conditions, efficiency metrics, gain, 3 win-rate curves a template
    for _ in range(2):  # the second time, everything was sent: nothing is again
        _evaluate_each(store, "tensorboard", run_dir)
        assert _rounded(tensorboard_points(run_dir / "tensorboard")) == expected
    shown = EventAccumulator(str(run_dir / "tensorboard")).Reload()  # what TensorBoard itself shows of them
    assert _rounded({tag: [(e.step, e.value) for e in shown.Scalars(tag)] for tag in shown.Tags()["scalars"]}) == \
        expected


def test_every_eval_point_reaches_wandb_once_whatever_order_the_evaluations_come_in(store, run_dir, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    expected = _expected_eval_points()
    _evaluate_each(store, "wandb", run_dir)
    _evaluate_each(store, "wandb", run_dir)
    wandb.teardown()  # the service closes the runs' files (see the test above)
    points: dict[str, list[tuple[int, float]]] = {}
    for row in wandb_history(run_dir):
        for key, value in row.items():
            if key.startswith("eval/"):
                points.setdefault(key, []).append((row["iteration"], value))
    assert _rounded(points) == expected


def test_each_responders_response_lengths_reach_tensorboard(store, run_dir):
    """`eval --responder base` after `eval`: the final responses are Q_0's after Q_eta's conversations, not Q_eta's,
    so their mean length is a point of its own, not one already sent for the same iteration (issue 45, item 6)."""
    from stargate_lite.evaluation.curves import log_evaluation

    sent = {}
    for responder, tokens in (("policy", 40.0), ("base", 90.0)):
        summary = _summary("letter/logprobs#aaaaaa", [0, 1], False)
        summary["responder"] = responder
        for it in summary["iterations"]:
            it["efficiency"]["response_tokens"]["mean"] = tokens + it["iteration"]
            sent[responder, it["iteration"]] = tokens + it["iteration"]
        with open_tracker(store, "r", "tensorboard", run_dir) as tracker:
            log_evaluation(tracker, summary)
    points = tensorboard_points(run_dir / "tensorboard")
    lengths = sorted((step, value) for tag, p in points.items() if tag.endswith("/response_tokens") for step, value in p)
    assert lengths == sorted((it, value) for (_, it), value in sent.items())


def test_a_store_from_before_points_were_kept_sends_nothing_it_had_sent(store, run_dir):
    """m019 kept each series' last step: a point at or before it counts as sent, one after it is sent."""
    store.insert_rows("tracked", [{"run_id": "r", "tracker": "tensorboard", "series": "train", "step": 3}],
                      pk=("run_id", "tracker", "series"))
    with open_tracker(store, "r", "tensorboard", run_dir) as tracker:
        for step in (1, 2, 3, 4, 5):
            tracker.log("train", step, {"loss": float(step)})
    assert tensorboard_points(run_dir / "tensorboard") == {"train/loss": [(4, 4.0), (5, 5.0)]}
    assert store.tracked_points("r", "tensorboard", "train") == {("loss", 4), ("loss", 5)}
