"""Judge verdicts: the seeded A/B order, the three ways a verdict is read, and who won.

Rule for what is not a clear A or B (a tie, a refusal, both letters, garbage): the verdict is stored as
'unparsable' with the judge's text, counted and reported, and left out of the win rate's denominator. The hard
rule is precision: a reading never returns a letter the reply did not pick. In free text, verdict letters are
capitals only: the English article "a" is never the letter A (after the verdict label of `last_line`, any case).
A praise negated, hedged or conditioned in its clause ("I don't think A is better", "If she were vegan, A ...") is
no pick; "A) ... B) ..." lists the responses under labels, and "both" before a pick ("Having weighed both, ...")
leaves it standing.

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
# The whole reply is the letter, maybe dressed: "B", "**B**", "(A)", "Response A.", "Answer: B"; not "A:" (below)
_ONLY_LETTER = re.compile(
    rf"^{_DECORATION}(?:(?i:response|answer|option|assistant|verdict)\s*:?\s*)?{_DECORATION}([AB])"
    r"[\s*_`\"')\].!]*$"
)
# Small judges write "A:" as the label of their answer, as in "Q: ... A: ...": "A: A" answers A, a bare "A:"
# answers nothing, and "A: B" is unclear.
_ANSWER_LINE = re.compile(r"^[\s*_`]*([AB])[*_`]*\s*:\s*[*_`]*\1[*_`]*\.?[ \t]*$", re.MULTILINE)
# The reply opens with the letter as its answer and goes on to explain: "A. It fits her diet.", "B, because ...",
# "A - tailored". A letter followed by a colon is a label ("A: generic tips."), not an answer.
_LEADING_LETTER = re.compile(rf"^{_DECORATION}(?:(?i:response|option)\s+)?([AB])(?:[.,)\]]|\s*[-\u2013\u2014]\s|\s*\n)")
# Where a declared letter may end: the text's end, punctuation, or words that go on to give a reason. "Answer A is
# too generic" names a response; it does not declare one. "Verdict: A (A)" repeats it.
_LETTER_END = r"(?=\s*$|\s*[.!,;:)\]*_`\"']|\s*\(\1\)|\s+(?i:over|because|since|as|for|here)\b|\s+[-\u2013\u2014])"
# Explicit declarations; the keywords in any case, the letter a capital.
_DECLARED = re.compile(
    r"(?i:\b(?:final answer|answer|verdict|winner|my choice|i choose|i chose|i pick|i would pick|i would choose|"
    r"i'd choose|i'd pick|i prefer|i would prefer|i'd prefer|preferred response|better response|better fit|"
    r"better one|better choice|choice|i think|i'd say|i would say|i'd go with|i would go with|i go with|"
    r"definitely|clearly|probably|obviously|certainly)\b)"
    r"(?:\s+(?i:is|would be|goes to|:))?\s*[:,]?\s*[*_`\"']*\s*(?:(?i:response|option|assistant)\s+)?\(?([AB])\b(?![-'])"
    + _LETTER_END
)
# A letter said to be the better one: "Response B is better", "A is more aligned with her background",
# "B fits this person better", "A is preferable", "B wins".
_GOOD = (r"(?:the\s+|a\s+)?(?:better|best|preferable|superior|more\s+(?:aligned|suitable|appropriate|relevant|"
         r"tailored|personal|personalized|personalised|helpful|specific|fitting|considerate)|better\s+suited|"
         r"tailored)")
_LETTER_IS_BETTER = re.compile(
    r"(?:^|(?<=[\s*(]))(?:(?i:response|option|answer)\s+)?([AB])\)?\s+(?i:(?:is|fits|suits|seems|looks)\s+"
    rf"(?:clearly\s+|much\s+|far\s+|slightly\s+)?{_GOOD}|fits\s+(?:this person|them|him|her|the person|the user)"
    r"\s+better|wins)\b"
)
# The same said of a position: "the second one is preferable", "the first response is better".
_ORDINAL_IS_BETTER = re.compile(
    r"(?i:\bthe\s+(first|second)(?:\s+(?:one|response|answer|option))?\s+(?:is|seems|would be)\s+"
    rf"(?:clearly\s+|much\s+|far\s+|slightly\s+)?{_GOOD})\b"
)
# A structured comparison: each response described under its label, "Response A: ...", "B: ...", "**A**: ...".
_LABEL = re.compile(r"(?:^|(?<=[\n.;]))\s*[*_`]*(?:(?i:response|option|answer)\s+)?([AB])[*_`]*\s*:", re.MULTILINE)
# A list of the two responses, an item each: "A) generic tips", "(B) tailored to her", "**A)** ...". Where both
# letters open an item they are labels, like "A:", and the opening "A)" is no answer; a lone "B) It plans around her
# shifts." still answers B.
_LIST_ITEM = re.compile(r"(?:^|(?<=[\n.;]))[ \t]*[*_`]*\(?([AB])\)[*_`]*(?=[ \t]|$)", re.MULTILINE)
# A last line that is only the letter, maybe after a word that concludes, concludes the reply: "...\nB",
# "...\n**B**", "So, B.", "Therefore: B". An empty list item ("B)") is not one.
_CONCLUSION = re.compile(
    r"^[\s*_`\"']*(?:(?i:so|therefore|thus|hence|overall|in short|in conclusion|conclusion|my pick|pick|best|"
    r"winner|final answer|answer|response|option|verdict)\b[\s*_`,:]*)?([AB])[\s*_`\"'.!]*$"
)
# Within a response's own part of a comparison, praise of "it" credits that response: "B: tailored; it fits her".
_IT_IS_BETTER = re.compile(
    rf"(?i:\b(?:it|this one|this response|this)\s+(?:(?:is|fits|suits|seems)\s+(?:clearly\s+|much\s+|far\s+)?"
    rf"{_GOOD}|fits\s+(?:this person|them|him|her|the person|the user)\s+better))\b"
)
# Words that leave the pick open. "Both" among them only after a pick ("B is better, but both are fine"): before
# it, "having weighed both", "of both responses" or "both are fine; I'd pick B" describe the two and decide nothing.
_UNDECIDED = re.compile(
    r"(?i:\b(?:tie|tied|both|neither|cannot|can't|can not|unable|equal|equally|equivalent|interchangeable|"
    r"no preference|impossible to)\b|\b(?:are|is|seem|look)\s+(?:about\s+|roughly\s+|basically\s+)?"
    r"(?:the\s+same|identical)\b)"
)
# After an undecided clause, a contrast can still decide: "Both have merit, but A is better." So can the main clause
# after a concession: "While neither is perfect, A is more helpful."
_CONCESSION = r"\b(?:although|though|while|whilst|even though|even if|despite|granted)\b[^,.;:!?\n]*,"
_CONTRAST = re.compile(rf"(?i:{_CONCESSION}|\b(?:but|however|though|yet|still|overall|ultimately|in the end)\b)")
# Where a clause opens, so that a negation or a condition before it no longer bears on what follows: a sentence's
# end, a contrast ("A is not bad, but B is better", "A does not plan meals, whereas B is tailored"; a ", while"
# clause only where it runs on to the praise) or a consequence ("A ignores her diet, so B is better").
_CLAUSE_START = re.compile(
    r"[.!?;:\n]|(?i:\b(?:but|however|yet|still|whereas|overall|ultimately|in the end|therefore|thus|hence)\b|"
    r",\s*so\b|,\s*(?:while|whilst)\b(?=[^,.;:!?\n]*$))"
)
# A concession within a clause is its own: "Although A isn't bad, B is better" and "I don't think, while both are
# fine, that A is better" are read without it.
_CONCEDED = re.compile(rf"(?i:{_CONCESSION})")
# A condition: the pick holds only in a case the reply does not claim, before it ("If she were vegan, I would pick A",
# "Unless ...", "Assuming ...", "Whether B is better depends ...") or after it ("A is better only if she has a car").
# Not a condition: "even if", "as if", "if you ask me", "if anything", "if only slightly", "if I had to choose".
_CONDITION = (r"\b(?<!even\s)(?<!as\s)if\b(?!\s+(?:you\s+ask\s+me|anything|only|(?:I|we)\s+(?:had|have|must)\s+to|"
              r"forced\s+to)\b)|\b(?:unless|assuming|supposing|suppose|provided|whether|(?:as|so)\s+long\s+as)\b")
# A negation or a hedge before a praise in its clause denies it or gives it to someone else: "I don't think A is
# better", "It is not true that ...", "Nobody would say ...", "I doubt ...", "Some might say ...", "It's hard to say
# that ...". Not "no doubt", "without a doubt" or "no question", which affirm, nor "No," as an answer.
_NEGATED = re.compile(
    r"(?i:\b(?:not|never|nobody|none|nor|hardly|barely|scarcely|unsure|uncertain|unclear|unconvinced|debatable|"
    r"hesitate|hesitant|dont|doesnt|didnt|isnt|wouldnt|cant|wont|shouldnt)\b|n['\u2019]t\b|"
    r"\bno\b(?!\s*,|\s+(?:doubt|question)\b)|(?<!\bno\s)(?<!\ba\s)(?<!\bany\s)(?<!beyond\s)\bdoubt|"
    rf"\b(?:might|could|may)\s+(?:say|argue|claim|think)\b|\bhard\s+to\s+(?:say|tell)\b|{_CONDITION})"
)
_CONDITIONAL = re.compile(rf"(?i:{_CONDITION})")
# Where what follows a praise stops bearing on it: its sentence's end, or the reason it gives ("B is better because
# it plans for her if she is sick" is no condition).
_TAIL_END = re.compile(r"[.!?;\n]|(?i:\b(?:because|since|(?<!long\s)as(?!\s+long\b)|given)\b)")


def _stands(text: str, start: int, end: int) -> bool:
    """Whether the praise at text[start:end] is asserted: not negated, hedged or conditioned within its clause."""
    clause = text[max((m.end() for m in _CLAUSE_START.finditer(text, 0, start)), default=0): start]
    clause = _CONCEDED.sub(" ", clause)
    tail = _TAIL_END.split(text[end:], maxsplit=1)[0]
    return not _NEGATED.search(clause) and not _CONDITIONAL.search(tail)


def _declarations(text: str) -> list[tuple[int, str]]:
    """(position, letter) of every place the text says which response is better."""
    # "Answer A:" opening a part labels it, as "Response A:" does: the keyword of a label declares nothing.
    labelled = {m.start(1) for m in _LABEL.finditer(text) if re.match(r"\s*[*_`]*(?i:answer)\b", m[0])}
    declared = [m for m in _DECLARED.finditer(text)
                if not any(m.start() <= letter < m.end() for letter in labelled)]
    found = [(m.start(), m.end(), m[1]) for m in (*declared, *_LETTER_IS_BETTER.finditer(text),
                                                   *_ANSWER_LINE.finditer(text))]
    found += [(m.start(), m.end(), "A" if m[1].lower() == "first" else "B") for m in _ORDINAL_IS_BETTER.finditer(text)]
    items = list(_LIST_ITEM.finditer(text))
    listed = {m[1] for m in items} == {"A", "B"}  # "A) ... B) ...": a list; a lone "B) ..." answers
    labels = sorted([*_LABEL.finditer(text), *(items if listed else [])], key=lambda m: m.start())
    for label, after in zip(labels, [*labels[1:], None]):  # each labelled part, up to the next label
        part = text[label.end(): after.start() if after else len(text)]
        found += [(label.end() + m.start(), label.end() + m.end(), label[1]) for m in _IT_IS_BETTER.finditer(part)]
    leading = _LEADING_LETTER.match(text)
    if leading and not _LABEL.match(text) and not (listed and _LIST_ITEM.match(text)):
        found.append((leading.start(1), leading.end(1), leading[1]))
    last = text.rpartition("\n")[2]
    conclusion = _CONCLUSION.match(last)
    last_start = len(text) - len(last)
    # "A:" and, on the next line, "B" is "A: B", unclear; only a letter after a part with words in it concludes.
    if conclusion and not any(not text[label.end():last_start].strip(" \t\n*_`") for label in labels):
        found.append((last_start, len(text), conclusion[1]))
    return [(start, letter) for start, end, letter in found if _stands(text, start, end)]


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' when a free-text reply clearly picks one, else None (the `reply` mode).

    Precision first: where a reply does not make one pick clear it is unparsable, never a guess. A reply that
    only describes the two responses under their labels ("Response A: ...", "A) ...", "B) ...") picks neither;
    one that names two winners picks neither; a praise negated, hedged or conditioned in its clause ("I don't
    think A is better", "Nobody would say ...", "If she were vegan, A ...", "A is better only if ...") is no pick,
    while a contrast, a consequence or a new sentence opens a clause the negation does not reach ("A is not bad,
    but B is better"). A reply that stays undecided ("neither", "a tie", "equally good", "both" after its pick)
    picks neither, unless a contrast or the main clause after a concession decides ("Both have merit, but A is
    better", "While neither is perfect, A is ..."); "both" before the pick ("Having weighed both, A is better")
    decides nothing. A list "A) ... B) ..." is read by its conclusion, as is a last line that is only a letter."""
    text = (text or "").strip()
    if not text:
        return None
    only = _ONLY_LETTER.match(text)
    if only:
        return only[1]
    found = _declarations(text)
    if not found or len({letter for _, letter in found}) != 1:
        return None
    first = min(position for position, _ in found)
    undecided = [m.end() for m in _UNDECIDED.finditer(text) if m[0].lower() != "both" or m.start() > first]
    if undecided:
        contrast = [m.end() for m in _CONTRAST.finditer(text) if m.end() > undecided[-1]]
        if not contrast or any(position < contrast[0] for position, _ in found):
            return None
    return found[0][1]


def parse_last_line(text: str, label: str) -> str | None:
    """The `last_line` mode: the last non-empty line is the label and A or B, in any case, bold or not, a final
    period allowed ("Verdict: A", "**Verdict:** B", "verdict: **a**")."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    plain = re.sub(r"[*_`]", "", lines[-1]).strip()
    match = re.fullmatch(rf"(?i:{re.escape(label)})\s*([ABab])\.?", plain)
    return match[1].upper() if match else None


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
