"""Child processes tied to stargate-lite's life: the managed servers (servers.py) and the multi-process trainer's
launcher (train_processes.py).

A tied child is stopped by whoever started it on exit, Ctrl-C or an exception, and, on Linux, killed by the
kernel when stargate-lite itself dies, even by SIGKILL (PR_SET_PDEATHSIG), so none is ever orphaned. It runs in
its own session, so a Ctrl-C in the terminal reaches stargate-lite only, which then stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Runs in the child before it becomes the real program: the kernel sends SIGKILL when the parent dies
# (PR_SET_PDEATHSIG, kept across exec), and a parent already gone by then means exiting at once. Elsewhere than
# Linux it only execs.
_TIED_EXEC = """import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def die_with_parent() -> None:
    """For a process we start but whose own children another program starts (accelerate's workers): ask the
    kernel to kill this process when its parent dies, and exit at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        if os.getppid() != parent or parent == 1:
            os._exit(1)


def spawn_tied(command: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `command` (its first item an executable path) as a tied child, its output appended to log_path
    after a line naming the command."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n# {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-c", _TIED_EXEC, str(os.getpid()), *command],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )


def stop(process: subprocess.Popen | None, grace_seconds: float = 15) -> None:
    """Terminate a child (and, as it runs in its own session, whatever it started), killing it after a grace
    period."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 2, width: int = 160) -> str:
    """The log's last lines, each cut to `width`, joined into one line for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [" ".join(line.split())[:width] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"
