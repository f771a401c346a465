"""The simulator audit (beyond the paper): how cooperative each Roleplayer is, read from the stored texts.

A Roleplayer that volunteers its persona, or does the Questioner's work, inflates every figure: the gold's
log-prob rises without a question that drew anything out. The headline is elicitation (elicitation.py): per
conversation, the persona's facts told when asked (active), told unasked (passive) and never told, counted with
the recipe's gate for a free user and a gated one alike. Beside it, two measures read from the texts alone:

- **persona leakage**: of the persona's content words (words of PERSONA_WORD's 5 letters or more, so names of
  things and not "I", "the"), the share that the Roleplayer's answers say although the question each answers did
  not name them. A Roleplayer reciting its persona leaks most of them whatever it is asked; one that answers only
  what it is asked leaks few. A word the question named is never counted as leaked.
- **role breaks**: the share of answers that speak as the assistant or lay out a solution, by a written rule
  (`breaks_role`): an answer in the assistant's voice (ASSISTANT_VOICE: "as an AI", "I'd be happy to help",
  "I can help", "let me suggest", "here is a plan" and the like), or one holding LIST_LINES or more numbered or
  bulleted lines (a plan, a list of options: the answer the Questioner is meant to write).

Per Roleplayer, because a run can draw several (each conversation records the one that answered it).
"""

from __future__ import annotations

import re

from .efficiency import mean_sem
from .elicitation import elicitation

PERSONA_WORD = re.compile(r"[a-z]{5,}")
ASSISTANT_VOICE = re.compile(
    r"\b(as an ai\b|i(?:'d| would) be (?:happy|glad) to help|i can help|how can i (?:help|assist)|"
    r"let me (?:suggest|help|create|give|put together)|"
    r"here(?: is|'s) (?:a|an|your|the|my) (?:\w+ )?(?:plan|list|schedule|recipe|menu|itinerary|guide|routine|"
    r"budget|suggestions?|options?))", re.IGNORECASE)
LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+\S", re.MULTILINE)
LIST_LINES = 3
STATUS_SAMPLE = 500  # `status` audits the first 500 conversations stored per iteration: bounded on any store


def content_words(text: str) -> set[str]:
    return set(PERSONA_WORD.findall(text.lower()))


def leakage(persona: str, turns: list[dict]) -> float | None:
    """The share of the persona's content words said by the Roleplayer's answers and not named by the question
    each answers; None for a persona without content words or a conversation without answers."""
    words = content_words(persona)
    answers = [(turns[i - 1]["text"] if i and turns[i - 1]["role"] == "questioner" else "", t["text"])
               for i, t in enumerate(turns) if t["role"] == "roleplayer"]
    if not words or not answers:
        return None
    leaked = set().union(*(content_words(answer) - content_words(question) for question, answer in answers))
    return len(words & leaked) / len(words)


def breaks_role(answer: str) -> bool:
    """An answer in the assistant's voice, or one that lays out a list (LIST_LINES or more items)."""
    return bool(ASSISTANT_VOICE.search(answer)) or len(LIST_LINE.findall(answer)) >= LIST_LINES


def audit(conversations: list[dict], elicited: list[dict] | None = None) -> dict[str, dict]:
    """Per Roleplayer, over conversations {roleplayer, persona, turns}: {conversations, elicitation, leakage (mean,
    SEM, n), answers, role_breaks (the share of its answers that break role)}. Conversations stored before the
    Roleplayer was recorded count under "unrecorded".

    elicited: each conversation's elicitation counts (elicitation.conversation_elicitation), in the same order;
    each Roleplayer's `elicitation` is their summary (elicitation.elicitation), None without them."""
    by_roleplayer: dict[str, list[int]] = {}
    for i, c in enumerate(conversations):
        by_roleplayer.setdefault(c["roleplayer"] or "unrecorded", []).append(i)
    out = {}
    for name, members in sorted(by_roleplayer.items()):
        group = [conversations[i] for i in members]
        answers = [t["text"] for c in group for t in c["turns"] if t["role"] == "roleplayer"]
        shares = [s for c in group if (s := leakage(c["persona"], c["turns"])) is not None]
        out[name] = {"conversations": len(group),
                     "elicitation": elicitation([elicited[i] for i in members]) if elicited is not None else None,
                     "leakage": mean_sem(shares), "answers": len(answers),
                     "role_breaks": sum(map(breaks_role, answers)) / len(answers) if answers else None}
    return out
