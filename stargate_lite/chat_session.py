"""`stargate-lite chat`: talk with a Questioner checkpoint, or watch it talk with a Roleplayer.

The Questioner sees exactly what it sees in training: the greeting with the instruction to ask, the answers,
and, when it is time to answer, the request repeated. Every transcript is saved to the store as it grows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .chat import ChatModel, Sampling, complete_all
from .errors import StargateError
from .evaluate import pick_adapter, pick_run
from .loop import recipe_of_run
from .prompts import questioner_messages, roleplayer_messages
from .questioner import Questioner
from .recipe import Recipe, load_recipe
from .store import Store

COMMANDS = "/answer: answer now  /reset: start over  /quit: leave"


def resolve_checkpoint(store: Store, run_id: str | None, iteration: int | None, adapter: str | None,
                       base: bool) -> tuple[Recipe, str | None, str]:
    """(recipe, adapter path or None, a name for the policy) for the chosen checkpoint."""
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise StargateError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
        run = store.get_run(run_id) if run_id else None
        recipe = recipe_of_run(run) if run else load_recipe("tiny")
        return recipe, adapter, f"adapter:{adapter}"
    if base and not store.list_runs():
        return load_recipe("tiny"), None, "base"
    run = pick_run(store, run_id)
    recipe = recipe_of_run(run)
    if base:
        return recipe, None, "base"
    iteration, adapter = pick_adapter(store, run, iteration)
    return recipe, adapter, f"{run['id']}/iteration-{iteration}"


class Transcript:
    """One chat in the store, rewritten after every message so nothing is lost if the terminal dies."""

    def __init__(self, store: Store, policy: str, name: str, persona: str | None):
        self.store, self.policy, self.name, self.persona = store, policy, name, persona
        self.new()

    def new(self) -> None:
        self.id, self.task, self.turns, self.response = uuid.uuid4().hex[:12], None, [], None
        self.started = time.time()

    def save(self) -> None:
        row = {"id": self.id, "policy": self.policy, "name": self.name, "persona": self.persona, "task": self.task,
               "turns": json.dumps(self.turns), "response": self.response, "started_at": self.started,
               "updated_at": time.time()}
        with self.store.transaction():
            self.store.db["chats"].insert(row, pk="id", replace=True)


def chat_loop(
    questioner: Questioner,
    model,
    recipe: Recipe,
    transcript: Transcript,
    read: Callable[[str], str | None],
    write: Callable[[str], None],
    stream: Callable[[Iterator[str]], str],
    roleplayer: ChatModel | None = None,
    task: str | None = None,
    max_questions: int | None = None,
) -> None:
    """Run chats until /quit or end of input. `read(prompt)` returns a line or None at end of input."""
    limit = max_questions or recipe.simulate.max_turns
    while True:
        request = task if roleplayer else read("Your request (or /quit): ")
        if request is None or request.strip() == "/quit":
            return
        if not request.strip() or request.strip() in ("/reset", "/answer"):
            continue
        transcript.task = request.strip()
        transcript.save()
        answer_now = False
        while len([t for t in transcript.turns if t["role"] == "questioner"]) < limit and not answer_now:
            messages = questioner_messages(transcript.name, transcript.task, transcript.turns, final=False)
            question = stream(questioner.stream(model, messages, max_new_tokens=recipe.simulate.question_max_tokens,
                                                temperature=recipe.simulate.temperature, top_p=recipe.simulate.top_p))
            transcript.turns.append({"role": "questioner", "text": question})
            transcript.save()
            if roleplayer:
                reply = complete_all(roleplayer,
                    [roleplayer_messages(transcript.persona, transcript.task, transcript.turns)],
                    Sampling(recipe.simulate.answer_max_tokens, temperature=recipe.simulate.answer_temperature),
                )[0]
                write(f"roleplayer> {reply}\n")
            else:
                reply = read("you> ")
                if reply is None or reply.strip() == "/quit":
                    return
                if reply.strip() == "/reset":
                    transcript.new()
                    break
                if reply.strip() == "/answer":
                    transcript.turns.pop()  # the unanswered question is not part of the conversation
                    answer_now = True
                    break
            transcript.turns.append({"role": "roleplayer", "text": reply})
            transcript.save()
        else:
            answer_now = True
        if not answer_now:
            continue  # /reset
        messages = questioner_messages(transcript.name, transcript.task, transcript.turns, final=True)
        transcript.response = stream(questioner.stream(model, messages, max_new_tokens=recipe.respond.max_tokens,
                                                       temperature=0.0, top_p=1.0))
        transcript.save()
        if roleplayer:
            return
        transcript.new()
