"""Judge verdicts: the seeded A/B order and a parser that never guesses.

Rule for what is not a clear A or B (a tie, a refusal, both letters, garbage): the verdict is stored as
'unparsable' with the judge's text, counted and reported, and left out of the win rate's denominator.
"""

from __future__ import annotations

import random
import re

_ONLY_LETTER = re.compile(r"^\W*(?:response|answer|option|assistant)?\s*\(?\s*([AB])\s*\)?\W*$", re.IGNORECASE)
_DECLARED = re.compile(
    r"(?:final answer|answer|verdict|choice|choose|chose|pick|prefer|preferred|winner|better(?: response)?(?: is)?|"
    r"fits (?:this person |them )?better(?: is)?)\s*(?:is|would be|:|-)?\s*\**\s*(?:response|option|assistant)?\s*"
    r"\(?\**([AB])\b",
    re.IGNORECASE,
)
_RESPONSE_X = re.compile(r"\b(?:response|option|assistant)\s+\(?([AB])\b", re.IGNORECASE)
_LONE_LETTER = re.compile(r"(?<![\w'])([AB])(?![\w'])")
_NEGATION = re.compile(r"\b(tie|both|neither|cannot|can't|unable|equal(?:ly)?)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' when the judge clearly picked one, else None."""
    text = (text or "").strip()
    if not text:
        return None
    match = _ONLY_LETTER.match(text)
    if match:
        return match[1].upper()
    declared = {m.upper() for m in _DECLARED.findall(text)}
    if len(declared) == 1:
        return declared.pop()
    if declared or _NEGATION.search(text):
        return None
    named = {m.upper() for m in _RESPONSE_X.findall(text)}
    if len(named) == 1:
        return named.pop()
    if named:
        return None
    lone = {m for m in _LONE_LETTER.findall(text)}  # capital letters only: 'a' is an article
    return lone.pop() if len(lone) == 1 else None


def policy_is_a(seed: int, item: str) -> bool:
    """Where Q_eta's response goes, from a seed derived from the item: reproducible, balanced over items."""
    return random.Random(f"{seed}/judge-order/{item}").random() < 0.5
