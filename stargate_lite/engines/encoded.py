"""What every engine, stage and the trainer share: a tokenized chat and the positions of its targets, and the
sampling settings every engine holds to.

Its own module so that the Questioner and the engines it may delegate to (vllm_engine.py) share it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass

# Sampling is the recipe's temperature and top-p alone, on every engine: what a model's generation config sets
# beside them (a top-k, a min-p, a repetition penalty) would otherwise apply in transformers' `generate` and in
# vLLM, and not in the static decoder, so the engines would sample from different distributions.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


class Completions(list):
    """Generated texts, in order (a list of str), and for each whether it was cut: it stopped at its token limit,
    no end-of-turn sampled, so the turn is shorter than the policy would have made it, and an end-of-turn marker
    after it in training would be a token the policy never sampled."""

    def __init__(self, texts: list[str], cut: list[bool]):
        super().__init__(texts)
        if len(cut) != len(texts):
            raise ValueError(f"{len(cut)} cut flags for {len(texts)} texts")
        self.cut = list(cut)


@dataclass
class Encoded:
    """Token ids of a rendered chat plus the positions whose tokens are targets (trained or scored)."""

    input_ids: list[int]
    target_positions: list[int]
