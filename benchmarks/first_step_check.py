"""rloo's first optimizer step is on policy in the precision training runs in: ratios of exactly 1, a KL of 0.

    python -m benchmarks.first_step_check            # CUDA where there is one (bf16 weights, bf16 autocast)
    python -m benchmarks.first_step_check --cpu-bf16 # the CPU in bf16 autocast, as tests/test_settings.py checks

A random model of Mistral-7B's layer shape (2 layers, so it builds in seconds), a fresh LoRA adapter (the base,
exactly), and one rloo step with a KL penalty on random token sequences: the sampler's and the base's log-probs
are computed before the step, the policy's in it. Not a timing: it prints the first step's ratio_drift, clipped
and kl as JSON and exits 1 unless ratio_drift and kl are 0 (issue 45, item 2: both were computed outside
the bf16 autocast the policy's ran in, so on a GPU they were not).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.shapes import random_mistral


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-bf16", action="store_true", help="on the CPU, under bf16 autocast")
    args = parser.parse_args()
    import torch

    from stargate_lite.engines import training
    from stargate_lite.engines.encoded import Encoded
    from stargate_lite.recipe import TrainConfig
    from stargate_lite.training_methods import training_method

    cuda = torch.cuda.is_available() and not args.cpu_bf16
    if args.cpu_bf16:
        training.precision = lambda device_type: torch.autocast("cpu", dtype=torch.bfloat16)
    model = random_mistral("cuda" if cuda else "cpu", layers=2, dtype=torch.bfloat16 if cuda else torch.float32)
    config = TrainConfig(method="rloo", init="previous", lora_dropout=0.0, target="none", kl_beta=0.04,
                         batch_size=4, warmup_ratio=0.0, lora_r=16, lora_alpha=32)
    generator = torch.Generator().manual_seed(0)
    samples = [(Encoded(torch.randint(3, 32000, (192,), generator=generator).tolist(), list(range(128, 192))),
                advantage) for advantage in (1.0, -1.0, 0.5, -0.5)]
    with tempfile.TemporaryDirectory() as out:
        record = training.train_lora(training.attach_lora(model, config, seed=0), samples, config,
                                     method=training_method("rloo"), seed=0, out_dir=Path(out) / "adapter",
                                     pad_token_id=0, sampling=(0.9, 0.9))
    first = record["policy_steps"][0]
    device = torch.cuda.get_device_name() if cuda else "cpu, bf16 autocast" if args.cpu_bf16 else "cpu, fp32"
    print(json.dumps({"device": device, **first}))
    return 0 if first["ratio_drift"] == 0 and first["kl"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
