"""Data stage: tasks, personas and gold responses, in splits A, B and test that share no task or persona.

The built-in data set is made from the package's own tasks; its personas are written by the Oracle few-shot
from seed personas, each given a name from a fixed list. Gold responses are written by the Oracle per
(task, persona). Imported data sets (JSONL, or the STaR-GATE authors' JSON layout) bring their own.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engines.chat_models import ChatFailure, ChatModel, Sampling
from ..errors import StargateError
from ..facts import MIN_WORDS, persona_facts
from ..progress import Progress
from ..prompts import GOLD_PROMPT, JUDGE_TEMPLATES, ROLEPLAYER_SYSTEM, gold_messages, persona_messages
from ..recipe import SPLITS, Recipe
from ..runs import stop_point
from ..store import Store
from . import builtin_data

BUILTIN = "builtin"
WRITTEN = "builtin-written"  # the built-in tasks with the hand-written personas (builtin_data.WRITTEN_PERSONAS)
# Fixed, recipe-independent assignment of the built-in tasks, so every recipe sees the same splits.
_BUILTIN_SPLIT_SEED = 20240409
_BUILTIN_TEST_TASKS = 12
_SEEDS_PER_PROMPT = 3
_PERSONA_ATTEMPTS = 3
GOLDS_PER_CHUNK = 8


def task_id(dataset: str, split: str, idx: int) -> str:
    return f"{dataset}/{split}/task-{idx:04d}"


def persona_id(dataset: str, split: str, idx: int) -> str:
    return f"{dataset}/{split}/persona-{idx:04d}"


def builtin_task_splits() -> dict[str, list[str]]:
    tasks = list(builtin_data.TASKS)
    random.Random(_BUILTIN_SPLIT_SEED).shuffle(tasks)
    train = tasks[_BUILTIN_TEST_TASKS:]
    half = len(train) // 2
    return {"test": tasks[:_BUILTIN_TEST_TASKS], "A": train[:half], "B": train[half:]}


def builtin_persona_name(split: str, idx: int) -> str:
    """Names are dealt to splits in turn (A, B, test, A, ...), so no name is in two splits."""
    names = builtin_data.PERSONA_NAMES
    slot = idx * len(SPLITS) + SPLITS.index(split)
    if slot >= len(names):
        raise StargateError(f"the built-in data set has names for at most {len(names) // 3} personas per split")
    return names[slot]


def ensure_builtin_tasks(store: Store, dataset: str = BUILTIN) -> None:
    rows = [
        {"id": task_id(dataset, split, i), "dataset": dataset, "split": split, "idx": i, "text": text}
        for split, texts in builtin_task_splits().items()
        for i, text in enumerate(texts)
    ]
    store.insert_rows("tasks", rows, pk="id")


def ensure_written_personas(store: Store) -> None:
    """The WRITTEN data set's personas: the package's hand-written ones (builtin_data.WRITTEN_PERSONAS), each
    sentence one fact, for a user who tells only what is asked (the tiny Oracle's personas are seldom facts)."""
    store.add_personas([
        {"id": persona_id(WRITTEN, split, i), "dataset": WRITTEN, "split": split, "idx": i, "name": name,
         "text": text, "source": "builtin:written"}
        for split, personas in builtin_data.WRITTEN_PERSONAS.items()
        for i, (name, text) in enumerate(personas)
    ])


def clean_persona(text: str, name: str) -> str:
    """Keep the generated text, making sure it opens with the person's name as the seed personas do."""
    text = text.strip().strip('"').strip()
    opening = f"I'm {name.upper()}."
    if re.match(rf"^(I'm|I am)\s+{re.escape(name)}\b", text, flags=re.IGNORECASE):
        text = re.sub(rf"^(I'm|I am)\s+{re.escape(name)}\b[.,!]?\s*", "", text, flags=re.IGNORECASE)
    return f"{opening} {text}".strip()


def generate_personas(store: Store, recipe: Recipe, get_oracle: Callable[[], ChatModel], progress: Progress) -> None:
    """Write the missing built-in personas of each split with the Oracle, one row each."""
    wanted = {split: getattr(recipe.data.personas, split) for split in SPLITS}
    have = {(p["split"], p["idx"]) for split in SPLITS for p in store.personas(BUILTIN, split)}
    missing = [(split, i) for split in SPLITS for i in range(wanted[split]) if (split, i) not in have]
    if not missing:
        return
    seeds = [text for _, text in builtin_data.SEED_PERSONAS]
    oracle = get_oracle()
    with progress.stage("personas (oracle)", len(missing)) as advance, \
            store.failure_log(BUILTIN, "personas", "personas") as record_failure:
        for split, i in missing:
            name = builtin_persona_name(split, i)
            text = _write_persona(oracle, seeds, name, f"persona/{split}/{i}", recipe.data.persona_max_tokens)
            if isinstance(text, ChatFailure):
                record_failure(persona_id(BUILTIN, split, i), str(text))
                continue
            row = {
                "id": persona_id(BUILTIN, split, i),
                "dataset": BUILTIN,
                "split": split,
                "idx": i,
                "name": name,
                "text": clean_persona(text, name),
                "source": f"oracle:{oracle.name}",
            }
            store.add_personas([row])
            advance(1)
            stop_point("personas")


def _write_persona(oracle: ChatModel, seeds: list[str], name: str, key: str, max_tokens: int) -> str | ChatFailure:
    """A few tries with other seed examples, since small oracles sometimes write nothing usable."""
    rng = random.Random(key)
    text: str | ChatFailure = ""
    for _ in range(_PERSONA_ATTEMPTS):
        sampling = Sampling(max_tokens, temperature=0.9, top_p=0.95, seed=rng.randrange(2**31))
        text = oracle.complete_each([persona_messages(rng.sample(seeds, _SEEDS_PER_PROMPT), name)], sampling)[0]
        if isinstance(text, ChatFailure) or len(text.split()) >= 5:
            return text
    return ChatFailure(f"the oracle ({oracle.name}) wrote no usable persona for {name} in {_PERSONA_ATTEMPTS} tries")


def split_pairs(store: Store, recipe: Recipe, split: str) -> list[tuple[dict, dict]]:
    """The (task, persona) pairs of a split that the recipe uses, after checking the data set holds them."""
    dataset = recipe.data.dataset
    n_tasks, n_personas = getattr(recipe.data.tasks, split), getattr(recipe.data.personas, split)
    tasks, personas = store.tasks(dataset, split, n_tasks), store.personas(dataset, split, n_personas)
    if len(tasks) < n_tasks or len(personas) < n_personas:
        raise StargateError(
            f"data set {dataset!r} split {split} has {len(tasks)} tasks and {len(personas)} personas, but the "
            f"recipe asks for {n_tasks} and {n_personas}: lower data.tasks.{split} / data.personas.{split} "
            "or import more data"
        )
    return [(t, p) for t in tasks for p in personas]


def usable_pairs(store: Store, recipe: Recipe, split: str) -> list[tuple[dict, dict]]:
    """The split's pairs (split_pairs) whose gold response was written: the pairs a run or probe is made of."""
    pairs = split_pairs(store, recipe, split)
    golds = store.golds_for((t["id"], p["id"]) for t, p in pairs)
    return [(t, p) for t, p in pairs if golds[(t["id"], p["id"])]["status"] == "ok"]


def training_turns_seed(recipe: Recipe, iteration: int) -> str:
    """What a training iteration draws its pairs' turn counts from (make_pairs)."""
    return f"{recipe.seed}/{iteration}"


def make_pairs(store: Store, recipe: Recipe, run_id: str, iteration: int, split: str, turns_seed: str) -> list[dict]:
    """The split's pairs with a gold response, each with its turn count k ~ uniform(1..K) drawn from
    `turns_seed` and the pair: training uses one draw per iteration, evaluation the same draw for all. With
    simulate.turns policy, k = K: the most turns the Questioner may take before it must answer. Pairs already
    stored are kept as they are; the pairs as drawn now are returned."""
    usable = usable_pairs(store, recipe, split)
    if not usable:
        raise StargateError(f"split {split} has no pair with a gold response: check the data (stargate-lite data show)")
    rows = []
    for idx, (t, p) in enumerate(usable):
        key = f"{t['id']}|{p['id']}"
        if recipe.simulate.turns == "policy":
            turns = recipe.simulate.max_turns
        else:
            turns = random.Random(f"{turns_seed}/{key}").randint(1, recipe.simulate.max_turns)
        rows.append({"id": f"{run_id}/{iteration}/{key}", "run_id": run_id, "iteration": iteration,
                     "task_id": t["id"], "persona_id": p["id"], "turns": turns, "idx": idx})
    store.insert_rows("pairs", rows, pk="id")
    return rows


def generate_golds(store: Store, recipe: Recipe, get_oracle: Callable[[], ChatModel], progress: Progress) -> None:
    """Write the missing gold responses of every split's pairs, GOLDS_PER_CHUNK per transaction."""
    pairs = [pair for split in SPLITS for pair in split_pairs(store, recipe, split)]
    have = store.golds_for((t["id"], p["id"]) for t, p in pairs)
    missing = [(t, p) for t, p in pairs if (t["id"], p["id"]) not in have]
    if not missing:
        return
    sampling = Sampling(recipe.data.gold_max_tokens, temperature=recipe.data.gold_temperature, seed=recipe.seed)
    oracle = get_oracle()
    with progress.stage("gold responses (oracle)", len(missing)) as advance, \
            store.failure_log(recipe.data.dataset, "golds", "gold responses") as record_failure:
        for start in range(0, len(missing), GOLDS_PER_CHUNK):
            chunk = missing[start : start + GOLDS_PER_CHUNK]
            texts = oracle.complete_each([gold_messages(p["text"], t["text"]) for t, p in chunk], sampling)
            for (t, p), text in zip(chunk, texts):
                if isinstance(text, ChatFailure):
                    record_failure(f"{t['id']}|{p['id']}", str(text))
            rows = [
                {
                    "id": f"{t['id']}|{p['id']}",
                    "dataset": t["dataset"],
                    "task_id": t["id"],
                    "persona_id": p["id"],
                    "text": text,
                    "status": "ok" if text.strip() else "empty",
                    "source": f"oracle:{oracle.name}",
                }
                for (t, p), text in zip(chunk, texts)
                if not isinstance(text, ChatFailure)
            ]
            store.insert_rows("golds", rows, pk="id")
            advance(len(chunk))
            stop_point("golds")


def prepare_data(store: Store, recipe: Recipe, get_oracle: Callable[[], ChatModel], progress: Progress) -> None:
    """Make sure every task, persona and gold response the recipe uses is in the store, and fits the models that
    read it (check_stored_lengths).

    The Oracle is built only if something is missing (loading a large model costs minutes)."""
    if recipe.data.dataset == BUILTIN:
        ensure_builtin_tasks(store)
        generate_personas(store, recipe, get_oracle, progress)
    elif recipe.data.dataset == WRITTEN:
        ensure_builtin_tasks(store, WRITTEN)
        ensure_written_personas(store)
    check_stored_lengths(store, recipe)
    generate_golds(store, recipe, get_oracle, progress)


# -- lengths -----------------------------------------------------------------------------------------------------
TEMPLATE_TOKENS_PER_MESSAGE = 8  # a chat template's markers around one message, with room to spare (ChatML's: 5)
Labelled = list[tuple[str, str]]  # (what to call an item in an error, its text)


def _readers(recipe: Recipe, turns: int, roleplayers: list[str] | None) -> list[tuple[str, str, str, int]]:
    """What reads a persona and a task together: (role, chat model, its prompt without them, the tokens it also
    holds at most). The Roleplayer holds K questions and answers at its last answer; the Oracle a gold response it
    writes; the Judge two responses and its verdict."""
    sim, marks = recipe.simulate, TEMPLATE_TOKENS_PER_MESSAGE
    template = JUDGE_TEMPLATES.get(recipe.judge.template, recipe.judge.template)
    readers = [("Roleplayer", name, ROLEPLAYER_SYSTEM.format(persona="", task=""),
                turns * (sim.question_max_tokens + sim.answer_max_tokens) + (2 * turns + 1) * marks)
               for name in (recipe.roles.roleplayer_weights if roleplayers is None else roleplayers)]
    if roleplayers is None:
        readers += [("Oracle", recipe.roles.oracle, GOLD_PROMPT.format(persona="", task=""),
                     recipe.data.gold_max_tokens + 2 * marks),
                    ("Judge", recipe.roles.judge, template.format(persona="", task="", a="", b="",
                                                                 label=recipe.judge.label),
                     2 * recipe.respond.max_tokens + recipe.judge.max_tokens + 2 * marks)]
    return readers


def _longest(count, items: Labelled) -> tuple[int, str]:
    """The most tokens of an item, and its label ((0, "") for none)."""
    counts = count([text for _, text in items]) if items else []
    return max(zip(counts, (label for label, _ in items)), default=(0, ""))


def check_lengths(recipe: Recipe, tasks: Labelled, personas: Labelled, golds: Labelled = (),
                  roleplayers: list[str] | None = None, turns: int | None = None, blame: str | None = None) -> None:
    """Refuse, in one line naming the item, its tokens and the limit, a persona and task that do not fit together
    in the context (n_ctx) of a llama.cpp model that reads them (the Roleplayers, or only `roleplayers`, over
    `turns` turns, simulate.max_turns by default; the Oracle; the Judge), or a gold response longer than a training
    example (train.max_length, in the Questioner's tokens). Counted in each model's own vocabulary where it is on
    this machine; texts whose bytes alone show they fit are not counted (engines.tokens.most_tokens). A pair too
    long is named by its longer item, or by its `blame` one ("task" or "persona": the one being imported)."""
    from ..engines.tokens import most_tokens, token_counter

    turns = recipe.simulate.max_turns if turns is None else turns
    for role, name, prompt, holds in _readers(recipe, turns, roleplayers) if tasks or personas else ():
        config = recipe.chat_models[name]
        if config.backend not in ("llamacpp", "llama-server"):
            continue  # no context length in the recipe: an endpoint refuses a prompt too long itself
        bound = most_tokens(prompt) + holds + sum(max((most_tokens(t) for _, t in items), default=0)
                                                  for items in (tasks, personas))
        count = token_counter(config.model, config.gguf_file) if bound > config.n_ctx else None
        if count is None:
            continue
        fixed = count([prompt])[0] + holds
        (task_n, task), (persona_n, persona) = _longest(count, tasks), _longest(count, personas)
        if fixed + task_n + persona_n <= config.n_ctx:
            continue
        persona_first = blame == "persona" or (blame is None and persona_n >= task_n)
        kind, label, n, other, other_n = (("persona", persona, persona_n, "task", task_n) if persona_first
                                          else ("task", task, task_n, "persona", persona_n))
        beside = f"the longest {other} ({other_n:,} tokens) and " if other_n else ""
        what = {"Roleplayer": f"{turns} turns of questions and answers", "Oracle": "the gold response it writes",
                "Judge": "two responses and its verdict"}[role]
        raise StargateError(
            f"{label}: the {kind} is {n:,} tokens, over the {max(config.n_ctx - fixed - other_n, 0):,} that fit the "
            f"{role} {name} beside {beside}{what} (chat_models.{name}.n_ctx {config.n_ctx:,}): shorten it, or "
            "raise n_ctx")
    limit = recipe.train.max_length
    long = [(label, text) for label, text in golds if most_tokens(text) > limit]
    count = token_counter(recipe.questioner.model, recipe.questioner.gguf_file) if long else None
    for (label, _), n in zip(long, count([text for _, text in long]) if count else []):
        if n > limit:
            raise StargateError(f"{label}: the gold response is {n:,} tokens, over the {limit:,} of a training "
                                "example (train.max_length): shorten it, or raise train.max_length")


def check_persona_facts(personas: list[dict]) -> None:
    """A gated user (simulate.reveal asked) tells only its persona's facts: a persona with none could answer
    nothing, so the run stops before any of it is simulated, naming the persona."""
    for p in personas:
        if not (json.loads(p["facts"]) if p.get("facts") else persona_facts(p["text"])):
            raise StargateError(
                f"persona {p['id']} ({p['name']}) has no fact a gated user could tell (simulate.reveal asked "
                f"reads a persona's sentences of {MIN_WORDS} words or more, after its \"I'm NAME.\"): rewrite it, "
                "or use simulate.reveal all"
            )


def check_stored_lengths(store: Store, recipe: Recipe) -> None:
    """check_lengths on what a run reads: each split's tasks, personas and gold responses that the recipe uses;
    with a gated user, that each persona has facts to tell (check_persona_facts)."""
    for split in SPLITS:
        pairs = split_pairs(store, recipe, split)
        if recipe.simulate.reveal == "asked":
            check_persona_facts(list({p["id"]: p for _, p in pairs}.values()))
        tasks = {t["id"]: t["text"] for t, _ in pairs}
        personas = {f"{p['id']} ({p['name']})": p["text"] for _, p in pairs}
        golds = store.golds_for((t["id"], p["id"]) for t, p in pairs)
        check_lengths(recipe, list(tasks.items()), list(personas.items()),
                      [(f"{key[0]}|{key[1]}", gold["text"]) for key, gold in golds.items() if gold["status"] == "ok"])


# -- import ------------------------------------------------------------------------------------------------------
class _RepeatedKey(ValueError):
    """A JSON object that names a key twice: json.loads would keep the last value and drop the first unsaid."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def _loads(text: str):
    return json.loads(text, object_pairs_hook=_unique_keys)


def _read_json(path: Path):
    try:
        return _loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise StargateError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise StargateError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except _RepeatedKey as err:
        raise StargateError(f"{path} repeats the key {err.args[0]!r} in one object: keep one of its values") from None
    except OSError as err:
        raise StargateError(_unreadable(path, err)) from None


def _unreadable(path: Path, err: OSError) -> str:
    """What is wrong with an input file that cannot be opened, in the user's words."""
    if isinstance(err, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(err, IsADirectoryError):
        return f"{path} is a folder, not a file: give the file itself"
    return f"cannot read {path}: {err.strerror}"


def _read_items(path: Path) -> list:
    """A JSON list, or JSON Lines (one JSON value per line) for .jsonl files."""
    if path.suffix != ".jsonl":
        items = _read_json(path)
        if not isinstance(items, list):
            raise StargateError(f"{path} must hold a JSON list")
        return items
    items = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        items.append(_loads(line))
                    except json.JSONDecodeError as err:
                        raise StargateError(f"{path}:{n} is not valid JSON ({err.msg})") from None
                    except _RepeatedKey as err:
                        raise StargateError(f"{path}:{n} repeats the key {err.args[0]!r}: keep one of its values") \
                            from None
    except UnicodeDecodeError:
        raise StargateError(f"{path} is not UTF-8 text") from None
    except OSError as err:
        raise StargateError(_unreadable(path, err)) from None
    return items


def _nonempty(path: Path, items, what: str):
    """An import file's items, refused where it holds none (an empty file imports nothing, not zero rows)."""
    if not items:
        raise StargateError(f"{path} holds no {what}: give a file with at least one")
    return items


def _texts(path: Path, items: list, key: str) -> list[str]:
    out = []
    for n, item in enumerate(items, 1):
        text = item.get(key) if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise StargateError(f"{path} item {n}: expected a non-empty string or an object with {key!r}")
        out.append(text.strip())
    return out


@dataclass(frozen=True)
class SplitImport:
    """One split's files, read and checked on their own before the store is opened, so that a refused import
    writes nothing and makes no home. Golds are (task index, persona index, text)."""

    dataset: str
    split: str
    tasks: list[str] | None = None
    personas: list[tuple[str, str]] | None = None  # (name, text)
    personas_source: str = ""
    golds: list[tuple[int, int, str]] | None = None
    golds_source: str = ""
    golds_path: Path | None = None


def read_split(dataset: str, split: str, tasks: Path | None = None, personas: Path | None = None,
               names: Path | None = None, golds: Path | None = None, recipe: Recipe | None = None) -> SplitImport:
    """Parse and check one split's files (JSON, JSONL or the STaR-GATE authors' layout); touches no store. With a
    recipe, their lengths are checked against its models' contexts too (check_lengths)."""
    if dataset == BUILTIN:
        raise StargateError("'builtin' is the package's own data set: import under another --dataset name")
    if split not in SPLITS:
        raise StargateError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not (tasks or personas or golds):
        raise StargateError("nothing to import: name a file with --tasks, --personas (--names) or --golds")
    if names and not personas:
        raise StargateError("--names goes with --personas: it names the personas of that file")
    task_texts = persona_rows = gold_rows = None
    if tasks:
        task_texts = _texts(tasks, _nonempty(tasks, _read_items(tasks), "tasks"), "task")
        dupes = sorted(t for t, n in Counter(task_texts).items() if n > 1)
        if dupes:
            raise StargateError(f"{tasks} repeats {len(dupes)} task(s), e.g. {dupes[0][:60]!r}: remove duplicates")
    if personas:
        items = _nonempty(personas, _read_items(personas), "personas")
        if names:
            name_list = _texts(names, _nonempty(names, _read_items(names), "names"), "name")
            texts = _texts(personas, items, "text")
            if len(name_list) != len(texts):
                raise StargateError(f"{personas} has {len(texts)} personas but {names} has {len(name_list)} names")
        else:
            if not all(isinstance(i, dict) and "name" in i for i in items):
                raise StargateError(f"{personas}: each persona needs a name (objects with 'name' and 'text', or --names)")
            name_list, texts = _texts(personas, items, "name"), _texts(personas, items, "text")
        persona_rows = list(zip(name_list, texts, strict=True))
    if golds:
        gold_rows = _read_golds(golds)
    if recipe is not None:
        check_lengths(recipe, [(f"{tasks} item {n}", t) for n, t in enumerate(task_texts or [], 1)],
                      [(f"{personas} item {n} ({name})", t) for n, (name, t) in enumerate(persona_rows or [], 1)],
                      [(f"{golds}: 'prompt-{i} persona-{j}'", t) for i, j, t in gold_rows or []])
    return SplitImport(dataset, split, task_texts, persona_rows, personas.name if personas else "", gold_rows,
                       golds.name if golds else "", golds)


def write_split(store: Store, data: SplitImport, recipe: Recipe | None = None) -> dict:
    """Write a read split in one transaction, after checking it against what the store holds: all or nothing.
    With a recipe, tasks imported alone are checked beside the split's stored personas, and personas beside its
    stored tasks (check_lengths). Returns counts, including gold entries skipped for being empty."""
    dataset, split = data.dataset, data.split
    counts = {"tasks": 0, "personas": 0, "golds": 0, "golds_skipped_empty": 0}
    if recipe is not None and (data.tasks is None) != (data.personas is None):
        tasks = [(task_id(dataset, split, i), t) for i, t in enumerate(data.tasks)] if data.tasks else \
            [(t["id"], t["text"]) for t in store.tasks(dataset, split)]
        personas = [(f"{persona_id(dataset, split, i)} ({n})", t) for i, (n, t) in enumerate(data.personas)] \
            if data.personas else [(f"{p['id']} ({p['name']})", p["text"]) for p in store.personas(dataset, split)]
        check_lengths(recipe, tasks, personas, blame="task" if data.tasks else "persona")
    with store.transaction():
        if data.tasks is not None:
            _check_new(store, "tasks", dataset, split, data.tasks)
            store.insert_rows("tasks", [{"id": task_id(dataset, split, i), "dataset": dataset, "split": split,
                                         "idx": i, "text": t} for i, t in enumerate(data.tasks)], pk="id")
            counts["tasks"] = len(data.tasks)
        if data.personas is not None:
            _check_new(store, "personas", dataset, split, [t for _, t in data.personas])
            store.add_personas([{"id": persona_id(dataset, split, i), "dataset": dataset, "split": split,
                                 "idx": i, "name": n, "text": t, "source": f"import:{data.personas_source}"}
                                for i, (n, t) in enumerate(data.personas)])
            counts["personas"] = len(data.personas)
        if data.golds is not None:
            counts.update(_write_golds(store, data))
    return counts


def import_data(store: Store, dataset: str, split: str, tasks: Path | None = None, personas: Path | None = None,
                names: Path | None = None, golds: Path | None = None, recipe: Recipe | None = None) -> dict:
    """Import one split of a data set (read_split, then write_split), its lengths checked against `recipe`'s
    models where one is given (the CLI's --recipe, tiny by default). Returns counts, including gold entries
    skipped for being empty."""
    return write_split(store, read_split(dataset, split, tasks, personas, names, golds, recipe), recipe)


def _check_new(store: Store, table: str, dataset: str, split: str, texts: list[str]) -> None:
    existing = store.split_texts(table, dataset, split)
    if existing and existing != texts:
        raise StargateError(
            f"data set {dataset!r} split {split} already holds {len(existing)} different {table}: "
            "import into a new --dataset name"
        )
    shared = store.texts_outside_split(table, dataset, split) & set(texts)
    if shared:
        raise StargateError(f"{len(shared)} {table} are already in another split of {dataset!r}: splits must not overlap")


_GOLD_KEY = re.compile(r"^prompt-(\d+) persona-(\d+)$")


def _read_golds(path: Path) -> list[tuple[int, int, str]]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise StargateError(f"{path} must hold a JSON object {{\"prompt-I persona-J\": [\"gold\"]}}")
    _nonempty(path, data, "gold responses")
    rows, keys = [], {}
    for key, value in data.items():
        match = _GOLD_KEY.match(key)
        if not match:
            raise StargateError(f"{path}: key {key!r} is not of the form 'prompt-I persona-J'")
        text = value[0] if isinstance(value, list) and value else value
        if not isinstance(text, str):
            raise StargateError(f"{path}: {key!r} must map to a string or a list holding one")
        pair = (int(match[1]), int(match[2]))
        if pair in keys:  # "prompt-01 persona-0" and "prompt-1 persona-0": one pair
            first, first_text = keys[pair]
            if text != first_text:
                raise StargateError(f"{path}: {key!r} and {first!r} name one pair with two different gold "
                                    "responses: keep one")
            continue
        keys[pair] = (key, text)
        rows.append((*pair, text))
    return rows


def _write_golds(store: Store, data: SplitImport) -> dict:
    dataset, split, path = data.dataset, data.split, data.golds_path
    n_tasks, n_personas = len(store.tasks(dataset, split)), len(store.personas(dataset, split))
    rows, skipped = [], 0
    for i, j, text in data.golds:
        if i >= n_tasks or j >= n_personas:
            raise StargateError(
                f"{path}: 'prompt-{i} persona-{j}' points past the {n_tasks} tasks / {n_personas} personas of "
                f"split {split}: import the tasks and personas first"
            )
        status = "ok" if text.strip() else "empty"
        skipped += status == "empty"
        t, p = task_id(dataset, split, i), persona_id(dataset, split, j)
        rows.append({"id": f"{t}|{p}", "dataset": dataset, "task_id": t, "persona_id": p, "text": text,
                     "status": status, "source": f"import:{data.golds_source}"})
    # A pair's gold is what its runs were scored against: an import keeps the stored one only if it is the same
    # text (importing a file again is a no-op), never silently over a different one.
    stored = store.golds_for((row["task_id"], row["persona_id"]) for row in rows)
    for (i, j, text), row in zip(data.golds, rows, strict=True):
        old = stored.get((row["task_id"], row["persona_id"]))
        if old is not None and old["text"] != text:
            raise StargateError(
                f"{path}: 'prompt-{i} persona-{j}' already has a different gold response in data set {dataset!r} "
                f"split {split} (from {old['source']}): import into a new --dataset name"
            )
    store.insert_rows("golds", rows, pk="id")
    return {"golds": len(rows) - skipped, "golds_skipped_empty": skipped}
