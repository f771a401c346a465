"""The training methods (train.method), one module each, named as the method: sft.py, dpo.py, kto.py, rloo.py,
grpo.py; modules beginning with "_" hold what several share. stargate_lite/training_methods.py finds them by file
name and imports one when it is asked for by name.

A method owns its examples (what the store's records of an iteration become: `examples`), its loss (the
trainer's hooks, engines/training.py's `TrainingMethod`), the sequences it trains per pair (for `run --dry-run`),
and what it refuses for new work (`check`). This layer sits between engines and stages: a method uses the trainer's
pieces (engines) and the foundations; the train stage and the loop ask it by name, and the trainer is given it.

Adding a method is its module here, with `METHOD = YourMethod()`, and a test: a subclass of `Method` that builds
its examples and computes its loss; docs/beyond-the-paper.md says what else it may want.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engines.encoded import Encoded
from ..engines.training import Step, Trainee, keep_last
from ..errors import StargateError
from ..recipe import Recipe, TrainConfig
from ..store import Store
from ..training_methods import method_names, training_method

LOGPROBS_WITH_AND_WITHOUT_THE_ADAPTER = "its loss needs each sequence's log-probs, with and without the adapter"


class Method:
    """A training method. The defaults are those of a method whose example is one sequence, trained with peft
    (Unsloth is refused) on what the loop's stages already made, with nothing to compute before its steps."""

    name: str
    peft_only: str | None = LOGPROBS_WITH_AND_WITHOUT_THE_ADAPTER  # None: Unsloth's fused loss trains it too
    needs_sampling = False  # its examples are sampled turns whose (temperature, top_p) the loss needs
    credits_turns = False  # it credits each Questioner turn on its own (reward.per_turn)
    step_terms: tuple[str, ...] = ()  # sums its loss returns per micro-batch for the record (engines/training.py)

    # The loop's side

    def examples(self, store: Store, recipe: Recipe, run_id: str, iteration: int,
                 encode: Callable[[list[dict]], Encoded]) -> list:
        """The iteration's training examples, encoded (`encode`: Questioner.encode_for_training), in the form
        `sequences` and `loss` read."""
        raise NotImplementedError

    # The dry-run's side

    def sequences_per_pair(self, conversations_per_pair: int) -> int:
        """Sequences an epoch trains per (task, persona) pair, at most."""
        raise NotImplementedError

    def passes_without_grad(self, train: TrainConfig) -> int:
        """Forward passes without grad each trained sequence costs once (a reference's or the sampler's
        log-probs), beside the epochs' passes with it."""
        return 0

    # The recipe's side

    def check(self, recipe: Recipe, source: str) -> None:
        """Refuse, in one line naming the settings, a recipe this method cannot train for new work."""
        if recipe.reward.per_turn and not self.credits_turns:
            crediting = " or ".join(n for n in method_names() if training_method(n).credits_turns)
            raise StargateError(f"{source}: reward.per_turn credits the turns of a policy gradient: set "
                                f"train.method {crediting}, or reward.per_turn false")

    # The trainer's side (engines/training.py, TrainingMethod)

    def sequences(self, example) -> tuple[Encoded, ...]:
        return (example,)

    def cut(self, example, max_length: int):
        return keep_last(example, max_length)

    def before_steps(self, trainee: Trainee, examples: list, batches: list[list[int]]):
        return None

    def loss(self, trainee: Trainee, examples: list, batch: list[int], state, step: Step):
        raise NotImplementedError


def at_least_one(examples: list, run_id: str, iteration: int) -> list:
    """The examples, or the error that says why an iteration has none."""
    if not examples:
        raise StargateError(
            f"iteration {iteration} of run {run_id} has no usable training example (every kept conversation has "
            "an empty question or response, or no pair has a better and a worse conversation): check the "
            "Questioner model and its generation settings"
        )
    return examples
