"""llama.cpp's own `llama-server` as a child process: the managed backend for a GGUF chat model.

In-process llama-cpp-python decodes one sequence at a time; the server decodes `slots` sequences together
(continuous batching) and keeps each slot's prompt cached, so a conversation's next turn reads only what is new.
The server lives as long as the command that started it: stopped on exit, Ctrl-C or an exception, and, on Linux,
killed by the kernel when stargate-lite itself dies, even by SIGKILL (PR_SET_PDEATHSIG), so no server is orphaned.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import StargateError
from .recipe import ChatModelConfig

BINARY_ENV = "STARGATE_LLAMA_SERVER"
BUILD_COMMAND = "bash install.sh --llama-server"

# Runs in the child before it becomes llama-server: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG,
# kept across exec), and a parent already gone by then means exiting at once. Elsewhere than Linux it only execs.
_LAUNCHER = """import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def find_binary(configured: str | None) -> Path:
    """The llama-server to run: the recipe's `server_binary`, else $STARGATE_LLAMA_SERVER, else `llama-server` on
    PATH or beside this Python (a venv's bin/, where install.sh links it)."""
    for source, value in (("server_binary", configured), (f"${BINARY_ENV}", os.environ.get(BINARY_ENV))):
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise StargateError(f"{source} names {path}, which is not an executable file: build it with "
                                    f"`{BUILD_COMMAND}` or fix the path")
            return path
    found = shutil.which("llama-server") or shutil.which("llama-server", path=str(Path(sys.prefix) / "bin"))
    if not found:
        raise StargateError(f"no llama-server found (recipe server_binary, ${BINARY_ENV}, PATH): build it with "
                            f"`{BUILD_COMMAND}` (CUDA: CMAKE_ARGS=\"-DGGML_CUDA=on\" {BUILD_COMMAND})")
    return Path(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 2, width: int = 160) -> str:
    """The log's last lines, each cut to `width`, joined into one line for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [" ".join(line.split())[:width] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


class LlamaServer:
    """One llama-server process serving one GGUF on a free port of 127.0.0.1."""

    def __init__(self, name: str, config: ChatModelConfig, gguf: Path, log_path: Path):
        self.name = name
        self.config = config
        self.binary = find_binary(config.server_binary)
        self.gguf = gguf
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.url = ""

    def command(self, port: int) -> list[str]:
        c = self.config
        args = [str(self.binary), "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(c.slots), "--ctx-size", str(c.slots * c.n_ctx), "--n-gpu-layers",
                str(c.n_gpu_layers), "--cont-batching", "--cache-prompt", "--no-webui", "--fit", "off"]
        if c.n_threads:
            args += ["--threads", str(c.n_threads), "--threads-batch", str(c.n_threads)]
        return args

    def start(self) -> str:
        """Start the server and wait until it answers /health; returns its OpenAI base URL."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            command = self.command(port)
            with open(self.log_path, "ab") as log:
                log.write(f"\n# {' '.join(command)}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches stargate-lite only, which then stops the server
                )
            try:
                healthy = self._wait_healthy(port)
            except BaseException:  # Ctrl-C while the model loads: nobody else holds this server to stop it
                self.stop()
                raise
            if healthy:
                self.url = f"http://127.0.0.1:{port}/v1"
                return self.url
            if "bind" not in _log_tail(self.log_path, lines=8).lower():
                break
        raise StargateError(self.failure("did not start"))

    def _wait_healthy(self, port: int) -> bool:
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise StargateError(f"chat model {self.name}: llama-server was not ready after "
                            f"{self.config.startup_timeout:.0f} s (startup_timeout): {_log_tail(self.log_path)} "
                            f"(log: {self.log_path})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str) -> str:
        code = self.process.poll() if self.process else None
        exit_part = f" (exit code {code})" if code is not None else ""
        return (f"chat model {self.name}: llama-server {what}{exit_part}: {_log_tail(self.log_path)} "
                f"(log: {self.log_path})")

    def ensure_alive(self) -> None:
        """Raise the one-line error of a server that died mid-run (finished work is stored; a rerun continues)."""
        if not self.alive():
            raise StargateError(self.failure("exited mid-run"))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
