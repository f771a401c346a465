"""Questioner generation: length-sorted left-padded batches against one sequence at a time, side by side.

    python benchmarks/bench_generate.py                 # CPU, the tiny built-in model
    python benchmarks/bench_generate.py --prompts 32 --new-tokens 48

Greedy decoding, so both variants must produce the same texts (checked). Prints new tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    a = parser.parse_args()

    from stargate_lite import builtin_data
    from stargate_lite.prompts import questioner_messages
    from stargate_lite.questioner import Questioner
    from stargate_lite.recipe import load_recipe

    questioner = Questioner(load_recipe("tiny").questioner, Path(os.environ.get("STARGATE_HOME", ".stargate")))
    model = questioner.load_base()
    names = [n for n, _ in builtin_data.SEED_PERSONAS]
    prompts = [questioner_messages(names[i % len(names)], builtin_data.TASKS[i % len(builtin_data.TASKS)], [],
                                   final=False) for i in range(a.prompts)]
    kwargs = dict(max_new_tokens=a.new_tokens, temperature=0.0, top_p=1.0, seed=0)
    questioner.generate(model, prompts[:2], batch_size=2, **kwargs)  # warm-up

    def timed(batch_size: int) -> tuple[float, list[str]]:
        start = time.perf_counter()
        texts = questioner.generate(model, prompts, batch_size=batch_size, **kwargs)
        return time.perf_counter() - start, texts

    single_s, single = timed(1)
    batched_s, batched = timed(a.prompts)
    tokens = sum(len(questioner.tokenizer(t)["input_ids"]) for t in batched)
    print(f"generation benchmark: {a.prompts} prompts, up to {a.new_tokens} new tokens, greedy, CPU tiny model")
    print(f"{'variant':14} {'seconds':>8} {'new tokens/s':>13}")
    print(f"{'one at a time':14} {single_s:8.2f} {tokens / single_s:13.1f}")
    print(f"{'batched':14} {batched_s:8.2f} {tokens / batched_s:13.1f}")
    print(f"ratio batched / one at a time: {single_s / batched_s:.2f}x; identical texts: {single == batched}")


if __name__ == "__main__":
    main()
