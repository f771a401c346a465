"""Models the benchmarks share (a helper, not a script): the tiny built-in model on CPU, or random weights of Mistral-7B's shape on CUDA.

Nothing is downloaded: the Mistral-shaped checkpoint (bf16, ~14.5 GB) is made once from random weights and
saved with a stand-in tokenizer (32,000 words, a chat template) so that every loader, Unsloth's included, can
read it from disk.
"""

from __future__ import annotations

import os
from pathlib import Path

MISTRAL_CHECKPOINT = Path(os.environ.get("STARGATE_BENCH_CHECKPOINT", "/tmp/stargate-mistral-7b-shape"))
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM, the MFU denominator


def mistral_config(layers: int = 32):
    from transformers import MistralConfig

    # Mistral-7B-Instruct-v0.2: 7.24e9 parameters, grouped-query attention, no sliding window.
    return MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                         rope_theta=1e6, sliding_window=None, bos_token_id=1, eos_token_id=2)


def random_mistral(device: str = "cuda", layers: int = 32, dtype=None):
    """Random weights of the real shape (bf16 unless told), built on the device (seconds, no disk)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(mistral_config(layers), dtype=dtype or torch.bfloat16,
                                                 attn_implementation="sdpa")
    return model.eval()


def mistral_checkpoint(path: Path = MISTRAL_CHECKPOINT) -> Path:
    """The saved random checkpoint, made on first use."""
    if (path / "config.json").is_file():
        return path
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = random_mistral()
    model.save_pretrained(tmp, max_shard_size="4GB")
    del model
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)
    return path


def tiny_source() -> str:
    from stargate_lite.engines.models import questioner_source

    return questioner_source("builtin:smollm2-135m-instruct", None, Path(os.environ.get("STARGATE_HOME", ".stargate")))


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
