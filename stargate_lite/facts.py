"""A persona as its atomic facts: what a user who tells only what is asked can reveal, one at a time.

A persona is a short first-person description ("I'm MEI. I'm 33 and work as a data engineer ... I was diagnosed
with type 1 diabetes as a teenager, ..."), written a sentence per trait by the Oracle's prompt
(prompts.PERSONA_PROMPT) and by the paper's authors alike. Its facts are its sentences (and the clauses of a
sentence that a semicolon joins): each carries one circumstance, preference or constraint. The opening "I'm NAME."
is not a fact: the user's greeting gives the name anyway. The split is plain text rules, so the same persona
always gives the same facts, on every machine, and an existing store's personas get theirs on first use.
"""

from __future__ import annotations

import re

# A sentence ends at . ! or ? (closing quotes and brackets kept with it) before whitespace, or at a line break. Abbreviations such as "Dr. Smith" are rare in personas; such a split costs a short fact, not one.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
# "I'm MEI." (the name in capitals, as the persona prompt asks) or "My name is Mei."
_NAME_INTRO = re.compile(r"^(?:I(?:'|’)?m|I am)\s+[A-Z][A-Z\-']+[.!]?$|^My name is\s+[A-Z][\w\-']*[.!]?$")
MIN_WORDS = 3  # shorter pieces ("Yes.", "Truly!") carry no circumstance of their own


def persona_facts(persona: str) -> list[str]:
    """The persona's facts in the order it states them: its sentences, less its name introduction and pieces of
    fewer than MIN_WORDS words. An empty list where nothing is left (the caller says so: a gated user would have
    nothing to tell)."""
    facts = []
    for piece in _BOUNDARY.split(persona.strip()):
        piece = piece.strip()
        if not piece or _NAME_INTRO.match(piece) or len(piece.split()) < MIN_WORDS:
            continue
        facts.append(piece)
    return facts
