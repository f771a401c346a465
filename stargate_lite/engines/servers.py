"""Inference servers run as tied children of stargate-lite (processes.py): llama.cpp's `llama-server` for a GGUF
chat model, and vLLM's OpenAI-compatible server for the Questioner (questioner.engine vllm).

In-process llama-cpp-python decodes one sequence at a time; llama-server decodes `slots` sequences together
(continuous batching) and keeps each slot's prompt cached, so a conversation's next turn reads only what is new.
A server lives as long as the command that started it, and never outlives stargate-lite (processes.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import StargateError
from ..recipe import ChatModelConfig, VllmConfig
from .processes import free_port, last_start, log_cause, spawn_tied, stop

BINARY_ENV = "STARGATE_LLAMA_SERVER"
BUILD_COMMAND = "bash install.sh --llama-server"


def _named_executable(setting: str, configured: str | None, env_var: str, get_it: str) -> Path | None:
    """The executable a recipe setting, else an environment variable, names (None where neither does); one
    that is not an executable file is an error saying how to get it."""
    for source, value in ((setting, configured), (f"${env_var}", os.environ.get(env_var))):
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise StargateError(f"{source} names {path}, which is not an executable file: {get_it} or fix "
                                    "the path")
            return path
    return None


def find_binary(configured: str | None) -> Path:
    """The llama-server to run: the recipe's `server_binary`, else $STARGATE_LLAMA_SERVER, else `llama-server` on
    PATH or beside this Python (a venv's bin/, where install.sh links it)."""
    named = _named_executable("server_binary", configured, BINARY_ENV, f"build it with `{BUILD_COMMAND}`")
    if named:
        return named
    found = shutil.which("llama-server") or shutil.which("llama-server", path=str(Path(sys.prefix) / "bin"))
    if not found:
        raise StargateError(f"no llama-server found (recipe server_binary, ${BINARY_ENV}, PATH): build it with "
                            f"`{BUILD_COMMAND}` (CUDA: CMAKE_ARGS=\"-DGGML_CUDA=on\" {BUILD_COMMAND})")
    return Path(found)


# What a server's log says when another process took its port first: llama-server's words, then uvicorn's (vLLM).
PORT_CLASHES = ("couldn't bind", "address already in use")


class ManagedServer:
    """One server process on a free port of 127.0.0.1, started by `start` and stopped by `stop`. Subclasses say
    what to run (`command`), which path answers 200 once it is ready (`health_path`) and what it is called."""

    kind = "server"
    health_path = "/health"

    def __init__(self, name: str, log_path: Path, startup_timeout: float):
        self.name = name
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process = None
        self.url = ""

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict | None:
        """The child's environment (None: this process's)."""
        return None

    def start(self) -> str:
        """Start the server and wait until it answers its health check; returns its OpenAI base URL."""
        for _ in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            self.process = spawn_tied(self.command(port), self.log_path, self.environment())
            try:
                healthy = self._wait_healthy(port)
            except BaseException:  # Ctrl-C while the model loads: nobody else holds this server to stop it
                self.stop()
                raise
            if healthy:
                self.url = f"http://127.0.0.1:{port}/v1"
                return self.url
            said = last_start(self.log_path).lower()  # an earlier start's port clash is not this one's
            if not any(clash in said for clash in PORT_CLASHES):
                break
        raise StargateError(self.failure("did not start"))

    def _wait_healthy(self, port: int) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{self.health_path}", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise StargateError(f"{self.name}: {self.kind} was not ready after {self.startup_timeout:.0f} s "
                            f"(startup_timeout): {log_cause(self.log_path)} (log: {self.log_path})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str) -> str:
        code = self.process.poll() if self.process else None
        exit_part = f" (exit code {code})" if code is not None else ""
        return f"{self.name}: {self.kind} {what}{exit_part}: {log_cause(self.log_path)} (log: {self.log_path})"

    def ensure_alive(self) -> None:
        """Raise the one-line error of a server that died mid-run (finished work is stored; a rerun continues)."""
        if not self.alive():
            raise StargateError(self.failure("exited mid-run"))

    def stop(self) -> None:
        stop(self.process)


class LlamaServer(ManagedServer):
    """llama.cpp's server for one GGUF chat model: `slots` sequences decoded together, prompts cached."""

    kind = "llama-server"

    def __init__(self, name: str, config: ChatModelConfig, gguf: Path, log_path: Path):
        super().__init__(f"chat model {name}", log_path, config.startup_timeout)
        self.config = config
        self.binary = find_binary(config.server_binary)
        self.gguf = gguf

    def command(self, port: int) -> list[str]:
        c = self.config
        args = [str(self.binary), "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(c.slots), "--ctx-size", str(c.slots * c.n_ctx), "--n-gpu-layers",
                str(c.n_gpu_layers), "--cont-batching", "--cache-prompt", "--no-webui", "--fit", "off"]
        if c.n_threads:
            args += ["--threads", str(c.n_threads), "--threads-batch", str(c.n_threads)]
        if c.chat_format:
            # A built-in template's name is a template only without Jinja: with it (the default), the server
            # renders the name itself as the template and every prompt becomes the word "gemma".
            args += ["--no-jinja", "--chat-template", c.chat_format]
        return args


VLLM_PYTHON_ENV = "STARGATE_VLLM_PYTHON"
VLLM_INSTALL = "bash install.sh --vllm"
VLLM_BASE_NAME = "base"  # the name the managed server gives the base model; adapters get names of their own
CPU_KV_CACHE_GIB = 1.0  # questioner.vllm.kv_cache_gib's value on a CPU: 8k tokens of a 7B model in bf16


def find_vllm_python(configured: str | None) -> Path:
    """The Python to run vLLM's server with: questioner.vllm.python, else $STARGATE_VLLM_PYTHON, else this Python
    if it has vLLM, else the .venv-vllm that `bash install.sh --vllm` makes beside this environment. vLLM pins
    its own torch, so it usually lives in an environment of its own."""
    named = _named_executable("questioner.vllm.python", configured, VLLM_PYTHON_ENV,
                              f"install vLLM with `{VLLM_INSTALL}`")
    if named:
        return named
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    sibling = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    if sibling.is_file():
        return sibling
    raise StargateError(f"no Python with vLLM found (questioner.vllm.python, ${VLLM_PYTHON_ENV}, this Python, "
                        f"{sibling}): install it with `{VLLM_INSTALL}`, or give questioner.vllm.base_url")


def _cuda_visible() -> bool:
    """Whether vLLM's server here will run on a GPU: the machine's, as this process's torch sees it."""
    import torch

    return torch.cuda.is_available()


class VllmServer(ManagedServer):
    """vLLM's OpenAI-compatible server for the Questioner's base model: for generation, with LoRA adapters
    loadable at run time; for scoring, without LoRA (its prompt log-probs are wrong with LoRA on) and without a
    prefix cache (prompt log-probs are never read from it)."""

    kind = "vLLM server"

    def __init__(self, config: VllmConfig, model: str, dtype: str, quantize_4bit: bool, log_path: Path,
                 lora: bool = True):
        super().__init__("questioner" if lora else "questioner's scorer", log_path, config.startup_timeout)
        self.config = config
        self.python = find_vllm_python(config.python)
        self.model = model
        self.dtype = dtype
        self.quantize_4bit = quantize_4bit
        self.lora = lora
        self.kv_cache_gib = config.kv_cache_gib or (None if _cuda_visible() else CPU_KV_CACHE_GIB)

    def command(self, port: int) -> list[str]:
        args = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", VLLM_BASE_NAME, "--host", "127.0.0.1", "--port", str(port),
                "--dtype", self.dtype]
        if self.lora:
            args += ["--enable-lora", "--max-lora-rank", str(self.config.max_lora_rank)]
        else:
            args += ["--no-enable-prefix-caching"]
        if self.quantize_4bit:  # the weights training sees (questioner.load_in_4bit): bitsandbytes nf4
            args += ["--quantization", "bitsandbytes"]
        if self.kv_cache_gib and "--kv-cache-memory-bytes" not in self.config.server_args:
            args += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30))]
        return [*args, *self.config.server_args]

    def environment(self) -> dict:
        environment = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        devices = self.config.devices if self.lora else self.config.score_devices
        if devices is not None:
            environment["CUDA_VISIBLE_DEVICES"] = devices
        return environment
