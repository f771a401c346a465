"""A warm interpreter for the tests' commands: a process that has imported the third-party libraries a command
loads (torch, transformers, peft, ...) and forks one child per command, which runs `python -m stargate_lite ARGS`.
Each command is still a process of its own, with its own environment, working folder, exit status and output, and
it imports stargate_lite itself; only the third-party imports, seconds of every command's start, are done once per
test process. conftest.cli sends a command here only where its environment differs from this process's in nothing
a preloaded library reads when it is imported (`same_environment`).

Not multiprocessing's forkserver: its children end in os._exit, skipping atexit handlers and the interpreter's
shutdown, and report an uncaught exception in their own words; a command here ends as `python -m` ends.

Requests arrive one JSON line at a time on stdin: {"argv", "env", "cwd", "stdin", "stdout", "stderr",
"sigint_ignored"}: the files the command reads and writes, and whether it starts with SIGINT ignored. Replies
are JSON lines on stdout: {"threads"} once the imports are done (a fork is safe with one), then per command
{"pid"} once it started and {"returncode"} once it ended, as subprocess gives it (-N for signal N)."""

from __future__ import annotations

import gc
import importlib
import json
import os
import runpy
import signal
import sys

PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama", "peft", "llama_cpp", "typer", "rich",
           "yaml", "openai")
# Variables read when they are used, not when a library is imported: stargate_lite's own, pytest's, and the
# compile cache's folder that torch writes into the environment of a test process the first time it looks for it
# (torch/_inductor/runtime/cache_dir_utils.py). A command may differ from this process in these and run here;
# everything else (HF_*, OMP_*, TQDM_*, HOME, ...) may be read by a library as it is imported.
RUNTIME_VARIABLES = ("STARGATE_", "COLUMNS", "PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR")
# What the CLI sets before anything imports tqdm (cli._main), which reads it as it is imported.
CLI_DEFAULTS = {"TQDM_DISABLE": "1"}


def same_environment(one: dict[str, str], other: dict[str, str]) -> bool:
    def imported(env: dict[str, str]) -> dict[str, str]:
        return {key: value for key, value in {**CLI_DEFAULTS, **env}.items() if not key.startswith(RUNTIME_VARIABLES)}

    return imported(one) == imported(other)


def _read_line() -> bytes:
    """One request from stdin, read with os.read so that no buffered bytes reach a child; b"" at the end."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return b""
        line += chunk
    return line


def _reply(message: dict) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def _command(request: dict) -> None:
    """In the forked child: become `python -m stargate_lite ARGV` as run by subprocess, and run it."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.SIG_IGN if request["sigint_ignored"] else signal.default_int_handler)
    sys.path[0] = os.getcwd()  # as `-m` sets it
    sys.argv = ["-m", *request["argv"]]
    runpy.run_module("stargate_lite", run_name="__main__", alter_sys=True)


def main() -> None:
    for key, value in CLI_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in PRELOAD:
        importlib.import_module(name)
    # What is imported stays out of the collector's sight: a child's collections and exit would otherwise touch
    # every object, copying the pages it shares with this process (a command's exit 1.6 s, not 0.5 s).
    gc.freeze()
    _reply({"threads": len(os.listdir("/proc/self/task"))})
    while line := _read_line():
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _command(request)
            return  # the child ends here, as a command's interpreter ends: atexit handlers, then exit status 0
        _reply({"pid": pid})
        _reply({"returncode": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])})


if __name__ == "__main__":
    main()
