"""The tests' commands are forked from a warm interpreter (tests/prewarmed.py, conftest.cli): a command run so must
be what a fresh `python -m stargate_lite` is, in exit status, output and error, and it must be the way they run."""

import os
import subprocess

import pytest
from conftest import WARM, WORKER, cli
from prewarmed import same_environment


def _same(*args: str, home) -> None:
    warm, cold = cli(*args, home=home, check=False), cli(*args, home=home, check=False, warm=False)
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_a_command_from_the_warm_interpreter_prints_and_exits_as_a_fresh_one(home, tmp_path):
    _same("status", "--json", home=home)
    _same("--help", home=home)
    _same("recipe", "show", "tiny", home=home)
    missing = tmp_path / "missing.jsonl"
    _same("data", "import", "--dataset", "mine", "--split", "A", "--tasks", str(missing), home=home)


def test_only_variables_read_at_run_time_may_differ_from_the_warm_interpreters():
    """tqdm reads TQDM_* as it is imported, before a command's CLI would set TQDM_DISABLE: the warm interpreter sets
    it first, as the CLI does, so a command that leaves it unset runs warm."""
    env = dict(os.environ)
    assert same_environment({**env, "STARGATE_HOME": "/elsewhere", "COLUMNS": "80"}, env)
    assert same_environment({**env, "TQDM_DISABLE": "1"}, {k: v for k, v in env.items() if k != "TQDM_DISABLE"})
    assert not same_environment({**env, "HF_ENDPOINT": "http://127.0.0.1:1"}, env)
    assert not same_environment({**env, "TQDM_DISABLE": "0"}, env)
    assert not same_environment({key: value for key, value in env.items() if key != "PATH"}, env)


def test_the_tests_commands_run_warm_in_two_test_processes():
    """Under `pytest -n N` (every command in pyproject.toml and .ci/run) the warm interpreter is used: nothing it
    imports starts a thread, so forking it is safe."""
    if not WORKER:
        pytest.skip("runs under `pytest -n N`")
    assert WARM.usable(dict(os.environ)), f"the warm interpreter holds {WARM.threads} threads"


def test_a_command_that_times_out_is_killed_and_the_next_one_runs(home):
    """A command whose replies are left unread (its timeout here, the test's own timeout elsewhere) ends with the
    warm interpreter, so that the next command reads its own replies from a new one."""
    if not WORKER:
        pytest.skip("runs under `pytest -n N`")
    env = {**os.environ, "STARGATE_HOME": str(home)}
    assert WARM.usable(env)
    before = WARM.process
    with pytest.raises(subprocess.TimeoutExpired):
        WARM.run(["--help"], env, sigint_ignored=False, timeout=0.001)
    assert before.poll() is not None
    _same("--help", home=home)
    assert WARM.process is not before and WARM.process.poll() is None
