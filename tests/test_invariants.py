"""The method's invariants, each written so that breaking it fails the test: the reward is always the base
model's, every iteration trains a fresh LoRA on the base, and masks and scored spans are exact whatever the
chat template's shape."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import GOLD, TASK, TURNS

from stargate_lite.engines.questioner import SharedBase
from stargate_lite.progress import Progress
from stargate_lite.prompts import questioner_messages
from stargate_lite.runs import recipe_of_run, start_session
from stargate_lite.stages.score import base_weights, encode_gold, token_logprobs
from stargate_lite.store import Store


def _adapters(home) -> list[str]:
    store = Store(home)
    return [store.training("tiny", i)["adapter"] for i in (1, 2)]


def _scored(questioner, model) -> list:
    items = [encode_gold(questioner, "Mei", TASK, TURNS, GOLD), encode_gold(questioner, "Mei", TASK, [], GOLD)]
    return token_logprobs(model, items, batch_size=2, vocab_chunk_tokens=64)


def test_the_reward_under_a_trained_policy_is_the_fresh_base_models(finished, questioner):
    """Scoring runs a policy with its adapter switched off: per token, that is exactly a freshly loaded base."""
    reference = _scored(questioner, questioner.load_base())
    models = SharedBase(questioner)
    for adapter in _adapters(finished):  # two adapters loaded beside each other, the second one active
        with models.policy(adapter) as policy:
            enabled = _scored(questioner, policy)
            with base_weights(policy):
                disabled = _scored(questioner, policy)
    for got, want, adapted in zip(disabled, reference, enabled):
        assert torch.max(torch.abs(got - want)).item() < 1e-5
        assert torch.max(torch.abs(adapted - want)).item() > 1e-3  # the adapter does change the model


def test_one_base_serves_every_iteration_as_its_own_load_would(finished, questioner):
    """Eval holds one base model and switches adapters on it; each must act as that adapter loaded alone."""
    models = SharedBase(questioner)
    first, second = _adapters(finished)
    with models.policy(first), models.policy(second):
        pass  # both loaded
    for adapter in (first, second, None):
        alone = questioner.load_policy(adapter)
        with models.policy(adapter) as shared:
            for got, want in zip(_scored(questioner, shared), _scored(questioner, alone)):
                assert torch.max(torch.abs(got - want)).item() < 1e-5


def test_each_iteration_trains_a_fresh_lora_on_the_base(finished, tmp_path, monkeypatch, questioner):
    """Iteration 2 retrained through the real loop: its LoRA weights before the first step are a fresh
    initialisation from its seed (not iteration 1's adapter), and training changes no non-LoRA weight."""
    from stargate_lite import loop
    from stargate_lite.engines.training import attach_lora
    from stargate_lite.stages import train

    home = finished  # this test's own copy
    store = Store(home)
    with store.transaction():  # undo iteration 2's training only: everything before it stays
        store.db.execute("delete from trainings where run_id = 'tiny' and iteration = 2")
        store.db.execute("delete from stages where run_id = 'tiny' and iteration = 2 and stage = 'train'")
        store.db.execute("update iterations set finished_at = null where run_id = 'tiny' and iteration = 2")
    seen: dict = {}
    real_train_lora = train.train_lora

    def watched(model, examples, config, *, seed, **kwargs):
        seen["seed"] = seed
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        record = real_train_lora(model, examples, config, seed=seed, **kwargs)
        seen["end"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return record

    monkeypatch.setattr(train, "train_lora", watched)
    recipe = recipe_of_run(store.get_run("tiny"))
    loop.run(recipe, 2, home=home, run_id="tiny", progress=Progress(enabled=False))
    assert store.training("tiny", 2) is not None and seen["seed"] == recipe.seed + 2

    fresh = attach_lora(questioner.load_base(), recipe.train, seed=seen["seed"])
    fresh_lora = {n: p for n, p in fresh.named_parameters() if "lora_" in n}
    start_lora = {n: p for n, p in seen["start"].items() if "lora_" in n}
    assert fresh_lora and start_lora.keys() == fresh_lora.keys()
    for name, tensor in fresh_lora.items():
        assert torch.equal(start_lora[name], tensor), f"{name} did not start from a fresh initialisation"
    previous = questioner.load_policy(_adapters(finished)[0])
    assert any(p.abs().sum() > 0 for n, p in previous.named_parameters() if "lora_B" in n)
    assert all(p.abs().sum() == 0 for n, p in start_lora.items() if "lora_B" in n)  # not iteration 1's weights
    for name, before in seen["start"].items():
        if "lora_" not in name:
            assert torch.equal(seen["end"][name], before), f"training changed the base weight {name}"
    assert any(not torch.equal(seen["end"][n], t) for n, t in start_lora.items())  # the LoRA weights did train


def test_with_train_init_previous_an_iteration_continues_the_last_adapter(finished, monkeypatch):
    """Iteration 2 retrained by the loop's own iteration with train.init previous: its LoRA weights before the
    first step are iteration 1's adapter as saved."""
    from contextlib import closing
    from pathlib import Path

    from safetensors.torch import load_file

    from stargate_lite import loop
    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.stages import train

    home = finished  # this test's own copy
    store = Store(home)
    first = _adapters(home)[0]
    with store.transaction():  # undo iteration 2's training only
        store.db.execute("delete from trainings where run_id = 'tiny' and iteration = 2")
        store.db.execute("delete from stages where run_id = 'tiny' and iteration = 2 and stage = 'train'")
    seen: dict = {}
    real_train_lora = train.train_lora

    def watched(model, *args, **kwargs):
        seen["start"] = {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters()
                         if "lora_" in n}
        return real_train_lora(model, *args, **kwargs)

    monkeypatch.setattr(train, "train_lora", watched)
    stored = recipe_of_run(store.get_run("tiny"))  # a run's recipe cannot change: the iteration is run directly
    recipe = stored.model_copy(update={"train": stored.train.model_copy(update={"init": "previous"})})
    with ChatModels(recipe.chat_models, home) as chat, closing(Questioner(recipe.questioner, home)) as questioner:
        loop.run_iteration(store, recipe, "tiny", 2, questioner, chat, Progress(enabled=False),
                           start_session(store, "tiny"))
    assert store.training("tiny", 2) is not None
    saved = load_file(Path(first) / "adapter_model.safetensors")
    assert saved and seen["start"].keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(seen["start"][name], tensor), f"{name} did not start as iteration 1 saved it"


# Chat templates of other shapes, written here (no weights needed: the tiny tokenizer renders them as text).
MISTRAL_INST = (  # Mistral/Mixtral-style: no system role, user turns in [INST] ... [/INST], eos after each answer
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('This template has no system role') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Roles must alternate user/assistant') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_HEADERS = (  # Llama-3-style: header blocks, trimmed content, <|eot_id|> ends every turn
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# name: (template, its end-of-turn text, its markers that are special tokens in the real tokenizer). Mistral
# v0.2's [INST] markers are plain text; Llama-3's header and end-of-turn markers are special tokens.
TEMPLATES = {"chatml": (None, "<|im_end|>\n", []), "mistral": (MISTRAL_INST, "<|im_end|>", []),
             "llama3": (LLAMA3_HEADERS, "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])}


def _with_template(questioner, template: str | None, specials: list[str]):
    clone = copy.copy(questioner)
    if template is not None:
        clone.tokenizer = copy.deepcopy(questioner.tokenizer)
        clone.tokenizer.chat_template = template
        clone.tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return clone


def _decode(questioner, encoded, positions) -> str:
    return questioner.tokenizer.decode([encoded.input_ids[p] for p in positions])


@pytest.mark.parametrize("name", TEMPLATES)
def test_masks_and_scored_spans_are_exact_on_every_template_shape(questioner, name):
    template, end_of_turn, specials = TEMPLATES[name]
    q = _with_template(questioner, template, specials)
    if name == "mistral":
        with pytest.raises(Exception, match="no system role"):
            q.render([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    for instruction in (True, False):  # both training formats; neither sends a system turn
        messages = [*questioner_messages("Mei", TASK, TURNS, final=True, instruction=instruction),
                    {"role": "assistant", "content": GOLD}]
        encoded = q.encode_for_training(messages)
        trained = _decode(q, encoded, encoded.target_positions)
        assert trained == f"{TURNS[0]['text']}{end_of_turn}{TURNS[2]['text']}{end_of_turn}{GOLD}{end_of_turn}"
        masked = _decode(q, encoded, [i for i in range(len(encoded.input_ids)) if i not in encoded.target_positions])
        assert TURNS[1]["text"] in masked and TURNS[3]["text"] in masked and TASK in masked
    scored = encode_gold(q, "Mei", TASK, TURNS, GOLD)
    assert _decode(q, scored, scored.target_positions) == GOLD
    assert scored.target_positions == list(range(scored.target_positions[0], scored.target_positions[-1] + 1))
    assert _decode(q, scored, range(scored.target_positions[-1] + 1, len(scored.input_ids))).startswith(
        end_of_turn.strip())  # the end-of-turn marker follows the span and is not scored
