"""Chat-completion backends for the Roleplayer, Oracle and Judge: llama.cpp in-process, llama.cpp's server managed
by us, any OpenAI-compatible endpoint (OpenAI, vLLM, a llama-server of your own, Ollama), or transformers.
Swapping one for another is a recipe change.
"""

from __future__ import annotations

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from ..errors import StargateError
from ..prompts import fold_system
from ..recipe import ChatModelConfig
from .models import resolve_gguf
from .servers import LlamaServer, find_binary


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class Reply(str):
    """A completion's text, with `truncated` set where it stopped at the token budget instead of ending by itself
    (llama.cpp and OpenAI-compatible endpoints say so; the transformers backend does not, and leaves it False).
    The judge stage stores a verdict it cannot read from a truncated reply as truncated, not unparsable."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> Self:
        reply = super().__new__(cls, text)
        reply.truncated = truncated
        return reply


class ChatFailure(Exception):
    """A completion that could not be had after every retry; the message is the reason, for the store.

    `refused`: the endpoint declined this item for good (a content filter, a request it will never accept), so
    asking again would get the same answer; the caller records it as such instead of retrying it on every rerun."""

    def __init__(self, reason: str, refused: bool = False):
        super().__init__(reason)
        self.refused = refused


# Answers that refuse the item itself, not the caller's set-up (401/403/404 are a key or a model name to fix,
# 408/409/429 and 5xx pass): a filter's 400, a body too large, a request the server cannot process.
REFUSING_STATUSES = (400, 413, 422)


class ChatModel(Protocol):
    name: str

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        """One completion per message list, in order; an item that failed for good is its ChatFailure."""
        ...

    def choice_logprobs(self, conversations: list[list[dict]], choices: tuple[str, ...]
                        ) -> list[dict | ChatFailure]:
        """Per message list, the log-probability of each choice (e.g. "A", "B") as the reply's first token:
        {choice: log-prob or None if the backend did not list it, "floor": the lowest log-prob it listed or
        None where it gave the whole distribution}. A choice counts every token that reads as it, spaces aside."""
        ...


def _logsumexp(values: list[float]) -> float | None:
    if not values:
        return None
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _choice_token_ids(encode, choices: tuple[str, ...]) -> dict[str, list[int]]:
    """The single-token spellings of each choice ("A" and " A" are often two tokens of a vocabulary)."""
    out = {}
    for choice in choices:
        ids = {tuple(encode(text)) for text in (choice, f" {choice}")}
        out[choice] = sorted(t[0] for t in ids if len(t) == 1)
        if not out[choice]:
            raise StargateError(f"the judge's vocabulary has no single token for {choice!r}: use judge.read=reply")
    return out


def as_sent(config: ChatModelConfig, messages: list[dict]) -> list[dict]:
    """A conversation's messages as the model is given them: the system text folded into the first user turn where
    the recipe asks for it or the turn format has no system role."""
    return fold_system(messages) if config.folds_system else messages


# chat_format transcript: who says each line. The asking side is the AI assistant (the Questioner); the model's
# own lines are the person it plays.
TRANSCRIPT_LABELS = {"user": "Assistant", "assistant": "Me"}


def transcript_prompt(messages: list[dict]) -> str:
    """chat_format transcript: messages as plain text for a base model, which has read transcripts but learnt no
    chat's control tokens. Each system text is a paragraph, each turn one line ("Assistant: ...", "Me: ...", its
    text's line breaks made spaces), and the prompt ends with "Me:" for the model to go on; its turn ends with
    the line (the stop is a newline)."""
    parts = []
    for message in messages:
        text = " ".join(message["content"].split())
        if message["role"] == "system":
            parts.append(("\n\n" if parts else "") + text + "\n")
        else:
            parts.append(f"\n{TRANSCRIPT_LABELS[message['role']]}: {text}")
    return "".join(parts) + f"\n{TRANSCRIPT_LABELS['assistant']}:"


def _transcript_handler():
    """llama-cpp-python's chat handler for chat_format transcript: the prompt above, stopping at a newline."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse, chat_formatter_to_chat_completion_handler

    return chat_formatter_to_chat_completion_handler(
        lambda messages, **_: ChatFormatterResponse(prompt=transcript_prompt(messages), stop=["\n"]))


def complete_all(model: ChatModel, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
    """Every completion, or ChatFailure for the first item that failed (for work that needs all of them)."""
    results = model.complete_each(conversations, sampling)
    for result in results:
        if isinstance(result, ChatFailure):
            raise result
    return results


class LlamaCppChat:
    """A GGUF model loaded in this process. Decodes one sequence at a time (llama-cpp-python's high-level API)."""

    def __init__(self, name: str, config: ChatModelConfig):
        self.name = name
        self.config = config
        self.path: Path = resolve_gguf(config.model, config.gguf_file)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise StargateError("the llamacpp backend needs llama-cpp-python: pip install llama-cpp-python") from None
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=config.n_ctx,
            n_gpu_layers=config.n_gpu_layers,
            # Both settings: llama-cpp-python reads prompts on every core unless told otherwise, whatever
            # n_threads says (the server gets --threads and --threads-batch alike). Logits are the same bit for bit.
            n_threads=config.n_threads,
            n_threads_batch=config.n_threads,
            # None: the file's template; transcript is written here, not by llama-cpp-python.
            chat_format=config.chat_format if config.chat_format != "transcript" else None,
            chat_handler=_transcript_handler() if config.chat_format == "transcript" else None,
            verbose=False,
        )
        # Reading only where a prompt differs from the last one's tokens gives the same logits on the CPU, bit for
        # bit (tests/test_services.py); on a GPU, llama.cpp picks kernels by the number of tokens read at once.
        self.keeps_prompt = config.prompt_cache if config.prompt_cache is not None else config.n_gpu_layers == 0

    def _start(self) -> None:
        """Before a call: forget the last prompt unless the next may reuse its common prefix."""
        if not self.keeps_prompt:
            self.llm.reset()

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        return [self._fitting(lambda m=messages: self._one(m, sampling)) for messages in conversations]

    def _fitting(self, call):
        """`call()`, or a prompt longer than the context as a ChatFailure refused for good (llama-cpp-python raises
        ValueError for it): the item fails, not the whole stage, and asking again would fail alike."""
        try:
            return call()
        except ValueError as err:
            if "exceed context window" not in str(err):
                raise
            return ChatFailure(f"the prompt does not fit its context: {err} (chat_models.{self.name}.n_ctx)",
                               refused=True)

    def choice_logprobs(self, conversations: list[list[dict]], choices: tuple[str, ...]) -> list[dict | ChatFailure]:
        """The first reply token's full distribution, read before any sampling step by a logits processor."""
        import numpy as np
        from llama_cpp import LogitsProcessorList

        token_ids = _choice_token_ids(lambda t: self.llm.tokenize(t.encode(), add_bos=False, special=False), choices)
        results: list[dict | ChatFailure] = []
        for messages in conversations:
            seen: list = []

            def capture(input_ids, logits):
                seen.append(np.array(logits, dtype=np.float64))
                return logits

            messages = as_sent(self.config, messages)
            self._start()
            failure = self._fitting(lambda m=messages: self.llm.create_chat_completion(
                messages=m, max_tokens=1, temperature=0.0, logits_processor=LogitsProcessorList([capture])))
            if isinstance(failure, ChatFailure):
                results.append(failure)
                continue
            logits = seen[0]
            top = logits.max()
            logprobs = logits - (top + np.log(np.exp(logits - top).sum()))
            results.append({**{c: _logsumexp([float(logprobs[i]) for i in ids]) for c, ids in token_ids.items()},
                            "floor": None})
        return results

    def _one(self, messages: list[dict], sampling: Sampling) -> str:
        messages = as_sent(self.config, messages)
        self._start()
        out = self.llm.create_chat_completion(
            messages=messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            repeat_penalty=self.config.repeat_penalty,
        )
        choice = out["choices"][0]
        return Reply((choice["message"]["content"] or "").strip(), truncated=choice["finish_reason"] == "length")


class OpenAIChat:
    """An OpenAI-compatible endpoint, with up to `max_concurrency` requests in flight."""

    def __init__(self, name: str, config: ChatModelConfig):
        import openai

        self.name = name
        self.config = config
        self.client = openai.OpenAI(
            api_key=self._api_key(),
            base_url=config.base_url,
            timeout=config.request_timeout,
            max_retries=config.max_retries,  # the client's: connection, timeout, 408/409/429, 5xx, Retry-After
        )

    def _api_key(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if not key and not self.config.base_url:
            raise StargateError(
                f"chat model {self.name} uses the OpenAI API but ${self.config.api_key_env} is not set: "
                "put it in the environment or in .env (see .env.example)"
            )
        return key or "not-needed"

    def _extra_body(self) -> dict | None:
        """Request fields beyond the OpenAI API's (none: the OpenAI API rejects unknown ones)."""
        return None

    def check(self) -> None:
        """One cheap request (the model list) to prove the endpoint and key work."""
        import openai

        where = self.config.base_url or "the OpenAI API"
        try:
            self.client.with_options(timeout=10, max_retries=1).models.list()
        except openai.AuthenticationError:
            raise StargateError(
                f"chat model {self.name}: {where} rejected the key in ${self.config.api_key_env}: set a valid key"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise StargateError(
                f"chat model {self.name}: cannot reach {where} ({type(err).__name__}): start the server or fix "
                f"chat_models.{self.name}.base_url"
            ) from None
        except openai.APIStatusError:
            pass  # some servers have no /models route; they answered, so they are up

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            return list(pool.map(lambda m: self._with_retries(lambda: self._one(m, sampling)), conversations))

    def choice_logprobs(self, conversations: list[list[dict]], choices: tuple[str, ...]) -> list[dict | ChatFailure]:
        """From the endpoint's top log-probabilities of the first reply token (up to 20 listed)."""
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            return list(pool.map(lambda m: self._with_retries(lambda: self._first_token(m, choices)), conversations))

    def _first_token(self, messages: list[dict], choices: tuple[str, ...]) -> dict:
        messages = as_sent(self.config, messages)
        response = self.client.chat.completions.create(
            model=self.config.model, messages=messages, max_tokens=1, temperature=0.0, logprobs=True,
            top_logprobs=20, extra_body=self._extra_body(),
        )
        logprobs = response.choices[0].logprobs
        if logprobs is None or not logprobs.content:
            raise ChatFailure("no logprobs in the response: this endpoint does not return them (use judge.read=reply)")
        listed = logprobs.content[0].top_logprobs or []
        if not listed:
            raise ValueError("no top_logprobs in the response")
        return {**{c: _logsumexp([t.logprob for t in listed if t.token.strip() == c]) for c in choices},
                "floor": min(t.logprob for t in listed)}

    def _with_retries(self, call):
        """`call()`, or the ChatFailure that ends it. What may pass on the wire (a refused connection, a timeout,
        408/409/429, 5xx) the openai client has already retried, honouring Retry-After; what it cannot see, a 200
        whose body is malformed, is retried here with exponential backoff and full jitter."""
        import openai

        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except openai.APIStatusError as err:
                retried = err.status_code in (408, 409, 429) or err.status_code >= 500
                return ChatFailure(f"HTTP {err.status_code}: {_short(err.message)}"
                                   + (f" (after {attempts} attempts)" if retried else ""),
                                   refused=err.status_code in REFUSING_STATUSES)
            except (openai.APIConnectionError, openai.APITimeoutError) as err:
                return ChatFailure(f"{type(err).__name__}: {_short(str(err))} (after {attempts} attempts)")
            except ChatFailure as failure:  # an answer that retrying cannot change
                return failure
            except (openai.APIResponseValidationError, ValueError, KeyError, IndexError, TypeError) as err:
                reason = f"malformed response ({type(err).__name__}: {_short(str(err))})"
            if attempt + 1 < attempts:
                time.sleep(random.uniform(0, self.config.retry_base_seconds * 2**attempt))
        return ChatFailure(f"{reason} (after {attempts} attempts)")

    def _one(self, messages: list[dict], sampling: Sampling) -> str:
        messages = as_sent(self.config, messages)
        response = self.client.chat.completions.create(
            model=self.config.model,
            messages=messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            extra_body=self._extra_body(),
        )
        choice = response.choices[0]
        content = choice.message.content
        if not isinstance(content, str):
            refusal = getattr(choice.message, "refusal", None)
            if refusal or choice.finish_reason == "content_filter":
                raise ChatFailure(f"refused ({_short(refusal or choice.finish_reason)})", refused=True)
            raise ValueError("no message content in the response")
        return Reply(content.strip(), truncated=choice.finish_reason == "length")


class LlamaServerChat(OpenAIChat):
    """A GGUF served by a llama-server that this object starts (servers.py) and stops (close): `slots`
    requests in flight, the prompt cache on, the recipe's repeat penalty."""

    def __init__(self, name: str, config: ChatModelConfig, log_dir: Path):
        self.server = LlamaServer(name, config, resolve_gguf(config.model, config.gguf_file),
                                  log_dir / f"llama-server-{name}.log")
        url = self.server.start()
        super().__init__(name, config.model_copy(update={"base_url": url, "max_concurrency": config.slots}))

    def _api_key(self) -> str:
        return "not-needed"  # never send a real key from the environment to a local child process

    def _extra_body(self) -> dict:
        return {"cache_prompt": True, "repeat_penalty": self.config.repeat_penalty}

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        self.server.ensure_alive()
        return self._checked(super().complete_each(conversations, sampling))

    def choice_logprobs(self, conversations: list[list[dict]], choices: tuple[str, ...]) -> list[dict | ChatFailure]:
        self.server.ensure_alive()
        return self._checked(super().choice_logprobs(conversations, choices))

    def _checked(self, results: list) -> list:
        """A failure from a server that has died is the server's death (a one-line error), not the item's."""
        if any(isinstance(r, ChatFailure) for r in results):
            self.server.ensure_alive()
        return results

    def close(self) -> None:
        self.server.stop()


class TransformersChat:
    """A Hugging Face chat model in this process, run like the Questioner (batched, length-sorted)."""

    def __init__(self, name: str, config: ChatModelConfig, home: Path):
        from ..recipe import QuestionerConfig
        from .questioner import Questioner

        self.name = name
        self.config = config
        self.runner = Questioner(QuestionerConfig(model=config.model, gguf_file=config.gguf_file), home)
        self.model = self.runner.load_base()

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        conversations = [as_sent(self.config, m) for m in conversations]
        return self.runner.generate(self.model, conversations, max_new_tokens=sampling.max_tokens,
                                    temperature=sampling.temperature, top_p=sampling.top_p, batch_size=8,
                                    seed=sampling.seed)

    def choice_logprobs(self, conversations: list[list[dict]], choices: tuple[str, ...]) -> list[dict | ChatFailure]:
        """One forward per conversation; the full distribution at the first reply position."""
        import torch

        tokenizer = self.runner.tokenizer
        token_ids = _choice_token_ids(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], choices)
        results: list[dict | ChatFailure] = []
        for messages in conversations:
            messages = as_sent(self.config, messages)
            ids = tokenizer(self.runner.render(messages, add_generation_prompt=True), add_special_tokens=False,
                            return_tensors="pt")["input_ids"].to(self.runner.device)
            with torch.no_grad():
                logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0, -1].float(), dim=-1)
            results.append({**{c: _logsumexp([logprobs[i].item() for i in found]) for c, found in token_ids.items()},
                            "floor": None})
        return results


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preflight(configs: dict[str, ChatModelConfig], names: set[str]) -> None:
    """Fail before any work (and any paid call) if a role's model file or llama-server binary is missing, an API
    key is unset or an endpoint does not answer."""
    for name in sorted(names):
        config = configs[name]
        if config.backend == "openai":
            OpenAIChat(name, config).check()
            continue
        if config.backend == "llama-server":
            find_binary(config.server_binary)
        if config.model.startswith("builtin:") or (config.backend != "transformers" and not config.gguf_file):
            resolve_gguf(config.model, config.gguf_file)  # local files must exist; Hub files come on first use
        elif config.model.startswith((".", "/", "~")) and not Path(config.model).expanduser().exists():
            raise StargateError(f"chat model {name}: {config.model} does not exist")


class ChatModels:
    """Builds each named chat model once per process, on first use (roles often share one model); `close` (or
    leaving the `with` block) stops the servers it started, whose logs go to `log_dir`."""

    def __init__(self, configs: dict[str, ChatModelConfig], home: Path, log_dir: Path | None = None):
        self.configs = configs
        self.home = home
        self.log_dir = log_dir or home / "logs"
        self._built: dict[str, ChatModel] = {}

    def get(self, name: str) -> ChatModel:
        if name not in self._built:
            config = self.configs[name]
            if config.backend == "llamacpp":
                self._built[name] = LlamaCppChat(name, config)
            elif config.backend == "llama-server":
                self._built[name] = LlamaServerChat(name, config, self.log_dir)
            elif config.backend == "openai":
                self._built[name] = OpenAIChat(name, config)
            else:
                self._built[name] = TransformersChat(name, config, self.home)
        return self._built[name]

    def close(self) -> None:
        for model in self._built.values():
            if isinstance(model, LlamaServerChat):
                model.close()
        self._built.clear()

    def __enter__(self) -> ChatModels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
