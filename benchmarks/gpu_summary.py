"""One table from gpu_check.sh's JSON files: each measured figure next to its target from the performance issue.

    python -m benchmarks.gpu_summary OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    try:
        text = path.read_text()
        return json.loads(text[text.find("{"):])  # skip anything a library printed before the result
    except (OSError, ValueError):
        return None


def _row(rows: list[dict], variant: str) -> dict | None:
    return next((r for r in rows if r.get("variant") == variant and "error" not in r), None)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gpu-results")
    lines: list[tuple[str, str, str, str]] = []  # what, measured, target, met

    def add(what: str, measured: str, target: str, met: bool | None) -> None:
        lines.append((what, measured, target, "-" if met is None else ("yes" if met else "NO")))

    scorer = _load(folder, "scorer")
    device = next((d["device"] for d in (scorer, _load(folder, "generate"), _load(folder, "train")) if d), "?")
    if scorer:
        plain, ours, four = (_row(scorer["rows"], v) for v in ("plain", "ours", "ours-4bit"))
        if plain:
            add("scorer, plain HF + log_softmax, batch 32x1024",
                f"{plain['tokens_per_s']:.0f} tok/s, MFU {plain['mfu']:.2f}, +{plain['extra_peak_gib']:.1f} GiB",
                "reference", None)
        if ours:
            add(f"scorer, ours bf16, budget {scorer['args']['budget_gib']} GiB",
                f"{ours['tokens_per_s']:.0f} tok/s, MFU {ours['mfu']:.2f}, +{ours['extra_peak_gib']:.2f} GiB",
                ">= 0.55 MFU, <= 2 GiB extra", ours["mfu"] >= 0.55 and ours["extra_peak_gib"] <= 2)
            add("scorer, max per-token difference to plain", f"{scorer['ratios']['max_abs_diff_per_token']:.2e}",
                "bf16 noise", None)
        if four:
            add(f"scorer, ours 4-bit weights, batch {four['sequences']}x1024",
                f"{four['tokens_per_s']:.0f} tok/s, {four['total_peak_gib']:.1f} GiB in all",
                "fits 24 GiB", four["total_peak_gib"] <= 24)
    else:
        add("scorer", "no result", "", False)
    gen = _load(folder, "generate")
    if gen:
        plain, *others, ours = gen["rows"]
        add(f"generation, plain generate, batch {gen['batch']}",
            f"{plain['new_tokens_per_s']:.0f} new tok/s, {plain['ms_per_step']:.1f} ms/step", "reference", None)
        for row in others:  # generate with a static cache, compiled (results made before it lack the row)
            add(f"generation, {row['variant']}", f"{row['new_tokens_per_s']:.0f} new tok/s, "
                f"{row['ms_per_step']:.1f} ms/step (warm-up {row['warm_up_seconds']:.0f} s)", "", None)
        add("generation, ours (static cache + CUDA graph)",
            f"{ours['new_tokens_per_s']:.0f} new tok/s, {ours['ms_per_step']:.1f} ms/step, {gen['ratio']:.1f}x",
            ">= 4x, <= 16 ms/step", gen["ratio"] >= 4 and ours["ms_per_step"] <= 16)
        add("generation, decoding step captured as a CUDA graph", str(gen.get("graph_captured")), "True",
            gen.get("graph_captured"))
        add("generation, graph replay == eager (greedy, fp32 small model)", str(gen["graph_equals_eager"]), "True",
            gen["graph_equals_eager"])
        add("generation, greedy agreement with generate", f"{gen['greedy_agreement_with_generate']:.3f}",
            "bf16 kernels differ", None)
    else:
        add("generation", "no result", "", False)
    train = _load(folder, "train")
    if train:
        targets = {"plain": ("reference", None), "ours": (">= 3.7k tok/s", lambda r: r["tokens_per_s"] >= 3700),
                   "ours-unsloth": (">= 10k tok/s, <= 7 GiB",
                                    lambda r: r["tokens_per_s"] >= 10000 and r["peak_gib"] <= 7)}
        for r in train["rows"]:
            target, check = targets[r["variant"]]
            if "error" in r:
                add(f"training, {r['variant']}", r["error"], target, False)
                continue
            add(f"training 4-bit, {r['variant']}, batch 8x1024",
                f"{r['tokens_per_s']:.0f} tok/s, {r['peak_gib']:.1f} GiB peak", target, check(r) if check else None)
        add("training, unsloth and peft adapters have the same tensors", str(train["adapters_same_format"]), "True",
            train["adapters_same_format"])
    else:
        add("training", "no result", "", False)

    print(f"gpu_check summary on {device}")
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    header = ("what", "measured", "target", "met")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
