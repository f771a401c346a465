"""Static-cache decoding, with the decoding step replayed as a CUDA graph on a GPU.

transformers' `generate` spends most of each step launching kernels from Python (about 65 ms per step for a
7B model whatever the batch, measured on an H100), far above the time the GPU needs to read the weights. Here the
KV cache has a fixed size and every per-step input lives in a fixed buffer, so one decoding step is captured
once per batch and replayed: the CPU launches one graph per token instead of a thousand kernels.

Decoding steps also use their own attention (`grouped_decode_attention`): transformers' sdpa path copies the
whole cache to every query head when a mask is given (grouped-query models have 4 query heads per KV head),
which at batch 64 moves more memory than the weights themselves.

The same code runs without the graph (eagerly) on CPU, where tests check it against `generate`. Models whose
attention it would get wrong (`static_decoding_refusal`) are decoded by `generate` instead.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from .logits import in_nucleus

ATTENTION_NAME = "stargate_grouped_decode"


def decode(
    model,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    temperature: float,
    top_p: float,
    generator=None,
    use_graph: bool | None = None,
):
    """New tokens [batch, <= max_new_tokens] for left-padded prompts; rows that stopped are padded with pad_id.

    Greedy at temperature 0; otherwise nucleus sampling (no top-k) from `generator`. `use_graph` defaults to
    "on CUDA"; if the step cannot be captured the decoding goes on eagerly, with a warning.
    """
    import torch
    from transformers import StaticCache

    device = input_ids.device
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    use_graph = device.type == "cuda" if use_graph is None else use_graph
    cache = {_cache_argument(model): StaticCache(config=model.config, max_cache_len=total)}
    valid = attention_mask.bool()

    # Prefill: causal attention over the prompt, padding masked out; cache slots past the prompt masked too.
    causal = torch.tril(torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device))
    prefill_mask = torch.zeros(batch, 1, prompt_len, total, dtype=torch.bool, device=device)
    prefill_mask[:, 0, :, :prompt_len] = causal[None] & valid[:, None, :]
    # A padded query row would attend to nothing (NaN in sdpa): let it see itself; its output is never used.
    prefill_mask[:, 0, torch.arange(prompt_len), torch.arange(prompt_len)] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), _attention(model):
        logits = model(input_ids=input_ids, attention_mask=prefill_mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1, **cache).logits[:, -1]

    # Fixed buffers for the decoding step: the token, its position, and which cache slots it may attend to.
    step_ids = torch.full((batch, 1), pad_id, dtype=torch.long, device=device)
    step_positions = positions[:, -1:].clone()
    step_mask = torch.zeros(batch, 1, 1, total, dtype=torch.bool, device=device)
    step_mask[:, 0, 0, :prompt_len] = valid

    def step():
        with _attention(model):
            return model(input_ids=step_ids, attention_mask=step_mask, position_ids=step_positions,
                         use_cache=True, **cache).logits[:, -1]

    stops = torch.tensor(stop_ids or [-1], device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    graph, graph_logits = None, None
    produced = 0
    for t in range(max_new_tokens):
        token = _choose(logits, temperature, top_p, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out[:, t] = token
        produced = t + 1
        finished |= torch.isin(token, stops)
        if t == max_new_tokens - 1 or (t % 8 == 7 and bool(finished.all())):
            break
        step_ids.copy_(token[:, None])
        step_positions += 1
        step_mask[:, 0, 0, prompt_len + t] = True
        with torch.no_grad():
            if use_graph and graph is None and t >= 1:  # the first step (eager) warmed up every kernel
                graph, graph_logits = _capture(step)
                if graph is None:
                    use_graph = False
                    logits = step()  # the failed capture ran nothing: take this step eagerly
                    continue
            if graph is not None:
                graph.replay()
                logits = graph_logits
            else:
                logits = step()
    return out[:, :produced]


def static_decoding_refusal(model, total_tokens: int) -> str | None:
    """What about `model` this decoder would get wrong over `total_tokens` (prompt and reply), or None.

    It passes its own full-causal masks (so no sliding window or chunk is applied), keeps a plain static cache,
    and runs attention through sdpa, which knows no attention soft-capping, sink logits or latent heads.
    """
    import torch

    config = model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or [
        "sliding_attention" if window else
        "chunked_attention" if getattr(config, "attention_chunk_size", None) else "full_attention"
    ]
    others = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if others:
        return f"layer types {', '.join(others)}"
    if "sliding_attention" in layer_types and window and window < total_tokens:
        return f"sliding-window attention ({window} tokens, shorter than prompt and reply)"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention soft-capping"
    if getattr(config, "kv_lora_rank", None) or getattr(config, "v_head_dim", None) not in (
        None, getattr(config, "head_dim", None)
    ):
        return "latent or uneven attention heads"
    if any(isinstance(getattr(module, "sinks", None), torch.nn.Parameter) for module in model.modules()):
        return "attention sinks"
    return None


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one new token per sequence, each KV head serving its group of query heads in place.

    query [batch, heads, 1, dim]; key/value [batch, kv_heads, cache, dim]; attention_mask [batch, 1, 1, cache]
    (bool, True = attend). Prompts (more than one query position) go to transformers' sdpa attention.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or attention_mask is None or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    # The group's query heads take the place of query positions: sdpa then pairs each KV head with its own
    # group (query head h uses KV head h // group), reads the cache once and keeps its scores in fp32.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask[..., : key.shape[2]], scale=scaling
    )  # [batch, kv_heads, group, dim]
    return out.reshape(batch, 1, heads, dim), None


@contextmanager
def _attention(model):
    """Route the model's attention through grouped_decode_attention for the duration (restored after)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, grouped_decode_attention)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` in newer transformers, `past_key_values` before."""
    import inspect

    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(decoder).forward).parameters else "past_key_values"


def _capture(step):
    """Record one decoding step as a CUDA graph; (None, None) where the step cannot be captured."""
    import torch

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            logits = step()
    except Exception as err:  # some quantised kernels or models sync with the CPU inside their forward
        warnings.warn(f"decoding step could not be captured as a CUDA graph ({err}); decoding eagerly",
                      stacklevel=3)
        return None, None
    return graph, logits


def _choose(logits, temperature: float, top_p: float, generator):
    """Greedy at temperature 0, else a sample from the smallest set of tokens holding top_p of the mass."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(~in_nucleus(probs, top_p), 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
