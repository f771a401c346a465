"""Token counts without a model's weights: a GGUF's vocabulary read by llama.cpp (0.2 s for SmolLM2's), or a
Hugging Face tokenizer. The data stage checks with them that personas, tasks and gold responses fit the models
that read them, before any model is loaded. Nothing is downloaded: a model that is not on this machine yet gives
no counter, and its check waits for the stage that would fail."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import StargateError
from .models import builtin_gguf

Counter = Callable[[list[str]], list[int]]


def most_tokens(text: str) -> int:
    """An upper bound of a text's tokens in any of these vocabularies, found without one: every token covers at
    least one byte of the text, and a SentencePiece tokenizer may add one word-start marker."""
    return len(text.encode("utf-8")) + 1


@functools.cache
def _gguf_counter(path: str) -> Counter:
    from llama_cpp import _internals, llama_model_default_params

    params = llama_model_default_params()
    params.vocab_only = True  # the vocabulary alone: no weights, and no context (whose set-up would print)
    model = _internals.LlamaModel(path_model=path, params=params, verbose=False)
    return lambda texts: [len(model.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in texts]


@functools.cache
def _hf_counter(source: str, local_only: bool) -> Counter:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts \
        else []


def _local_hub_file(repo: str, filename: str) -> Path | None:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache (or no such repo): no counter
        return None


def token_counter(model: str, gguf_file: str | None = None) -> Counter | None:
    """Counts each text's tokens (no special tokens) in `model`'s vocabulary (a recipe's `model` and `gguf_file`:
    builtin:NAME, a .gguf file, a folder, a Hub repo or id); None where the vocabulary is not on this machine."""
    try:
        if model.startswith("builtin:"):
            return _gguf_counter(str(builtin_gguf(model.removeprefix("builtin:"))))
        path = Path(os.path.expanduser(model))
        if gguf_file:
            found = path / gguf_file if path.is_dir() else None if path.exists() else _local_hub_file(model, gguf_file)
            return _gguf_counter(str(found)) if found and found.is_file() else None
        if path.is_file():
            return _gguf_counter(str(path)) if path.suffix == ".gguf" else None
        if path.is_dir():
            return _hf_counter(str(path), local_only=True)
        if model.count("/") == 1 and not model.startswith((".", "/", "~")):
            return _hf_counter(model, local_only=True)
    except StargateError:
        return None  # a missing built-in package: the stage that loads the model says how to install it
    except (OSError, ValueError):
        return None  # not in the local cache, or not a tokenizer transformers can read
    return None
