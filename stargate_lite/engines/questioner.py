"""The Questioner backend: transformers (+ peft) models, chat-template rendering with exact character spans,
and batched generation, here or (questioner.engine vllm) on vLLM servers (vllm_engine.py).

Each stage loads the model it needs (the base for scoring and training, base + adapter for the policy), so no
adapter state can leak from one stage into another.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FallbackNotice, StargateError
from ..recipe import QuestionerConfig
from .encoded import PLAIN_SAMPLING, Completions, Encoded
from .models import hub_failure, questioner_source


class Questioner:
    def __init__(self, config: QuestionerConfig, home: Path):
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars say what is loading
        self.config = config
        self.home = home
        self.source = questioner_source(config.model, config.gguf_file, home)
        with self._hub_errors():
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        if self.tokenizer.chat_template is None:
            raise StargateError(f"questioner {config.model} has no chat template: use an instruct/chat model")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise StargateError("questioner.device is cuda but no CUDA GPU is visible: set questioner.device=cpu")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        if config.load_in_4bit and not want_cuda:
            raise StargateError("questioner.load_in_4bit needs a CUDA GPU: set questioner.load_in_4bit=false on CPU")
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.dtype = names.get(config.dtype) or (torch.bfloat16 if want_cuda else torch.float32)
        gib = config.memory_budget_gib
        self.memory_budget_bytes = int(gib * 2**30) if gib else None
        self.static_decoder = config.decoder == "static" or (config.decoder == "auto" and want_cuda)
        self.engine = None
        if config.engine == "vllm":
            from .vllm_engine import VllmEngine

            dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[self.dtype]
            self.engine = VllmEngine(config.vllm, self.source, dtype, config.load_in_4bit, home / "logs")

    def close(self) -> None:
        """Stop the Questioner's managed vLLM servers, if any run (the next stage that needs them starts them)."""
        if self.engine is not None:
            self.engine.close()

    # -- models ------------------------------------------------------------------------------------------------
    @contextmanager
    def _hub_errors(self) -> Iterator[None]:
        """A Hub id that cannot be had is one line keeping its cause (transformers raises OSError for all)."""
        try:
            yield
        except OSError as err:
            if Path(self.source).is_dir():
                raise
            raise StargateError(hub_failure(f"questioner model {self.source}", err)) from None

    def load_base(self):
        """The initial model Q_0, in eval mode."""
        from transformers import AutoModelForCausalLM

        kwargs: dict = {"dtype": self.dtype}
        if self.config.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=self.dtype,
            )
            kwargs["device_map"] = {"": self.device.index or 0}
        with self._hub_errors():
            model = AutoModelForCausalLM.from_pretrained(self.source, **kwargs)
        if not self.config.load_in_4bit:
            model.to(self.device)
        model.eval()
        return model

    def engine_policy(self, adapter: str | None):
        """Q_eta for the stages that generate and score (`generate`, score.token_logprobs): served by the vLLM
        engine, or loaded here (`load_policy`)."""
        if self.engine is not None:
            return self.engine.policy(adapter)
        return self.load_policy(adapter)

    def load_policy(self, adapter: str | None):
        """Q_eta: the base model with iteration eta's LoRA adapter (the base itself for eta = 0)."""
        model = self.load_base()
        if adapter is None:
            return model
        from peft import PeftModel

        try:
            policy = PeftModel.from_pretrained(model, checked_adapter(adapter))
        except RuntimeError as err:  # torch's load_state_dict: the adapter's matrices are not this model's shapes
            if "size mismatch" not in str(err):
                raise
            raise StargateError(f"adapter {adapter} does not fit the base model {self.source}: its weights have "
                                "other shapes (made for another model?); give --run with the run that trained it, "
                                "whose recipe names its base model") from None
        policy.eval()
        return policy

    # -- rendering -------------------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in this tokenizer's tokens (no special tokens): the efficiency metrics' unit."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _tokens_in_spans(self, text: str, spans: list[tuple[int, int]]) -> Encoded:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        targets = [
            i
            for i, (start, end) in enumerate(enc["offset_mapping"])
            if end > start and any(end > s and start < e for s, e in spans)
        ]
        return Encoded(list(enc["input_ids"]), targets)

    def _prefix(self, full: str, prefix: str) -> int:
        if not full.startswith(prefix):
            raise StargateError(
                "the questioner's chat template does not render a conversation as an extension of its prefix, "
                "so trained and scored spans cannot be located: use a model with a standard chat template"
            )
        return len(prefix)

    def encode_for_training(self, messages: list[dict]) -> Encoded:
        """All assistant turns are targets, each including its end-of-turn marker; the rest is masked. A turn
        marked {"cut": True} (generated up to its token limit, no end-of-turn sampled) is a target up to the end of
        its text, the marker after it masked: a policy gradient trains only what the policy sampled. (A cut turn
        with no text left keeps its marker, the one token that stands for the turn.)"""
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start = self._prefix(full, self.render(messages[:i], add_generation_prompt=True))
                end = self._prefix(full, self.render(messages[: i + 1]))
                if message.get("cut") and message["content"].strip():
                    end = self._content_span(full, start, message["content"])[1]
                spans.append((start, end))
        return self._tokens_in_spans(full, spans)

    def _content_span(self, full: str, start: int, content: str) -> tuple[int, int]:
        """Where a message's text is in the rendered chat, from `start` (its turn's first character) on."""
        found = full.find(content, start)
        if found < 0:  # some templates trim message content
            content = content.strip()
            found = full.find(content, start)
        if found < 0 or not content:
            raise StargateError("cannot locate a message's text in the rendered chat (empty text?)")
        return found, found + len(content)

    def encode_for_scoring(self, prefix: list[dict], target: str) -> Encoded:
        """The target's own tokens after the prefix: no template markers, no end-of-turn, no padding."""
        full = self.render([*prefix, {"role": "assistant", "content": target}])
        start = self._prefix(full, self.render(prefix, add_generation_prompt=True))
        return self._tokens_in_spans(full, [self._content_span(full, start, target)])

    # -- generation ------------------------------------------------------------------------------------------
    def stop_token_ids(self, model) -> list[int]:
        return _stop_ids(self.tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None))

    @functools.cached_property
    def served_stop_ids(self) -> list[int]:
        """stop_token_ids for a model served elsewhere: its generation config read (once) from the model's files."""
        from transformers import GenerationConfig

        try:
            configured = GenerationConfig.from_pretrained(self.source).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's end of sequence alone
            configured = None
        return _stop_ids(self.tokenizer.eos_token_id, configured)

    def generate(
        self,
        model,
        conversations: list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        batch_size: int,
        seed: int,
        on_batch=None,
    ) -> Completions:
        """Complete each message list. Batches are length-sorted and left-padded; greedy when temperature is 0.
        Each completion says whether it was cut at max_new_tokens (Completions.cut).

        With a memory budget a batch holds as many prompts (up to batch_size) as fit it. The seed is set once,
        so a given list of conversations always yields the same texts.
        """
        import torch

        from .budget import Shape, generation_batch
        from .decode import decode

        prompts = [
            self.tokenizer(self.render(m, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for m in conversations
        ]
        if self.engine is not None and not isinstance(model, torch.nn.Module):  # a policy the engine serves
            return model.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed, stop_ids=self.served_stop_ids, on_done=on_batch)
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        outputs: list[str] = [""] * len(prompts)
        cut = [False] * len(prompts)
        stop_ids = set(self.stop_token_ids(model))
        pad = self.tokenizer.pad_token_id
        shape = Shape.of(model) if self.memory_budget_bytes else None
        torch.manual_seed(seed)
        generator = torch.Generator(self.device).manual_seed(seed)
        start = 0
        while start < len(order):
            width = len(prompts[order[start]])  # the longest left in the batch
            size = generation_batch(width, max_new_tokens, max_batch=batch_size,
                                    budget_bytes=self.memory_budget_bytes, shape=shape)
            batch = order[start : start + size]
            start += len(batch)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=self.device)
            mask = torch.tensor(
                [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=self.device
            )
            if self.static_decoder and not self._static_refused(model, width + max_new_tokens):
                new = decode(model, ids, mask, max_new_tokens=max_new_tokens, stop_ids=self.stop_token_ids(model),
                             pad_id=pad, temperature=temperature, top_p=top_p, generator=generator)
            else:
                with torch.no_grad():
                    new = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad,
                        eos_token_id=self.stop_token_ids(model),
                        **_sampling_args(temperature, top_p),
                    )[:, width:]
            for row, i in enumerate(batch):
                outputs[i] = self.tokenizer.decode(new[row], skip_special_tokens=True).strip()
                cut[i] = stop_ids.isdisjoint(new[row].tolist())  # a row that stopped holds its stop token
            if on_batch:
                on_batch(len(batch))
        return Completions(outputs, cut)

    def _static_refused(self, model, total_tokens: int) -> bool:
        """True (after a one-line notice) where the static decoder would decode this model wrongly."""
        from .decode import static_decoding_refusal

        reason = static_decoding_refusal(model, total_tokens)
        if reason:
            warnings.warn(FallbackNotice(
                f"the static decoder does not support {model.config.model_type}'s {reason}: decoding with "
                "transformers' generate (same results, slower)"), stacklevel=3)
        return reason is not None

    def stream(self, model, messages: list[dict], *, max_new_tokens: int, temperature: float, top_p: float):
        """Yield the completion of one conversation piece by piece, as it is generated."""
        from threading import Thread

        import torch
        from transformers import TextIteratorStreamer

        ids = self.tokenizer(self.render(messages, add_generation_prompt=True), add_special_tokens=False,
                             return_tensors="pt")["input_ids"].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = _sampling_args(temperature, top_p)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_token_ids(model),
                      streamer=streamer, **sampling)
        worker = Thread(target=lambda: _no_grad_generate(model, kwargs), daemon=True)
        worker.start()
        yield from streamer
        worker.join()


def _stop_ids(eos_token_id: int | None, configured: int | list[int] | None) -> list[int]:
    ids = {eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    return sorted(i for i in ids if i is not None)


def checked_adapter(adapter: str) -> str:
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise StargateError(f"adapter {adapter} is missing or incomplete: rerun the iteration that trains it")
    return adapter


class SharedBase:
    """One copy of the base weights serving Q_0 and any number of iterations' adapters (evaluation compares
    them all): adapters are loaded beside each other with peft, and Q_0 is the model with its adapters off."""

    def __init__(self, questioner: Questioner):
        self.questioner = questioner
        self.model = None
        self.adapter_names: dict[str, str] = {}

    @contextmanager
    def policy(self, adapter: str | None) -> Iterator:
        """The model acting as Q_eta (its adapter active) or, with None, as Q_0, for the duration of the block."""
        from peft import PeftModel

        if self.questioner.engine is not None:  # the vLLM server holds the base and every adapter
            yield self.questioner.engine_policy(adapter)
            return
        if self.model is None:
            self.model = self.questioner.load_base()
        if adapter is None:
            if isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
            return
        name = self.adapter_names.get(adapter)
        if name is None:
            name = f"adapter-{len(self.adapter_names)}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(checked_adapter(adapter), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, checked_adapter(adapter), adapter_name=name)
            self.adapter_names[adapter] = name
        self.model.set_adapter(name)
        self.model.eval()
        yield self.model


def _sampling_args(temperature: float, top_p: float) -> dict:
    """Greedy at temperature 0, else nucleus sampling; nothing from the model's generation config either way."""
    plain = {**PLAIN_SAMPLING, "min_p": None}  # transformers: None is off
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p, **plain}
    return {"do_sample": False, **plain}


def _no_grad_generate(model, kwargs: dict) -> None:
    import torch

    with torch.no_grad():
        model.generate(**kwargs)
