"""Scores of a run resumed after a crash against an uninterrupted run's, on the same model and conversations:
with score's chunks at fixed indices, and with batches formed from the work left (how score worked before).

    python -m benchmarks.score_resume                       # CPU, the tiny model (fp32)
    python -m benchmarks.score_resume --shape mistral-7b    # CUDA, random Mistral-7B-shaped weights (bf16)

Not a timing: it prints the largest difference of a summed log-prob between the two runs, and how many of the
items differ at all. The crash falls after the first chunk and 10 items of the second were stored.
"""

from __future__ import annotations

import argparse
import random

from benchmarks.shapes import gpu_name, random_mistral, tiny_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--items", type=int, default=192)
    a = parser.parse_args()

    import torch

    from stargate_lite.engines.encoded import Encoded
    from stargate_lite.stages.score import SCORE_CHUNK, score_sums

    if a.shape == "mistral-7b":
        model, batch_size = random_mistral("cuda"), 16
    else:
        from transformers import AutoModelForCausalLM

        model, batch_size = AutoModelForCausalLM.from_pretrained(tiny_source(), dtype=torch.float32).eval(), 8
    rng = random.Random(0)
    items = []
    for _ in range(a.items):
        length = rng.randint(200, 700)
        ids = [rng.randrange(3, model.config.vocab_size) for _ in range(length)]
        items.append(Encoded(ids, list(range(length - 150, length))))

    def scores(part):
        return [s for s, _ in score_sums(model, part, batch_size=batch_size, vocab_chunk_tokens=512)]

    crash = SCORE_CHUNK + 10
    chunks = [items[i : i + SCORE_CHUNK] for i in range(0, len(items), SCORE_CHUNK)]
    fixed = [s for chunk in chunks for s in scores(chunk)]
    # Resumed: the first chunk was stored whole; the second, cut by the crash, is scored again whole.
    fixed_resumed = fixed[:SCORE_CHUNK] + [s for chunk in chunks[1:] for s in scores(chunk)]
    left = scores(items)  # before: one pass over what is left, batched by length across all of it
    left_resumed = left[:crash] + scores(items[crash:])

    print(f"{a.shape} on {gpu_name()}, {next(model.parameters()).dtype}: {len(items)} items, chunks of "
          f"{SCORE_CHUNK}, batch {batch_size}, crash after {crash} stored")
    for name, whole, resumed in (("fixed chunks", fixed, fixed_resumed), ("work left", left, left_resumed)):
        gaps = [abs(x - y) for x, y in zip(whole, resumed)]
        print(f"  {name:<13} resumed vs uninterrupted: largest difference {max(gaps):.3g} nats, "
              f"{sum(g > 0 for g in gaps)} of {len(gaps)} items differ")


if __name__ == "__main__":
    main()
