"""Collect the tiny judge's own replies for tests/data/judge_replies.json: the reading rules are checked on what a
real judge writes, not only on phrasings written for the test.

For 20 pairs of a run's learning probe (`stargate-lite probe`), the judge (the tiny recipe's SmolLM2-135M through llama.cpp, greedy) compares the
gold written for the pair's persona with the gold of the same task written for another persona, in the
`compare` (256 tokens) and `letter` (64 tokens) templates, the tailored one shown first in every other pair.
Each reply is written out with `label: null`; a person fills in the verdict they read (A, B or null when the
reply does not make one pick clear) before the parser is changed, and the test checks the parser against it.

    python scripts/collect_judge_replies.py --home HOME --run RUN --out tests/data/judge_replies.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", required=True, help="a run whose learning probe has been made (its pairs)")
    parser.add_argument("--pairs", type=int, default=20)
    a = parser.parse_args()

    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.evaluation.probe import probe_namespace
    from stargate_lite.prompts import JUDGE_TEMPLATES, judge_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.store import Store

    store = Store(a.home, create=False)
    # The learning probe's pairs of splits A and B: every task there meets several personas.
    pairs = [p for split in ("A", "B") for p in store.pairs(probe_namespace(a.run, "smollm2", split, 0), 0)]
    by_task: dict[str, list[dict]] = {}
    for p in pairs:
        if p["gold"]:
            by_task.setdefault(p["task_id"], []).append(p)
    items = []
    for group in by_task.values():
        for i, g in enumerate(group if len(group) > 1 else []):
            items.append((g, group[(i + 1) % len(group)]))
    items = items[: a.pairs]
    judge = ChatModels(load_recipe("tiny").chat_models, Path(a.home)).get("smollm2")
    out = []
    for template, budget in (("compare", 256), ("letter", 64)):
        prompts, shown = [], []
        for n, (ours, other) in enumerate(items):
            first = n % 2 == 0
            x, y = (ours["gold"], other["gold"]) if first else (other["gold"], ours["gold"])
            prompts.append(judge_messages(JUDGE_TEMPLATES[template], ours["persona"], ours["task"], x, y, "Verdict:"))
            shown.append("A" if first else "B")
        replies = judge.complete_each(prompts, Sampling(budget))
        out += [{"template": template, "tailored": s, "reply": str(r), "truncated": r.truncated, "label": None}
                for s, r in zip(shown, replies, strict=True)]
    about = ("The tiny judge's replies; 'tailored' is where the pair's own gold was shown, 'label' the pick a person "
             "reads in the reply (null: no one pick is clear), to be filled in by reading each reply.")
    a.out.write_text(json.dumps({"about": about, "replies": out}, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(out)} replies written to {a.out}")


if __name__ == "__main__":
    main()
