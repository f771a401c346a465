"""Data: the built-in set's splits, importers for JSONL and the STaR-GATE authors' layout, and bad files."""

import json
from pathlib import Path

import pytest
from conftest import SHARED, skip_or_fail

from stargate_lite.errors import StargateError
from stargate_lite.stages import builtin_data
from stargate_lite.stages.data import builtin_persona_name, builtin_task_splits, clean_persona, import_data
from stargate_lite.store import Store


def test_builtin_splits_share_no_task_or_name():
    splits = builtin_task_splits()
    assert sum(len(v) for v in splits.values()) == len(builtin_data.TASKS) >= 60
    assert not (set(splits["A"]) & set(splits["B"]) or set(splits["A"]) & set(splits["test"]))
    names = {s: {builtin_persona_name(s, i) for i in range(50)} for s in ("A", "B", "test")}
    assert not (names["A"] & names["B"] or names["A"] & names["test"] or names["B"] & names["test"])


def test_generated_personas_open_with_their_name():
    assert clean_persona("I'm Amara. I teach.", "Amara") == "I'm AMARA. I teach."
    assert clean_persona("I am amara, a baker.", "Amara") == "I'm AMARA. a baker."
    assert clean_persona("A baker from Lagos.", "Amara") == "I'm AMARA. A baker from Lagos."


def _write(path: Path, value) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_authors_layout_imports_and_skips_the_empty_gold(tmp_path, home):
    store = Store(home)
    tasks = _write(tmp_path / "tasks.json", ["Plan my week.", "Suggest a book."])
    personas = _write(tmp_path / "A.json", ["I'm ANA. I paint.", "I'm BO. I run."])
    names = _write(tmp_path / "A_NAMES.json", ["Ana", "Bo"])
    golds = _write(tmp_path / "gold.json", {
        "prompt-0 persona-0": ["Paint on Monday."], "prompt-0 persona-1": ["Run on Monday."],
        "prompt-1 persona-0": [""], "prompt-1 persona-1": ["Born to Run."],
    })
    counts = import_data(store, "paper", "A", tasks, personas, names, golds)
    assert counts == {"tasks": 2, "personas": 2, "golds": 3, "golds_skipped_empty": 1}
    (row,) = [r for r in store.dataset_counts() if r["dataset"] == "paper"]
    assert (row["tasks"], row["personas"], row["golds"], row["golds_skipped"]) == (2, 2, 3, 1)
    # Importing the same files again changes nothing.
    import_data(store, "paper", "A", tasks, personas, names, golds)
    assert store.value("select count(*) from golds") == 4


def test_jsonl_import(tmp_path, home):
    store = Store(home)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task": "Plan my week."}\n\n"Suggest a book."\n', encoding="utf-8")
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"name": "Ana", "text": "I paint."}\n', encoding="utf-8")
    assert import_data(store, "mine", "test", tasks, personas)["tasks"] == 2
    assert [p["name"] for p in store.personas("mine", "test")] == ["Ana"]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"tasks": "[1, 2"}, "not valid JSON"),
        ({"tasks": '{"a": 1}'}, "must hold a JSON list"),
        ({"tasks": '["Plan.", "Plan."]'}, "repeats 1 task"),
        ({"tasks": '["Plan.", ""]'}, "item 2"),
        ({"personas": '["I paint."]', "names": '["Ana", "Bo"]'}, "1 personas but"),
        ({"personas": '["I paint."]'}, "needs a name"),
        ({"tasks": b"\xff\xfe not utf-8"}, "not UTF-8"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, home, files, message):
    paths = {}
    for key, content in files.items():
        path = tmp_path / f"{key}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[key] = path
    with pytest.raises(StargateError, match=message):
        import_data(Store(home), "bad", "A", **paths)


def test_an_import_refused_part_way_writes_nothing(tmp_path, home):
    """Golds that point past the split's personas are refused after its tasks were read: the tasks are not kept."""
    store = Store(home)
    tasks = _write(tmp_path / "tasks.json", ["Plan my week."])
    golds = _write(tmp_path / "gold.json", {"prompt-0 persona-0": ["Rest on Sunday."]})
    with pytest.raises(StargateError, match="points past the 1 tasks / 0 personas"):
        import_data(store, "d", "A", tasks=tasks, golds=golds)
    assert store.value("select count(*) from tasks where dataset = 'd'") == 0


def test_splits_of_an_import_must_not_overlap(tmp_path, home):
    store = Store(home)
    tasks = _write(tmp_path / "tasks.json", ["Plan my week."])
    import_data(store, "d", "A", tasks=tasks)
    with pytest.raises(StargateError, match="another split"):
        import_data(store, "d", "B", tasks=tasks)


def test_the_authors_released_personas_import(home):
    root = SHARED / "data" / "assistant-gate" / "personas"
    if not root.is_dir():
        skip_or_fail(f"the authors' released data is not at {root} (../shared/data)")
    store = Store(home)
    for split in ("A", "B"):
        counts = import_data(store, "assistant-gate", split, personas=root / f"{split}.json",
                             names=root / f"{split}_NAMES.json")
        assert counts["personas"] == 50
    assert store.personas("assistant-gate", "A")[0]["name"] == "Lennox"


def test_a_50_mb_file_imports_in_one_pass(tmp_path, home):
    """Large files stream line by line and are checked in linear time (no quadratic duplicate search)."""
    path = tmp_path / "tasks.jsonl"
    filler = "x" * 80
    with path.open("w", encoding="utf-8") as f:
        for i in range(500_000):
            f.write(json.dumps({"task": f"Request {i}: {filler}"}) + "\n")
    assert path.stat().st_size > 50 * 2**20
    counts = import_data(Store(home), "big", "A", tasks=path)
    assert counts["tasks"] == 500_000


def test_roleplayer_answers_that_run_on_are_cut_to_their_first_sentences():
    from stargate_lite.stages.simulate import first_sentences

    answer = "I love spicy food. I work nights! Do you cook? Here is your meal plan: Monday, soup."
    assert first_sentences(answer, 3) == "I love spicy food. I work nights! Do you cook?"
    assert first_sentences(answer, None) == answer
    assert first_sentences("Short answer.", 3) == "Short answer."


def test_pairs_leave_out_the_pairs_whose_gold_is_empty(tmp_path, home):
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.data import make_pairs

    store = Store(home)
    tasks = _write(tmp_path / "tasks.json", ["Plan my week.", "Suggest a book."])
    personas = _write(tmp_path / "A.json", [{"name": "Ana", "text": "I paint."}])
    golds = _write(tmp_path / "gold.json", {"prompt-0 persona-0": [""], "prompt-1 persona-0": ["Read Dune."]})
    import_data(store, "mine", "A", tasks, personas, golds=golds)
    recipe = load_recipe("tiny", ["data.dataset=mine", "data.tasks={A: 2, B: 1, test: 1}",
                                  "data.personas={A: 1, B: 1, test: 1}"])
    make_pairs(store, recipe, "r", 1, "A", "0/1")
    assert [p["task"] for p in store.pairs("r", 1)] == ["Suggest a book."]


class _Oracle:
    """An Oracle at the boundary: a usable persona, except too short a one for the name `refuse` (its first
    `short_calls` calls, or always)."""

    name = "oracle"

    def __init__(self, refuse: str | None = None, short_calls: int = 10**6):
        self.refuse, self.short_calls, self.seeds = refuse, short_calls, []

    def complete_each(self, conversations, sampling):
        if self.refuse and self.refuse in conversations[0][-1]["content"]:
            self.seeds.append(sampling.seed)
            if len(self.seeds) <= self.short_calls:
                return ["I paint."]
        return ["I paint portraits by the sea every morning."]


def test_a_persona_too_short_is_asked_again_with_other_examples_and_a_third_failure_is_recorded(home):
    from stargate_lite.engines.chat_models import ChatFailure
    from stargate_lite.progress import Progress
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.data import _write_persona, generate_personas

    seeds = [text for _, text in builtin_data.SEED_PERSONAS]
    once = _Oracle("Ana", short_calls=1)
    assert _write_persona(once, seeds, "Ana", "persona/A/0", 32) == "I paint portraits by the sea every morning."
    assert len(once.seeds) == 2 and once.seeds[0] != once.seeds[1]  # asked again, with another seed
    never = _Oracle("Ana")
    assert isinstance(_write_persona(never, seeds, "Ana", "persona/A/0", 32), ChatFailure) and len(never.seeds) == 3

    # Through the stage: the persona that failed is recorded and the stage fails; a rerun writes only it.
    store = Store(home)
    recipe = load_recipe("tiny", ["data.personas={A: 2, B: 1, test: 1}"])
    refused = builtin_persona_name("A", 1)
    with pytest.raises(StargateError, match="1 personas failed"):
        generate_personas(store, recipe, lambda: _Oracle(refused), Progress(enabled=False))
    assert store.value("select count(*) from failures where stage = 'personas'") == 1
    assert store.value("select count(*) from personas") == 3
    again = _Oracle(refused, short_calls=0)
    generate_personas(store, recipe, lambda: again, Progress(enabled=False))
    assert len(again.seeds) == 1  # only the missing persona was asked for
    assert store.value("select count(*) from personas") == 4
    assert store.value("select count(*) from failures where stage = 'personas'") == 0


def test_a_changed_gold_is_refused_naming_its_pair_and_the_same_gold_imports_again(tmp_path, home):
    """An import never keeps an old gold while saying it imported the new one: a pair's gold that differs from
    the stored one (or from another entry for the same pair in the file) is refused, and nothing is written."""
    store = Store(home)
    tasks = _write(tmp_path / "tasks.json", ["Plan my week.", "Suggest a book."])
    personas = _write(tmp_path / "A.json", ["I'm ANA. I paint.", "I'm BO. I run."])
    names = _write(tmp_path / "A_NAMES.json", ["Ana", "Bo"])
    golds = {"prompt-0 persona-0": ["Paint on Monday."], "prompt-1 persona-1": ["Born to Run."]}
    import_data(store, "paper", "A", tasks, personas, names, _write(tmp_path / "gold.json", golds))
    before = store.rows("select id, text from golds order by id")

    assert import_data(store, "paper", "A", golds=_write(tmp_path / "same.json", golds))["golds"] == 2
    changed = _write(tmp_path / "changed.json", {**golds, "prompt-1 persona-1": ["Run on Sunday."],
                                                 "prompt-1 persona-0": ["Read Dune."]})
    with pytest.raises(StargateError, match="'prompt-1 persona-1' already has a different gold response"):
        import_data(store, "paper", "A", golds=changed)
    twice = _write(tmp_path / "twice.json", {"prompt-1 persona-0": ["Read Dune."], "prompt-01 persona-0": ["No."]})
    with pytest.raises(StargateError, match="'prompt-01 persona-0' and 'prompt-1 persona-0' name one pair"):
        import_data(store, "paper", "A", golds=twice)
    assert store.rows("select id, text from golds order by id") == before


@pytest.mark.parametrize("option, name", [("tasks", "tasks.json"), ("tasks", "tasks.jsonl"), ("golds", "gold.json")])
def test_a_folder_given_for_a_file_is_a_clear_error(tmp_path, home, option, name):
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(StargateError, match=f"{folder} is a folder, not a file"):
        import_data(Store(home), "d", "A", **{option: folder})
