"""Training's loss at the target positions against the model's own loss, side by side on the same batches.

    python -m benchmarks.bench_loss                       # CPU, the tiny model (fp32), batch 4 x 512
    python -m benchmarks.bench_loss --shape mistral-7b    # CUDA, random Mistral-7B-shaped weights (bf16)

own: `model(..., labels=...).loss`, whose forward builds [batch x length x vocab] logits and keeps them for
backward; targets: `stargate_lite.engines.training.loss_at_targets`, what the peft backend trains with. One LoRA adapter
(r 16, all linear layers, gradient checkpointing, B made non-zero so every LoRA weight has a gradient) serves
both, on the same micro-batches, alternately; 40% of each sequence is target, in turns, as in a conversation.
Prints the median step (forward + backward) time, the peak memory of a step beyond the model (CUDA: the
allocator's peak; CPU: tensor storage, tests/memtrack.py) and the largest difference in loss and gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

from benchmarks.shapes import gpu_name, random_mistral, tiny_source


def _batches(count: int, batch: int, length: int, vocab: int, device):
    import torch

    from stargate_lite.engines.training import IGNORE

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (batch, length), generator=g)
        labels = torch.full_like(ids, IGNORE)
        for row in range(batch):
            start = 100 + 17 * row
            for p in range(start, length):
                if (p - start) // 48 % 5 in (1, 3):  # 2 turns in 5 are the Questioner's
                    labels[row, p] = ids[row, p]
        out.append((ids.to(device), torch.ones_like(ids).to(device), labels.to(device),
                    int((labels != IGNORE).sum())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after one warm-up")
    a = parser.parse_args()

    import torch

    from stargate_lite.engines.training import attach_lora, loss_at_targets
    from stargate_lite.recipe import TrainConfig
    from tests.memtrack import PeakMemory

    cuda = a.shape == "mistral-7b"
    if cuda:
        model, batch, length = random_mistral("cuda"), 8, 1024
    else:
        from transformers import AutoModelForCausalLM

        model, batch, length = AutoModelForCausalLM.from_pretrained(tiny_source(), dtype=torch.float32), 4, 512
    config = TrainConfig(lora_r=16, lora_alpha=32, lora_dropout=0.0, gradient_checkpointing=True)
    model = attach_lora(model, config, seed=0)
    model.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    decoder = model.get_base_model()
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    batches = _batches(a.steps + 1, batch, length, model.config.vocab_size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    losses = {
        "own": lambda ids, mask, labels, n: model(input_ids=ids, attention_mask=mask, labels=labels,
                                                  num_items_in_batch=n).loss,
        "targets": lambda ids, mask, labels, n: loss_at_targets(decoder, ids, labels) / n,
    }
    times = {k: [] for k in losses}
    peaks = {k: [] for k in losses}
    loss_gap, grad_gap = 0.0, 0.0
    for step, (ids, mask, labels, n) in enumerate(batches):
        results = {}
        for name, loss_of in losses.items():
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            tracker = nullcontext() if cuda else PeakMemory()
            started = time.perf_counter()
            with autocast, tracker:
                loss = loss_of(ids, mask, labels, n)
                loss.backward()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated() - before if cuda else tracker.peak
            results[name] = (loss.item(), [p.grad.float().clone() for p in params])
            if step:  # the first step warms up
                times[name].append(elapsed)
                peaks[name].append(peak)
        loss_gap = max(loss_gap, abs(results["own"][0] - results["targets"][0]))
        grad_gap = max(grad_gap, max((x - y).abs().max().item() for x, y in zip(results["own"][1],
                                                                                 results["targets"][1])))
    print(f"{a.shape} on {gpu_name()}: batch {batch} x {length}, {batches[0][3]} target tokens per batch, "
          f"vocabulary {model.config.vocab_size}, {a.steps} steps")
    for name in losses:
        print(f"  {name:<8} step {statistics.median(times[name]):7.3f} s  peak {max(peaks[name]) / 2**30:6.2f} GiB")
    print(f"  targets/own: time {statistics.median(times['targets']) / statistics.median(times['own']):.2f}x, "
          f"peak memory {max(peaks['targets']) / max(peaks['own']):.2f}x; largest difference: loss {loss_gap:.2e}, "
          f"gradient {grad_gap:.2e}")


if __name__ == "__main__":
    main()
