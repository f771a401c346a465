"""The Questioner's mechanics on the real tiny model: loss masks, exact scoring, LoRA training, generation."""

import pytest
import torch
from conftest import GOLD, TASK, TURNS

from stargate_lite.engines.training import attach_lora, train_lora
from stargate_lite.methods.sft import METHOD as SFT
from stargate_lite.prompts import QUESTION_INSTRUCTION, questioner_messages
from stargate_lite.recipe import TrainConfig
from stargate_lite.stages.score import encode_gold, score_sums, token_logprobs


def _decode(questioner, encoded, positions):
    return questioner.tokenizer.decode([encoded.input_ids[p] for p in positions])


def test_training_mask_covers_questions_and_response_with_end_of_turn(questioner):
    messages = [*questioner_messages("Mei", TASK, TURNS, final=True), {"role": "assistant", "content": GOLD}]
    encoded = questioner.encode_for_training(messages)
    trained = _decode(questioner, encoded, encoded.target_positions)
    end = questioner.tokenizer.eos_token  # <|im_end|>, SmolLM2's end of turn
    assert trained == f"{TURNS[0]['text']}{end}\n{TURNS[2]['text']}{end}\n{GOLD}{end}\n"
    masked = _decode(questioner, encoded, [i for i in range(len(encoded.input_ids)) if i not in encoded.target_positions])
    assert TURNS[1]["text"] in masked and TURNS[3]["text"] in masked and "My name is Mei." in masked
    assert "Sichuan" not in trained and TASK not in trained


def test_questions_only_target_trains_no_response(questioner):
    encoded = questioner.encode_for_training(questioner_messages("Mei", TASK, TURNS, final=False))
    trained = _decode(questioner, encoded, encoded.target_positions)
    assert TURNS[0]["text"] in trained and TURNS[2]["text"] in trained and GOLD not in trained


def test_scored_span_is_the_gold_alone(questioner):
    encoded = encode_gold(questioner, "Mei", TASK, TURNS, GOLD)
    assert _decode(questioner, encoded, encoded.target_positions) == GOLD
    assert encoded.target_positions[-1] < len(encoded.input_ids) - 1  # the end-of-turn marker is not scored
    assert encoded.target_positions == list(range(encoded.target_positions[0], encoded.target_positions[-1] + 1))


def _reference(model, encoded):
    """A plain forward with a full-vocabulary log_softmax, one sequence at a time."""
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    return torch.stack([logp[p - 1, encoded.input_ids[p]] for p in encoded.target_positions])


def test_scorer_matches_a_plain_forward_per_token(questioner, base_model):
    items = [
        encode_gold(questioner, "Mei", TASK, TURNS, GOLD),
        encode_gold(questioner, "Mei", TASK, TURNS[:2], GOLD),
        encode_gold(questioner, "Tomas", "What should I read next?", [], "Try a short novel by Borges."),
    ]
    references = [_reference(base_model, e) for e in items]
    for batch_size, chunk in [(1, 512), (3, 7), (2, 1)]:  # padded batches, chunked vocabulary projection
        got = token_logprobs(base_model, items, batch_size=batch_size, vocab_chunk_tokens=chunk)
        for g, r in zip(got, references):
            assert g.shape == r.shape
            assert torch.max(torch.abs(g - r)).item() < 1e-4
    sums = score_sums(base_model, items, batch_size=2, vocab_chunk_tokens=64)
    assert len(sums) == len(items) and all(s < 0 and n > 0 for s, n in sums)
    assert abs(sums[0][0] - references[0].sum().item()) < 1e-3


def test_persona_information_raises_the_gold_logprob(questioner, base_model):
    """The signal STaR-GATE optimises exists at this size: relevant answers make the gold likelier."""
    informative = encode_gold(questioner, "Mei", TASK, TURNS, GOLD)
    uninformative = encode_gold(questioner, "Mei", TASK, [], GOLD)
    (with_info, _), (without, _) = score_sums(base_model, [informative, uninformative], batch_size=2,
                                             vocab_chunk_tokens=64)
    assert with_info > without


def test_lora_changes_the_adapter_and_not_the_base(questioner, tmp_path):
    base = questioner.load_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    messages = [*questioner_messages("Mei", TASK, TURNS, final=True), {"role": "assistant", "content": GOLD}]
    examples = [questioner.encode_for_training(messages)] * 2
    config = TrainConfig(lora_r=4, lora_alpha=8, learning_rate=1e-3, batch_size=1, epochs=2, warmup_ratio=0.0)
    record = train_lora(attach_lora(base, config, seed=0), examples, config, method=SFT, seed=0,
                        out_dir=tmp_path / "adapter", pad_token_id=questioner.tokenizer.pad_token_id)
    assert record["steps"] == 4 and len(record["losses"]) == 4
    assert record["losses"][-1] < record["losses"][0]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter.tmp").exists()

    fresh = questioner.load_base()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, before[name]), f"base weight {name} changed"
    policy = questioner.load_policy(str(tmp_path / "adapter"))
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    item = [encode_gold(questioner, "Mei", TASK, TURNS, GOLD)]
    (trained_lp, _), = score_sums(policy, item, batch_size=1, vocab_chunk_tokens=64)
    (base_lp, _), = score_sums(fresh, item, batch_size=1, vocab_chunk_tokens=64)
    assert trained_lp > base_lp  # it learned the response it was trained on


def test_training_from_the_previous_adapter_starts_at_its_saved_weights_and_trains_them(questioner, tmp_path,
                                                                                       monkeypatch):
    """train.init previous: every LoRA weight starts as the last adapter saved it (not a fresh initialisation),
    training moves them, and the last adapter's files are left as they were."""
    from safetensors.torch import load_file

    from stargate_lite.stages import train

    messages = [*questioner_messages("Mei", TASK, TURNS, final=True), {"role": "assistant", "content": GOLD}]
    examples = [questioner.encode_for_training(messages)] * 2
    config = TrainConfig(lora_r=4, lora_alpha=8, learning_rate=1e-3, batch_size=1, warmup_ratio=0.0)
    first = train.train_adapter(questioner, examples, config, seed=0, out_dir=tmp_path / "first")
    saved_file = tmp_path / "first" / "adapter_model.safetensors"
    saved, saved_bytes = load_file(saved_file), saved_file.read_bytes()
    seen = {}
    real_train_lora = train.train_lora

    def watched(model, *args, **kwargs):
        seen["start"] = {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters()
                         if "lora_" in n}
        record = real_train_lora(model, *args, **kwargs)
        seen["end"] = {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters()
                       if "lora_" in n}
        return record

    monkeypatch.setattr(train, "train_lora", watched)
    second = train.train_adapter(questioner, examples, config.model_copy(update={"init": "previous"}), seed=1,
                                 out_dir=tmp_path / "second", start_from=str(tmp_path / "first"))
    assert saved and seen["start"].keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(seen["start"][name], tensor), f"{name} did not start as saved"
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in seen["start"].items())  # fresh: 0
    assert any(not torch.equal(seen["end"][name], tensor) for name, tensor in seen["start"].items())
    assert second["losses"][0] < first["losses"][0]  # it goes on from where the first training ended
    assert saved_file.read_bytes() == saved_bytes


def test_checkpointed_training_warns_the_user_of_nothing(questioner):
    """transformers deprecated gradient_checkpointing_enable; its warning reached the user at every iteration."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attach_lora(questioner.load_base(), TrainConfig(gradient_checkpointing=True), seed=0)
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)  # on, in every layer that can have it
    # (peft's is_gradient_checkpointing question is silenced by the package's own filter: stargate_lite/__init__.py)
    assert not [str(w.message) for w in caught if "gradient_checkpointing_enable" in str(w.message)]


def test_batched_greedy_generation_equals_one_at_a_time(questioner, base_model):
    prompts = [
        questioner_messages("Mei", TASK, [], final=False),
        questioner_messages("Tomas", "What should I read next?", TURNS[:2], final=False),
        questioner_messages("Ravi", "Help me plan a trip to the coast.", [], final=False),
    ]
    kwargs = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)
    batched = questioner.generate(base_model, prompts, batch_size=3, **kwargs)
    single = [questioner.generate(base_model, [p], batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == single
    assert all(text for text in batched)


def test_sampled_generation_is_reproducible_from_its_seed(questioner, base_model):
    prompts = [questioner_messages("Mei", TASK, [], final=False)] * 3
    kwargs = dict(max_new_tokens=10, temperature=0.9, top_p=0.9, batch_size=3)
    first = questioner.generate(base_model, prompts, seed=7, **kwargs)
    assert first == questioner.generate(base_model, prompts, seed=7, **kwargs)
    assert len(set(first)) > 1  # samples differ from each other


def test_generation_ignores_what_the_models_generation_config_adds_to_sampling(questioner, base_model, tmp_path,
                                                                               model_cache):
    """A model whose generation config sets top_k, min_p and a repetition penalty samples as the recipe says, not
    as its config does: as the same weights without them (as the static decoder and vLLM requests sample)."""
    import json
    from pathlib import Path

    from stargate_lite.engines.questioner import Questioner
    from stargate_lite.recipe import QuestionerConfig

    source = Path(questioner.source)
    copy = tmp_path / "with-generation-config"
    copy.mkdir()
    for item in source.iterdir():
        if item.name != "generation_config.json":
            (copy / item.name).symlink_to(item)
    config = json.loads((source / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**config, "top_k": 1, "min_p": 0.5,
                                                             "repetition_penalty": 3.0}))
    configured = Questioner(QuestionerConfig(model=str(copy), dtype="float32", device="cpu"), model_cache)
    model = configured.load_base()
    assert (model.generation_config.top_k, model.generation_config.repetition_penalty) == (1, 3.0)
    prompts = [questioner_messages("Mei", TASK, TURNS[:2], final=False)] * 3
    for temperature in (0.9, 0.0):
        kwargs = dict(max_new_tokens=12, temperature=temperature, top_p=0.9, batch_size=3, seed=7)
        assert configured.generate(model, prompts, **kwargs) == questioner.generate(base_model, prompts, **kwargs)


def test_every_step_of_the_schedule_trains():
    from stargate_lite.engines.training import warmup_cosine

    one = warmup_cosine(1, 1)
    assert one(0) > 0
    factors = [warmup_cosine(2, 10)(s) for s in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(f > 0 for f in factors) and factors[-1] < 0.1


def test_the_transformers_chat_backend_answers_in_role(home):
    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.prompts import roleplayer_messages
    from stargate_lite.recipe import load_recipe

    chat = ChatModels(load_recipe("tiny").chat_models, home).get("smollm2-hf")
    conversations = [roleplayer_messages("I'm ANA. I am a retired nurse.", TASK, TURNS[:1]),
                     roleplayer_messages("I'm BO. I am a student.", TASK, TURNS[:1])]
    texts = chat.complete_each(conversations, Sampling(16))
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert chat.complete_each(conversations, Sampling(16)) == texts  # greedy: reproducible


def test_empty_questions_and_responses_are_left_out_of_training(home):
    from stargate_lite.errors import StargateError
    from stargate_lite.methods.sft import training_examples
    from stargate_lite.recipe import load_recipe
    from stargate_lite.store import Store

    store = Store(home)
    store.insert_rows("tasks", [{"id": "t", "dataset": "d", "split": "A", "idx": 0, "text": TASK}], pk="id")
    store.insert_rows("personas", [{"id": f"p{i}", "dataset": "d", "split": "A", "idx": i, "name": n, "text": "x",
                                    "source": "test"} for i, n in enumerate(["Mei", "Bo", "Ana"])], pk="id")
    store.insert_rows("golds", [{"id": f"t|p{i}", "dataset": "d", "task_id": "t", "persona_id": f"p{i}",
                                 "text": GOLD, "status": "ok", "source": "test"} for i in range(3)], pk="id")
    cases = [("What do you like?", "A plan."), ("", "A plan."), ("What do you like?", "  ")]
    for i, (question, response) in enumerate(cases):
        pair, conv = f"r/1/p{i}", f"r/1/p{i}#000"
        store.insert_rows("pairs", [{"id": pair, "run_id": "r", "iteration": 1, "task_id": "t",
                                     "persona_id": f"p{i}", "turns": 1, "idx": i}], pk="id")
        store.save_conversations([{"id": conv, "run_id": "r", "iteration": 1, "pair_id": pair, "sample": 0,
                                   "turns": 1, "policy": "base", "messages": [
                                       {"role": "questioner", "text": question},
                                       {"role": "roleplayer", "text": "Spicy food."}]}])
        store.insert_rows("selections", [{"pair_id": pair, "run_id": "r", "iteration": 1, "conversation_id": conv,
                                          "logprob": -1.0}], pk="pair_id")
        store.insert_rows("responses", [{"pair_id": pair, "run_id": "r", "iteration": 1, "conversation_id": conv,
                                         "text": response, "policy": "base"}], pk="pair_id")
    (example,) = training_examples(store, load_recipe("tiny"), "r", 1)
    assert example[-1] == {"role": "assistant", "content": "A plan."} and "My name is Mei." in example[0]["content"]
    assert QUESTION_INSTRUCTION in example[0]["content"]  # instructed: the tiny recipe's format
    # simulate.instruction: the recipe's own instruction, in place of the shipped one, wherever the policy reads it
    mine = "Ask me who I live with."
    (own,) = training_examples(store, load_recipe("tiny", [f"simulate.instruction={mine}"]), "r", 1)
    assert own[0]["content"] == f"My name is Mei.\n\n{TASK}\n\n{mine}" and QUESTION_INSTRUCTION not in own[0]["content"]
    # The paper's bare format: the greeting, the conversation, "{answer}\n\n{task}", the response; no instruction.
    (bare,) = training_examples(store, load_recipe("tiny", ["train.format=bare"]), "r", 1)
    assert [m["content"] for m in bare] == [f"My name is Mei.\n\n{TASK}", "What do you like?",
                                            f"Spicy food.\n\n{TASK}", "A plan."]
    # train.target: the gold instead of the response (pair 2's empty response no longer matters), or nothing
    # after the questions (the conversation ends with the Roleplayer's answer; no response is trained on).
    gold = training_examples(store, load_recipe("tiny", ["train.target=gold"]), "r", 1)
    assert [e[-1] for e in gold] == [{"role": "assistant", "content": GOLD}] * 2
    assert ["My name is Mei." in gold[0][0]["content"], "My name is Ana." in gold[1][0]["content"]] == [True, True]
    questions_only = training_examples(store, load_recipe("tiny", ["train.target=none"]), "r", 1)
    assert len(questions_only) == 2
    assert all(e[-1]["role"] == "user" and "Spicy food." in e[-1]["content"] for e in questions_only)
    assert not any(m["role"] == "assistant" and m["content"] in ("A plan.", GOLD) for e in questions_only for m in e)
    with store.transaction():
        store.db.execute("update responses set text = ''")
    with pytest.raises(StargateError, match="no usable training example"):
        training_examples(store, load_recipe("tiny"), "r", 1)


def test_long_examples_keep_their_end():
    from stargate_lite.engines.encoded import Encoded
    from stargate_lite.engines.training import keep_last

    cut = keep_last(Encoded(list(range(10)), [1, 7, 8]), 4)
    assert cut.input_ids == [6, 7, 8, 9] and cut.target_positions == [1, 2]
    assert keep_last(Encoded([1, 2], [1]), 4) == Encoded([1, 2], [1])


def test_gradient_accumulation_trains_as_the_larger_batch_does(questioner, tmp_path):
    """Batch 2 accumulated twice takes the step batch 4 takes: the loss is divided by the step's target count,
    not averaged per micro-batch, so sequences of different lengths weigh the same either way."""
    from safetensors.torch import load_file

    examples = [questioner.encode_for_training([*questioner_messages(n, TASK, [], final=True),
                                                {"role": "assistant", "content": GOLD[: 10 + 15 * i]}])
                for i, n in enumerate(["Mei", "Bo", "Ana", "Ravi"])]
    records, adapters = [], []
    for batch, accumulate in ((4, 1), (2, 2)):
        config = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, batch_size=batch,
                             gradient_accumulation=accumulate, epochs=2, warmup_ratio=0.0)
        out = tmp_path / f"batch-{batch}"
        records.append(train_lora(attach_lora(questioner.load_base(), config, seed=0), examples, config, method=SFT,
                                  seed=0, out_dir=out, pad_token_id=questioner.tokenizer.pad_token_id))
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert records[0]["steps"] == records[1]["steps"] == 2
    assert records[0]["losses"] == pytest.approx(records[1]["losses"], abs=1e-5)  # the second after one update
    assert adapters[0].keys() == adapters[1].keys()
    # AdamW divides by each gradient's own size, so where a gradient is near zero float noise moves the weight
    # by up to the learning rate: the adapters agree to 1e-3, not to float precision (measured 3e-4).
    assert max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0]) < 1e-3
    assert max(a.abs().max().item() for a in adapters[0].values()) > 1e-3  # the adapter did move


def test_sequence_dropout_masks_follow_the_sequence_not_its_batch(questioner):
    """train.dropout_masks sequence: a sequence's masks come from its own key, whatever shares its batch and
    however wide the batch is padded, so the LoRA gradients of a batch of three equal those of the same sequences
    split [2] + [1]; torch's own masks (one draw per batch) do not, and the masks are really on."""
    from peft import LoraConfig, get_peft_model

    from stargate_lite.engines.sequence_dropout import SequenceMasks
    from stargate_lite.engines.training import _padded, loss_at_targets

    examples = [questioner.encode_for_training([*questioner_messages(n, TASK, [], final=True),
                                                {"role": "assistant", "content": GOLD[: 10 + 25 * i]}])
                for i, n in enumerate(["Mei", "Bo", "Ana"])]
    torch.manual_seed(0)
    model = get_peft_model(questioner.load_base(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3,
                                                              target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide the masks from A's gradient
            torch.nn.init.normal_(p, std=0.02)
    decoder = model.get_base_model()
    pad = questioner.tokenizer.pad_token_id

    def gradients(batches, masks=None):
        model.zero_grad()
        for batch in batches:
            if masks:
                masks.rows = [(("epoch 0", i), len(examples[i].input_ids)) for i in batch]
            ids, labels, _ = _padded([examples[i] for i in batch], pad, "cpu")
            loss_at_targets(decoder, ids, labels).backward()
        return torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if p.requires_grad])

    def gap(a, b):
        return ((a - b).norm() / a.norm()).item()

    model.train()
    torch.manual_seed(1)
    torch_whole = gradients([[0, 1, 2]])
    torch_split = gradients([[0, 1], [2]])
    model.eval()
    no_dropout = gradients([[0, 1, 2]])
    model.train()
    masks = SequenceMasks(seed=3)
    assert masks.install(model) == 7 * 30  # every LoRA'd projection of the 30 layers
    whole, split = gradients([[0, 1, 2]], masks), gradients([[2], [0, 1]], masks)
    assert gap(whole, split) < 1e-4  # float sums in another order, nothing more
    assert gap(torch_whole, torch_split) > 0.05  # torch's masks depend on the batch
    assert gap(whole, no_dropout) > 0.05  # the seeded masks do drop
    masks.seed = 4
    assert gap(whole, gradients([[0, 1, 2]], masks)) > 0.05  # and follow the seed
