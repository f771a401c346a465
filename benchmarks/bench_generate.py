"""Questioner generation, side by side in one run.

    python -m benchmarks.bench_generate                     # CPU, tiny model: batched vs one at a time
    python -m benchmarks.bench_generate --vllm              # ... and the vLLM engine (bash install.sh --vllm)
    python -m benchmarks.bench_generate --shape mistral-7b  # CUDA: our static-cache decoder vs generate

CPU: length-sorted left-padded batches against one sequence at a time, greedy, through Questioner.generate
(texts must match); with --vllm also the same prompts through the vLLM engine (questioner.engine vllm, a managed
server started before the clock runs, all prompts in flight), its texts compared with the batched ones.
CUDA, random weights of Mistral-7B's shape, bf16: transformers' `generate` (dynamic cache),
`generate` with a static cache (which transformers compiles with torch.compile on a GPU; the warm-up call pays
the compilation) and our decoder (static cache, step replayed as a CUDA graph), the same prompts, sampled
(temperature 0.9, top_p 0.9) to the full length; with --vllm also vLLM's server (the engine's generation server,
the random checkpoint saved to disk, every prompt in flight, end of sequence ignored); greedy agreement is
checked on the side (graph replay vs eager, bit-exact).
Prints new tokens/s, ms per decoding step and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from benchmarks.shapes import gpu_name, mistral_checkpoint, random_mistral


def tiny(a) -> dict:
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.prompts import questioner_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages import builtin_data

    questioner = Questioner(load_recipe("tiny").questioner, Path(os.environ.get("STARGATE_HOME", ".stargate")))
    model = questioner.load_base()
    names = [n for n, _ in builtin_data.SEED_PERSONAS]
    prompts = [questioner_messages(names[i % len(names)], builtin_data.TASKS[i % len(builtin_data.TASKS)], [],
                                   final=False) for i in range(a.prompts)]
    kwargs = {"max_new_tokens": a.new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    questioner.generate(model, prompts[:2], batch_size=2, **kwargs)  # warm-up

    def timed(batch_size: int) -> tuple[float, list[str]]:
        start = time.perf_counter()
        texts = questioner.generate(model, prompts, batch_size=batch_size, **kwargs)
        return time.perf_counter() - start, texts

    single_s, single = timed(1)
    batched_s, batched = timed(a.prompts)
    tokens = sum(len(questioner.tokenizer(t)["input_ids"]) for t in batched)
    result = {"device": "cpu", "shape": "tiny", "prompts": a.prompts, "new_tokens": a.new_tokens,
              "rows": [{"variant": "one at a time", "seconds": single_s, "new_tokens_per_s": tokens / single_s},
                       {"variant": "batched", "seconds": batched_s, "new_tokens_per_s": tokens / batched_s}],
              "ratio": single_s / batched_s, "identical_texts": single == batched}
    if a.vllm:
        served = Questioner(load_recipe("tiny", [
            "questioner.engine=vllm", f"questioner.vllm.max_concurrency={a.prompts}",
            "questioner.vllm.server_args=[--gpu-memory-utilization, '0.15', --max-model-len, '2048']",
        ]).questioner, questioner.home)
        try:
            policy = served.engine_policy(None)  # starts the server: not timed
            served.generate(policy, prompts[:2], batch_size=2, **kwargs)  # warm-up
            start = time.perf_counter()
            texts = served.generate(policy, prompts, batch_size=a.prompts, **kwargs)
            vllm_s = time.perf_counter() - start
        finally:
            served.close()
        result["rows"].append({"variant": "vLLM engine", "seconds": vllm_s, "new_tokens_per_s": tokens / vllm_s})
        result["vllm_same_texts_as_batched"] = sum(t == b for t, b in zip(texts, batched, strict=True)) / len(texts)
    return result


def cuda(a) -> dict:
    import torch

    from stargate_lite.engines.decode import decode

    model = random_mistral()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (a.batch, a.prompt_tokens), generator=g).cuda()
    mask = torch.ones_like(ids)
    mask[1::2, : a.prompt_tokens // 4] = 0  # half the rows left-padded, as real batches are
    n = a.new_tokens

    def plain():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=True, temperature=0.9, top_p=0.9, top_k=0, pad_token_id=0)

    def compiled():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=True, temperature=0.9, top_p=0.9, top_k=0, pad_token_id=0,
                                  cache_implementation="static")

    def ours():
        return decode(model, ids, mask, max_new_tokens=n, stop_ids=[], pad_id=0, temperature=0.9, top_p=0.9,
                      generator=torch.Generator("cuda").manual_seed(0))

    def timed(fn) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, fn in (("plain generate", plain), ("generate, static+compile", compiled),
                         ("ours (static + graph)", ours)):
            try:
                warm_up = timed(fn)  # kernels, cuBLAS workspaces; torch.compile's compilation
            except Exception as err:  # noqa: BLE001 - compilation needs a compiler toolchain; report, go on
                print(f"{name} failed: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            seconds = min(timed(fn) for _ in range(a.repeats))
            rows.append({"variant": name, "seconds": seconds, "new_tokens_per_s": a.batch * n / seconds,
                         "ms_per_step": 1000 * seconds / n, "warm_up_seconds": warm_up})
    if a.vllm:
        rows.append(vllm_row(mistral_checkpoint(), ids, mask, n, a.repeats, "bfloat16", a.vllm_memory))
    captured = not any("CUDA graph" in str(w.message) for w in caught)
    agreement = _greedy_agreement(model, ids[:8], mask[:8])
    # Graph replay must decode exactly as eager steps do. Random bf16 weights give near-tied logits, where
    # any change of kernel flips the argmax, so exactness is checked in fp32 on a smaller model of the same kind.
    small = random_mistral(layers=4, dtype=torch.float32)
    short = {"max_new_tokens": 32, "stop_ids": [], "pad_id": 0, "temperature": 0.0, "top_p": 1.0}
    graph = decode(small, ids[:8], mask[:8], use_graph=True, **short)
    eager = decode(small, ids[:8], mask[:8], use_graph=False, **short)
    by_name = {row["variant"]: row["seconds"] for row in rows}
    ours_s = by_name["ours (static + graph)"]
    return {"device": gpu_name(), "shape": "mistral-7b", "batch": a.batch, "prompt_tokens": a.prompt_tokens,
            "new_tokens": n, "rows": rows, "ratio": by_name["plain generate"] / ours_s,
            "ratio_to_compiled": by_name["generate, static+compile"] / ours_s
            if "generate, static+compile" in by_name else None,
            "ratio_to_vllm": by_name["vLLM engine"] / ours_s if "vLLM engine" in by_name else None,
            "graph_captured": captured, "graph_equals_eager": bool(torch.equal(graph, eager)),
            "greedy_agreement_with_generate": agreement}


def vllm_row(checkpoint: Path, ids, mask, n: int, repeats: int, dtype: str, memory_share: float) -> dict:
    """vLLM's generation server as questioner.engine vllm starts it, on the same prompts (padding removed), all
    in flight, each decoded to n tokens. The server starts before the clock runs; the best of `repeats`."""
    from concurrent.futures import ThreadPoolExecutor

    from stargate_lite.engines.vllm_engine import VllmEngine
    from stargate_lite.recipe import VllmConfig

    prompts = [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu(), strict=True)]
    config = VllmConfig(max_concurrency=len(prompts),
                        server_args=["--gpu-memory-utilization", str(memory_share), "--max-model-len", "4096"])
    engine = VllmEngine(config, str(checkpoint), dtype, False, checkpoint.parent / "bench-logs")
    try:
        client = engine.generation.connect()

        def one(prompt: list[int]) -> None:
            client.completions.create(model=engine.generation.base_name, prompt=prompt, max_tokens=n,
                                      temperature=0.9, top_p=0.9, extra_body={"ignore_eos": True})

        def batch() -> float:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
                list(pool.map(one, prompts))
            return time.perf_counter() - start

        warm_up = batch()
        seconds = min(batch() for _ in range(repeats))
    finally:
        engine.close()
    return {"variant": "vLLM engine", "seconds": seconds, "new_tokens_per_s": len(prompts) * n / seconds,
            "ms_per_step": 1000 * seconds / n, "warm_up_seconds": warm_up}


def _greedy_agreement(model, ids, mask) -> float:
    """Share of greedy tokens our decoder and `generate` agree on (bf16: the kernels differ, ties flip)."""
    import torch

    from stargate_lite.engines.decode import decode

    ours = decode(model, ids, mask, max_new_tokens=16, stop_ids=[], pad_id=0, temperature=0.0, top_p=1.0)
    with torch.no_grad():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, min_new_tokens=16,
                                   do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    return float((ours == reference).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mistral-7b"], default="tiny")
    parser.add_argument("--prompts", type=int, default=16, help="tiny: prompts")
    parser.add_argument("--batch", type=int, default=64, help="mistral-7b: sequences decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="mistral-7b: prompt length")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 32 (tiny), 128 (mistral-7b)")
    parser.add_argument("--repeats", type=int, default=2, help="mistral-7b: best of")
    parser.add_argument("--vllm", action="store_true", help="also the vLLM engine (bash install.sh --vllm)")
    parser.add_argument("--vllm-memory", type=float, default=0.5,
                        help="mistral-7b: share of the GPU's memory vLLM takes (the in-process model holds 14.5 GB)")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    a.new_tokens = a.new_tokens or (32 if a.shape == "tiny" else 128)
    result = tiny(a) if a.shape == "tiny" else cuda(a)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"generation benchmark on {result['device']}, shape {result['shape']}, up to {a.new_tokens} new tokens")
    print(f"{'variant':22} {'seconds':>8} {'new tokens/s':>13}" + (f" {'ms/step':>8}" if "batch" in result else ""))
    for row in result["rows"]:
        step = f" {row['ms_per_step']:8.1f}" if "ms_per_step" in row else ""
        print(f"{row['variant']:22} {row['seconds']:8.2f} {row['new_tokens_per_s']:13.1f}{step}")
    if "batch" in result:
        print(f"ratio ours / plain: {result['ratio']:.2f}x, ours / static+compile: {result['ratio_to_compiled']}x, "
              f"ours / vLLM: {result['ratio_to_vllm']}x at batch {result['batch']}; graph replay equals eager "
              f"decoding: {result['graph_equals_eager']}; greedy agreement with generate: "
              f"{result['greedy_agreement_with_generate']:.3f}")
    else:
        print(f"ratio batched / one at a time: {result['ratio']:.2f}x; identical texts: {result['identical_texts']}")
        if "vllm_same_texts_as_batched" in result:
            print(f"ratio vLLM engine / batched: {result['rows'][1]['seconds'] / result['rows'][2]['seconds']:.2f}x; "
                  f"texts the same as batched: {result['vllm_same_texts_as_batched']:.0%}")


if __name__ == "__main__":
    main()
