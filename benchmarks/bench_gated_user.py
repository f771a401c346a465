"""What a gated user's turn costs beside a free user's (issue 47: goal no slower), side by side in one run.

    python -m benchmarks.bench_gated_user                  # the tiny recipe's Roleplayer, 8 personas x 6 questions
    python -m benchmarks.bench_gated_user --rounds 5 --roleplayer smollm2

The same turns for both users: the hand-written personas of split A with a built-in task each, and a fixed list
of questions (half ask for something a persona says, half do not). A free user's turn is its reply to the whole
persona (`stages.simulate.user_view` with no gate); a gated user's is the gate picking the asked facts (the
sentence-embedding model, loaded before timing starts) and its reply to those alone. Rounds alternate which user
goes first, so a warm cache or a busy machine favours neither; each round's ratio is gated time over free time,
and the median ratio is printed with the mean reply length of each (a gated reply is shorter when nothing is
asked). Greedy replies, the recipe's answer length; the Roleplayer's prompt cache is on, as in simulate.
"""

from __future__ import annotations

import argparse
import statistics
import time

QUESTIONS = (
    "Who else lives with you?",
    "What do you do for a living?",
    "Is there anything about your health I should know?",
    "Which football team do you support?",
    "Shall I start with breakfast ideas?",
    "Here is a plan: start small and build up. Does that sound good?",
)


def turns() -> list[tuple[dict, str]]:
    from stargate_lite.stages.builtin_data import TASKS, WRITTEN_PERSONAS

    pairs = [{"persona": text, "persona_name": name, "task": TASKS[i]}
             for i, (name, text) in enumerate(WRITTEN_PERSONAS["A"])]
    return [(pair, question) for pair in pairs for question in QUESTIONS]


def timed(model, work, gate, sampling) -> tuple[float, list[int]]:
    from stargate_lite.stages.simulate import user_view

    lengths = []
    start = time.perf_counter()
    for pair, question in work:
        view, _ = user_view(pair, [{"role": "questioner", "text": question}], gate)
        (reply,) = model.complete_each([view], sampling)
        lengths.append(len(str(reply).split()))
    return time.perf_counter() - start, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--roleplayer", default=None, help="a chat model of the recipe (default: its first)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.simulate import user_gate

    recipe = load_recipe(args.recipe, ["simulate.reveal=asked"])
    name = args.roleplayer or recipe.roles.main_roleplayer
    home = Path(tempfile.mkdtemp(prefix="bench-gated-"))
    gate = user_gate(recipe.simulate, home)
    gate.embed(["warm up"])  # the model loaded before the clock starts, as in a stage that has begun
    sampling = Sampling(recipe.simulate.answer_max_tokens, temperature=0.0, seed=0)
    work = turns()
    with ChatModels(recipe.chat_models, home) as chat:
        model = chat.get(name)
        model.complete_each([[{"role": "user", "content": "Hello"}]], sampling)  # loaded before timing too
        ratios, free_words, gated_words = [], [], []
        for r in range(args.rounds):
            order = [None, gate] if r % 2 == 0 else [gate, None]
            seconds = {}
            for g in order:
                seconds[g is not None], lengths = timed(model, work, g, sampling)
                (gated_words if g is not None else free_words).extend(lengths)
            ratios.append(seconds[True] / seconds[False])
            print(f"round {r + 1}: free {seconds[False]:.1f} s, gated {seconds[True]:.1f} s "
                  f"({len(work)} turns each), gated/free {ratios[-1]:.2f}")
    print(f"{name}: gated/free time per turn, median of {args.rounds} rounds: {statistics.median(ratios):.2f}; "
          f"mean reply {statistics.mean(free_words):.1f} words free, {statistics.mean(gated_words):.1f} gated")


if __name__ == "__main__":
    main()
