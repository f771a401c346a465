"""OpenAI-compatible endpoints, for real: llama.cpp's own server, and a local HTTP server that injects faults
(errors, 429 with Retry-After, malformed bodies, timeouts, refused connections). No mock of our own code."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import deque

import pytest
from conftest import THREADS, TINY_CI_OVERRIDES, QuietHandler, cli, serve

from stargate_lite.engines.chat_models import ChatFailure, OpenAIChat, Sampling, preflight
from stargate_lite.engines.models import builtin_gguf
from stargate_lite.errors import StargateError
from stargate_lite.progress import Progress
from stargate_lite.recipe import ChatModelConfig, load_recipe
from stargate_lite.runs import open_run
from stargate_lite.stages.data import builtin_task_splits, prepare_data
from stargate_lite.store import Store

HELLO = [{"role": "user", "content": "Say hello."}]


class FaultServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that misbehaves on request."""

    def __init__(self):
        self.plan: deque[str] = deque()  # faults for the next requests, in order
        self.fail_if: str | bool | None = None  # a permanent 500 for prompts containing this text (True: all)
        self.requests = 0
        self.auth: list[str] = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                self.send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model",
                                                                          "created": 0, "owned_by": "t"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                server.auth.append(self.headers.get("Authorization", ""))
                prompt = body["messages"][-1]["content"]
                fault = server.plan.popleft() if server.plan else None
                if fault is None and (server.fail_if is True or (server.fail_if and server.fail_if in prompt)):
                    fault = "500"
                error = json.dumps({"error": {"message": f"injected {fault}", "type": "x"}}).encode()
                if fault == "500":
                    return self.send(500, error)
                if fault == "429":
                    return self.send(429, error, {"Retry-After": "1"})
                if fault == "400":
                    return self.send(400, error)
                if fault == "401":
                    return self.send(401, error)
                if fault == "filtered":  # a content filter: no content, the finish reason says why
                    return self.send(200, json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                            {"index": 0, "finish_reason": "content_filter",
                             "message": {"role": "assistant", "content": None}}]}).encode())
                if fault == "malformed":
                    return self.send(200, b"{this is not json")
                if fault == "empty-choices":
                    return self.send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": "m", "choices": []}).encode())
                if fault == "timeout":
                    time.sleep(1.5)
                reply = f"Reply to: {prompt[:40]}"
                choice = {"index": 0, "finish_reason": "length" if fault == "cut" else "stop",
                          "message": {"role": "assistant", "content": reply}}
                if body.get("logprobs") and fault != "no-logprobs":  # a judge's first token: " B" likelier than "A"
                    listed = [("B", -0.4), (" B", -2.0), ("A", -1.6), ("The", -3.5)]
                    choice["logprobs"] = {"content": [{"token": "B", "logprob": -0.4, "bytes": None, "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": None} for t, lp in listed]}]}
                self.send(200, json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode())

        self.httpd, root = serve(Handler)
        self.url = f"{root}/v1"


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.httpd.shutdown()


def config(url: str, **kw) -> ChatModelConfig:
    return ChatModelConfig(**{"backend": "openai", "model": "m", "base_url": url, "max_retries": 4,
                              "retry_base_seconds": 0.05, "request_timeout": 0.5, **kw})


def test_every_passing_fault_is_retried(server):
    server.plan.extend(["500", "429", "malformed", "timeout", "empty-choices"])
    chat = OpenAIChat("fault", config(server.url, max_retries=5))
    started = time.time()
    (text,) = chat.complete_each([HELLO], Sampling(16))
    assert text == "Reply to: Say hello."
    assert server.requests == 6
    assert time.time() - started >= 1.0  # the 429's Retry-After: 1 was honoured


def test_letter_logprobs_from_an_endpoint(server):
    """The top log-probs of the first reply token, each letter's spellings summed; an endpoint that returns none
    is a failure that says so."""
    import math

    chat = OpenAIChat("fault", config(server.url, max_retries=1))
    (result,) = chat.choice_logprobs([HELLO], ("A", "B"))
    assert result["A"] == pytest.approx(-1.6) and result["floor"] == -3.5
    assert result["B"] == pytest.approx(math.log(math.exp(-0.4) + math.exp(-2.0)))
    server.plan.append("no-logprobs")
    before = server.requests
    (failure,) = chat.choice_logprobs([HELLO], ("A", "B"))
    assert isinstance(failure, ChatFailure) and "does not return them" in str(failure)
    assert server.requests == before + 1  # retrying cannot change that answer: asked once


def test_a_client_error_fails_at_once_and_retries_stop_at_the_limit(server):
    chat = OpenAIChat("fault", config(server.url))
    server.plan.append("400")
    (failure,) = chat.complete_each([HELLO], Sampling(16))
    assert isinstance(failure, ChatFailure) and "HTTP 400" in str(failure) and server.requests == 1
    server.plan.extend(["500"] * 10)
    (failure,) = chat.complete_each([HELLO], Sampling(16))
    assert isinstance(failure, ChatFailure) and "after 5 attempts" in str(failure) and server.requests == 6


def test_an_item_the_endpoint_declines_for_good_is_a_refusal_and_a_set_up_error_is_not(server):
    """A filter's 400 and an empty reply with finish reason content_filter refuse the item (the judge stage stores
    them as refused instead of asking again on every rerun); a 401 is the caller's key to fix."""
    chat = OpenAIChat("fault", config(server.url))
    server.plan.extend(["400", "filtered", "401"])
    results = chat.complete_each([HELLO], Sampling(16)) + chat.complete_each([HELLO], Sampling(16)) + \
        chat.complete_each([HELLO], Sampling(16))
    assert all(isinstance(r, ChatFailure) for r in results) and server.requests == 3  # none retried
    assert [r.refused for r in results] == [True, True, False]
    assert "content_filter" in str(results[1]) and "HTTP 401" in str(results[2])


def test_a_reply_cut_by_its_token_budget_says_so(server):
    chat = OpenAIChat("fault", config(server.url))
    server.plan.append("cut")
    cut, whole = chat.complete_each([HELLO], Sampling(4)) + chat.complete_each([HELLO], Sampling(16))
    assert cut == whole == "Reply to: Say hello." and (cut.truncated, whole.truncated) == (True, False)


def test_a_refused_connection_is_retried_then_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chat = OpenAIChat("down", config(f"http://127.0.0.1:{port}/v1", max_retries=2))
    (failure,) = chat.complete_each([HELLO], Sampling(16))
    assert isinstance(failure, ChatFailure) and "APIConnectionError" in str(failure) and "3 attempts" in str(failure)
    with pytest.raises(StargateError, match="cannot reach"):
        preflight({"down": chat.config}, {"down"})


def _oracle_recipe(url: str):
    return load_recipe("tiny", [
        f"chat_models.remote={{backend: openai, model: m, base_url: '{url}', max_retries: 1, "
        "retry_base_seconds: 0, api_key_env: STARGATE_TEST_KEY}",
        "roles.oracle=remote",
        "data.tasks={A: 2, B: 1, test: 1}",
        "data.personas={A: 1, B: 1, test: 1}",
    ])


def test_failed_gold_responses_are_recorded_and_only_they_are_retried(server, home):
    recipe = _oracle_recipe(server.url)
    store = Store(home)
    server.fail_if = builtin_task_splits()["A"][0]  # the first A task fails for good; all else goes through
    oracle = OpenAIChat("remote", recipe.chat_models["remote"])
    with pytest.raises(StargateError, match="1 gold responses failed .*HTTP 500.*retry only those"):
        prepare_data(store, recipe, lambda: oracle, Progress(enabled=False))
    assert store.value("select count(*) from golds") == 3 and store.value("select count(*) from personas") == 3
    (failure,) = store.rows("select * from failures")
    assert failure["stage"] == "golds" and "HTTP 500" in failure["reason"]

    server.fail_if, server.requests = None, 0
    prepare_data(store, recipe, lambda: oracle, Progress(enabled=False))
    assert server.requests == 1  # only the failed item was asked again
    assert store.value("select count(*) from golds") == 4 and store.value("select count(*) from failures") == 0


def test_api_keys_are_used_but_never_stored(server, home, monkeypatch):
    secret = "sk-test-NEVER-STORE-4242"
    monkeypatch.setenv("STARGATE_TEST_KEY", secret)
    recipe = _oracle_recipe(server.url)
    store = Store(home)
    open_run(store, recipe)
    prepare_data(store, recipe, lambda: OpenAIChat("remote", recipe.chat_models["remote"]), Progress(enabled=False))
    assert server.auth and all(a == f"Bearer {secret}" for a in server.auth)
    store.db.execute("pragma wal_checkpoint(full)")
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the key reached {path}"


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's OpenAI-compatible server with the tiny model, on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(builtin_gguf("smollm2-135m-instruct")),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            break
        except OSError:
            assert process.poll() is None, "llama_cpp.server exited"
            time.sleep(0.3)
    else:
        process.kill()
        raise AssertionError("llama_cpp.server did not start")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_openai_backend_against_llama_cpp_server(llama_server):
    cfg = ChatModelConfig(backend="openai", model="smollm2", base_url=llama_server, max_concurrency=2)
    preflight({"local": cfg}, {"local"})
    chat = OpenAIChat("local", cfg)
    conversations = [[{"role": "user", "content": f"Name a fruit that starts with {c}."}] for c in "ABP"]
    texts = chat.complete_each(conversations, Sampling(24))
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)


def test_a_roleplayer_outage_fails_its_chunks_and_a_rerun_redoes_only_them(server, with_data):
    home = with_data
    args = ["run", "--iterations", "1", *[a for o in TINY_CI_OVERRIDES for a in ("--set", o)],
            "--set", f"chat_models.remote={{backend: openai, model: m, base_url: '{server.url}', max_retries: 0}}",
            "--set", "roles.roleplayer=remote"]
    server.fail_if = True  # every roleplayer request fails
    result = cli(*args, home=home, check=False)
    assert result.returncode == 2 and "2 chunks of conversations failed" in result.stderr
    with sqlite3.connect(home / "stargate.db") as db:
        assert db.execute("select count(*) from failures where stage = 'simulate/1'").fetchone()[0] == 2
        assert db.execute("select count(*) from conversations").fetchone()[0] == 0
        golds = db.execute("select count(*) from golds").fetchone()[0]
    server.fail_if = None
    cli(*args, home=home)
    with sqlite3.connect(home / "stargate.db") as db:
        assert db.execute("select count(*) from failures").fetchone()[0] == 0
        assert db.execute("select count(*) from conversations").fetchone()[0] == 4
        assert db.execute("select count(*) from golds").fetchone()[0] == golds  # nothing before it was redone


def test_the_in_process_model_reads_only_where_a_prompt_differs_and_answers_bit_for_bit_as_after_a_reset():
    """Why prefix reuse is on by default on the CPU: the same logits and sampled answers as a prompt read whole."""
    from stargate_lite.engines.chat_models import LlamaCppChat
    from stargate_lite.prompts import roleplayer_messages

    persona = "I'm ANA. I am a retired nurse who grows vegetables and cooks for my grandchildren on weekends."
    task = "Can you suggest a weekly meal plan for me?"
    first = [{"role": "questioner", "text": question} for question in
             ("Do you have any dietary restrictions?", "How many people do you cook for?", "What do you grow?")]
    later = [[turn, {"role": "roleplayer", "text": "Nothing much, I eat everything."},
              {"role": "questioner", "text": "Which meals do you cook most often?"}] for turn in first]
    prompts = [roleplayer_messages(persona, task, turns) for turns in ([t] for t in first)]
    prompts += [roleplayer_messages(persona, task, turns) for turns in later]
    settings = {"backend": "llamacpp", "model": "builtin:smollm2-135m-instruct", "n_ctx": 1024, "n_threads": THREADS,
                "repeat_penalty": 1.15}
    keeping = LlamaCppChat("keeping", ChatModelConfig(**settings))
    whole = LlamaCppChat("whole", ChatModelConfig(**settings, prompt_cache=False))
    assert keeping.keeps_prompt and not whole.keeps_prompt
    assert keeping.llm.context_params.n_threads_batch == THREADS  # prompts are read on n_threads too, not every core
    read = {id(keeping): 0, id(whole): 0}
    for chat in (keeping, whole):
        def counting_eval(tokens, chat=chat, eval=chat.llm.eval):
            read[id(chat)] += len(tokens)
            return eval(tokens)
        chat.llm.eval = counting_eval

    sampling = Sampling(24, temperature=1.0, seed=3)
    answers = keeping.complete_each(prompts, sampling)
    assert read[id(keeping)] > 0
    alone = [whole.complete_each([prompt], sampling)[0] for prompt in reversed(prompts)][::-1]
    assert answers == alone and all(answers)
    assert read[id(keeping)] < 0.6 * read[id(whole)], read  # the persona's system text was read once, not six times
    assert keeping.choice_logprobs(prompts, ("A", "B")) == whole.choice_logprobs(prompts, ("A", "B"))  # exact floats
