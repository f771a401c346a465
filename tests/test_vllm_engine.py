"""The vLLM engine's side of the HTTP boundary, against a local fake of vLLM's server, so it runs without vLLM:
adapters loaded once per file and again when the file changes, load errors with their hint, and prompt
log-probs that do not cover every token. tests/test_vllm.py runs the same engine against the real server."""

from __future__ import annotations

import json
import os

import pytest
from conftest import QuietHandler, serve

from stargate_lite.engines.encoded import Encoded
from stargate_lite.engines.vllm_engine import VllmEngine
from stargate_lite.errors import StargateError
from stargate_lite.recipe import VllmConfig


class FakeVllm:
    """vLLM's model list, runtime LoRA loading and completions with prompt log-probs, as far as the engine uses
    them. `load_status` answers every load; `prompt_logprobs` is what a completion returns for its prompt."""

    def __init__(self):
        self.adapters: list[str] = []
        self.loads: list[dict] = []
        self.load_status = 200
        self.completions: list[dict] = []
        self.prompt_logprobs = lambda ids: [None] + [{str(t): {"logprob": -1.0}} for t in ids[1:]]
        fake = self

        class Handler(QuietHandler):
            def do_GET(self):
                models = [{"id": "base", "object": "model", "created": 0, "owned_by": "vllm"}]
                models += [{"id": a, "object": "model", "created": 0, "owned_by": "vllm", "parent": "base"}
                           for a in fake.adapters]
                self.send(200, {"object": "list", "data": models})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":
                    fake.loads.append(body)
                    if fake.load_status != 200:
                        return self.send(fake.load_status, {"error": {"message": "no such adapter path"}})
                    fake.adapters.append(body["lora_name"])
                    return self.send(200, {})
                fake.completions.append(body)
                self.send(200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "text": "", "finish_reason": "length",
                                              "prompt_logprobs": fake.prompt_logprobs(body["prompt"])}]})

        self.server, root = serve(Handler)
        self.url = f"{root}/v1"


@pytest.fixture
def fake():
    server = FakeVllm()
    yield server
    server.server.shutdown()


@pytest.fixture
def engine(fake, tmp_path):
    config = VllmConfig(base_url=fake.url, score_base_url=fake.url, max_retries=0)
    engine = VllmEngine(config, "unused", "float32", False, tmp_path / "logs")
    yield engine
    engine.close()


def _adapter(path, content: bytes = b"weights"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(content)
    return path


def test_an_adapter_is_loaded_once_per_file_and_again_when_the_file_changes(fake, engine, tmp_path):
    adapter = _adapter(tmp_path / "iteration-1" / "adapter")
    assert engine.policy(None).model_name == "base"  # the server's base, read from its model list
    first = engine.policy(str(adapter)).model_name
    assert first.startswith("iteration-1-") and engine.policy(str(adapter)).model_name == first
    assert [load["lora_path"] for load in fake.loads] == [str(adapter.resolve())]
    # Retrained in place (another size and time): a new name, loaded again, never the stale copy.
    _adapter(adapter, b"retrained weights")
    os.utime(adapter / "adapter_model.safetensors", ns=(1, 1))
    second = engine.policy(str(adapter)).model_name
    assert second != first and [load["lora_name"] for load in fake.loads] == [first, second]
    # A resumed run whose server already holds that name loads nothing.
    engine.adapter_names.clear()
    assert engine.policy(str(adapter)).model_name == second and len(fake.loads) == 2


@pytest.mark.parametrize("status, hinted", [(400, True), (404, True), (500, False)])
def test_a_refused_adapter_load_is_one_error_with_the_hint_where_it_helps(fake, engine, tmp_path, status, hinted):
    fake.load_status = status
    with pytest.raises(StargateError) as err:
        engine.policy(str(_adapter(tmp_path / "iteration-1" / "adapter")))
    message = str(err.value)
    assert f"HTTP {status}" in message and "no such adapter path" in message and "\n" not in message
    assert ("--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message) == hinted


def test_prompt_logprobs_are_read_at_the_targets_and_refused_when_they_miss_a_token(fake, engine):
    item = Encoded([5, 6, 7, 8], [2, 3])
    fake.prompt_logprobs = lambda ids: [None] + [{str(t): {"logprob": -t / 10}} for t in ids[1:]]
    (values,) = engine.prompt_logprobs([item])
    assert values.tolist() == pytest.approx([-0.7, -0.8])
    for malformed in (lambda ids: None, lambda ids: [None] + [{str(t): {"logprob": -1.0}} for t in ids[2:]]):
        fake.prompt_logprobs = malformed
        with pytest.raises(StargateError, match="returned no prompt log-probs for every token"):
            engine.prompt_logprobs([item])


def test_managed_servers_run_on_the_gpus_the_recipe_gives_each(monkeypatch):
    """recipes/cluster.yaml's two managed servers on disjoint GPUs, each tensor parallel over its own."""
    import sys
    from pathlib import Path

    from stargate_lite.engines.servers import VllmServer
    from stargate_lite.recipe import load_recipe

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    vllm = load_recipe("cluster").questioner.vllm.model_copy(update={"python": sys.executable})
    generation, scoring = (VllmServer(vllm, "m", "bfloat16", False, Path("log"), lora=lora) for lora in (True, False))
    gpus = [set(server.environment()["CUDA_VISIBLE_DEVICES"].split(",")) for server in (generation, scoring)]
    assert not gpus[0] & gpus[1] and len(gpus[0] | gpus[1]) == 8
    parallel = int(vllm.server_args[vllm.server_args.index("--tensor-parallel-size") + 1])
    assert [len(g) for g in gpus] == [parallel, parallel]
    unset = vllm.model_copy(update={"devices": None, "score_devices": None})
    assert VllmServer(unset, "m", "bfloat16", False, Path("log")).environment()["CUDA_VISIBLE_DEVICES"] == \
        "0,1,2,3,4,5,6,7"  # null: every GPU this process sees


def test_sampled_requests_carry_the_recipes_sampling_and_nothing_from_the_models_generation_config(fake, engine):
    """vLLM applies a model's generation config (top_k, min_p, repetition penalty) to what a request leaves unset;
    the local engines do not: every request sets them."""
    engine.complete("base", [[1, 2, 3]], max_new_tokens=4, temperature=0.9, top_p=0.8, seed=7, stop_ids=[2])
    engine.complete("base", [[1, 2, 3]], max_new_tokens=4, temperature=0.0, top_p=0.8, seed=7, stop_ids=[2])
    sampled, greedy = fake.completions
    for request in (sampled, greedy):
        assert (request["top_k"], request["min_p"], request["repetition_penalty"]) == (0, 0.0, 1.0)
        assert (request["frequency_penalty"], request["presence_penalty"]) == (0.0, 0.0)
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.9, 0.8, 7)
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)
