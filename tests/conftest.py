"""Shared fixtures: every test gets its own project home; the converted tiny model, the data and the finished run
are made once per session, for all its test processes under `pytest -n N` (xdist).

Test tiers: plain `pytest` runs the fast tier (pyproject.toml's addopts deselect the others); `pytest -m ""` runs
every tier. A test's tiers follow from what it uses (TIERS below), so a new test that uses a finished run, starts
a server or kills a process cannot slip into the fast tier; `cli` refuses a real run from an unmarked test."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prewarmed import same_environment

from stargate_lite.runs import STOP_AT_ENV

SHARED = Path(__file__).resolve().parents[2] / "shared"
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # set in each test process of `pytest -n N` (xdist)
# llama.cpp threads for the tests' own chat models and servers: one per test process under xdist (below).
THREADS = 1 if WORKER else 2
THREAD_OVERRIDES = [f"chat_models.{name}.n_threads={THREADS}" for name in ("smollm2", "smollm2-plain", "gemma")]
# A 2-iteration run small enough for CI: 2 pairs per iteration, 2 conversations each, short generations. The tests
# check what each stage does with the texts, which a question cut at 6 tokens goes through as a whole one does;
# what these lengths take off every run test is in docs/tests.md ("Times").
TINY_CI_OVERRIDES = [
    "data.tasks={A: 2, B: 2, test: 1}",
    "data.personas={A: 1, B: 1, test: 2}",
    "data.persona_max_tokens=32",
    "data.gold_max_tokens=24",
    "simulate.conversations_per_pair=2",
    "simulate.max_turns=2",
    "simulate.question_max_tokens=6",
    "simulate.answer_max_tokens=8",
    "simulate.pairs_per_chunk=1",
    "respond.max_tokens=12",
    "train.epochs=1",
    "train.batch_size=2",
    "eval.conversations_per_pair=2",
    *(THREAD_OVERRIDES if WORKER else []),
]
# Under `pytest -n N` (xdist: one test process per core) every process computes on one thread: torch's and llama.cpp's
# default of two per process, two processes on 2 cores, spun against each other (four run-heavy modules took 919 s
# that way, 591 s in one process, 460 s with one thread each).
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"


# One conversation, request and gold response that tests of masks, scoring and training share.
TURNS = [
    {"role": "questioner", "text": "What kind of food do you enjoy most?"},
    {"role": "roleplayer", "text": "I love spicy Sichuan dishes and fresh noodles."},
    {"role": "questioner", "text": "How much time do you have to cook on weeknights?"},
    {"role": "roleplayer", "text": "About twenty minutes, since I work late shifts."},
]
TASK = "Can you suggest a weekly meal plan for me?"
GOLD = "Here is a plan of quick spicy dinners: Monday, dan dan noodles; Tuesday, mapo tofu with rice."


# tier -> (fixtures, names the test's code uses, string constants it holds) that put a test in it.
TIERS = {
    "run": ({"data_home", "finished_run", "eval_home", "preferred_run", "stopped_run", "rloo_run"},
            {"run_args", "policy_args", "RUN_ARGS", "TINY_CI_OVERRIDES"}, {"--iterations"}),
    "server": ({"binary", "llama_server"}, {"LlamaServer", "LlamaServerChat", "find_binary"}, set()),
    "vllm": ({"vllm_urls", "served", "launch"}, set(), set()),
    "processes": (set(), {"train_in_processes"}, {"processes", "train.processes=2"}),
    "kill": (set(), {"SIGKILL", "SIGINT", "SIGTERM", "wait_for"}, set()),
    "root": (set(), {"geteuid", "getuid"}, set()),
}
FAST_TIMEOUT, FULL_TIMEOUT = 180, 1800  # seconds per test, its fixtures' set-up included
STRICT = os.environ.get("STARGATE_STRICT_TESTS") == "1"  # set by .ci/run: a skip that would hide work fails
_current: list[pytest.Item] = []


def _used(code: types.CodeType) -> tuple[set[str], set[str]]:
    """Names and string constants of a function's code and of the functions defined in it."""
    names, constants = set(code.co_names), set()
    for value in code.co_consts:
        if isinstance(value, types.CodeType):
            inner_names, inner_constants = _used(value)
            names |= inner_names
            constants |= inner_constants
        elif isinstance(value, str):
            constants.add(value)
    return names, constants


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        names, constants = _used(function.__code__) if function else (set(), set())
        fixtures = set(getattr(item, "fixturenames", ()))
        for tier, (by_fixture, by_name, by_constant) in TIERS.items():
            if fixtures & by_fixture or names & by_name or constants & by_constant:
                item.add_marker(tier)
        if item.get_closest_marker("timeout") is None:
            full = any(item.get_closest_marker(tier) for tier in TIERS)
            item.add_marker(pytest.mark.timeout(FULL_TIMEOUT if full else FAST_TIMEOUT))


@pytest.fixture(autouse=True)
def _current_test(request):
    _current.append(request.node)
    yield
    _current.pop()


def skip_or_fail(reason: str) -> None:
    """Skip a test that cannot run here; under .ci/run (STARGATE_STRICT_TESTS=1) fail instead, with the reason."""
    if STRICT:
        pytest.fail(f"would skip under CI, where it must run: {reason}")
    pytest.skip(reason)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by `build(folder)` once per session. Under xdist the session's test processes share
    it (pytest's folder above each one's own): the first to ask builds it while the others wait on its lock."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if WORKER else root) / name
    built = folder.with_name(f"{name}.built")
    with FileLock(folder.with_name(f"{name}.lock")):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Converted models, one folder for the session's processes and the runs they start."""
    cache = built_once(tmp_path_factory, "model-cache", lambda folder: folder.mkdir())
    os.environ["STARGATE_MODEL_CACHE"] = str(cache)  # for the session's fixtures, set up before a test's own home
    return cache


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, model_cache) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("STARGATE_HOME", str(path))
    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(model_cache))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return path


@pytest.fixture(scope="session")
def questioner(model_cache):
    """The real tiny Questioner (SmolLM2-135M-Instruct), loaded once."""
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.recipe import load_recipe

    return Questioner(load_recipe("tiny").questioner, model_cache)


@pytest.fixture(scope="session")
def base_model(questioner):
    return questioner.load_base()


@pytest.fixture(scope="session")
def binary() -> None:
    """install.sh --test builds llama-server; without it the tests that use it fail and say how to get it."""
    from stargate_lite.engines.servers import find_binary
    from stargate_lite.errors import StargateError

    try:
        find_binary(None)
    except StargateError as err:
        pytest.fail(f"{err} (the tests need it)")


class QuietHandler(BaseHTTPRequestHandler):
    """The request handler of a fake HTTP server at a test's boundary (an endpoint, vLLM, the Hub): no log lines,
    and `send` writes one response."""

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes | dict | list, headers: dict | None = None) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A fake server on a free local port, answering from a thread of its own; returns it and its root URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def cli(*args: str, home: Path, check: bool = True, stop_at: str | None = None, sigint_ignored: bool = False,
        stdin: str = "", warm: bool = True, columns: int = 250, refused: bool = False) -> subprocess.CompletedProcess:
    """The real command in a process of its own, as a user runs it: forked from this test process's warm
    interpreter (tests/prewarmed.py), or a fresh `python -m stargate_lite` where the environment differs from the
    warm one's in what an import may read. `stop_at` names a point where it stops itself (runs.stop_point: SIGKILL,
    or SIGINT with "POINT=INT"). `sigint_ignored` starts it with SIGINT ignored, as a background job of a script is:
    Python then installs no Ctrl-C handler of its own. `stdin` is what it reads (nothing by default). `warm=False`
    starts a fresh one whatever the environment (test_prewarmed.py compares the two). `columns`: the width Rich
    draws to (its output is a pipe, not a terminal): 250 keeps a table's row on one line, 80 is a terminal's.
    `refused`: the test expects the command refused before any work (exit 2), so a `run` of it does no run and may
    be in any tier; a refused command that exits otherwise fails the test."""
    if args[:1] == ("run",) and "--dry-run" not in args and not refused and _current:
        assert _current[-1].get_closest_marker("run"), "a test that makes a real run belongs to the run tier: " \
            "use run_args() or add what it uses to TIERS in conftest.py"
    env = {**os.environ, "STARGATE_HOME": str(home), "COLUMNS": str(columns)}
    if stop_at:
        env[STOP_AT_ENV] = stop_at
    if warm and WARM.usable(env):
        result = WARM.run(list(args), env, sigint_ignored, stdin)
    else:
        result = subprocess.run([sys.executable, "-m", "stargate_lite", *args], env=env, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT, check=False, input=stdin,
                                preexec_fn=_ignore_sigint if sigint_ignored else None)
    if refused and result.returncode != 2:
        raise AssertionError(f"stargate-lite {' '.join(args)} was not refused (exit {result.returncode}):\n"
                             f"{result.stderr[-3000:]}")
    if check and not refused and result.returncode != 0:
        raise AssertionError(f"stargate-lite {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


COMMAND_TIMEOUT = 900  # seconds; a test's own timeout (FULL_TIMEOUT) is longer


class Warm:
    """This test process's warm interpreter (tests/prewarmed.py), started at its first command from the environment
    this file was imported with, before any test changed it. A command whose environment differs from that in what
    an import may read runs the cold way; so does every command where the warm interpreter holds more than one
    thread after its imports (a fork would copy locks that the other threads hold: torch's and OpenBLAS's pools
    without OMP_NUM_THREADS=1, as under `pytest -n 0`)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: subprocess.Popen | None = None
        self.threads = 0  # after the imports; 0 before the first start
        self.lock = threading.Lock()

    def usable(self, env: dict[str, str]) -> bool:
        if not same_environment(env, self.env):
            return False
        with self.lock:
            if self.threads in (0, 1) and (self.process is None or self.process.poll() is not None):
                self.process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("prewarmed.py"))], env=self.env,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    bufsize=0)  # unbuffered: select() sees every reply not yet read
                self.threads = self._reply(COMMAND_TIMEOUT)["threads"]
                if self.threads != 1:
                    self._end(None)
            return self.threads == 1

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        assert line, "the warm interpreter ended"
        return json.loads(line)

    def _end(self, pid: int | None) -> None:
        """Kill the command `pid` (if it started) and the warm interpreter: the next command starts a new one."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()

    def run(self, args: list[str], env: dict[str, str], sigint_ignored: bool, stdin: str = "",
            timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        out = Path(tempfile.mkdtemp(prefix="command-"))
        (out / "stdin").write_text(stdin)
        request = json.dumps({"argv": args, "env": env, "cwd": os.getcwd(), "stdin": str(out / "stdin"),
                              "stdout": str(out / "stdout"), "stderr": str(out / "stderr"),
                              "sigint_ignored": sigint_ignored}).encode() + b"\n"
        pid = None
        try:
            with self.lock:
                try:
                    assert self.process.stdin.write(request) == len(request)
                    pid = self._reply(timeout)["pid"]
                    returncode = self._reply(timeout)["returncode"]
                except BaseException as err:  # a timeout, the test's own (pytest-timeout), a Ctrl-C: replies unread
                    self._end(pid)
                    if isinstance(err, TimeoutError):
                        raise subprocess.TimeoutExpired(["stargate-lite", *args], timeout) from None
                    raise
            return subprocess.CompletedProcess(["stargate-lite", *args], returncode,
                                               (out / "stdout").read_text(), (out / "stderr").read_text())
        finally:
            shutil.rmtree(out)


# This test process's warm interpreter, which `cli` forks commands from (benchmarks/warm_commands.py times it).
WARM = Warm(dict(os.environ))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (in a container nobody may reap a killed orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pids: list[int], timeout: float = 30) -> bool:
    """True once none of `pids` is alive, False if one still is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def descendants(root: int) -> dict[int, list[str]]:
    """Live processes under `root` (its children, theirs, ...), each with its command line."""
    children: dict[int, list[int]] = {}
    argv: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            argv[pid] = (stat.parent / "cmdline").read_text().rstrip("\0").split("\0")
        except (OSError, ValueError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = argv[child]
            todo.append(child)
    return found


def running(root: int, program: str) -> list[int]:
    """Processes under `root` running `program`: an executable's file name, or a Python module run with -m."""
    def runs(argv: list[str]) -> bool:
        if argv[1:2] == ["-c"]:  # a supervisor (stargate_lite/engines/processes.py) naming the program it runs
            return False
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
        return Path(argv[0]).name == program or module == program

    return [pid for pid, argv in descendants(root).items() if runs(argv)]


def wait_for(home: Path, sql: str, process: subprocess.Popen, timeout: float = 600) -> bool:
    """True once the SQL condition holds in the home's store; False if the process finished first (a kill point
    of the resume tests)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        try:
            with sqlite3.connect(home / "stargate.db", timeout=1) as db:
                if db.execute(sql).fetchone()[0]:
                    return True
        except sqlite3.OperationalError:
            pass  # the store or its tables are not created yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {sql}")


def run_args(*overrides: str, iterations: int = 2) -> list[str]:
    """`run` of the tests' tiny scale, with the recipe's `overrides` on top."""
    settings = [*TINY_CI_OVERRIDES, *overrides]
    return ["run", "--iterations", str(iterations), *[a for o in settings for a in ("--set", o)]]


@pytest.fixture(scope="session")
def data_home(tmp_path_factory, model_cache) -> Path:
    """A home holding the tests' data set and no run: the tasks, personas and golds that the tiny recipe's oracle
    writes under TINY_CI_OVERRIDES, made once by the data stage's own function. A run test whose subject is not the
    data stage starts from a copy (`with_data`) instead of writing the same rows again (about 12 s of a 49 s run on
    2 cores). The finished run starts from it too, so the tests that compare a run from nothing with the finished
    one (test_loop's resume, test_unchanged_defaults) also check that these are the rows a run writes."""
    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.progress import Progress
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.data import prepare_data
    from stargate_lite.store import Store

    def build(folder: Path) -> None:
        recipe = load_recipe("tiny", TINY_CI_OVERRIDES)
        with ChatModels(recipe.chat_models, folder / "home") as chat, Progress(enabled=False) as progress:
            prepare_data(Store(folder / "home"), recipe, lambda: chat.get(recipe.roles.oracle), progress)

    return built_once(tmp_path_factory, "data", build) / "home"


@pytest.fixture
def with_data(data_home, home) -> Path:
    """This test's home, starting as a copy of `data_home`."""
    return copy_home(data_home, home)


@pytest.fixture(scope="session")
def finished_run(data_home, tmp_path_factory, model_cache) -> Path:
    """The home of one uninterrupted tiny run of two iterations, made once; tests get copies (`finished`)."""
    def build(folder: Path) -> None:
        cli(*run_args(), home=copy_home(data_home, folder / "home"))

    return built_once(tmp_path_factory, "finished", build) / "home"


def copy_home(home: Path, to: Path) -> Path:
    """A copy of a home; its store through SQLite's backup, whole and consistent. Copying the store's files would
    race with the last reader of the original closing, which deletes its -wal and -shm files mid-copy (seen once
    in CI: shutil.Error, no such file)."""
    store = home / "stargate.db"
    shutil.copytree(home, to, ignore=lambda folder, names: [n for n in names if Path(folder) == home
                                                            and n.startswith("stargate.db")])
    if store.exists():
        source, copy = sqlite3.connect(store), sqlite3.connect(to / "stargate.db")
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
    return to


@pytest.fixture
def finished(finished_run, tmp_path) -> Path:
    """A copy of the finished run's home, this test's own: what one test writes no other test reads."""
    return copy_home(finished_run, tmp_path / "finished")


def tensorboard_points(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a folder's TensorBoard event files, {tag: [(step, value)]} in the order written: read
    record by record (not through TensorBoard's accumulator, which hides a repeated step)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    points: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else \
                    float(tensor_util.make_ndarray(value.tensor))
                points.setdefault(value.tag, []).append((event.step, number))
    return points


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows (each wandb.log call) of every offline W&B run under a run's folder, in the order written.
    The .wandb file is a LevelDB-style log of Record protobufs in 32 KiB blocks after a 7-byte header; wandb no
    longer ships a Python reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, position, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B", f"{path} is not a W&B log"
        while position + 7 <= len(data):
            if 32768 - position % 32768 < 7:  # a block's tail too short for a record header is padding
                position += 32768 - position % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[position:position + 7])
            pending += data[position + 7:position + 7 + length]
            position += 7 + length
            if kind in (1, 4) and pending:  # a whole record, or a split one's last piece
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in record.history.item})
    return rows


# Homes and their files for the tests of refused commands (test_chat_export.py, test_bad_inputs.py).
def files(folder: Path) -> dict[str, str]:
    """Every file under a folder, by its path, with its content's hash: what a refused command must leave as is."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_home(home: Path) -> Path:
    """A home holding a run's record and no trained iteration: no model is made or loaded."""
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run
    from stargate_lite.store import Store

    open_run(Store(home), load_recipe("tiny"))
    return home


def trained_home(home, questioner) -> str:
    """A home whose run `tiny` has one trained iteration, made without running the loop: a fresh LoRA of the tiny
    model saved where training saves it, and its training record. Returns the adapter's folder."""
    from stargate_lite.engines.training import attach_lora, save_adapter
    from stargate_lite.recipe import load_recipe
    from stargate_lite.runs import open_run, run_dir
    from stargate_lite.store import Store

    recipe, store = load_recipe("tiny"), Store(home)
    run_id = open_run(store, recipe)
    store.start_iteration(run_id, 1, "A")
    adapter = run_dir(store, run_id) / "iteration-1" / "adapter"
    save_adapter(attach_lora(questioner.load_base(), recipe.train, seed=0), adapter)
    store.finish_training({"run_id": run_id, "iteration": 1, "adapter": str(adapter), "examples": 0,
                           "trained_tokens": 0, "steps": 0, "final_loss": 0.0, "losses": [], "seconds": 0.0,
                           "format": recipe.train.format})
    return str(adapter)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints: exit 2, "Error: ..." alone on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: "), line
    return line


class NumberedQuestioner:
    """A Questioner at the boundary: its turns are numbered questions; asked for its response, one plan."""

    def __init__(self, respond_tokens: int):
        self.respond_tokens, self.questions = respond_tokens, 0

    def stream(self, model, messages, max_new_tokens, **sampling):
        if max_new_tokens == self.respond_tokens:
            return iter(["Here is a plan."])
        self.questions += 1
        return iter([f"Question {self.questions}?"])
