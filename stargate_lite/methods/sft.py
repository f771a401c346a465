"""train.method sft, the paper's: fine-tune on each pair's kept conversation and what follows it (the regularizer's
response, the gold, or nothing: train.target), the masked cross-entropy of the Questioner's turns."""

from __future__ import annotations

from ..engines.training import Step, Trainee, _padded, loss_at_targets
from ..prompts import questioner_messages
from ..recipe import Recipe
from ..store import Store
from . import Method, at_least_one


def conversation_example(recipe: Recipe, pair: dict, conversation: list[dict], final: str | None) -> list[dict] | None:
    """A conversation + final turn, as the Questioner sees it; what follows the questions is the target. None
    where the rule for empty generations leaves it out (see training_examples)."""
    instruction = recipe.train.format == "instructed"
    decide = recipe.simulate.turns == "policy"
    if any(not t["text"].strip() for t in conversation if t["role"] == "questioner"):
        return None
    if recipe.train.target == "none":
        return questioner_messages(pair["persona_name"], pair["task"], conversation, final=False,
                                   instruction=instruction, decide=decide,
                                   instruction_text=recipe.simulate.instruction)
    if not (final and final.strip()):
        return None
    messages = questioner_messages(pair["persona_name"], pair["task"], conversation, final=True,
                                   instruction=instruction, decide=decide,
                                   instruction_text=recipe.simulate.instruction)
    return [*messages, {"role": "assistant", "content": final}]


def final_turn(recipe: Recipe, pair: dict, responses: dict[str, dict]) -> str | None:
    """What follows a pair's conversations in training (train.target): the regularizer's response, or the gold."""
    return {"response": (responses.get(pair["id"]) or {}).get("text"), "gold": pair["gold"]}.get(recipe.train.target)


def training_examples(store: Store, recipe: Recipe, run_id: str, iteration: int) -> list[list[dict]]:
    """Each pair's kept conversation + final turn.

    Rule for empty generations: a kept conversation with an empty question, or an empty regularizer response,
    is left out of training (it would teach the model to end its turn at once); it stays in the store.
    """
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    turns = store.selected_turns(run_id, iteration)
    responses = store.responses(run_id, iteration)
    examples = []
    for s in store.selections(run_id, iteration):
        pair = pairs[s["pair_id"]]
        example = conversation_example(recipe, pair, turns.get(s["conversation_id"], []),
                                       final_turn(recipe, pair, responses))
        if example:
            examples.append(example)
    return at_least_one(examples, run_id, iteration)


class SFT(Method):
    name = "sft"
    peft_only = None  # the loss is the model's own cross-entropy, which Unsloth fuses

    def examples(self, store, recipe, run_id, iteration, encode):
        return [encode(messages) for messages in training_examples(store, recipe, run_id, iteration)]

    def sequences_per_pair(self, conversations_per_pair):
        return 1

    def loss(self, trainee: Trainee, examples, batch, state, step: Step):
        """The summed cross-entropy of the batch's target tokens over the step's target count, so that every token
        weighs the same however the step is split."""
        ids, labels, mask = _padded([examples[i] for i in batch], trainee.pad_token_id, trainee.device)
        if trainee.target_logits_only:
            return loss_at_targets(trainee.decoder, ids, labels) / max(step.tokens, 1), []
        # the model's own loss (Unsloth's fused one)
        return trainee.model(input_ids=ids, attention_mask=mask, labels=labels,
                             num_items_in_batch=max(step.tokens, 1)).loss, []


METHOD = SFT()
