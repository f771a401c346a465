"""Child processes tied to stargate-lite's life: the managed servers (servers.py) and the multi-process trainer's
launcher (train_processes.py).

A tied child runs under a small supervisor, in a process group of its own with everything it starts (vLLM's
engine and workers, for one). The supervisor holds a pipe from stargate-lite: when the pipe closes, because
stargate-lite stops the child, exits, or dies even by SIGKILL, it terminates the whole group, then kills what is
left after a grace period. When the child ends by itself, the supervisor kills what the child left behind and
ends as the child ended (its exit code, or the signal that killed it), so none is ever orphaned. The supervisor
runs in a session of its own, so a Ctrl-C in the terminal reaches stargate-lite only, which then stops it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

GRACE_SECONDS = 10  # between asking a child's group to terminate and killing it

# argv: the grace period in seconds, then the child's command.
_SUPERVISOR = """import ctypes, os, select, signal, subprocess, sys, time
def die_with_supervisor():  # Linux: should the supervisor itself be killed, the child is killed too
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
grace = float(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=die_with_supervisor)
def end_group():
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the pipe, not a signal, says when to stop
while child.poll() is None:
    ready, _, _ = select.select([0], [], [], 0.5)
    if ready and not os.read(0, 1):  # stargate-lite closed the pipe, or is gone
        break
end_group()
code = child.wait()
if code < 0:  # end by the same signal
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def die_with_parent(parent: int) -> None:
    """For a process whose children another program starts in sessions of their own (accelerate's workers): ask
    the kernel to kill this process when its parent dies (PR_SET_PDEATHSIG, Linux), and exit at once if its
    parent is no longer `parent`, the pid it was started by (a parent that died before this call leaves this
    process to init or to a subreaper, whose pid is then not `parent`)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# Runs a command with its own pid in an environment variable (argv: the variable, then the command): exec keeps
# the pid, so what the command starts knows its parent's pid from the start.
EXEC_WITH_PID = "import os, sys; os.environ[sys.argv[1]] = str(os.getpid()); os.execv(sys.executable, sys.argv[2:])"


def spawn_tied(command: list[str], log_path: Path, env: dict | None = None,
               grace: float = GRACE_SECONDS) -> subprocess.Popen:
    """Start `command` as a tied child, its output appended to log_path after a line naming the command; when it
    is stopped, its group gets SIGTERM, then SIGKILL after `grace` seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n# {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(grace), *command], stdin=subprocess.PIPE,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    """Stop a tied child and everything it started: terminated, then killed after the grace period."""
    if process is None:
        return
    if process.stdin and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout=GRACE_SECONDS + 10)
    except subprocess.TimeoutExpired:  # the supervisor itself is stuck
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# "ValueError: ...", "torch.OutOfMemoryError: ...", after any prefix a logger or a worker process puts before it.
_EXCEPTION = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception): \S.*")
_POINTS_ABOVE = re.compile(r"\b(?:cause|trace) above\b", re.IGNORECASE)


def last_start(path: Path) -> str:
    """What a tied child's log holds since its last start (spawn_tied writes "# COMMAND" before each)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").rsplit("\n# ", 1)[-1]
    except OSError:
        return ""


def log_cause(path: Path, width: int = 300) -> str:
    """Why a child failed, as its log says since its last start: the last exception raised there (type and
    message) that does not point to a cause "above" it, else the log's last lines. A failing vLLM server's log
    ends with wrappers ("Engine core initialization failed. See root cause above.") and its processes' shutdown
    warnings; the cause is the worker's exception before them."""
    if not path.exists():
        return "(no log)"
    raised = [found.group(0) for line in last_start(path).splitlines() if (found := _EXCEPTION.search(line))]
    causes = [line for line in raised if not _POINTS_ABOVE.search(line)] or raised
    return " ".join(causes[-1].split())[:width] if causes else log_tail(path)


def log_tail(path: Path, lines: int = 2, width: int = 160) -> str:
    """The log's last lines, each cut to `width`, joined into one line for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [" ".join(line.split())[:width] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"
