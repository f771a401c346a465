"""Managed servers without a model: a tiny script as the server says why a start failed, and what a vLLM server is
asked to reserve on a CPU."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, gone

from stargate_lite.engines.processes import spawn_tied, stop
from stargate_lite.engines.servers import CPU_KV_CACHE_GIB, ManagedServer, VllmServer
from stargate_lite.errors import StargateError
from stargate_lite.recipe import VllmConfig

# A server that fails as vLLM's CPU build did: the worker's exception, wrappers that point back to it, then its
# processes' shutdown warnings.
FAILING = """
import atexit, sys, traceback
atexit.register(lambda: print("resource_tracker: There appear to be 1 leaked semaphore objects to clean up",
                              file=sys.stderr))
print("INFO starting the engine", flush=True)
try:
    raise ValueError("Available memory on node 0 (0.06/23.4 GiB) is less than requested memory for kv (0.09 GiB)")
except ValueError:
    traceback.print_exc()
raise RuntimeError("Engine core initialization failed. See root cause above.")
"""


class ScriptServer(ManagedServer):
    kind = "test server"

    def __init__(self, script: str, log_path, startup_timeout: float = 60):
        super().__init__("script", log_path, startup_timeout)
        self.script = script

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script]


def test_a_server_that_fails_to_start_is_reported_by_the_exception_in_its_log(tmp_path):
    server = ScriptServer(FAILING, tmp_path / "server.log")
    with pytest.raises(StargateError) as failed:
        server.start()
    message = str(failed.value)
    assert "did not start (exit code 1)" in message
    assert "ValueError: Available memory on node 0" in message
    assert "resource_tracker" not in message and "root cause above" not in message
    assert "resource_tracker" in (tmp_path / "server.log").read_text()  # the line the old message showed


def test_a_log_without_an_exception_is_reported_by_its_last_lines(tmp_path):
    server = ScriptServer("print('listening failed'); raise SystemExit(3)", tmp_path / "server.log")
    with pytest.raises(StargateError, match=r"exit code 3\): .*listening failed"):
        server.start()


def _vllm(**config) -> VllmServer:
    """A vLLM server as configured, never started: this Python stands in for vLLM's."""
    return VllmServer(VllmConfig(python=sys.executable, **config), "model", "float32", False, Path("unused.log"))


def _kv_bytes(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--kv-cache-memory-bytes"]


def test_vllm_servers_on_a_cpu_reserve_an_explicit_kv_cache():
    """vLLM's CPU build otherwise sizes its KV cache from the memory free when it starts, so a start failed or
    succeeded by what else ran on the machine (0.06 GiB available, 0.09 needed, in one CI run)."""
    import torch

    assert not torch.cuda.is_available()  # this suite runs on CPUs; on a GPU vLLM's own sizing is kept
    assert _kv_bytes(_vllm().command(8000)) == [str(int(CPU_KV_CACHE_GIB * 2**30))]
    assert _kv_bytes(_vllm(kv_cache_gib=0.5).command(8000)) == [str(2**29)]
    given = _vllm(server_args=["--kv-cache-memory-bytes", "12345"]).command(8000)
    assert _kv_bytes(given) == ["12345"]  # the user's own setting, once


def test_only_the_last_start_of_a_log_is_read_for_the_cause(tmp_path):
    """A managed server's log grows with every start: an earlier start's failure is not this one's cause."""
    log = tmp_path / "server.log"
    log.write_text("\n# old command\nOSError: [Errno 98] Address already in use\n")
    server = ScriptServer("print('no model file at /models/x.gguf'); raise SystemExit(1)", log)
    with pytest.raises(StargateError) as failed:
        server.start()
    assert "no model file" in str(failed.value) and "Errno 98" not in str(failed.value)
    assert log.read_text().count("\n# ") == 2  # one start: the old clash did not make it retry on another port


def test_a_port_taken_first_is_retried_on_another_port(tmp_path):
    """Another process may take the free port before the server binds it: the start is retried on a new port (three
    tries in all), and nothing else is retried."""
    server = ScriptServer("print('error while attempting to bind: address already in use'); raise SystemExit(1)",
                          tmp_path / "server.log")
    with pytest.raises(StargateError, match="did not start"):
        server.start()
    assert (tmp_path / "server.log").read_text().count("\n# ") == 3


def test_a_server_not_ready_in_time_is_stopped_and_named(tmp_path):
    server = ScriptServer("import time; print('loading weights', flush=True); time.sleep(600)", tmp_path / "server.log",
                          startup_timeout=1)
    with pytest.raises(StargateError, match=r"was not ready after 1 s \(startup_timeout\): .*loading weights"):
        server.start()
    assert server.process.poll() is not None and not alive(server.process.pid)  # stopped, not left loading


# A child that ignores SIGTERM, as does the grandchild it starts; it prints both pids once both run.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
                               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(os.getpid(), grandchild.pid, flush=True)
time.sleep(600)
"""
# A child that starts a grandchild, prints both pids and exits by itself with code 3, leaving the grandchild.
LEAVING = """
import os, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(os.getpid(), grandchild.pid, flush=True)
sys.exit(3)
"""


def _pids(log, timeout: float = 60) -> list[int]:
    """The pids the child printed in its log once it printed them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if re.fullmatch(r"\d+ \d+", line)]
        if lines:
            return [int(p) for p in lines[-1].split()]
        time.sleep(0.05)
    raise AssertionError("the child never printed its pids")



def test_a_child_that_ignores_sigterm_is_killed_with_its_group_after_the_grace_period(tmp_path):
    log = tmp_path / "child.log"
    process = spawn_tied([sys.executable, "-c", STUBBORN], log, grace=1.5)
    pids = _pids(log)
    started = time.monotonic()
    stop(process)
    assert gone(pids), "a process of the group outlived stop()"
    assert time.monotonic() - started >= 1.5  # SIGTERM first: the kill waited out the grace period
    assert process.returncode == -signal.SIGKILL  # the supervisor ends as its child ended


def test_a_child_that_exits_by_itself_takes_what_it_left_behind_and_its_exit_code(tmp_path):
    log = tmp_path / "child.log"
    process = spawn_tied([sys.executable, "-c", LEAVING], log, grace=1.5)
    pids = _pids(log)
    assert process.wait(timeout=60) == 3
    assert gone(pids), "the grandchild outlived the child that left it"
