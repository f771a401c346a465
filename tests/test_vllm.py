"""The Questioner on a real vLLM server (vLLM's CPU build, installed by `bash install.sh --vllm` in .venv-vllm),
serving the tiny model with LoRA adapters loaded at run time.

One server serves the whole session (given to stargate-lite as questioner.vllm.base_url); the last test has
stargate-lite start and stop its own, kills it mid-stage and kills stargate-lite itself."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import GOLD, TASK, TINY_CI_OVERRIDES, TURNS, cli, descendants, gone, run_args, wait_for

from stargate_lite.engines.encoded import PLAIN_SAMPLING, Encoded
from stargate_lite.engines.questioner import Questioner
from stargate_lite.engines.servers import VllmServer, find_vllm_python
from stargate_lite.errors import StargateError
from stargate_lite.prompts import questioner_messages
from stargate_lite.recipe import VllmConfig, load_recipe
from stargate_lite.runs import STOP_AT_ENV
from stargate_lite.stages.score import encode_gold, score_sums, token_logprobs
from stargate_lite.store import Store

# On a CPU each managed server reserves an explicit KV cache (questioner.vllm.kv_cache_gib, 1 GiB: ~22,000 tokens
# of the tiny model in float32), so how many servers run at once, in whatever order the tests come, is no matter.
# -O0: no torch.compile. Its warm-up, done again for every model path (the tests' models live in a new temporary
# folder each session), took 67 s of a scoring server's start against 20.5 s without, on 2 cores; the tests
# check what stargate-lite asks of vLLM, not vLLM's compiled kernels.
# --max-num-batched-tokens: vLLM's CPU build (0.32) fails a seeded request whose prompt its scheduler splits across
# steps ("CPU Generator does not use offset", gpu_model_runner's _bookkeeping_sync), which its default budget of
# 2,048 tokens does with 20 prompts of 105 tokens; 8,192 holds the engine's 64 requests in flight whole.
# --distributed-executor-backend uni: the model runs in the engine's process, not in a third process that imports
# vLLM again (a server's start, alone on 2 cores: 30.8 s against 60.9). vLLM's CPU platform turns uni back into
# its process-per-worker backend unless VLLM_ENABLE_V1_MULTIPROCESSING is 0, which the API server does not read
# otherwise (its engine still runs in a process of its own).
SERVER_ARGS = ["--max-model-len", "2048", "-O0", "--max-num-batched-tokens", "8192",
               "--distributed-executor-backend", "uni"]
SERVER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
TOLERANCE = 1e-3  # per token, between vLLM and transformers in float32 (measured: 3.4e-5 at most)


# Some models ship a generation config that samples otherwise, and vLLM applies it to whatever a request leaves
# unset. The session's servers serve the tiny model with such a config, so every test sees that our requests
# leave nothing to it.
GENERATION_CONFIG = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3}


@pytest.fixture(scope="session")
def configured_model(questioner, tmp_path_factory) -> Path:
    """The tiny model's files, its generation config setting GENERATION_CONFIG."""
    folder = tmp_path_factory.mktemp("configured-model")
    for file in Path(questioner.source).iterdir():
        if file.name != "generation_config.json":
            (folder / file.name).symlink_to(file.resolve())
    config = json.loads((Path(questioner.source) / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **GENERATION_CONFIG}))
    return folder


@pytest.fixture(scope="session")
def vllm_urls(configured_model, tmp_path_factory):
    """The session's two vLLM servers, for generation (LoRA) and scoring; the tests fail, saying how to install
    vLLM, where it is missing."""
    try:
        find_vllm_python(None)
    except StargateError as err:
        pytest.fail(f"{err} (the tests need it)")
    logs = tmp_path_factory.mktemp("vllm")
    servers = [VllmServer(VllmConfig(server_args=SERVER_ARGS), str(configured_model), "float32", False,
                          logs / f"{role}.log", lora=role == "generation") for role in ("generation", "scoring")]
    try:
        with mock.patch.dict(os.environ, SERVER_ENV), ThreadPoolExecutor(len(servers)) as starting:  # side by side: a start is mostly one process's imports
            urls = list(starting.map(lambda server: server.start(), servers))
        yield urls
    finally:
        for server in servers:
            server.stop()


def _engine_settings(urls: list[str]) -> list[str]:
    return ["questioner.engine=vllm", f"questioner.vllm.base_url={urls[0]}",
            f"questioner.vllm.score_base_url={urls[1]}"]


@pytest.fixture
def served(vllm_urls, model_cache):
    """A Questioner whose engine is the session's vLLM servers."""
    return Questioner(load_recipe("tiny", _engine_settings(vllm_urls)).questioner, model_cache)


@pytest.fixture
def launch():
    """Start `stargate-lite ARGS` in STARGATE_HOME=home; whatever a test leaves running is killed at its end."""
    started = []

    def start(args: list[str], home, stderr=subprocess.DEVNULL, stop_at: str = "") -> subprocess.Popen:
        run = subprocess.Popen([sys.executable, "-m", "stargate_lite", *args],
                               env={**os.environ, **SERVER_ENV, "STARGATE_HOME": str(home), STOP_AT_ENV: stop_at},
                               stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.poll() is None:
            run.kill()
            run.wait()


# Three pairs in iteration 1, one chunk each: the first for a kill of stargate-lite, the second kept before its
# server dies, the third a recorded failure.
MANAGED = ["run", "--iterations", "1",
           *[a for o in TINY_CI_OVERRIDES for a in ("--set", o.replace("tasks={A: 2,", "tasks={A: 3,"))],
           "--set", "questioner.engine=vllm",
           "--set", "questioner.vllm.server_args=[" + ", ".join(f"'{a}'" for a in SERVER_ARGS) + "]"]
API_SERVER = "vllm.entrypoints.openai.api_server"


def _vllm_servers(run: subprocess.Popen) -> list[tuple[int, list[int]]]:
    """Each managed vLLM server under `run` with everything under it (vLLM renames its processes, so a server is
    found as the child of the supervisor that names it: stargate_lite/engines/processes.py)."""
    found = []
    for supervisor, argv in descendants(run.pid).items():
        if argv[1:2] == ["-c"] and API_SERVER in argv:
            tree = list(descendants(supervisor))
            found += [(pid, tree) for pid in tree
                      if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == supervisor]
    return found


def _serving(run: subprocess.Popen) -> list[int]:
    """Every managed vLLM server under `run` (frozen at its stop point) and everything under them."""
    servers = _vllm_servers(run)
    assert servers, "no vLLM server under the run"
    return [pid for _, tree in servers for pid in tree]


def _wait_until_stopped(run: subprocess.Popen, timeout: float = 600) -> None:
    """Until `run` has frozen itself at its stop point (state T in /proc)."""
    deadline = time.time() + timeout
    while Path(f"/proc/{run.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert run.poll() is None and time.time() < deadline, "the run never reached its stop point"
        time.sleep(0.2)



def test_a_managed_server_that_dies_is_a_recorded_failure_and_nothing_outlives_a_killed_run(with_data, launch):
    home = with_data

    # stargate-lite is SIGKILLed while its server runs (frozen at its stop point once the first chunk is stored):
    # the server and its engine go with it.
    run = launch(MANAGED, home, stop_at="simulate/1=STOP")
    _wait_until_stopped(run)
    tree = _serving(run)
    assert len(_vllm_servers(run)) == 1  # the generation server alone: scoring has not begun
    assert len(tree) > 1  # vLLM's engine runs in processes of its own
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone(tree), "the vLLM server outlived the stargate-lite that started it"

    # The server dies after the next chunk: the one after it is a recorded failure, the rest is kept. The run
    # freezes itself once that chunk is stored, so the last chunk waits for the kill.
    run = launch(MANAGED, home, stderr=subprocess.PIPE, stop_at="simulate/1=STOP")
    _wait_until_stopped(run)
    tree = _serving(run)
    ((server, _),) = _vllm_servers(run)
    os.kill(server, signal.SIGKILL)
    assert gone([server])
    run.send_signal(signal.SIGCONT)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2
    (line,) = [s for s in stderr.splitlines() if s.startswith("Error:")]
    assert "vLLM server exited mid-run (exit code -9)" in line and "run the same command again" in line
    with sqlite3.connect(home / "stargate.db") as db:
        reasons = [r[0] for r in db.execute("select reason from failures where stage = 'simulate/1'")]
        kept = db.execute("select count(*) from conversations").fetchone()[0]
    assert reasons and all(r.startswith("questioner: vLLM server exited mid-run") for r in reasons)
    assert kept == 2 * 2  # two chunks: two pairs' two conversations
    assert gone(tree), "vLLM's engine outlived its server"

    # A rerun finishes the iteration: nothing redone, no failure left, the server stopped at the end.
    run = launch(MANAGED, home, stderr=subprocess.PIPE)
    trees = []
    while run.poll() is None:
        trees += [p for _, tree in _vllm_servers(run) for p in tree]
        time.sleep(0.5)
    assert run.returncode == 0, run.stderr.read()[-2000:]
    assert trees and gone(trees)  # stopped with the command: within the grace period and a margin
    with sqlite3.connect(home / "stargate.db") as db:
        ids = [r[0] for r in db.execute("select id from conversations where iteration = 1")]
        assert len(ids) == len(set(ids)) == 3 * 2
        assert db.execute("select count(*) from failures").fetchone()[0] == 0
        assert db.execute("select finished_at is not null from iterations where iteration = 1").fetchone()[0]
    assert (home / "logs" / "vllm-questioner.log").is_file() and (home / "logs" / "vllm-scorer.log").is_file()


def _golds(questioner) -> list:
    return [encode_gold(questioner, name, TASK, TURNS[:turns], GOLD[:length])
            for name, turns, length in (("Mei", 4, 200), ("Ravi", 2, 90), ("Dana", 0, 150), ("Tomas", 4, 60))]


def test_scores_equal_the_local_scorer_per_token(served, questioner, base_model):
    golds = _golds(questioner)
    remote = token_logprobs(served.engine_policy(None), golds, batch_size=4, vocab_chunk_tokens=512)
    local = token_logprobs(base_model, golds, batch_size=4, vocab_chunk_tokens=512)
    for r, loc in zip(remote, local, strict=True):
        assert r.shape == loc.shape and r.numel() > 10
        assert (r - loc).abs().max().item() < TOLERANCE
    # The stage's own call, after generation has warmed the server's prefix cache with these prompts' starts.
    served.generate(served.engine_policy(None), [questioner_messages("Mei", TASK, TURNS, final=True,
                                                                     instruction=False)],
                    max_new_tokens=8, temperature=0.0, top_p=1.0, batch_size=1, seed=0)
    sums = score_sums(served.engine_policy(None), golds, batch_size=4, vocab_chunk_tokens=512)
    assert [n for _, n in sums] == [t.numel() for t in local]
    assert all(abs(s - float(t.sum())) < TOLERANCE * n for (s, n), t in zip(sums, local, strict=True))


def test_both_engines_sample_from_the_models_plain_distribution_whatever_its_generation_config_says(
        served, questioner, configured_model):
    """Seeded, 200 first tokens from each engine at temperature 1 (top_p 1), from a model whose generation config
    sets top_k 5, min_p 0.1 and a repetition penalty: each engine's frequencies are the softmax's, within 4 binomial
    standard deviations, in six bins (the five likeliest first words and the rest, 0.56 of the mass, which top_k 5
    would make 0; at n = 200 the band on that bin is +-0.15). Sampled texts are compared as the engines return
    them, stripped words. A short prompt (44 tokens with the template's system text): the local engine reads it
    n times, 35 s for 200 on one thread against 72 s for 400 (2026-12-04)."""
    from transformers import AutoModelForCausalLM

    local_model = AutoModelForCausalLM.from_pretrained(configured_model, dtype=torch.float32)
    assert local_model.generation_config.top_k == 5  # the config the engines must not follow
    tokenizer = questioner.tokenizer
    prompt = [{"role": "user", "content": "Name one thing you might ask a friend who wants a meal plan."}]
    ids = tokenizer(questioner.render(prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(local_model(torch.tensor([ids])).logits[0, -1].float(), -1)
    words = [tokenizer.decode([i], skip_special_tokens=True).strip() for i in range(len(probs))]
    bins = list(dict.fromkeys(words[i] for i in probs.topk(12).indices.tolist()))[:5]
    expected = {word: 0.0 for word in [*bins, None]}
    for word, p in zip(words, probs.tolist(), strict=True):
        expected[word if word in bins else None] += p
    assert expected[None] > 0.5
    n = 200
    sampling = {"max_new_tokens": 1, "temperature": 1.0, "top_p": 1.0, "batch_size": n, "seed": 11}
    for texts in (served.generate(served.engine_policy(None), [prompt] * n, **sampling),
                  questioner.generate(local_model, [prompt] * n, **sampling)):
        for word, p in expected.items():
            share = sum((t if t in bins else None) == word for t in texts) / n
            assert abs(share - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1 / n, (word, share, p)


def _served_logprobs(policy, prompt: list[int], max_tokens: int) -> Encoded:
    """A greedy completion by the served policy, with the log-prob it gave each generated token."""
    response = policy.engine.generation.client.completions.create(
        model=policy.model_name, prompt=prompt, max_tokens=max_tokens, temperature=0.0, logprobs=0,
        extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True, **PLAIN_SAMPLING})
    logprobs = response.choices[0].logprobs
    generated = [int(t.removeprefix("token_id:")) for t in logprobs.tokens]
    return Encoded(prompt + generated, list(range(len(prompt), len(prompt) + len(generated)))), \
        torch.tensor(logprobs.token_logprobs)


def test_each_iterations_adapter_is_served_under_a_name_of_its_own_as_peft_applies_it(served, questioner,
                                                                                       finished):
    adapters = [str(finished / "runs" / "tiny" / f"iteration-{i}" / "adapter") for i in (1, 2)]
    policies = [served.engine_policy(a) for a in adapters]
    names = [p.model_name for p in policies]
    assert names[0].startswith("iteration-1-") and names[1].startswith("iteration-2-") and names[0] != names[1]
    assert served.engine_policy(adapters[0]).model_name == names[0]  # loaded once per adapter file
    prompt = questioner.tokenizer(questioner.render(questioner_messages("Mei", TASK, TURNS[:2], final=False),
                                                    add_generation_prompt=True), add_special_tokens=False)
    # What the server generates under each adapter, teacher-forced through peft here, has the same log-probs.
    served_logprobs = []
    for adapter, policy in zip(adapters, policies, strict=True):
        item, remote = _served_logprobs(policy, prompt["input_ids"], 16)
        (local,) = token_logprobs(questioner.load_policy(adapter), [item], batch_size=1, vocab_chunk_tokens=512)
        assert (remote - local).abs().max().item() < TOLERANCE
        served_logprobs.append((item, remote))
    # ... and the two iterations' adapters are not the same policy.
    (second_on_first,) = token_logprobs(questioner.load_policy(adapters[1]), [served_logprobs[0][0]],
                                        batch_size=1, vocab_chunk_tokens=512)
    assert (second_on_first - served_logprobs[0][1]).abs().max().item() > 10 * TOLERANCE

    prompts = [questioner_messages(n, TASK, [], final=False) for n in ("Mei", "Ravi", "Dana", "Tomas")]
    kwargs = {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.9, "batch_size": 4, "seed": 3}
    texts = [served.generate(p, prompts, **kwargs) for p in policies]
    assert all(all(t) for t in texts) and texts[0] != texts[1]
    assert texts[0] == served.generate(policies[0], prompts, **kwargs)  # seeded per request


def _counts(home) -> dict:
    with sqlite3.connect(home / "stargate.db") as db:
        return {table: db.execute(f"select iteration, count(*) from {table} where run_id = 'tiny' group by iteration"
                                  ).fetchall()
                for table in ("conversations", "scores", "selections", "responses", "trainings")}


def test_a_two_iteration_run_on_vllm_completes_and_resumes_after_sigkill(vllm_urls, finished, questioner,
                                                                          base_model, with_data, launch):
    args = [*run_args(), *[a for o in _engine_settings(vllm_urls) for a in ("--set", o)]]
    home = with_data
    for kill_point in ("select count(*) from scores where iteration = 1",
                       "select count(*) from conversations where iteration = 2"):
        run = launch(args, home)
        assert wait_for(home, kill_point, run), "the run ended before the kill point"
        run.send_signal(signal.SIGKILL)
        run.wait()
    cli(*args, home=home)
    assert _counts(home) == _counts(finished)  # as many of everything as the local engine's run
    report = json.loads(cli("status", "--json", home=home).stdout)
    assert len(report["runs"][0]["iterations"]) == 2 and all(it["complete"] for it in report["runs"][0]["iterations"])
    # Stored scores are the local scorer's, within float error, for conversations the vLLM policy held.
    store = Store(home)
    pairs = {p["id"]: p for p in store.pairs("tiny", 2)}
    scores = store.scores("tiny", 2)[:3]
    turns = store.turns([s["conversation_id"] for s in scores])
    local = score_sums(base_model, [encode_gold(questioner, pairs[s["pair_id"]]["persona_name"],
                                                pairs[s["pair_id"]]["task"], turns[s["conversation_id"]],
                                                pairs[s["pair_id"]]["gold"]) for s in scores],
                       batch_size=4, vocab_chunk_tokens=512)
    assert [s["n_tokens"] for s in scores] == [n for _, n in local]
    for stored, (ours, n) in zip(scores, local, strict=True):
        assert abs(stored["logprob"] - ours) < TOLERANCE * n
    # Evaluation on the same engine: conversations, scores and every responder's answers from vLLM, for the base
    # and the last adapter (both iterations' adapters are checked against peft in the adapter test above).
    evaluated = json.loads(cli("eval", "--json", "--iteration", "2", home=home).stdout)
    assert [it["iteration"] for it in evaluated["iterations"]] == [0, 2]
    for it in evaluated["iterations"]:
        assert it["logprob"]["experimental"]["n"] == 4 and it["logprob"]["random"]["n"] >= 2
    assert evaluated["iterations"][1]["win_rate"]["valid"] == 2
    with sqlite3.connect(home / "stargate.db") as db:
        answers = db.execute("select iteration, count(*) from eval_responses where text != '' group by iteration")
        assert dict(answers.fetchall()) == {0: 2, 2: 2}
