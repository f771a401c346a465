"""The DPO margin an iteration's adapter reaches on its own training pairs (train.method dpo).

For each (chosen, rejected) pair the iteration trained on: (log pi(chosen) - log pi_base(chosen)) - (log pi(rejected)
- log pi_base(rejected)), over the trained tokens, with the adapter on and off. Before training every margin is 0.

    python -m benchmarks.dpo_margin HOME RUN ITERATION
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from stargate_lite.engines.questioner import Questioner
from stargate_lite.engines.training import sequence_logprobs
from stargate_lite.methods.dpo import preference_examples
from stargate_lite.runs import pick_run, recipe_of_run
from stargate_lite.store import Store


def main(home: Path, run: str, iteration: int) -> None:
    store = Store(home, create=False)
    recipe = recipe_of_run(pick_run(store, run))
    questioner = Questioner(recipe.questioner, home)
    pairs = [(questioner.encode_for_training(c), questioner.encode_for_training(r))
             for c, r in preference_examples(store, recipe, run, iteration)]
    policy = questioner.load_policy(store.training(run, iteration)["adapter"])
    sequences = [c for c, _ in pairs] + [r for _, r in pairs]
    pad = questioner.tokenizer.pad_token_id
    with torch.no_grad():
        tuned = sequence_logprobs(policy, policy.get_base_model(), sequences, pad, True)
        with policy.disable_adapter():
            base = sequence_logprobs(policy, policy.get_base_model(), sequences, pad, True)
    n = len(pairs)
    margins = (tuned[:n] - base[:n]) - (tuned[n:] - base[n:])
    print(f"{run} iteration {iteration}: {n} pairs, margin mean {margins.mean():.2f} nats "
          f"(min {margins.min():.2f}, max {margins.max():.2f}), positive {int((margins > 0).sum())}/{n}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
