"""Every prompt the roles see, in one place, and the message lists built from them.

Messages use the roles 'system', 'user' and 'assistant'. Conversations are stored as a list of
{"role": "questioner" | "roleplayer", "text": ...}; the builders here turn them into each role's view.
"""

from __future__ import annotations

# Appended to the Questioner's first user turn while it gathers information (simulation, responses, training).
QUESTION_INSTRUCTION = (
    "Before you help me, find out what you need to know about me. Ask me one short, open question at a time "
    "about my preferences, circumstances or needs, and only the question. Do not answer my request yet; "
    "when I repeat my request, give your full answer."
)

# Its counterpart where the Questioner decides when it knows enough (simulate.turns policy).
DECIDE_INSTRUCTION = (
    "Before you help me, you may ask me short, open questions about my preferences, circumstances or needs, one "
    "at a time and only the question. As soon as you know enough to help me well, stop asking and give me your "
    "full answer."
)

ROLEPLAYER_SYSTEM = (
    "You are playing a person in a conversation with an AI assistant. This is who you are:\n\n"
    "{persona}\n\n"
    "You asked the assistant for help with this request:\n\n"
    "{task}\n\n"
    "The assistant will ask you questions to understand you better. Answer each question as this person, "
    "speaking in the first person, in at most three sentences, with details that fit who you are. "
    "Only answer the question: do not solve your own request and do not ask the assistant anything."
)

# The gated user's (simulate.reveal asked) system text for one reply: the task and only the facts that the
# Questioner's last turn asks for, never the whole persona; {told} is GATED_FACTS or GATED_NOTHING.
GATED_ROLEPLAYER_SYSTEM = (
    "You are playing a person called {name} in a conversation with an AI assistant. You asked the assistant for "
    "help with this request:\n\n"
    "{task}\n\n"
    "{told} Speak in the first person, in one or two short sentences. Do not solve your own request and do not ask "
    "the assistant anything."
)
GATED_FACTS = (
    "The assistant has just asked you something. This is all you know about yourself that answers it:\n\n"
    "{facts}\n\n"
    "Answer the question with these facts, in your own words, and say nothing else about yourself."
)
GATED_NOTHING = (
    "The assistant has just said or asked something that nothing you know about yourself answers. Say briefly, "
    "in your own words, that you have nothing to add about that, without making anything up about yourself."
)

PERSONA_PROMPT = (
    "Here are a few people describing themselves:\n\n"
    "{examples}\n\n"
    "Write one new description in the same style for a different person called {name}. Begin with "
    "\"I'm {upper}.\" and write four to six sentences in the first person about their age, work, where and how "
    "they live, their tastes and habits, one constraint they live with, and their temperament. "
    "Write only the description."
)

GOLD_PROMPT = (
    "This is a description of a person:\n\n"
    "{persona}\n\n"
    "They ask you:\n\n"
    "{task}\n\n"
    "Write the response that would help this particular person most, using what you know about them. "
    "Speak to them directly and do not quote or summarise their description."
)


def questioner_instruction(decide: bool, custom: str | None = None) -> str:
    """The instruction the Questioner asks under: the recipe's own (simulate.instruction), else the shipped one
    for its turns (DECIDE_INSTRUCTION where it decides when to answer, QUESTION_INSTRUCTION otherwise)."""
    return custom or (DECIDE_INSTRUCTION if decide else QUESTION_INSTRUCTION)


def is_question(text: str) -> bool:
    """Whether a Questioner turn asks something: it holds a question mark. Small models often answer or ramble
    instead of asking; the efficiency metrics count questions by this rule, and with simulate.turns policy a turn
    that is not a question is the Questioner's answer, which ends the conversation."""
    return "?" in text


def greeting(name: str, task: str) -> str:
    """The user's opening turn, as in the paper's code: the name and the request, nothing else."""
    return f"My name is {name}.\n\n{task}"


def questioner_messages(
    name: str, task: str, turns: list[dict], *, final: bool, instruction: bool = True, decide: bool = False,
    instruction_text: str | None = None,
) -> list[dict]:
    """The Questioner's view of a conversation.

    With `final`, the task is repeated after the last answer to ask for the response. `instruction` adds
    QUESTION_INSTRUCTION to the first turn: on for what the policy generates and trains on, off for scoring,
    which uses the paper's bare format so log-probs are comparable across iterations and conditions. `decide`
    (simulate.turns policy): the Questioner chooses when to answer, so the instruction says so
    (DECIDE_INSTRUCTION) and the final response follows the last answer as it is, the request not repeated.
    `instruction_text` (simulate.instruction) replaces the shipped instruction, whichever it would be.
    """
    first = greeting(name, task) + (f"\n\n{questioner_instruction(decide, instruction_text)}" if instruction else "")
    messages = [{"role": "user", "content": first}]
    for turn in turns:
        role = "assistant" if turn["role"] == "questioner" else "user"
        messages.append({"role": role, "content": turn["text"]})
    if final:
        if messages[-1]["role"] != "user":
            raise ValueError("a final response needs a conversation that ends with the roleplayer's answer")
        if decide:
            return messages
        if len(messages) == 1:
            messages[0]["content"] = greeting(name, task)
        else:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{task}"
    return messages


def roleplayer_messages(persona: str, task: str, turns: list[dict]) -> list[dict]:
    """The Roleplayer's view: its persona as system text, the Questioner's questions as user turns."""
    messages = [{"role": "system", "content": ROLEPLAYER_SYSTEM.format(persona=persona, task=task)}]
    for turn in turns:
        role = "user" if turn["role"] == "questioner" else "assistant"
        messages.append({"role": role, "content": turn["text"]})
    return messages


def gated_roleplayer_messages(name: str, task: str, facts: list[str], turns: list[dict]) -> list[dict]:
    """A gated user's view for its next reply: the task and the facts it was given for it (none: it has nothing to
    add) as system text, then the conversation so far, as roleplayer_messages has it."""
    told = GATED_FACTS.format(facts="\n".join(f"- {fact}" for fact in facts)) if facts else GATED_NOTHING
    system = GATED_ROLEPLAYER_SYSTEM.format(name=name, task=task, told=told)
    messages = [{"role": "system", "content": system}]
    for turn in turns:
        role = "user" if turn["role"] == "questioner" else "assistant"
        messages.append({"role": role, "content": turn["text"]})
    return messages


def persona_messages(examples: list[str], name: str) -> list[dict]:
    text = PERSONA_PROMPT.format(examples="\n\n".join(examples), name=name, upper=name.upper())
    return [{"role": "user", "content": text}]


def gold_messages(persona: str, task: str) -> list[dict]:
    return [{"role": "user", "content": GOLD_PROMPT.format(persona=persona, task=task)}]


def fold_system(messages: list[dict]) -> list[dict]:
    """Merge a leading system message into the first user turn, for chat templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


_JUDGE_CONTEXT = (
    "A person described below asked an AI assistant for help. Two assistants answered.\n\n"
    "The person:\n{persona}\n\n"
    "Their request:\n{task}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
)

# Shipped judge templates (recipe: judge.template). Placeholders: {persona}, {task}, {a}, {b}, {label}.
JUDGE_TEMPLATES = {
    # One letter and nothing else: for small judges, read as a whole reply or by the letter's log-probability.
    "letter": _JUDGE_CONTEXT + (
        "Which response fits this person better, given their background, preferences and circumstances? "
        "Reply with one letter, A or B, and nothing else."
    ),
    # Shaped like the paper's judge: a short comparison first, then the verdict alone on the last line.
    "compare": _JUDGE_CONTEXT + (
        "Which response serves this particular person better, given who they are, what they like and the "
        "circumstances they live in? First compare the two responses in at most 100 words: say what each gets "
        "right or wrong for this person. Then end with one last line that holds only \"{label} A\" or "
        "\"{label} B\", naming the response that fits them better. You must pick one."
    ),
}


def judge_messages(template: str, persona: str, task: str, a: str, b: str, label: str) -> list[dict]:
    text = template.format(persona=persona, task=task, a=a, b=b, label=label)
    return [{"role": "user", "content": text}]
