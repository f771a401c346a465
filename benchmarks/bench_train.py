"""Our LoRA trainer against the standard transformers + peft recipe on the same data, side by side.

    python -m benchmarks.bench_train                       # CPU, tiny model (fp32): plain vs ours
    python -m benchmarks.bench_train --shape mistral-7b    # CUDA, 4-bit random Mistral-7B-shaped checkpoint

plain: the usual QLoRA recipe -- from_pretrained with BitsAndBytesConfig nf4 (CUDA),
prepare_model_for_kbit_training, get_peft_model, the model's own loss, gradient checkpointing on CUDA.
ours: stargate_lite.stages.train (load_for_training + train_lora) with train.backend=peft, and on CUDA a third
row with train.backend=unsloth where Unsloth is installed. LoRA r=16 on all linear layers, AdamW, bf16 autocast
on CUDA. Each variant runs in its own process (peak memory is its own; Unsloth patches transformers on import).
Prints tokens/s (median step after a warm-up) and peak memory, and the ratios to plain.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.shapes import gpu_name, mistral_checkpoint, tiny_source


def _examples(n: int, length: int, vocab: int):
    import torch

    from stargate_lite.engines.encoded import Encoded

    g = torch.Generator().manual_seed(0)
    return [Encoded(torch.randint(3, vocab, (length,), generator=g).tolist(), list(range(1, length)))
            for _ in range(n)]


def _plain(args: dict, source: str, cuda: bool, on_step) -> None:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    if cuda:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": 0})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    device = next(model.parameters()).device
    examples = _examples(args["batch"] * args["steps"], args["length"], model.config.vocab_size)
    for step in range(args["steps"]):
        ids = torch.tensor([e.input_ids for e in examples[step * args["batch"] : (step + 1) * args["batch"]]],
                           device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        on_step({"step": step + 1, "total": args["steps"], "loss": loss.item()})


def _ours(args: dict, source: str, cuda: bool, backend: str, on_step) -> list[str]:
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.engines.training import load_for_training, train_lora
    from stargate_lite.methods.sft import METHOD as SFT
    from stargate_lite.recipe import QuestionerConfig, TrainConfig

    questioner = Questioner(QuestionerConfig(model=source, load_in_4bit=cuda, device="cuda" if cuda else "cpu"),
                            Path(tempfile.mkdtemp()))
    config = TrainConfig(lora_r=16, lora_alpha=32, lora_dropout=0.0, batch_size=args["batch"],
                         max_length=args["length"], warmup_ratio=0.0, gradient_checkpointing=cuda, backend=backend)
    model, used = load_for_training(questioner, config, seed=0, method=SFT)
    assert used == backend, f"asked for {backend}, got {used}"
    examples = _examples(args["batch"] * args["steps"], args["length"], questioner.tokenizer.vocab_size)
    out = Path(tempfile.mkdtemp()) / "adapter"
    train_lora(model, examples, config, method=SFT, seed=0, out_dir=out, pad_token_id=0, backend=backend,
               on_step=on_step)
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        return sorted(f.keys())


def _worker(variant: str, args: dict, queue) -> None:
    os.dup2(2, 1)  # libraries' banners (Unsloth prints one) go to stderr: stdout holds the result alone
    cuda = args["shape"] == "mistral-7b"
    if variant == "ours-unsloth":
        import unsloth  # noqa: F401 -- first, so that it patches transformers before anything loads it
    import torch

    source = str(mistral_checkpoint()) if cuda else tiny_source()
    stamps: list[float] = []

    def on_step(step) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    keys = []
    if variant == "plain":
        _plain(args, source, cuda, on_step)
    else:
        keys = _ours(args, source, cuda, "unsloth" if variant == "ours-unsloth" else "peft", on_step)
    steps = [b - a for a, b in zip([start, *stamps], stamps)][1:]  # the first step warms up
    peak = torch.cuda.max_memory_allocated() if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    queue.put({"variant": variant, "step_seconds": statistics.median(steps), "peak_bytes": peak,
               "adapter_keys": keys})


def measure(variant: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_worker, args=(variant, args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        return {"variant": variant, "error": f"exit code {process.exitcode}"}
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 (tiny), 8 (mistral-7b)")
    parser.add_argument("--length", type=int, default=None, help="default: 256 (tiny), 1024 (mistral-7b)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is not timed")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    tiny = a.shape == "tiny"
    args = {"shape": a.shape, "batch": a.batch or (4 if tiny else 8), "length": a.length or (256 if tiny else 1024),
            "steps": a.steps}
    variants = ["plain", "ours"]
    if not tiny:
        import importlib.util

        if importlib.util.find_spec("unsloth"):
            variants.append("ours-unsloth")
    results = [measure(v, args) for v in variants]
    tokens = args["batch"] * args["length"]
    plain = results[0]
    for r in results:
        if "error" not in r:
            r["tokens_per_s"] = tokens / r["step_seconds"]
            r["peak_gib"] = r["peak_bytes"] / 2**30
            if "error" not in plain:
                r["speed_over_plain"] = plain["step_seconds"] / r["step_seconds"]
                r["memory_over_plain"] = r["peak_bytes"] / plain["peak_bytes"]
    keyed = [r for r in results if r.get("adapter_keys")]
    same_format = len(keyed) < 2 or all(r["adapter_keys"] == keyed[0]["adapter_keys"] for r in keyed)
    summary = {"device": gpu_name(), "args": args, "rows": [{k: v for k, v in r.items() if k != "adapter_keys"}
                                                            for r in results],
               "adapters_same_format": same_format}
    if a.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"training benchmark on {summary['device']}: shape {a.shape}, batch {args['batch']} x {args['length']} "
          f"tokens, LoRA r=16 all linear, median of {args['steps'] - 1} steps")
    print(f"{'variant':13} {'tokens/s':>9} {'peak GiB':>9} {'speed/plain':>12} {'memory/plain':>13}")
    for r in summary["rows"]:
        if "error" in r:
            print(f"{r['variant']:13} failed: {r['error']}")
            continue
        print(f"{r['variant']:13} {r['tokens_per_s']:9.0f} {r['peak_gib']:9.2f} {r.get('speed_over_plain', 0):12.2f} "
              f"{r.get('memory_over_plain', 0):13.2f}")
    print(f"adapters of our backends have the same tensors: {same_format}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
