"""`run --dry-run`: what one iteration of a recipe costs, before running it.

Counts (model calls, tokens) come from the recipe's scale at its token limits, so they are upper bounds on
tokens. Throughputs are measured here, now, with the recipe's own models: a batch of Questioner generation at
the simulate batch size, one scoring batch, and short completions from each local chat model (as many at once
as a managed llama-server has slots). Remote endpoints are not called (that costs money); their rows show counts
only. Nothing is written to the store.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..engines.chat_models import ChatModels, Sampling, complete_all
from ..engines.encoded import Encoded
from ..engines.questioner import Questioner
from ..prompts import questioner_messages, roleplayer_messages
from ..recipe import SPLITS, Recipe
from ..stages.score import token_logprobs
from ..training_methods import training_method

PROBE_TOKENS = 16
TRAIN_FORWARD_COST = 3  # a training step does about three forwards' work per token (forward + backward)


def estimate(recipe: Recipe, home: Path, measure: bool = True) -> list[dict]:
    """Rows of (stage, model, calls, tokens, tokens/s, seconds); seconds is None where nothing was measured.
    measure=False: the counts alone, at once, with no model loaded."""
    sim = recipe.simulate
    # uniform: k averages (K + 1) / 2; policy: the Questioner stops when it chooses, at most K (the bound is used)
    k_mean = sim.max_turns if sim.turns == "policy" else (sim.max_turns + 1) / 2
    pairs = recipe.data.tasks.A * recipe.data.personas.A  # iteration 1 trains on split A
    conversations = pairs * sim.conversations_per_pair
    turns = conversations * k_mean
    prompt = 80 + int(k_mean * (sim.question_max_tokens + sim.answer_max_tokens))  # greeting + conversation
    scored_len = prompt + recipe.data.gold_max_tokens
    all_pairs = sum(getattr(recipe.data.tasks, s) * getattr(recipe.data.personas, s) for s in SPLITS)
    # the Oracle writes personas for the built-in data set only (hand-written or imported ones are there already)
    personas = sum(getattr(recipe.data.personas, s) for s in SPLITS) if recipe.data.dataset == "builtin" else 0

    weights, oracle = recipe.roles.roleplayer_weights, recipe.roles.oracle
    generation_rate = scoring_rate = None
    rates: dict[str, float | None] = dict.fromkeys({*weights, oracle})
    if measure:
        questioner = Questioner(recipe.questioner, home)
        model = questioner.load_base()
        generation_rate = _generation_rate(questioner, model, sim.batch_size)
        scoring_rate = _scoring_rate(questioner, model, recipe, scored_len)
        del model
        with tempfile.TemporaryDirectory() as logs, ChatModels(recipe.chat_models, home, Path(logs)) as chat:
            rates = {name: _chat_rate(chat, recipe, name, questioner) for name in rates}

    def row(stage, who, calls, tokens, rate):
        return {"stage": stage, "model": who, "calls": int(calls), "tokens": int(tokens), "tokens_per_s": rate,
                "seconds": tokens / rate if rate else None}

    qname = recipe.questioner.model
    rows = [
        row("data: personas (once)", oracle, personas, personas * recipe.data.persona_max_tokens, rates[oracle]),
        row("data: gold responses (once)", oracle, all_pairs, all_pairs * recipe.data.gold_max_tokens,
            rates[oracle]),
        row("simulate: questions", qname, turns, turns * sim.question_max_tokens, generation_rate),
        *(row("simulate: roleplayer answers", name, turns * share, turns * share * sim.answer_max_tokens, rates[name])
          for name, share in ((name, w / sum(weights.values())) for name, w in weights.items())),
        row("score", qname, conversations, conversations * scored_len, scoring_rate),
    ]
    if recipe.reward.per_turn:  # the gold after each turn but the last: k - 1 more scorings of shorter prefixes
        # Each pair's k is its own (uniform: 1..K alike; policy: up to K, the bound), and the prefix after turn j
        # is as long as j turns: the mean over k of the sum over its prefixes, not the mean k's middle prefix.
        ks = [sim.max_turns] if sim.turns == "policy" else range(1, sim.max_turns + 1)
        turn_len = sim.question_max_tokens + sim.answer_max_tokens
        prefix_tokens = sum(sum(80 + j * turn_len + recipe.data.gold_max_tokens for j in range(1, k)) for k in ks)
        rows.append(row("score: after each turn (reward.per_turn)", qname, conversations * (k_mean - 1),
                        conversations * prefix_tokens / len(ks), scoring_rate))
    if recipe.train.target == "response":
        rows.append(row("respond", qname, pairs, pairs * recipe.respond.max_tokens, generation_rate))
    # Sequences a training epoch reads, as the method says (sft: a pair's kept one; dpo: its best and worst; rloo,
    # grpo: all of its n), and the passes without grad it reads each with once (dpo's reference, the sampler's
    # and the base's log-probs of rloo and grpo).
    method = training_method(recipe.train.method)
    sequences = pairs * method.sequences_per_pair(sim.conversations_per_pair)
    passes = recipe.train.epochs + method.passes_without_grad(recipe.train) / TRAIN_FORWARD_COST
    rows.append(row("train", qname, sequences * recipe.train.epochs, sequences * passes * min(scored_len,
                    recipe.train.max_length), scoring_rate / TRAIN_FORWARD_COST if scoring_rate else None))
    return rows


def _generation_rate(questioner: Questioner, model, batch_size: int) -> float:
    prompts = [questioner_messages("Alex", "Can you help me plan my week?", [], final=False)] * batch_size
    questioner.generate(model, prompts[:1], max_new_tokens=2, temperature=0.0, top_p=1.0, batch_size=1, seed=0)
    start = time.perf_counter()
    questioner.generate(model, prompts, max_new_tokens=PROBE_TOKENS, temperature=0.9, top_p=0.9,
                        batch_size=batch_size, seed=0)
    return batch_size * PROBE_TOKENS / (time.perf_counter() - start)


def _scoring_rate(questioner: Questioner, model, recipe: Recipe, length: int) -> float:
    batch = [Encoded([7] * length, list(range(length - recipe.data.gold_max_tokens, length)))] * \
        recipe.score.batch_size
    start = time.perf_counter()
    token_logprobs(model, batch, batch_size=recipe.score.batch_size,
                   vocab_chunk_tokens=recipe.score.vocab_chunk_tokens,
                   memory_budget_bytes=questioner.memory_budget_bytes)
    return len(batch) * length / (time.perf_counter() - start)


def _chat_rate(chat: ChatModels, recipe: Recipe, name: str, questioner: Questioner) -> float | None:
    """Completion tokens/s of a local chat model, with as many requests at once as it serves (a llama-server's
    slots; tokens counted with the Questioner's tokenizer, near enough); None for endpoints."""
    config = recipe.chat_models[name]
    if config.backend == "openai":
        return None
    model = chat.get(name)
    at_once = config.slots if config.backend == "llama-server" else 1
    messages = [roleplayer_messages("a retired teacher who loves gardening", "Can you help me plan my week?",
                                    [{"role": "questioner", "text": f"What do you enjoy doing on weekends? ({i})"}])
                for i in range(at_once)]
    complete_all(model, messages[:1], Sampling(max_tokens=2))  # warm-up
    start = time.perf_counter()
    texts = complete_all(model, messages, Sampling(max_tokens=PROBE_TOKENS))
    produced = sum(max(1, len(questioner.tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts)
    return produced / (time.perf_counter() - start)
