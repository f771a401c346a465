"""The fast paths' correctness on the real tiny model: the static-cache decoder agrees with `generate`, and
memory budgets bound what scoring and generation batches allocate (no timings here: see benchmarks/)."""

import torch
from memtrack import PeakMemory

from stargate_lite.engines.budget import Shape, generation_batch, score_batches
from stargate_lite.engines.decode import decode
from stargate_lite.engines.encoded import Encoded
from stargate_lite.prompts import questioner_messages
from stargate_lite.stages.score import token_logprobs

PROMPTS = [
    questioner_messages("Mei", "Can you suggest a weekly meal plan for me?", [], final=False),
    questioner_messages("Tomas", "What should I read next?", [], final=False),
    questioner_messages("Ravi", "Help me plan a trip to the coast with my two children next spring.", [],
                        final=False),
]


def _left_padded(questioner, prompts):
    ids = [questioner.tokenizer(questioner.render(m, add_generation_prompt=True), add_special_tokens=False)
           ["input_ids"] for m in prompts]
    width = max(len(i) for i in ids)
    pad = questioner.tokenizer.pad_token_id
    return (torch.tensor([[pad] * (width - len(i)) + i for i in ids]),
            torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]))


def test_static_decoder_equals_generate_under_greedy_decoding(questioner, base_model):
    ids, mask = _left_padded(questioner, PROMPTS)
    stops = questioner.stop_token_ids(base_model)
    pad = questioner.tokenizer.pad_token_id
    with torch.no_grad():
        reference = base_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                        pad_token_id=pad, eos_token_id=stops)[:, ids.shape[1]:]
    ours = decode(base_model, ids, mask, max_new_tokens=20, stop_ids=stops, pad_id=pad, temperature=0.0,
                  top_p=1.0, use_graph=False)
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference)


def test_static_decoder_batched_equals_one_at_a_time_and_samples_reproducibly(questioner, base_model):
    questioner.static_decoder = True
    try:
        kwargs = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)
        batched = questioner.generate(base_model, PROMPTS, batch_size=3, **kwargs)
        single = [questioner.generate(base_model, [p], batch_size=1, **kwargs)[0] for p in PROMPTS]
        assert batched == single and all(batched)
        sampled = dict(max_new_tokens=10, temperature=0.9, top_p=0.9, batch_size=3)
        first = questioner.generate(base_model, [PROMPTS[0]] * 3, seed=7, **sampled)
        assert first == questioner.generate(base_model, [PROMPTS[0]] * 3, seed=7, **sampled)
        assert len(set(first)) > 1
    finally:
        questioner.static_decoder = False


def test_nucleus_sampling_keeps_only_the_top_mass():
    from stargate_lite.engines.decode import _choose

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    picks = _choose(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7: tokens 2 and 3 are never drawn
    assert 0.55 < (picks == 0).float().mean() < 0.70  # 0.5 / 0.8 renormalised


def _scoring_peak(model, items, **kwargs) -> int:
    with PeakMemory() as tracker:
        token_logprobs(model, items, **kwargs)
    return tracker.peak


def _items(batch, length, target, vocab):
    g = torch.Generator().manual_seed(0)
    return [Encoded(torch.randint(3, vocab, (length,), generator=g).tolist(), list(range(length - target, length)))
            for _ in range(batch)]


def test_scoring_stays_within_its_memory_budget_and_gives_the_same_logprobs(base_model):
    items = _items(8, 128, 32, base_model.config.vocab_size)
    unbounded = _scoring_peak(base_model, items, batch_size=8, vocab_chunk_tokens=512)
    budget = unbounded // 4
    bounded = _scoring_peak(base_model, items, batch_size=8, vocab_chunk_tokens=512, memory_budget_bytes=budget)
    assert bounded <= budget < unbounded
    loose = token_logprobs(base_model, items, batch_size=8, vocab_chunk_tokens=512)
    tight = token_logprobs(base_model, items, batch_size=8, vocab_chunk_tokens=512, memory_budget_bytes=budget)
    assert max((a - b).abs().max().item() for a, b in zip(loose, tight)) < 1e-4


def test_the_estimate_bounds_a_measured_forward(base_model):
    """The per-token estimate is an upper bound of what one forward allocates, and not a loose one."""
    shape = Shape.of(base_model)
    items = _items(4, 256, 1, base_model.config.vocab_size)
    measured = _scoring_peak(base_model, items, batch_size=4, vocab_chunk_tokens=1)
    estimate = 4 * 256 * shape.forward_bytes_per_token() + shape.logits_bytes(1)
    assert measured <= estimate <= 3 * measured


def test_batches_follow_the_budget():
    shape = Shape(hidden=64, intermediate=256, layers=2, kv_dim=32, vocab=1000, act_bytes=4)
    lengths = [100, 300, 200, 50, 300, 10]
    per_token = shape.forward_bytes_per_token()
    budget = 700 * per_token + shape.logits_bytes(16)
    batches = score_batches(lengths, max_batch=8, budget_bytes=budget, shape=shape, logits_positions=16)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) * per_token <= budget - shape.logits_bytes(16) or len(b) == 1
    assert [len(b) for b in score_batches(lengths, max_batch=2, budget_bytes=None, shape=None,
                                          logits_positions=16)] == [2, 2, 2]
    assert generation_batch(100, 50, max_batch=64, budget_bytes=None, shape=shape) == 64
    small = generation_batch(100, 50, max_batch=64, budget_bytes=10 * 2**20, shape=shape)
    assert 1 <= small < 64
    assert generation_batch(100, 50, max_batch=64, budget_bytes=1, shape=shape) == 1


def test_generation_within_a_budget_gives_the_same_texts(questioner, base_model):
    kwargs = dict(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, batch_size=3)
    free = questioner.generate(base_model, PROMPTS, **kwargs)
    questioner.memory_budget_bytes = 16 * 2**20  # room for about one prompt at a time
    try:
        with PeakMemory() as tracker:
            bounded = questioner.generate(base_model, PROMPTS, **kwargs)
    finally:
        questioner.memory_budget_bytes = None
    assert bounded == free
    assert tracker.peak <= 16 * 2**20


def test_training_backend_is_chosen_from_what_is_there():
    import importlib.util

    import pytest

    from stargate_lite.engines.training import resolve_backend
    from stargate_lite.errors import StargateError
    from stargate_lite.methods.sft import METHOD as SFT
    from stargate_lite.recipe import TrainConfig

    assert resolve_backend(TrainConfig(), "cpu", SFT) == "peft"
    assert resolve_backend(TrainConfig(backend="peft"), "cuda", SFT) == "peft"
    with pytest.raises(StargateError, match="not on a CUDA GPU"):
        resolve_backend(TrainConfig(backend="unsloth"), "cpu", SFT)
    if importlib.util.find_spec("unsloth") is None:
        assert resolve_backend(TrainConfig(), "cuda", SFT) == "peft"
        with pytest.raises(StargateError, match=r"\[gpu\]"):
            resolve_backend(TrainConfig(backend="unsloth"), "cuda", SFT)


def test_training_in_a_child_process_reports_steps_and_saves_the_adapter(questioner, tmp_path):
    """The path Unsloth trains on (a spawned process), run here with the peft backend on the tiny model."""
    from stargate_lite.recipe import TrainConfig
    from stargate_lite.stages.train import train_isolated

    examples = [questioner.encode_for_training([*p, {"role": "assistant", "content": "Which cuisine do you like?"}])
                for p in PROMPTS]
    steps = []
    record = train_isolated(questioner, examples, TrainConfig(batch_size=1, backend="peft"), seed=0,
                            out_dir=tmp_path / "adapter", on_step=steps.append)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["total"] == 3 for s in steps)
    assert record["backend"] == "peft" and record["steps"] == 3 and record["losses"] == [s["loss"] for s in steps]
    assert sum(s["tokens"] for s in steps) == record["trained_tokens"] and all(s["lr"] > 0 for s in steps)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_a_failing_training_process_is_one_clear_error(questioner, tmp_path):
    import pytest

    from stargate_lite.errors import StargateError
    from stargate_lite.recipe import TrainConfig
    from stargate_lite.stages.train import train_isolated

    broken = [Encoded([1, 2, 3], [5])]  # a target position past the end of the sequence
    with pytest.raises(StargateError, match="training failed: IndexError"):
        train_isolated(questioner, broken, TrainConfig(backend="peft"), seed=0, out_dir=tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_loss_at_target_positions_is_the_models_own_loss(questioner, base_model):
    """Training's lean loss (logits only where a target is predicted) gives the model's loss and gradients."""
    from stargate_lite.engines.training import IGNORE, attach_lora, loss_at_targets
    from stargate_lite.recipe import TrainConfig

    model = attach_lora(questioner.load_base(), TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0), seed=0)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (2, 48), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, 10:20] = ids[0, 10:20]
    labels[1, 30:40] = ids[1, 30:40]
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # B starts at zero, which would leave A without gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=g)

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in params]

    ours, our_grads = loss_and_grads(lambda: loss_at_targets(model.get_base_model(), ids, labels) / 20)
    theirs, their_grads = loss_and_grads(
        lambda: model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=20).loss)
    assert abs(ours - theirs) < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(our_grads, their_grads)) < 1e-5
