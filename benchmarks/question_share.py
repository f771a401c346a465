"""Does Q_1 ask by itself? The share of its first turns that are questions when it is greeted bare (the
greeting alone, no instruction to ask), for a Q_1 trained in each prompt format (train.format), tiny recipe.

    python -m benchmarks.question_share [--home DIR] [--prompts 100]

Trains one iteration of the tiny recipe per format in DIR (data made once, shared by both runs), then greets
Q_0 and each Q_1 with the same (name, task) pairs, "My name is NAME.\n\nTASK" and nothing else, and generates
the first turn twice: sampled as the simulation samples (the recipe's temperature, top_p and question token
limit, seed 0) and greedily. A turn counts as a question when it holds a question mark (turns.is_question).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

FORMATS = ("instructed", "bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="project home (default: a temporary folder)")
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="question-share-"))

    from stargate_lite.engines.questioner import Questioner, SharedBase
    from stargate_lite.loop import run
    from stargate_lite.prompts import questioner_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages import builtin_data
    from stargate_lite.store import Store

    adapters = {}
    for prompt_format in FORMATS:
        recipe = load_recipe("tiny", [f"train.format={prompt_format}"])
        run_id = run(recipe, 1, home=home, run_id=f"tiny-{prompt_format}")
        adapters[prompt_format] = Store(home).training(run_id, 1)["adapter"]

    rng = random.Random(0)
    pairs = [(rng.choice(builtin_data.PERSONA_NAMES), rng.choice(builtin_data.TASKS)) for _ in range(args.prompts)]
    prompts = [questioner_messages(name, task, [], final=False, instruction=False) for name, task in pairs]
    recipe = load_recipe("tiny")
    questioner = Questioner(recipe.questioner, home)
    models = SharedBase(questioner)
    print(f"{args.prompts} bare greetings; share of first turns that are questions (home {home})")
    print(f"{'model':<28} {'sampled':>8} {'greedy':>8}")
    for label, adapter in [("Q_0 (base)", None)] + [(f"Q_1 trained {f}", adapters[f]) for f in FORMATS]:
        with models.policy(adapter) as model:
            shares = []
            for temperature in (recipe.simulate.temperature, 0.0):
                turns = questioner.generate(model, prompts, max_new_tokens=recipe.simulate.question_max_tokens,
                                            temperature=temperature, top_p=recipe.simulate.top_p,
                                            batch_size=recipe.simulate.batch_size, seed=0)
                shares.append(sum("?" in t for t in turns) / len(turns))
        print(f"{label:<28} {shares[0]:>8.2f} {shares[1]:>8.2f}")


if __name__ == "__main__":
    main()
