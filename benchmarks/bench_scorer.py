"""Our scorer against a plain forward + full-vocabulary log_softmax, on the same inputs, side by side.

    python -m benchmarks.bench_scorer                          # CPU, the tiny built-in model
    python -m benchmarks.bench_scorer --shape mistral-7b       # CUDA, random weights of Mistral-7B's shape

Each variant runs in its own process so its peak memory is its own (CPU: peak RSS; CUDA: peak allocated).
On CUDA our scorer runs under a memory budget (--budget-gib, default 2), and a third row scores with the
base weights in 4-bit (bitsandbytes nf4, from the saved random checkpoint) at 4x the batch, to show that
weights plus scoring fit a 24 GiB card whatever the batch.
Prints one table: time, tokens/s, extra and total peak memory, MFU on CUDA, and our/plain ratios, plus the
max per-token difference.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

from benchmarks.shapes import H100_BF16_PEAK, gpu_name, mistral_checkpoint, random_mistral, tiny_source


def _model(shape: str, four_bit: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    if shape == "tiny":
        return AutoModelForCausalLM.from_pretrained(tiny_source(), dtype=torch.float32).eval(), torch.device("cpu")
    if not four_bit:
        return random_mistral(), torch.device("cuda")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(mistral_checkpoint(), quantization_config=quant,
                                                 dtype=torch.bfloat16, device_map={"": 0})
    return model.eval(), torch.device("cuda")


def _inputs(batch: int, length: int, target: int, vocab: int, seed: int = 0):
    import torch

    from stargate_lite.engines.encoded import Encoded

    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(batch):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        items.append(Encoded(ids, list(range(length - target, length))))
    return items


def _plain(model, items, device):
    import torch

    ids = torch.tensor([e.input_ids for e in items], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    out = []
    for row, e in enumerate(items):
        pos = torch.tensor(e.target_positions, device=device)
        out.append(logp[row, pos - 1].gather(1, ids[row, pos][:, None]).squeeze(1).cpu())
    return out


def _ours(model, items, batch, chunk, budget_gib):
    from stargate_lite.stages.score import token_logprobs

    budget = int(budget_gib * 2**30) if budget_gib else None
    return token_logprobs(model, items, batch_size=batch, vocab_chunk_tokens=chunk, memory_budget_bytes=budget)


def _worker(variant: str, args: dict, queue) -> None:
    import torch

    four_bit = variant == "ours-4bit"
    model, device = _model(args["shape"], four_bit)
    batch = args["batch"] * (4 if four_bit else 1)
    items = _inputs(batch, args["length"], args["target"], model.config.vocab_size)
    run = (lambda: _plain(model, items, device)) if variant == "plain" else \
        (lambda: _ours(model, items, batch, args["chunk"], args["budget_gib"]))
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        total = torch.cuda.max_memory_allocated()
    else:
        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"variant": variant, "seconds": statistics.median(times), "extra_bytes": total - base,
               "total_bytes": total, "tokens": batch * args["length"],
               "logprobs": [t.tolist() for t in result[: args["batch"]]]})


def measure(variant: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_worker, args=(variant, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (tiny), 32 (mistral-7b)")
    parser.add_argument("--length", type=int, default=None, help="default: 512 (tiny), 1024 (mistral-7b)")
    parser.add_argument("--target", type=int, default=None, help="default: 150 (tiny), 300 (mistral-7b)")
    parser.add_argument("--chunk", type=int, default=512, help="our vocab_chunk_tokens")
    parser.add_argument("--budget-gib", type=float, default=None, help="our memory budget (default: none on "
                        "the tiny model, 2 GiB on mistral-7b)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    tiny = a.shape == "tiny"
    args = {"shape": a.shape, "batch": a.batch or (16 if tiny else 32), "length": a.length or (512 if tiny else 1024),
            "target": a.target or (150 if tiny else 300), "chunk": a.chunk, "repeats": a.repeats,
            "budget_gib": a.budget_gib if a.budget_gib or tiny else 2.0}
    variants = ["plain", "ours"] + ([] if tiny else ["ours-4bit"])
    results = [measure(v, args) for v in variants]
    plain, ours = results[0], results[1]
    diff = max(abs(x - y) for p, o in zip(plain["logprobs"], ours["logprobs"]) for x, y in zip(p, o))
    params = 7.24e9 if not tiny else None
    rows = []
    for r in results:
        row = {"variant": r["variant"], "sequences": r["tokens"] // args["length"], "seconds": r["seconds"],
               "tokens_per_s": r["tokens"] / r["seconds"], "extra_peak_gib": r["extra_bytes"] / 2**30,
               "total_peak_gib": r["total_bytes"] / 2**30}
        if params:  # model FLOPs utilisation against an H100's dense bf16 peak
            row["mfu"] = 2 * params * r["tokens"] / r["seconds"] / H100_BF16_PEAK
        rows.append(row)
    ratios = {"time_ours_over_plain": ours["seconds"] / plain["seconds"],
              "memory_ours_over_plain": ours["extra_bytes"] / max(plain["extra_bytes"], 1),
              "max_abs_diff_per_token": diff}
    if a.json:
        print(json.dumps({"device": gpu_name(), "args": args, "rows": rows, "ratios": ratios}, indent=2))
        return
    print(f"scorer benchmark on {gpu_name()}: shape {a.shape}, batch {args['batch']} x {args['length']} tokens, "
          f"{args['target']} target tokens each, our budget {args['budget_gib']} GiB, median of {args['repeats']}")
    print(f"{'variant':10} {'seqs':>5} {'seconds':>8} {'tokens/s':>9} {'extra GiB':>10} {'total GiB':>10}"
          + ("  MFU" if params else ""))
    for row in rows:
        mfu = f"  {row['mfu']:.2f}" if "mfu" in row else ""
        print(f"{row['variant']:10} {row['sequences']:5} {row['seconds']:8.2f} {row['tokens_per_s']:9.0f} "
              f"{row['extra_peak_gib']:10.2f} {row['total_peak_gib']:10.2f}{mfu}")
    print(f"ratios (ours / plain): time {ratios['time_ours_over_plain']:.2f}, "
          f"extra peak memory {ratios['memory_ours_over_plain']:.2f}; max per-token difference {diff:.2e}")


if __name__ == "__main__":
    main()
