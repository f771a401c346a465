"""`stargate-lite chat`: talk with a Questioner checkpoint, or watch it talk with a Roleplayer.

The Questioner sees what it saw in training: the greeting (with the instruction to ask where it was trained
with it), the answers, and, when it is time to answer, the request repeated (or, where it was trained to choose
when to answer, nothing: its turn that is not a question is its answer). Every transcript is saved to the
store as it grows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

from ..engines.chat_models import ChatModel, Sampling, complete_all
from ..engines.gate import Gate
from ..engines.questioner import Questioner
from ..errors import StargateError
from ..prompts import is_question, questioner_messages
from ..recipe import Recipe
from ..stages.simulate import pair_facts, user_view
from ..store import Store

COMMANDS = "/answer: answer now  /reset: start over  /quit: leave"


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
        self.store.save_chat(row)


def check_max_questions(max_questions: int | None) -> None:
    if max_questions is not None and max_questions < 0:
        raise StargateError(f"--max-questions {max_questions}: give 0 or more (0: it answers at once)")


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
    prompt_format: str = "instructed",
    gate: Gate | None = None,
) -> None:
    """Run chats until /quit or end of input. `read(prompt)` returns a line or None at end of input.

    `prompt_format` is the one the checkpoint was trained in (train.format): "bare" greets it with the name and
    request alone, as in its training, so what it asks it asks by itself. A run with simulate.turns policy
    trained it to choose when to answer: a turn of its that is not a question is its answer. With a `gate` (the
    run's simulate.reveal asked) the Roleplayer is a gated user: each reply is made from the facts the question
    asks for, which are shown before it and kept with it in the transcript."""
    check_max_questions(max_questions)
    instruction = prompt_format == "instructed"
    decide = recipe.simulate.turns == "policy"
    limit = recipe.simulate.max_turns if max_questions is None else max_questions  # 0: it answers at once
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
            messages = questioner_messages(transcript.name, transcript.task, transcript.turns, final=False,
                                           instruction=instruction, decide=decide,
                                           instruction_text=recipe.simulate.instruction)
            question = stream(questioner.stream(model, messages, max_new_tokens=recipe.simulate.question_max_tokens,
                                                temperature=recipe.simulate.temperature, top_p=recipe.simulate.top_p))
            if decide and not is_question(question):  # it chose to answer
                transcript.response = question
                break
            transcript.turns.append({"role": "questioner", "text": question})
            transcript.save()
            given = None
            if roleplayer:
                pair = {"persona": transcript.persona, "task": transcript.task, "persona_name": transcript.name}
                view, given = user_view(pair, transcript.turns, gate)
                if given is not None:
                    facts = pair_facts(pair)
                    write(f"(told: {' '.join(facts[i] for i in given)})\n" if given else "(told: nothing)\n")
                reply = complete_all(roleplayer, [view], Sampling(recipe.simulate.answer_max_tokens,
                                                                  temperature=recipe.simulate.answer_temperature))[0]
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
            transcript.turns.append({"role": "roleplayer", "text": reply, **({"facts": given} if given is not None
                                                                              else {})})
            transcript.save()
        else:
            answer_now = True
        if transcript.response is None and not answer_now:
            continue  # /reset
        if transcript.response is None:
            messages = questioner_messages(transcript.name, transcript.task, transcript.turns, final=True,
                                           instruction=instruction, decide=decide,
                                           instruction_text=recipe.simulate.instruction)
            transcript.response = stream(questioner.stream(model, messages, max_new_tokens=recipe.respond.max_tokens,
                                                           temperature=0.0, top_p=1.0))
        transcript.save()
        if roleplayer:
            return
        transcript.new()
