"""Nothing lost, clear errors: the run lock, Ctrl-C, unreachable endpoints and keys, checked for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli, run_args


def _wait_for_rows(home: Path, table: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended too early"
        try:
            with sqlite3.connect(home / "stargate.db", timeout=1) as db:
                if db.execute(f"select count(*) from {table}").fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no rows in {table} after {timeout} s")


def test_a_second_run_is_refused_while_readers_work_and_ctrl_c_is_clean(home):
    env = {**os.environ, "STARGATE_HOME": str(home)}
    first = subprocess.Popen([sys.executable, "-m", "stargate_lite", *run_args()], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(home, "golds", first)
        second = cli(*run_args(), home=home, check=False)
        assert second.returncode == 2 and "already running" in second.stderr
        status = cli("status", "--json", home=home)  # readers work during a run
        assert json.loads(status.stdout)["runs"][0]["id"] == "tiny"
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_fails_before_any_work(home):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = cli(*run_args(), "--set", f"chat_models.remote={{backend: openai, model: m, base_url: '{url}'}}",
                 "--set", "roles.oracle=remote", home=home, check=False)
    assert result.returncode == 2 and "cannot reach" in result.stderr and url in result.stderr
    assert not (home / "stargate.db").exists()  # nothing was written


def test_a_missing_api_key_is_named_before_any_work(home):
    result = cli(*run_args(), "--set", "chat_models.gpt={backend: openai, model: gpt-4, api_key_env: MY_TEST_KEY}",
                 "--set", "roles.roleplayer=gpt", home=home, check=False)
    assert result.returncode == 2 and "$MY_TEST_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_model_file_is_named(home, tmp_path):
    missing = tmp_path / "nope.gguf"
    result = cli(*run_args(), "--set", f"chat_models.smollm2.model={missing}", home=home, check=False)
    assert result.returncode == 2 and str(missing) in result.stderr
