"""Judge verdicts: the seeded A/B order, the three ways a verdict is read, and who won.

Rule for what is not a clear A or B (a tie, a refusal, both letters, garbage): the verdict is stored as
'unparsable' with the judge's text, counted and reported, and left out of the win rate's denominator.
Verdict letters are capitals only, in every mode: the English article "a" is never the letter A.

- reply: the judge's reply as a whole names one response (small judges answer in many shapes);
- last_line: the last non-empty line is exactly "<label> A" or "<label> B" (the paper's judge explains itself
  first, so a letter elsewhere in its text says nothing);
- logprobs: the reply's first token, P(A) against P(B); the margin log P(A) - log P(B) is stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from ..prompts import JUDGE_TEMPLATES

_DECORATION = r"[\s*_`\"'(\[]*"
# The whole reply is the letter, maybe dressed: "B", "**B**", "(A)", "Response A.", "Answer: B"
_ONLY_LETTER = re.compile(
    rf"^{_DECORATION}(?:(?i:response|answer|option|assistant|verdict)\s*:?\s*)?{_DECORATION}([AB])"
    r"[\s*_`\"')\].!:]*$"
)
# The reply opens with the letter and goes on to explain: "A. It fits her diet.", "B: more specific"
_LEADING_LETTER = re.compile(rf"^{_DECORATION}(?:(?i:response|option)\s+)?([AB])(?:[.:)\]]|\s*[-\u2013\u2014]\s|\s*\n)")
# Explicit declarations; the keywords in any case, the letter a capital.
_DECLARED = re.compile(
    r"(?i:\b(?:final answer|answer|verdict|winner|my choice|i choose|i chose|i pick|i would pick|i would choose|"
    r"i'd choose|i'd pick|i prefer|i would prefer|i'd prefer|preferred response|better response|better fit|"
    r"better one|better choice|choice)\b)"
    r"(?:\s+(?i:is|would be|goes to|:))?\s*:?\s*[*_`\"']*\s*(?:(?i:response|option|assistant)\s+)?\(?([AB])\b(?![-'])"
)
# "Response B is better", "B fits this person better", "A is the better response"
_LETTER_IS_BETTER = re.compile(
    r"(?:^|(?<=[\s*(]))(?:(?i:response|option)\s+)?([AB])\)?\s+(?i:(?:is|fits)\s+(?:clearly\s+|much\s+|"
    r"far\s+)?(?:the\s+|a\s+)?better|fits\s+(?:this person|them|him|her|the person|the user)\s+better|wins)\b"
)
_UNDECIDED = re.compile(
    r"(?i:\b(?:tie|tied|both|neither|cannot|can't|can not|unable|equal|equally|no preference|impossible to)\b)"
)


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' when a free-text reply clearly picks one, else None (the `reply` mode)."""
    text = (text or "").strip()
    if not text:
        return None
    only = _ONLY_LETTER.match(text)
    if only:
        return only[1]
    declared = set(_DECLARED.findall(text)) | set(_LETTER_IS_BETTER.findall(text))
    leading = _LEADING_LETTER.match(text)
    if leading:
        declared.add(leading[1])
    if len(declared) != 1 or _UNDECIDED.search(text):
        return None
    return declared.pop()


def parse_last_line(text: str, label: str) -> str | None:
    """The `last_line` mode: the last non-empty line is the label and a capital A or B (a final period allowed)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    match = re.fullmatch(rf"{re.escape(label)}\s*([AB])\.?", lines[-1])
    return match[1] if match else None


def verdict_from_margin(margin: float) -> str | None:
    """The `logprobs` mode: the likelier letter; an exact tie is no verdict."""
    return "A" if margin > 0 else "B" if margin < 0 else None


def winner_of(verdict: str | None, policy_is_a: bool) -> str | None:
    """Which model the verdict picks: 'policy' (Q_eta) or 'base' (Q_0), given where Q_eta's response was shown."""
    if verdict is None:
        return None
    return "policy" if (verdict == "A") == policy_is_a else "base"


def policy_is_a(seed: int, item: str) -> bool:
    """Where Q_eta's response goes, from a seed derived from the item: reproducible, balanced over items."""
    return random.Random(f"{seed}/judge-order/{item}").random() < 0.5


def judge_prompt_text(config) -> str:
    """The judge's prompt text: a shipped template by name, or the recipe's own text."""
    return JUDGE_TEMPLATES.get(config.template, config.template)


def judge_protocol(config) -> str:
    """A short name of how verdicts are made (template, reading, budget, label), part of every judgment's key:
    verdicts made another way are never reused or mixed."""
    name = config.template if config.template in JUDGE_TEMPLATES else "custom"
    digest = hashlib.sha1(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:6]
    return f"{name}/{config.read}#{digest}"


def read_verdict(config, result) -> tuple[str | None, float | None, str]:
    """(verdict or None, log-prob margin or None, the raw text to store) from a judge's reply, by `config.read`.

    For `logprobs`, `result` maps each letter to its log-probability as the reply's first token (None where the
    backend did not list it) and "floor" to the lowest log-probability it listed: a letter not listed is taken
    to be at most that likely, so the margin is then a bound."""
    if config.read == "reply":
        return parse_verdict(result), None, result
    if config.read == "last_line":
        return parse_last_line(result, config.label), None, result
    raw = json.dumps(result, sort_keys=True)
    a, b = result.get("A"), result.get("B")
    if a is None and b is None:
        return None, None, raw
    floor = result.get("floor")
    if floor is None and (a is None or b is None):
        return None, None, raw
    margin = (floor if a is None else a) - (floor if b is None else b)
    return verdict_from_margin(margin), margin, raw
