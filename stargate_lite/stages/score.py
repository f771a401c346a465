"""Score stage: log p_base(gold | task, conversation), the sum over the gold response's own tokens.

Logits are computed only at target positions and projected to the vocabulary a chunk of positions at a time,
so the [batch x length x vocab] tensor of a plain forward is never built. That recomputes the model's head
outside its forward, so models whose forward does more to the logits than soft-capping them
(`fast_scoring_refusal`) are scored through their own forward instead, one sequence at a time. Always the base
model: the objective is defined under Q_0, whatever iteration produced the conversation.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from ..engines.budget import Shape, score_batches, vocab_chunk
from ..engines.encoded import Encoded
from ..engines.logits import fast_scoring_refusal, head_logits
from ..engines.questioner import Questioner
from ..errors import FallbackNotice
from ..progress import Progress
from ..prompts import questioner_messages
from ..recipe import ScoreConfig
from ..runs import chunks_left, stop_point
from ..store import Store


def token_logprobs(model, encoded: list[Encoded], *, batch_size: int, vocab_chunk_tokens: int,
                   memory_budget_bytes: int | None = None) -> list:
    """Per-target-token log-probs (1-D float32 tensors, one per item, in input order).

    Batches are length-sorted; with a memory budget each holds as many sequences (up to batch_size) as fit.
    """
    import torch

    if not isinstance(model, torch.nn.Module):  # a policy served by the vLLM engine: scored there, by the base
        return model.engine.prompt_logprobs(encoded)
    device = next(model.parameters()).device
    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = fast_scoring_refusal(decoder)
    if reason:
        warnings.warn(FallbackNotice(
            f"the fast scorer does not support {decoder.config.model_type}'s {reason}: scoring through the model's "
            "own forward, one sequence at a time (same results, slower)"), stacklevel=2)
        return [_forward_logprobs(model, e, device) for e in encoded]
    shape = Shape.of(decoder) if memory_budget_bytes else None
    vocab_chunk_tokens = vocab_chunk(memory_budget_bytes, shape, vocab_chunk_tokens)
    batches = score_batches([len(e.input_ids) for e in encoded], max_batch=batch_size,
                            budget_bytes=memory_budget_bytes, shape=shape, logits_positions=vocab_chunk_tokens)
    results: list = [None] * len(encoded)
    for batch in batches:
        width = max(len(encoded[i].input_ids) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, i in enumerate(batch):
            seq = encoded[i].input_ids
            ids[row, : len(seq)] = torch.tensor(seq, device=device)
        with torch.no_grad():
            # Right padding under causal attention: no real token sees a pad after it, so no mask is needed,
            # and sdpa can take its flash kernel (grouped-query heads natively) instead of a masked one.
            hidden = decoder.base_model(input_ids=ids, use_cache=False).last_hidden_state
            rows, cols, counts = [], [], []
            for row, i in enumerate(batch):
                positions = [p for p in encoded[i].target_positions if p > 0]
                rows += [row] * len(positions)
                cols += [p - 1 for p in positions]  # the state before a token predicts it
                counts.append(len(positions))
            rows_at = torch.tensor(rows, dtype=torch.long, device=device)  # long even when empty
            cols_at = torch.tensor(cols, dtype=torch.long, device=device)
            states, targets = hidden[rows_at, cols_at], ids[rows_at, cols_at + 1]
            logprobs = torch.empty(len(rows), dtype=torch.float32, device=device)
            for c in range(0, len(rows), vocab_chunk_tokens):
                logits = head_logits(decoder, states[c : c + vocab_chunk_tokens])
                picked = logits.gather(1, targets[c : c + vocab_chunk_tokens, None]).squeeze(1)
                logprobs[c : c + vocab_chunk_tokens] = picked - torch.logsumexp(logits, dim=-1)
        for i, part in zip(batch, torch.split(logprobs.cpu(), counts)):
            results[i] = part
    return results


def _forward_logprobs(model, item: Encoded, device):
    """The library path: the model's own forward, its logits kept at the target positions only."""
    import torch

    positions = [p for p in item.target_positions if p > 0]
    if not positions:
        return torch.empty(0)
    ids = torch.tensor([item.input_ids], device=device)
    before = torch.tensor([p - 1 for p in positions], device=device)  # the state before a token predicts it
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=before).logits[0].float()
    targets = ids[0, before + 1]
    return (logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)).cpu()


def score_sums(model, encoded: list[Encoded], *, batch_size: int, vocab_chunk_tokens: int,
               memory_budget_bytes: int | None = None) -> list[tuple[float, int]]:
    """(summed log-prob, number of target tokens) per item."""
    per_token = token_logprobs(model, encoded, batch_size=batch_size, vocab_chunk_tokens=vocab_chunk_tokens,
                               memory_budget_bytes=memory_budget_bytes)
    return [(float(t.sum()), int(t.numel())) for t in per_token]


def encode_gold(questioner: Questioner, name: str, task: str, turns: list[dict], gold: str) -> Encoded:
    """The paper's scoring format: greeting, the conversation, the task repeated, then the gold response."""
    prefix = questioner_messages(name, task, turns, final=True, instruction=False)
    return questioner.encode_for_scoring(prefix, gold)


def score_golds(model, questioner: Questioner, config: ScoreConfig, conversations: list[tuple[dict, list[dict]]],
                per_turn: bool = False) -> list[tuple[tuple[float, int], dict[int, tuple[float, int]]]]:
    """Each conversation's (pair, turns) gold log-prob under `model` as it is (score_stage and the environment run
    it as the base: base_weights), summed, with its number of tokens; with `per_turn` (reward.per_turn) also the
    gold's after each of its first k question-and-answer turns but the last, {k: (log-prob, tokens)}. One call of
    score_sums: the whole conversations first, then each one's prefixes."""
    # (conversation, k): the gold after its first k question-and-answer turns; k None: after all
    scored = [(i, None) for i in range(len(conversations))]
    if per_turn:
        scored += [(i, k) for i, (_, turns) in enumerate(conversations) for k in range(1, len(turns) // 2)]
    encoded = [
        encode_gold(questioner, conversations[i][0]["persona_name"], conversations[i][0]["task"],
                    conversations[i][1] if k is None else conversations[i][1][: 2 * k], conversations[i][0]["gold"])
        for i, k in scored
    ]
    sums = score_sums(model, encoded, batch_size=config.batch_size, vocab_chunk_tokens=config.vocab_chunk_tokens,
                      memory_budget_bytes=questioner.memory_budget_bytes)
    out: list[tuple[tuple[float, int], dict[int, tuple[float, int]]]] = [(s, {}) for s in sums[: len(conversations)]]
    for (i, k), s in zip(scored[len(conversations):], sums[len(conversations):], strict=True):
        out[i][1][k] = s
    return out


SCORE_CHUNK = 64  # conversations scored and stored per transaction


def score_stage(
    store: Store, run_id: str, iteration: int, model, questioner: Questioner, config: ScoreConfig, progress: Progress,
    per_turn: bool = False,
) -> None:
    """Score every unscored conversation of an iteration under the base model (`model` with adapters off); with
    `per_turn` (reward.per_turn) also the gold after each of its turns but the last, stored before the
    conversation's score, which marks it done."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    conversations = store.conversations_to_score(run_id, iteration)
    chunks, done = chunks_left(conversations, SCORE_CHUNK, lambda c: c["scored"])
    with progress.stage(f"iteration {iteration}: score (conversations)", len(conversations), done) as advance:
        with base_weights(model):
            for chunk in chunks:
                turns = store.turns([c["id"] for c in chunk])
                scored = score_golds(model, questioner, config,
                                     [(pairs[c["pair_id"]], turns[c["id"]]) for c in chunk], per_turn)
                store.insert_rows("turn_scores", [
                    {"conversation_id": c["id"], "turns": k, "run_id": run_id, "iteration": iteration,
                     "logprob": lp, "n_tokens": n}
                    for c, (_, after) in zip(chunk, scored, strict=True) for k, (lp, n) in after.items()
                ], pk=("conversation_id", "turns"))
                rows = [
                    {"conversation_id": c["id"], "run_id": run_id, "iteration": iteration, "logprob": lp,
                     "n_tokens": n}
                    for c, ((lp, n), _) in zip(chunk, scored, strict=True)
                ]
                store.insert_rows("scores", rows, pk="conversation_id")
                advance(len(chunk))
                stop_point(f"score/{iteration}")


@contextmanager
def base_weights(model):
    """Run a policy as the base model Q_0: a peft model with its adapters switched off, or the model itself."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield
