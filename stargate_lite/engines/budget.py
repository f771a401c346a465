"""Batch sizes from a memory budget: the extra memory (beyond the weights) a forward or a decoding may take.

The estimates are upper bounds per token, from the model's shape, for a no-grad forward through
transformers' decoder layers with sdpa attention: the residual stream and attention projections
(a few hidden-size vectors), the MLP's gate, up and product (three intermediate-size vectors), and the
final states kept for the head; scaled by a safety margin measured on CPU (tests) and CUDA (gpu_check).
"""

from __future__ import annotations

from dataclasses import dataclass

MARGIN = 1.25


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    act_bytes: int  # bytes per activation value (2 for bf16/fp16 and 4-bit compute, 4 for fp32)

    @classmethod
    def of(cls, model) -> Shape:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        compute = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), None)
        act_bytes = compute.itemsize if compute is not None else 4
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, kv_heads * head_dim,
                   config.vocab_size, act_bytes)

    def forward_bytes_per_token(self) -> int:
        """Peak activation memory of a no-grad forward, per input token (all layers free as they go)."""
        # RMSNorm works in fp32 (2 x hidden fp32), rotary makes copies of q and k, sdpa with a mask expands
        # k and v to every head: about 10 hidden-size vectors live at once in attention, 3 intermediate in the MLP.
        return int(MARGIN * (self.act_bytes * (10 * self.hidden + 3 * self.intermediate) + 8 * self.hidden))

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_dim * self.act_bytes

    def logits_bytes(self, positions: int) -> int:
        """fp32 logits for `positions` positions, plus logsumexp's temporaries."""
        return 3 * 4 * self.vocab * positions


def score_batches(lengths: list[int], *, max_batch: int, budget_bytes: int | None, shape: Shape | None,
                  logits_positions: int) -> list[list[int]]:
    """Indices grouped into batches, longest first; each batch's padded forward fits the budget.

    A sequence that alone exceeds the budget still gets a batch of its own (there is no smaller unit).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if budget_bytes is None or shape is None:
        return [order[i : i + max_batch] for i in range(0, len(order), max_batch)]
    room = budget_bytes - shape.logits_bytes(logits_positions)
    per_token = shape.forward_bytes_per_token()
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        width = lengths[current[0]] if current else lengths[i]  # the first (longest) sets the padded width
        if current and len(current) < max_batch and (len(current) + 1) * width * per_token <= room:
            current.append(i)
        else:
            batches.append([i])
    return batches


def vocab_chunk(budget_bytes: int | None, shape: Shape | None, configured: int) -> int:
    """Positions projected to the vocabulary at once: the configured chunk, smaller if the logits would take
    more than a quarter of the budget."""
    if budget_bytes is None or shape is None:
        return configured
    return max(1, min(configured, budget_bytes // 4 // shape.logits_bytes(1)))


def generation_batch(prompt_len: int, new_tokens: int, *, max_batch: int, budget_bytes: int | None,
                     shape: Shape | None) -> int:
    """Sequences decoded together: the KV cache of the whole length plus the prompt's prefill activations."""
    if budget_bytes is None or shape is None:
        return max_batch
    per_sequence = (prompt_len + new_tokens) * shape.kv_bytes_per_token() + \
        prompt_len * shape.forward_bytes_per_token() + shape.logits_bytes(1)
    return max(1, min(max_batch, budget_bytes // per_sequence))
