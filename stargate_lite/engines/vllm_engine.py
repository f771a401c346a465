"""The Questioner served by vLLM (questioner.engine vllm): generation and gold scoring as requests to vLLM
OpenAI-compatible servers, many in flight, instead of forward passes in this process.

Two servers of the same base model: one generates, with each iteration's adapter loaded under a name made from
its path and its file's size and time (so a retrained adapter is never served from a stale copy under an old
name); one scores, without LoRA, because vLLM's prompt log-probs fail or come out wrong with LoRA enabled
(vllm-project/vllm issues 16668, 29955, 51594), and without a prefix cache, which prompt log-probs never read.
Prompts travel as token ids, rendered and tokenized here exactly as for the local engine, so both engines see
the same tokens; scores are summed over the gold's own positions as the local scorer sums them.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import QuestionerFailure, StargateError
from ..recipe import VllmConfig
from .encoded import PLAIN_SAMPLING, Completions, Encoded
from .servers import VLLM_BASE_NAME, VllmServer


@dataclass(frozen=True)
class VllmPolicy:
    """Q_eta as the engine serves it: the model name to ask for (the base, or an adapter loaded under a name)."""

    engine: VllmEngine
    model_name: str

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, stop_ids: list[int], on_done=None) -> Completions:
        return self.engine.complete(self.model_name, prompts, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, seed=seed, stop_ids=stop_ids,
                                    on_done=on_done)


class _Endpoint:
    """One of the engine's servers: the given one (url), or a managed one started on first use."""

    def __init__(self, engine: VllmEngine, url: str | None, lora: bool, log_path: Path):
        self.engine = engine
        self.given_url = url.rstrip("/") if url else None
        self.lora = lora
        self.log_path = log_path
        self.server: VllmServer | None = None
        self.client = None
        self.base_name = ""

    def connect(self):
        """The client, once the server is started (managed) or found (given)."""
        import openai

        if self.client is None:
            e = self.engine
            url = self.given_url
            if url is None:
                self.server = VllmServer(e.config, e.model_source, e.dtype, e.quantize_4bit, self.log_path, self.lora)
                url = self.server.start()
            self.client = openai.OpenAI(base_url=url, api_key="not-needed", timeout=e.config.request_timeout,
                                        max_retries=e.config.max_retries)
            self.base_name = VLLM_BASE_NAME if self.server else self._served_base()
        self.check_alive()
        return self.client

    def _served_base(self) -> str:
        """The base model of a server we did not start: the first model it lists that is no adapter."""
        import openai

        try:
            listed = self.client.models.list().data
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise StargateError(f"questioner: cannot reach the vLLM server at {self.given_url} "
                                f"({type(err).__name__}): start it or fix questioner.vllm's URLs") from None
        bases = [m.id for m in listed if not (m.model_extra or {}).get("parent")]
        if not bases:
            raise StargateError(f"questioner: the vLLM server at {self.given_url} lists no base model")
        return bases[0]

    def api_root(self) -> str:
        return str(self.client.base_url).rstrip("/").removesuffix("/v1")

    def check_alive(self) -> None:
        if self.server is not None and not self.server.alive():
            raise QuestionerFailure(self.server.failure("exited mid-run"))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server, self.client = None, None


class VllmEngine:
    """The Questioner's two vLLM servers (generation, scoring): each started on first use when managed
    (questioner.vllm.base_url / score_base_url null) and stopped by `close`, or running elsewhere."""

    def __init__(self, config: VllmConfig, model_source: str, dtype: str, quantize_4bit: bool, log_dir: Path):
        self.config = config
        self.model_source = model_source
        self.dtype = dtype
        self.quantize_4bit = quantize_4bit
        self.generation = _Endpoint(self, config.base_url, True, log_dir / "vllm-questioner.log")
        self.scoring = _Endpoint(self, config.score_base_url, False, log_dir / "vllm-scorer.log")
        self.adapter_names: dict[str, str] = {}

    def close(self) -> None:
        """Stop the managed servers (they hold their GPU memory until then); the next use starts them again."""
        self.generation.close()
        self.scoring.close()
        self.adapter_names.clear()

    # -- policies --------------------------------------------------------------------------------------------
    def policy(self, adapter: str | None) -> VllmPolicy:
        """Q_0 (adapter None) or the base with `adapter`, loaded into the generation server on first use."""
        self.generation.connect()
        if adapter is None:
            return VllmPolicy(self, self.generation.base_name)
        path = Path(adapter).resolve()
        weights = path / "adapter_model.safetensors"
        if not (path / "adapter_config.json").is_file() or not weights.is_file():
            raise StargateError(f"adapter {adapter} is missing or incomplete: rerun the iteration that trains it")
        stat = weights.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.adapter_names:
            name = f"{path.parent.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
            self._load_adapter(name, path)
            self.adapter_names[key] = name
        return VllmPolicy(self, self.adapter_names[key])

    def _load_adapter(self, name: str, path: Path) -> None:
        """Load the adapter under `name`, unless the server has it already (a run resumed against a server that
        outlived the first attempt: the name stands for this very file)."""
        if name in {m.id for m in self.generation.client.models.list().data}:
            return
        body = json.dumps({"lora_name": name, "lora_path": str(path)}).encode()
        request = urllib.request.Request(f"{self.generation.api_root()}/v1/load_lora_adapter", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.config.request_timeout):
                return
        except urllib.error.HTTPError as err:
            detail = " ".join(err.read().decode(errors="replace").split())[:300]
            hint = (" (a server you started needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and "
                    "must read this path)") if err.code in (400, 404) else ""
            raise StargateError(f"questioner: the vLLM server did not load adapter {path}: HTTP {err.code} "
                                f"{detail}{hint}") from None
        except (urllib.error.URLError, OSError) as err:
            self.generation.check_alive()
            raise QuestionerFailure(f"questioner: cannot reach the vLLM server to load adapter {path}: {err}") \
                from None

    # -- requests --------------------------------------------------------------------------------------------
    def _requests(self, endpoint: _Endpoint, call, items: list, on_done=None) -> list:
        """call(client, item) for every item, max_concurrency in flight; any failure (after the client's
        retries) is the failure of the whole call: a dead managed server says so, in one line."""
        import openai

        client = endpoint.connect()

        def one(item):
            result = call(client, item)
            if on_done:
                on_done(1)
            return result

        try:
            with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
                return list(pool.map(one, items))
        except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as err:
            endpoint.check_alive()
            status = f"HTTP {err.status_code}: " if isinstance(err, openai.APIStatusError) else ""
            message = " ".join(str(getattr(err, "message", err)).split())[:300]
            raise QuestionerFailure(f"questioner: the vLLM server failed a request ({status}{message}) after "
                                    f"{self.config.max_retries} retries") from None

    def complete(self, model_name: str, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, stop_ids: list[int], on_done=None) -> Completions:
        """One completion per token-id prompt; greedy at temperature 0. Request i is sampled with seed + i, so a
        request's sampling does not hang on what else the server decodes at the time. A completion the server
        ended at max_tokens (finish_reason "length") is cut."""

        def call(client, item):
            index, prompt = item
            response = client.completions.create(
                model=model_name, prompt=prompt, max_tokens=max_new_tokens, temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0, seed=seed + index, frequency_penalty=0.0,
                presence_penalty=0.0, extra_body={"stop_token_ids": stop_ids, "skip_special_tokens": True,
                                                  **PLAIN_SAMPLING},
            )
            choice = response.choices[0]
            return choice.text.strip(), choice.finish_reason == "length"

        done = self._requests(self.generation, call, list(enumerate(prompts)), on_done)
        return Completions([text for text, _ in done], [cut for _, cut in done])

    def prompt_logprobs(self, encoded: list[Encoded]) -> list:
        """Per-target-token log-probs under the base model (1-D float32 tensors, in input order), as
        score.token_logprobs gives them: the target positions after the first."""
        import torch

        def call(client, item: Encoded):
            response = client.completions.create(
                model=self.scoring.base_name, prompt=item.input_ids, max_tokens=1, temperature=0.0,
                extra_body={"prompt_logprobs": 0},
            )
            listed = (response.choices[0].model_extra or {}).get("prompt_logprobs")
            if listed is None or len(listed) != len(item.input_ids):
                raise StargateError("questioner: the vLLM server returned no prompt log-probs for every token")
            values = [listed[p][str(item.input_ids[p])]["logprob"] for p in item.target_positions if p > 0]
            return torch.tensor(values, dtype=torch.float32)

        return self._requests(self.scoring, call, encoded)
