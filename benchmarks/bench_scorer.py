"""Our scorer against a plain forward + full-vocabulary log_softmax, on the same inputs, side by side.

    python benchmarks/bench_scorer.py                          # CPU, the tiny built-in model
    python benchmarks/bench_scorer.py --shape mistral-7b       # CUDA, random weights of Mistral-7B's shape

Each variant runs in its own process so its peak memory is its own (CPU: peak RSS; CUDA: peak allocated).
Prints one table: time, tokens/s, extra peak memory, and our/plain ratios, plus the max per-token difference.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _model(shape: str):
    import torch

    if shape == "tiny":
        from stargate_lite.models import questioner_source
        from transformers import AutoModelForCausalLM

        home = Path(os.environ.get("STARGATE_HOME", ".stargate"))
        source = questioner_source("builtin:smollm2-135m-instruct", None, home)
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval(), torch.device("cpu")
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval(), torch.device("cuda")


def _inputs(batch: int, length: int, target: int, vocab: int, seed: int = 0):
    import torch

    from stargate_lite.questioner import Encoded

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


def _ours(model, items, device, batch, chunk):
    from stargate_lite.score import token_logprobs

    return token_logprobs(model, items, batch_size=batch, vocab_chunk_tokens=chunk)


def _worker(variant: str, args: dict, queue) -> None:
    import torch

    model, device = _model(args["shape"])
    items = _inputs(args["batch"], args["length"], args["target"], model.config.vocab_size)
    run = (lambda: _plain(model, items, device)) if variant == "plain" else \
        (lambda: _ours(model, items, device, args["batch"], args["chunk"]))
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
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    params = sum(p.numel() for p in model.parameters())
    queue.put({"variant": variant, "seconds": statistics.median(times), "extra_bytes": extra, "params": params,
               "logprobs": [t.tolist() for t in result]})


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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    tiny = a.shape == "tiny"
    args = {"shape": a.shape, "batch": a.batch or (16 if tiny else 32), "length": a.length or (512 if tiny else 1024),
            "target": a.target or (150 if tiny else 300), "chunk": a.chunk, "repeats": a.repeats}
    plain, ours = measure("plain", args), measure("ours", args)
    diff = max(abs(x - y) for p, o in zip(plain["logprobs"], ours["logprobs"]) for x, y in zip(p, o))
    tokens = args["batch"] * args["length"]
    rows = []
    for r in (plain, ours):
        row = {"variant": r["variant"], "seconds": r["seconds"], "tokens_per_s": tokens / r["seconds"],
               "extra_peak_gib": r["extra_bytes"] / 2**30}
        if not tiny:  # model FLOPs utilisation against an H100's dense bf16 peak
            row["mfu"] = 2 * r["params"] * tokens / r["seconds"] / 989e12
        rows.append(row)
    ratios = {"time_ours_over_plain": ours["seconds"] / plain["seconds"],
              "memory_ours_over_plain": ours["extra_bytes"] / max(plain["extra_bytes"], 1),
              "max_abs_diff_per_token": diff}
    if a.json:
        print(json.dumps({"args": args, "rows": rows, "ratios": ratios}, indent=2))
        return
    print(f"scorer benchmark: shape {a.shape}, batch {args['batch']} x {args['length']} tokens, "
          f"{args['target']} target tokens each, median of {args['repeats']}")
    print(f"{'variant':8} {'seconds':>8} {'tokens/s':>9} {'extra peak GiB':>15}" + ("  MFU" if not tiny else ""))
    for row in rows:
        mfu = f"  {row['mfu']:.2f}" if "mfu" in row else ""
        print(f"{row['variant']:8} {row['seconds']:8.2f} {row['tokens_per_s']:9.0f} {row['extra_peak_gib']:15.2f}{mfu}")
    print(f"ratios (ours / plain): time {ratios['time_ours_over_plain']:.2f}, "
          f"extra peak memory {ratios['memory_ours_over_plain']:.2f}; max per-token difference {diff:.2e}")


if __name__ == "__main__":
    main()
