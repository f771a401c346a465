"""Simulate stage: n conversations per (task, persona) between the current policy and the Roleplayer.

With simulate.turns uniform (the paper) all n conversations of a pair share its turn count k, and each ends with
the Roleplayer's answer. With policy, a conversation also ends where the Questioner's turn is not a question
(prompts.is_question): that turn is its answer, stored with the conversation, not as a turn. Work is done and
stored a chunk of pairs at a time, with a seed derived from the chunk, so a rerun after a crash redoes at most
one chunk and produces what the uninterrupted run would have: exactly, with an in-process Roleplayer; up to
llama.cpp's rounding with a llama-server one, whose batched decoding and prompt cache are not bit-for-bit those
of one sequence alone. Each turn's Roleplayer answers for the whole chunk are requested at once, so a server's
slots fill (simulate.pairs_per_chunk x conversations_per_pair conversations per chunk).
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from ..engines.chat_models import ChatFailure, ChatModel, Sampling
from ..engines.gate import Gate, GateSettings, embedder_source
from ..engines.models import model_cache_dir
from ..engines.questioner import Questioner
from ..errors import FallbackNotice, QuestionerFailure
from ..facts import persona_facts
from ..progress import Progress
from ..prompts import gated_roleplayer_messages, is_question, questioner_messages, roleplayer_messages
from ..recipe import SimulateConfig
from ..runs import stop_point
from ..store import Store


class Roleplayers:
    """The Roleplayers a stage's conversations are spread over (roles.roleplayer), each conversation's drawn by
    weight from a seed and the conversation's id: the same on every rerun, whatever was done before. Models are
    got (loaded) on first use. With a `gate` (simulate.reveal asked) each is a gated user: it sees, for each reply,
    only the persona's facts the Questioner's turn asks for."""

    def __init__(self, weights: dict[str, float], get: Callable[[str], ChatModel], seed: int,
                 gate: Gate | None = None):
        self.weights, self.get, self.seed, self.gate = weights, get, seed, gate

    def name_for(self, conversation: str) -> str:
        if len(self.weights) == 1:
            return next(iter(self.weights))
        draw = random.Random(f"{self.seed}/roleplayer/{conversation}")
        return draw.choices(list(self.weights), weights=list(self.weights.values()))[0]


def recipe_gate(config: SimulateConfig, home: Path) -> Gate:
    """The recipe's gate (simulate.gate), whatever the user: elicitation is counted with it for free users too.
    Its model loads on first use."""
    settings = GateSettings(config.gate.threshold, config.gate.spread, config.gate.stated_threshold)
    return Gate(config.gate.model, settings, model_cache_dir(home))


def user_gate(config: SimulateConfig, home: Path) -> Gate | None:
    """The gate a simulation's users answer through: None for the free user (reveal all)."""
    return recipe_gate(config, home) if config.reveal == "asked" else None


def check_gate(config: SimulateConfig) -> None:
    """A gated user's gate model is there (a one-line error naming how to get it, before anything is written)."""
    if config.reveal == "asked":
        embedder_source(config.gate.model)


def pair_facts(pair: dict) -> list[str]:
    """A pair's persona facts as stored with the persona (or derived, for a pair read without them)."""
    stored = pair.get("persona_facts")
    return json.loads(stored) if stored else persona_facts(pair["persona"])


def user_view(pair: dict, messages: list[dict], gate: Gate | None) -> tuple[list[dict], list[int] | None]:
    """What the Roleplayer sees for its next reply, and the facts it was given: the whole persona for a free user
    (None), else the facts the last Questioner turn asks for (gate.asked)."""
    if gate is None:
        return roleplayer_messages(pair["persona"], pair["task"], messages), None
    facts = pair_facts(pair)
    given = gate.asked(messages[-1]["text"], facts)
    return gated_roleplayer_messages(pair["persona_name"], pair["task"], [facts[i] for i in given], messages), given


def conversation_id(pair_id: str, sample: int) -> str:
    return f"{pair_id}#{sample:03d}"


def chunk_seed(seed: int, iteration: int, chunk: int, step: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + chunk * 101 + step) % (2**31)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentences(text: str, limit: int | None) -> str:
    """The first `limit` sentences of an answer (all of it when limit is None).

    The documented rule for a Roleplayer that runs on and starts solving the request itself instead of
    answering the question: keep the answer's beginning, flag the turn as trimmed (turns.trimmed)."""
    if limit is None:
        return text
    parts = _SENTENCE_END.split(text.strip())
    return " ".join(parts[:limit]) if len(parts) > limit else text


def roleplayer_turn(conversations: list[dict], roleplayers: Roleplayers, config: SimulateConfig, seed: int,
                    turn: int) -> list[str | None]:
    """The Roleplayer side of one turn of a chunk, as simulate_chunk takes it (and benchmarks/bench_roleplayer.py
    times it): each conversation ({pair, messages, roleplayer, failed}, its last message the Questioner's) gets
    its Roleplayer's reply to what user_view shows it (the whole persona, or for a gated user the facts the turn
    asks for), every reply of one Roleplayer requested at once and sampled with the turn's seed (seed + 2 * turn
    + 1 from the chunk's seed; the Questioner's turn has seed + 2 * turn). The reply is kept as its first
    simulate.max_answer_sentences sentences (first_sentences: "trimmed" says whether that cut it), with the facts
    a gated user was given. A conversation whose Roleplayer refused it for good (a prompt over its context) is
    marked "failed" and gets no message; a failure that a retry may mend is raised before any reply is kept.
    Returns each conversation's reply as the Roleplayer wrote it, None where it failed."""
    sampling = Sampling(config.answer_max_tokens, temperature=config.answer_temperature, seed=seed + 2 * turn + 1)
    replies: list[str | None] = [None] * len(conversations)
    views = [user_view(c["pair"], c["messages"], roleplayers.gate) for c in conversations]
    for name in roleplayers.weights:  # each Roleplayer's answers requested at once
        theirs = [i for i, c in enumerate(conversations) if c["roleplayer"] == name]
        if theirs:
            answers = roleplayers.get(name).complete_each([views[i][0] for i in theirs], sampling)
            for i, answer in zip(theirs, answers, strict=True):
                if isinstance(answer, ChatFailure) and not answer.refused:
                    raise answer
                if isinstance(answer, ChatFailure):
                    conversations[i]["failed"] = f"roleplayer {name}: {answer}"
                else:
                    replies[i] = answer
    for c, reply, (_, facts) in zip(conversations, replies, views, strict=True):
        if reply is not None:
            kept = first_sentences(reply, config.max_answer_sentences)
            c["messages"].append({"role": "roleplayer", "text": kept, "trimmed": int(kept != reply), "facts": facts})
    return replies


def simulate_chunk(
    pairs: list[dict],
    policy,
    questioner: Questioner,
    roleplayers: Roleplayers,
    config: SimulateConfig,
    seed: int,
    on_message=None,
) -> list[dict]:
    """Run every conversation of these pairs to its end; returns conversation records with their messages, their
    Roleplayer's name and, where the Questioner answered instead of asking, its "answer". A Questioner message,
    and the answer ("answer_cut"), say whether generation cut it at simulate.question_max_tokens ("cut": 1). A
    conversation whose Roleplayer refused it for good (a prompt over its context) stops there, its reason in
    "failed"; a failure that a retry may mend fails the chunk (raised)."""
    decide = config.turns == "policy"
    convs = [
        {"pair": pair, "sample": s, "messages": [], "answer": None, "answer_cut": None, "failed": None,
         "roleplayer": roleplayers.name_for(conversation_id(pair["id"], s))}
        for pair in pairs
        for s in range(config.conversations_per_pair)
    ]
    for turn in range(max(p["turns"] for p in pairs)):
        active = [c for c in convs if c["pair"]["turns"] > turn and c["answer"] is None and not c["failed"]]
        if not active:
            break
        questions = questioner.generate(
            policy,
            [questioner_messages(c["pair"]["persona_name"], c["pair"]["task"], c["messages"], final=False,
                                 decide=decide, instruction_text=config.instruction)
             for c in active],
            max_new_tokens=config.question_max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.batch_size,
            seed=seed + 2 * turn,
            on_batch=on_message,
        )
        asking = []
        for c, q, cut in zip(active, questions, questions.cut, strict=True):
            if decide and not is_question(q):
                c["answer"], c["answer_cut"] = q, int(cut)
                if on_message:  # the answer and the turns it did not take
                    on_message(1 + 2 * (c["pair"]["turns"] - 1 - turn))
            else:
                c["messages"].append({"role": "questioner", "text": q, "cut": int(cut)})
                asking.append(c)
        replies = roleplayer_turn(asking, roleplayers, config, seed, turn)
        if on_message:
            for c in asking:
                if c["failed"]:  # its answer and the turns it will not take
                    on_message(1 + 2 * (c["pair"]["turns"] - 1 - turn))
            on_message(sum(reply is not None for reply in replies))
    messages = [m for c in convs for m in c["messages"]]
    for m, n in zip(messages, questioner.count_tokens([m["text"] for m in messages])):
        m["n_tokens"] = n
    return convs


def simulate(
    store: Store,
    run_id: str,
    iteration: int,
    policy,
    policy_name: str,
    questioner: Questioner,
    roleplayers: Roleplayers,
    config: SimulateConfig,
    seed: int,
    progress: Progress,
) -> None:
    pairs = store.pairs(run_id, iteration)
    existing = store.conversation_ids(run_id, iteration)
    chunks = [pairs[i : i + config.pairs_per_chunk] for i in range(0, len(pairs), config.pairs_per_chunk)]
    n = config.conversations_per_pair
    messages_per_pair = {p["id"]: 2 * p["turns"] * n for p in pairs}
    total = sum(messages_per_pair.values())
    done = sum(messages_per_pair[p["id"]] for p in pairs if conversation_id(p["id"], n - 1) in existing)
    left_out: list[str] = []
    with progress.stage(f"iteration {iteration}: simulate (messages)", total, done) as advance, \
            store.failure_log(run_id, f"simulate/{iteration}", "chunks of conversations") as record_failure:
        for index, chunk in enumerate(chunks):
            if all(conversation_id(p["id"], s) in existing for p in chunk for s in range(n)):
                continue
            try:
                convs = simulate_chunk(
                    chunk, policy, questioner, roleplayers, config, chunk_seed(seed, iteration, index, 0), advance
                )
            except ChatFailure as failure:  # the roleplayer's service gave up: the chunk is redone on a rerun
                record_failure(f"chunk-{index}", f"roleplayer: {failure}")
                continue
            except QuestionerFailure as failure:  # the Questioner's vLLM server failed or died: likewise
                record_failure(f"chunk-{index}", str(failure))
                continue
            for c in convs:  # refused for good: recorded, left out, and the stage goes on
                if c["failed"]:
                    left_out.append(c["failed"])
                    record_failure(conversation_id(c["pair"]["id"], c["sample"]), c["failed"], final=True)
            convs = [c for c in convs if not c["failed"]]
            store.save_conversations(
                [
                    {
                        "id": conversation_id(c["pair"]["id"], c["sample"]),
                        "run_id": run_id,
                        "iteration": iteration,
                        "pair_id": c["pair"]["id"],
                        "sample": c["sample"],
                        "turns": len(c["messages"]) // 2,
                        "policy": policy_name,
                        "answer": c["answer"],
                        "answer_cut": c["answer_cut"],
                        "roleplayer": c["roleplayer"],
                        "messages": c["messages"],
                    }
                    for c in convs
                ]
            )
            stop_point(f"simulate/{iteration}")
    if left_out:
        warnings.warn(FallbackNotice(f"{len(left_out)} conversation(s) of {run_id} iteration {iteration} left out, "
                                     f"refused for good ({left_out[-1]}): see the failures table"), stacklevel=2)
