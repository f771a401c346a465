"""Respond stage (the regularizer): the previous policy's greedy final response after each kept conversation.

The Questioner sees the conversation with the task repeated after the last answer (or, with simulate.turns policy,
the conversation as it ended), never the persona.
"""

from __future__ import annotations

from ..engines.questioner import Questioner
from ..progress import Progress
from ..prompts import questioner_messages
from ..recipe import RespondConfig
from ..runs import chunks_left, stop_point
from ..store import Store

RESPONSE_CHUNK = 32  # responses generated and stored per transaction


def respond_stage(
    store: Store,
    run_id: str,
    iteration: int,
    policy,
    policy_name: str,
    questioner: Questioner,
    config: RespondConfig,
    prompt_format: str,
    progress: Progress,
    decide: bool = False,
    instruction_text: str | None = None,
) -> None:
    """`prompt_format` (train.format): "instructed" keeps the instruction to ask in the prompt, "bare" leaves it
    out, as the policy will be trained on this response. `decide` (simulate.turns policy): the response follows
    the last answer, the request not repeated (prompts.questioner_messages)."""
    pairs = {p["id"]: p for p in store.pairs(run_id, iteration)}
    selections = store.selections(run_id, iteration)
    have = store.responses(run_id, iteration)
    chunks, done = chunks_left(selections, RESPONSE_CHUNK, lambda s: s["pair_id"] in have)
    with progress.stage(f"iteration {iteration}: respond", len(selections), done) as advance:
        for chunk in chunks:
            turns = store.turns([s["conversation_id"] for s in chunk])
            prompts = [
                questioner_messages(pairs[s["pair_id"]]["persona_name"], pairs[s["pair_id"]]["task"],
                                    turns[s["conversation_id"]], final=True,
                                    instruction=prompt_format == "instructed", decide=decide,
                                    instruction_text=instruction_text)
                for s in chunk
            ]
            texts = questioner.generate(policy, prompts, max_new_tokens=config.max_tokens, temperature=0.0,
                                        top_p=1.0, batch_size=config.batch_size, seed=0)
            rows = [
                {"pair_id": s["pair_id"], "run_id": run_id, "iteration": iteration,
                 "conversation_id": s["conversation_id"], "text": text, "policy": policy_name, "n_tokens": n}
                for s, text, n in zip(chunk, texts, questioner.count_tokens(texts))
            ]
            store.insert_rows("responses", rows, pk="pair_id")
            advance(len(chunk))
            stop_point(f"respond/{iteration}")
