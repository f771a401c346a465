"""Inputs too large for the models that read them: refused at import, at a run's load and in chat, in one line that
names the item, its tokens and the limit; and a conversation that still overflows its Roleplayer's context during
simulation is recorded as failed and left out while the stage goes on."""

from __future__ import annotations

import json
import re

import pytest
from conftest import THREADS, cli, one_line

from stargate_lite.engines.encoded import Completions
from stargate_lite.errors import FallbackNotice, StargateError
from stargate_lite.recipe import load_recipe
from stargate_lite.store import Store

LONG_PERSONA = "I'm ANA. " + "I grow tomatoes on my balcony and read about soil. " * 2000  # about 100 KB
LONG_GOLD = "Water the tomatoes every morning. " * 400  # about 2,800 tokens, over a training example's 1,024


def test_data_import_refuses_a_persona_or_gold_too_long_naming_it_with_its_tokens_and_limit(tmp_path):
    home = tmp_path / "home"
    personas = tmp_path / "personas.jsonl"
    personas.write_text(json.dumps({"name": "Bo", "text": "I'm BO. I run."}) + "\n"
                        + json.dumps({"name": "Ana", "text": LONG_PERSONA}) + "\n", encoding="utf-8")
    line = one_line(cli("data", "import", "--dataset", "big", "--split", "A", "--personas", str(personas),
                               home=home, check=False))
    found = re.search(r"personas.jsonl item 2 \(Ana\): the persona is ([\d,]+) tokens, over the ([\d,]+) that fit "
                      r"the Roleplayer smollm2 .*\(chat_models.smollm2.n_ctx 2,048\)", line)
    assert found, line
    tokens, room = (int(g.replace(",", "")) for g in found.groups())
    assert tokens > 10_000 and 1_000 < room < 2_048
    assert not home.exists()

    tasks, golds = tmp_path / "tasks.json", tmp_path / "gold.json"
    tasks.write_text(json.dumps(["Plan my week."]), encoding="utf-8")
    golds.write_text(json.dumps({"prompt-0 persona-0": [LONG_GOLD]}), encoding="utf-8")
    line = one_line(cli("data", "import", "--dataset", "big", "--split", "A", "--tasks", str(tasks),
                               "--golds", str(golds), home=home, check=False))
    assert re.search(r"gold.json: 'prompt-0 persona-0': the gold response is [\d,]+ tokens, over the 1,024 of a "
                     r"training example \(train.max_length\)", line), line
    assert not home.exists()
    line = one_line(cli("data", "import", "--dataset", "big", "--split", "A", "--tasks", str(tasks),
                               "--golds", str(golds), "--set", "train.max_length=4096", home=home, check=False))
    assert "points past the 1 tasks / 0 personas" in line  # the length fits that recipe: the next check speaks
    # The check follows the recipe: one whose models' context holds the persona imports it.
    result = cli("data", "import", "--dataset", "big", "--split", "A", "--personas", str(personas),
                 "--set", "chat_models.smollm2.n_ctx=65536", home=home)
    assert "2 personas" in result.stdout


def _import_splits(home, files, persona_a: str, gold_a: str) -> None:
    """A data set `big` with one task, persona and gold per split, imported with no recipe to check it against."""
    from stargate_lite.stages.data import import_data

    store = Store(home)
    for split in ("A", "B", "test"):
        folder = files / split
        folder.mkdir(parents=True)
        (folder / "tasks.json").write_text(json.dumps([f"Plan my week ({split})."]))
        text = persona_a if split == "A" else f"I'm BO{split}. I run."
        (folder / "personas.jsonl").write_text(json.dumps({"name": "Ana" if split == "A" else "Bo", "text": text}))
        (folder / "gold.json").write_text(json.dumps({"prompt-0 persona-0": [gold_a if split == "A" else "Rest."]}))
        import_data(store, "big", split, folder / "tasks.json", folder / "personas.jsonl", None, folder / "gold.json")


def test_a_run_refuses_stored_data_too_long_before_any_model_is_loaded(tmp_path):
    from stargate_lite.progress import Progress
    from stargate_lite.stages.data import prepare_data

    recipe = load_recipe("tiny", ["data.dataset=big", "data.tasks={A: 1, B: 1, test: 1}",
                                  "data.personas={A: 1, B: 1, test: 1}"])

    def no_oracle():
        raise AssertionError("nothing is missing: no Oracle is loaded")

    long_persona, long_gold = tmp_path / "persona-home", tmp_path / "gold-home"
    _import_splits(long_persona, tmp_path / "persona-files", LONG_PERSONA, "Rest.")
    with Progress(enabled=False) as progress, pytest.raises(
            StargateError, match=r"big/A/persona-0000 \(Ana\): the persona is [\d,]+ tokens, over the [\d,]+ that "
                                 r"fit the Roleplayer smollm2"):
        prepare_data(Store(long_persona), recipe, no_oracle, progress)
    _import_splits(long_gold, tmp_path / "gold-files", "I'm ANA. I paint.", LONG_GOLD)
    with Progress(enabled=False) as progress, pytest.raises(
            StargateError, match=r"big/A/task-0000\|big/A/persona-0000: the gold response is [\d,]+ tokens, over "
                                 r"the 1,024"):
        prepare_data(Store(long_gold), recipe, no_oracle, progress)


def test_chat_refuses_a_persona_file_too_long_for_its_roleplayer(home, tmp_path):
    persona = tmp_path / "persona.txt"
    persona.write_text(LONG_PERSONA, encoding="utf-8")
    line = one_line(cli("chat", "--base", "--persona", str(persona), "--task", "Plan my week.", home=home,
                               check=False))
    assert re.search(r"--persona: the persona is [\d,]+ tokens, over the [\d,]+ that fit the Roleplayer smollm2",
                     line), line


class _ScriptedQuestioner:
    """A Questioner at the boundary: one short question per turn."""

    def generate(self, policy, prompts, *, on_batch=None, **sampling):
        if on_batch:
            on_batch(len(prompts))
        return Completions(["What do you grow?"] * len(prompts), [False] * len(prompts))

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def test_a_conversation_over_its_roleplayers_context_is_recorded_as_failed_and_the_stage_goes_on(home):
    """The real llama.cpp Roleplayer with a 256-token context: the pair whose persona overflows it gets no
    conversation (each one recorded in the failures table, left out); the other pair's are stored."""
    from stargate_lite.engines.chat_models import LlamaCppChat
    from stargate_lite.progress import Progress
    from stargate_lite.recipe import ChatModelConfig, SimulateConfig
    from stargate_lite.stages.simulate import Roleplayers, simulate

    store = Store(home)
    store.insert_rows("tasks", [{"id": "d/A/task-0000", "dataset": "d", "split": "A", "idx": 0,
                                 "text": "Plan my week."}], pk="id")
    store.insert_rows("personas", [
        {"id": "d/A/persona-0000", "dataset": "d", "split": "A", "idx": 0, "name": "Bo", "text": "I'm BO. I run.",
         "source": "test"},
        {"id": "d/A/persona-0001", "dataset": "d", "split": "A", "idx": 1, "name": "Ana",
         "text": LONG_PERSONA[:2000], "source": "test"}], pk="id")
    store.insert_rows("golds", [{"id": f"d/A/task-0000|d/A/persona-000{i}", "dataset": "d", "task_id": "d/A/task-0000",
                                 "persona_id": f"d/A/persona-000{i}", "text": "Rest.", "status": "ok",
                                 "source": "test"} for i in (0, 1)], pk="id")
    store.insert_rows("pairs", [{"id": f"r/1/d/A/task-0000|d/A/persona-000{i}", "run_id": "r", "iteration": 1,
                                 "task_id": "d/A/task-0000", "persona_id": f"d/A/persona-000{i}", "turns": 1,
                                 "idx": i} for i in (0, 1)], pk="id")
    roleplayer = LlamaCppChat("tight", ChatModelConfig(backend="llamacpp", model="builtin:smollm2-135m-instruct",
                                                        n_ctx=256, n_threads=THREADS))
    config = SimulateConfig(conversations_per_pair=2, max_turns=1, answer_max_tokens=8, pairs_per_chunk=2)
    with Progress(enabled=False) as progress, pytest.warns(FallbackNotice, match="2 conversation"):
        simulate(store, "r", 1, None, "base", _ScriptedQuestioner(), Roleplayers({"tight": 1.0}, lambda _: roleplayer,
                                                                                 0), config, 0, progress)
    kept = store.rows("select pair_id, turns from conversations order by id")
    assert [(r["pair_id"][-4:], r["turns"]) for r in kept] == [("0000", 1), ("0000", 1)]
    failures = store.rows("select item, reason from failures where scope = 'r' and stage = 'simulate/1'")
    assert sorted(f["item"][-20:] for f in failures) == ["d/A/persona-0001#000", "d/A/persona-0001#001"]
    assert all(f["reason"].startswith("left out: roleplayer tight:") and "exceed context window of 256" in f["reason"]
               and "chat_models.tight.n_ctx" in f["reason"] for f in failures), failures
