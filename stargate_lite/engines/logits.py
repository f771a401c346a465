"""The lean path to a decoder's logits: the output head applied to chosen hidden states only, as the model's own
forward would, for scoring (score.py) and training (training.py) alike; and what that path refuses. And the
nucleus the sampler draws from, shared by the decoder (decode.py) and the policy-gradient loss (training.py)."""

from __future__ import annotations

# Config fields of models whose forward scales the logits (Cohere, Granite, Falcon-H1, ...) or the last hidden
# state (MiniCPM) beyond what the fast path repeats; a value of 1 changes nothing.
LOGIT_SCALING_FIELDS = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier", "dim_model_base")


def fast_scoring_refusal(decoder) -> str | None:
    """What of `decoder`'s logits the fast path would not reproduce (it applies the output embedding and any
    final soft-capping to the last hidden states), or None."""
    if decoder.get_output_embeddings() is None:
        return "output head"
    for config in (decoder.config, decoder.config.get_text_config(decoder=True)):
        for field in LOGIT_SCALING_FIELDS:
            value = getattr(config, field, None)
            if value is not None and value != 1:
                return f"logit scaling ({field}={value})"
    return None


def head_logits(decoder, states):
    """Logits of last hidden states [n, hidden] in fp32 (fp64 for an fp64 model), as the model's forward makes
    them (for a decoder that `fast_scoring_refusal` accepts): the output embedding, then any final soft-capping."""
    import torch

    logits = at_least_fp32(decoder.get_output_embeddings()(states))
    softcap = getattr(decoder.config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def in_nucleus(probs, top_p: float):
    """Which tokens nucleus sampling may draw, as a boolean mask of probs' shape: the likeliest first, each while
    the mass of those before it is at most top_p."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    inside = sorted_probs.cumsum(-1) - sorted_probs <= top_p
    return torch.zeros_like(inside).scatter_(-1, order, inside)


def sampling_logprobs(logits, tokens, temperature: float, top_p: float):
    """Each token's log-prob [n] under the distribution its Questioner sampled from, from logits [n, vocab]: the
    softmax at `temperature`, cut to the top-p nucleus and renormalised. The token itself always counts as in
    the nucleus, so the value is finite where another engine's rounding or a changed policy has put it outside;
    at the sampler's own weights it is the sampler's log-prob. Differentiable in the logits (the nucleus, a
    choice of tokens, is not)."""
    import torch

    scaled = at_least_fp32(logits) / temperature
    chosen = scaled.gather(1, tokens.unsqueeze(1)).squeeze(1)
    if top_p >= 1.0:
        return chosen - torch.logsumexp(scaled, dim=-1)
    with torch.no_grad():
        keep = in_nucleus(torch.softmax(scaled, dim=-1), top_p)
        keep[torch.arange(len(tokens), device=tokens.device), tokens] = True
    return chosen - torch.logsumexp(scaled.masked_fill(~keep, float("-inf")), dim=-1)


def at_least_fp32(tensor):
    """fp32 for half and bfloat16 tensors, for log-softmax over a vocabulary; fp64 stays fp64 (gradient checks)."""
    import torch

    return tensor if tensor.dtype == torch.float64 else tensor.float()
