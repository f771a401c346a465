"""The managed llama-server backend, for real: llama.cpp's own server (built by install.sh) with the tiny model.

It answers many conversations at once, stops with the command, dies with stargate-lite even under SIGKILL, and a
server that cannot start or dies mid-run is a one-line error after which a rerun continues."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import THREADS, TINY_CI_OVERRIDES, alive, cli, running

from stargate_lite.engines.chat_models import ChatModels, LlamaServerChat, Sampling, complete_all
from stargate_lite.errors import StargateError
from stargate_lite.prompts import roleplayer_messages
from stargate_lite.recipe import ChatModelConfig

SERVED = ChatModelConfig(backend="llama-server", model="builtin:smollm2-135m-instruct", n_ctx=1024,
                         n_threads=THREADS, repeat_penalty=1.15, max_retries=1)
PERSONA = "I'm Dana, 41, a night-shift nurse with two teenagers; vegetarian, training for a half marathon."
TASKS = ("Can you help me plan my week?", "What should I cook for dinner?", "How can I sleep better?",
         "Help me pick a gift for a friend.")
QUESTIONS = ("What do you do for a living?", "What matters most to you here?")
CONVERSATIONS = [roleplayer_messages(PERSONA, t, [{"role": "questioner", "text": q}]) for t in TASKS for q in QUESTIONS]
pytestmark = pytest.mark.usefixtures("binary")


def test_a_managed_server_answers_logs_and_stops(tmp_path):
    with ChatModels({"served": SERVED.model_copy(update={"slots": 4})}, tmp_path, tmp_path / "logs") as chat:
        model = chat.get("served")
        assert isinstance(model, LlamaServerChat) and model.server.alive()
        process = model.server.process
        texts = complete_all(model, CONVERSATIONS, Sampling(24))
        assert len(texts) == len(CONVERSATIONS) and all(texts)
        (verdict,) = model.choice_logprobs([[{"role": "user", "content": "Reply with one letter: A or B."}]],
                                           ("A", "B"))
        assert verdict["A"] is not None and verdict["B"] is not None and verdict["A"] <= 0
    assert process.poll() is not None  # stopped on leaving the block
    log = (tmp_path / "logs" / "llama-server-served.log").read_text()
    assert "--parallel 4" in log and "--ctx-size 4096" in log and "print_timing" in log


def _first_token_logprobs(chat, n: int) -> list[dict[str, float]]:
    """The first reply token's top log-probabilities for every conversation, all requested at once."""
    from concurrent.futures import ThreadPoolExecutor

    model = chat.get("served")

    def one(messages):
        response = model.client.chat.completions.create(
            model="m", messages=messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5,
            extra_body=model._extra_body())
        return {t.token: t.logprob for t in response.choices[0].logprobs.content[0].top_logprobs}

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, CONVERSATIONS))


def _distance(a: dict[str, float], b: dict[str, float]) -> float:
    shared = set(a) & set(b)
    return max(abs(a[t] - b[t]) for t in shared) if len(shared) >= 2 else math.inf


def test_many_slots_read_each_conversation_as_one_slot_does(tmp_path):
    """Greedy answers are not bit-for-bit those of one slot (llama.cpp's batched kernels and prompt cache round
    differently: README, "Managed llama-server"), so this asserts what must hold when 4 conversations are decoded
    together: each one's next-token log-probabilities are within 0.5 nats of the 1-slot ones of the same
    conversation (measured: up to 0.26), and nearer to them than to those of any conversation that one slot tells
    apart from it (more than 0.75 apart; these prompts fall in two groups about 0.9 apart). A slot that read
    another conversation's cache would fail the second."""
    by_slots = {}
    for slots in (1, 4):
        with ChatModels({"served": SERVED.model_copy(update={"slots": slots})}, tmp_path) as chat:
            by_slots[slots] = _first_token_logprobs(chat, slots)
    alone, together = by_slots[1], by_slots[4]
    checked = 0
    for i, mine in enumerate(together):
        own = _distance(alone[i], mine)
        assert own < 0.5
        for other in (o for j, o in enumerate(alone) if j != i and _distance(o, alone[i]) > 0.75):
            assert own < _distance(other, mine)
            checked += 1
    assert checked >= len(CONVERSATIONS)


def test_a_server_that_cannot_start_is_a_one_line_error_with_its_log(tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with ChatModels({"served": SERVED.model_copy(update={"model": str(bogus)})}, tmp_path) as chat, \
            pytest.raises(StargateError) as err:
        chat.get("served")
    message = str(err.value)
    assert "\n" not in message and "llama-server did not start (exit code 1)" in message
    assert "llama-server-served.log" in message and "model" in message.lower()


def test_a_missing_binary_fails_before_any_work(home, monkeypatch):
    monkeypatch.setenv("STARGATE_LLAMA_SERVER", "/nonexistent/llama-server")
    result = cli("run", "--iterations", "1", "--set", "chat_models.smollm2.backend=llama-server", home=home,
                 check=False)
    assert result.returncode == 2
    assert "bash install.sh --llama-server" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (home / "stargate.db").exists()


RUN_ARGS = ["run", "--iterations", "1", *[a for o in TINY_CI_OVERRIDES for a in ("--set", o)],
            "--set", "chat_models.served={backend: llama-server, model: 'builtin:smollm2-135m-instruct', "
            f"n_ctx: 1024, n_threads: {THREADS}, repeat_penalty: 1.15, slots: 2, max_retries: 1}}",
            "--set", "roles.roleplayer=served"]


def _answered(log: Path) -> int:
    return log.read_text().count("total time =") if log.exists() else 0


def _start_run(home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stargate_lite", *RUN_ARGS],
                            env={**os.environ, "STARGATE_HOME": str(home), "COLUMNS": "250"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_answers(run: subprocess.Popen, log: Path, after: int) -> int:
    """Wait until the server has answered more requests than `after`; returns the server's pid."""
    deadline = time.time() + 600
    while time.time() < deadline:
        assert run.poll() is None, f"the run ended early: {run.stderr.read()[-2000:]}"
        answered = _answered(log)
        servers = running(run.pid, "llama-server")
        if answered > after and servers:
            return servers[0]
        time.sleep(0.2)
    raise AssertionError("the server answered nothing in 10 minutes")


def test_a_server_death_and_a_sigkill_lose_nothing_and_leave_no_server(with_data):
    home = with_data
    log = home / "runs" / "tiny" / "llama-server-served.log"
    # The server dies mid-simulation: a one-line error naming it, what was finished is kept.
    run = _start_run(home)
    os.kill(_wait_for_answers(run, log, 0), signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr[-2000:]
    (line,) = [s for s in stderr.splitlines() if s.startswith("Error:")]
    assert "llama-server exited mid-run (exit code -9)" in line and str(log) in line

    # stargate-lite itself is SIGKILLed mid-simulation: its server goes with it.
    run = _start_run(home)
    server = _wait_for_answers(run, log, _answered(log))
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    deadline = time.time() + 30  # the supervisor's grace period (10 s) and a margin
    while alive(server) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(server), "the llama-server outlived the stargate-lite that started it"

    # A rerun finishes the iteration without redoing or duplicating anything.
    with sqlite3.connect(home / "stargate.db") as db:
        kept = {r[0] for r in db.execute("select id from conversations")}
    cli(*RUN_ARGS, home=home)
    with sqlite3.connect(home / "stargate.db") as db:
        ids = [r[0] for r in db.execute("select id from conversations where iteration = 1")]
        assert len(ids) == len(set(ids)) == 2 * 2 and kept <= set(ids)
        assert db.execute("select count(*) from failures").fetchone()[0] == 0
        assert db.execute("select finished_at is not null from iterations where iteration = 1").fetchone()[0]


def test_dry_run_measures_the_server_with_its_slots_full(home, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = cli("run", "--dry-run", *RUN_ARGS[3:], "--set", "chat_models.served.slots=4", home=home)
    (row,) = [line for line in result.stdout.splitlines() if "simulate: roleplayer answers" in line]
    assert "served" in row and "not measured" not in row
    assert "a chunk holds 2 conversations, fewer than the Roleplayer's 4 slots" in result.stdout
    assert not (home / "stargate.db").exists() and not (home / "logs").exists()  # nothing stored or left behind
