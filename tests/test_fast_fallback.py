"""The fast decoder and scorer refuse models they would get wrong, on tiny random configs of such models (no
weights to download): a one-line notice, the library's path, and the library's results."""

import warnings

import pytest
import torch

from stargate_lite.engines.decode import decode, static_decoding_refusal
from stargate_lite.engines.encoded import Encoded
from stargate_lite.engines.logits import fast_scoring_refusal
from stargate_lite.errors import FallbackNotice
from stargate_lite.prompts import questioner_messages
from stargate_lite.stages.score import token_logprobs

PROMPT = questioner_messages("Mei", "Can you suggest a weekly meal plan for me?", [], final=False)
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)


def _random_model(model_type: str, vocab_size: int, **fields):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **{**SHAPE, **fields})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random init gives near-uniform logits; a wider spread makes greedy choices clear
        model.get_output_embeddings().weight.mul_(20)
    return model.eval()


def _greedy(questioner, model, static: bool, max_new_tokens: int) -> tuple[list[str], list[str]]:
    """(texts, fallback notices) of one greedy generation with the static decoder on or off."""
    questioner.static_decoder = static
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            texts = questioner.generate(model, [PROMPT, [{"role": "user", "content": "Hi"}]],
                                        max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                                        batch_size=2, seed=0)
    finally:
        questioner.static_decoder = False
    return texts, [str(w.message) for w in caught if issubclass(w.category, FallbackNotice)]


def _prompt_length(questioner) -> int:
    rendered = questioner.render(PROMPT, add_generation_prompt=True)
    return len(questioner.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_a_sliding_window_shorter_than_the_text_falls_back_to_generate(questioner):
    vocab = len(questioner.tokenizer)
    length = _prompt_length(questioner)
    model = _random_model("mistral", vocab, sliding_window=length + 4)
    assert static_decoding_refusal(model, length + 4) is None  # the window never binds: the fast path is exact
    texts, notices = _greedy(questioner, model, static=True, max_new_tokens=4)
    assert notices == [] and texts == _greedy(questioner, model, static=False, max_new_tokens=4)[0]

    texts, notices = _greedy(questioner, model, static=True, max_new_tokens=24)
    assert len(notices) == 1 and "mistral's sliding-window attention" in notices[0] and "\n" not in notices[0]
    assert texts == _greedy(questioner, model, static=False, max_new_tokens=24)[0]


def test_the_static_decoder_would_be_wrong_where_it_refuses(questioner):
    """Without the check, decoding past the window fails or disagrees with generate: the refusal is needed."""
    vocab = len(questioner.tokenizer)
    model = _random_model("mistral", vocab, sliding_window=8)
    ids = torch.randint(3, vocab, (1, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                   pad_token_id=0)[:, 40:]
    try:
        ours = decode(model, ids, mask, max_new_tokens=8, stop_ids=[], pad_id=0, temperature=0.0, top_p=1.0,
                      use_graph=False)
    except RuntimeError as err:  # transformers 5: the sliding cache is shorter than the decoder's masks
        assert "size of tensor" in str(err)
        return
    assert not torch.equal(ours, reference)


@pytest.mark.parametrize(("model_type", "fields", "reason"), [
    ("gemma2", dict(sliding_window=4096, attn_logit_softcapping=50.0), "attention soft-capping"),
    ("gpt_oss", dict(sliding_window=4096, num_local_experts=2, num_experts_per_tok=1), "attention sinks"),
    ("llama4_text", dict(attention_chunk_size=16, intermediate_size_mlp=128, num_local_experts=1),
     "layer types chunked_attention"),
])
def test_attention_variants_are_refused(questioner, model_type, fields, reason):
    model = _random_model(model_type, len(questioner.tokenizer), **fields)
    assert static_decoding_refusal(model, 64) == reason
    texts, notices = _greedy(questioner, model, static=True, max_new_tokens=6)
    assert len(notices) == 1 and reason in notices[0]
    assert texts == _greedy(questioner, model, static=False, max_new_tokens=6)[0]


def _library_logprobs(model, item: Encoded):
    """The reference: the model's whole forward, log-softmaxed, at the targets."""
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return torch.stack([logprobs[p - 1, item.input_ids[p]] for p in item.target_positions])


def _items(vocab: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(1)
    return [Encoded(torch.randint(3, vocab, (length,), generator=g).tolist(), list(range(length - 9, length)))
            for length in (30, 22, 41)]


@pytest.mark.parametrize(("model_type", "fields", "reason"), [
    ("cohere", dict(logit_scale=0.25), "logit scaling (logit_scale=0.25)"),
    ("granite", dict(logits_scaling=4.0), "logit scaling (logits_scaling=4.0)"),
])
def test_logit_scaling_is_scored_through_the_models_forward(model_type, fields, reason):
    model = _random_model(model_type, 500, **fields)
    assert fast_scoring_refusal(model) == reason
    items = _items(500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = token_logprobs(model, items, batch_size=2, vocab_chunk_tokens=4)
    assert [str(w.message) for w in caught if issubclass(w.category, FallbackNotice)] == [
        f"the fast scorer does not support {model_type}'s {reason}: scoring through the model's own forward, "
        "one sequence at a time (same results, slower)"
    ]
    for item, ours in zip(items, scored):
        assert torch.allclose(ours, _library_logprobs(model, item), atol=1e-5)


def test_soft_capped_and_windowed_models_keep_the_fast_scorer():
    """Gemma 2's final soft-capping is repeated by the fast path; its attention runs in the model's own body."""
    model = _random_model("gemma2", 500, sliding_window=8, attn_logit_softcapping=50.0,
                          final_logit_softcapping=3.0)
    assert fast_scoring_refusal(model) is None
    items = _items(500)
    for item, ours in zip(items, token_logprobs(model, items, batch_size=3, vocab_chunk_tokens=4)):
        assert torch.allclose(ours, _library_logprobs(model, item), atol=1e-5)


def test_a_notice_is_one_line_in_the_cli():
    from stargate_lite.cli import _format_warning

    assert _format_warning(FallbackNotice("x: y"), FallbackNotice, "f.py", 3) == "Notice: x: y\n"
    assert "UserWarning" in _format_warning(UserWarning("z"), UserWarning, "f.py", 3)
