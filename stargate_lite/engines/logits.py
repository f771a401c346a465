"""The lean path to a decoder's logits: the output head applied to chosen hidden states only, as the model's own
forward would, for scoring (score.py) and training (training.py) alike; and what that path refuses."""

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
    """fp32 logits of last hidden states [n, hidden], as the model's forward makes them (for a decoder that
    `fast_scoring_refusal` accepts): the output embedding, then any final soft-capping."""
    import torch

    logits = decoder.get_output_embeddings()(states).float()
    softcap = getattr(decoder.config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits
