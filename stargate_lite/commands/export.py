"""`stargate-lite export`: base + adapter merged into one model folder that transformers, vLLM or llama.cpp's
converter loads as it is: safetensors weights, the tokenizer with its chat template, and a model card.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engines.questioner import Questioner
from ..errors import StargateError
from ..prompts import DECIDE_INSTRUCTION, QUESTION_INSTRUCTION
from ..runs import pick_run, pick_training, recipe_of_run, training_format
from ..store import Store

CARD = """---
library_name: transformers
base_model: {base}
tags: [stargate-lite, star-gate, lora-merged]
---
# {name}

A Questioner trained with [stargate-lite](https://pypi.org/project/stargate-lite/) (STaR-GATE: Andukuri,
Fränken, Gerstenberg, Goodman, 2024) to ask clarifying questions before it answers. It is `{base}` with the
LoRA adapter of run `{run}`, iteration {iteration}, merged into the weights.

Prompt it as in training ({format} format): the user's first turn is "My name is NAME.\\n\\nREQUEST"{instruction};
{ending}

## Recipe

```json
{recipe}
```
"""


@contextmanager
def written_aside(out_dir: Path) -> Iterator[Path]:
    """A new folder beside out_dir, under a fresh name of this call's own (OUT.RANDOM.tmp), renamed to out_dir when
    the block ends: a folder at out_dir is complete. If the block fails, the folder is removed, with any folders
    above it that this call made; nothing this call did not make is ever removed (an OUT.tmp of the user's, or a
    folder left by an export that was killed, stays as it is)."""
    out_dir = Path(out_dir)
    made = [folder for folder in out_dir.absolute().parents if not folder.exists()]  # nearest first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.mkdir()  # never an existing folder: a name taken is an error, not a folder to write into
        yield tmp
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def export(home: Path | str | None, out_dir: Path, run_id: str | None = None, iteration: int | None = None) -> Path:
    """Merge a run's adapter into its base model and save it to out_dir (written aside, then renamed)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise StargateError(f"{out_dir} exists: choose a new --out folder")
    above = next(folder for folder in out_dir.absolute().parents if folder.exists())
    if not above.is_dir():
        raise StargateError(f"{above} is a file, so --out {out_dir} cannot be made: choose a folder outside it")
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    training = pick_training(store, run, iteration)
    iteration, adapter = training["iteration"], training["adapter"]
    recipe = recipe_of_run(run)
    prompt_format = training_format(training, recipe)
    decide = recipe.simulate.turns == "policy"
    asked_to = DECIDE_INSTRUCTION if decide else QUESTION_INSTRUCTION
    instruction = (f", followed by a blank line and this instruction: \"{asked_to}\""
                   if prompt_format == "instructed" else ", nothing else: it asks its questions by itself")
    ending = ("it asks until it knows enough, then answers in its own turn (a turn without a question is its answer)."
              if decide else "when the user repeats the request after an answer, it answers.")
    # Merging needs full-precision base weights: a 4-bit base is loaded unquantised for export.
    questioner = Questioner(recipe.questioner.model_copy(update={"load_in_4bit": False}), store.home)
    merged = questioner.load_policy(adapter).merge_and_unload()
    with written_aside(out_dir) as tmp:
        merged.save_pretrained(tmp)
        questioner.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            CARD.format(base=recipe.questioner.model, name=out_dir.name, run=run["id"], iteration=iteration,
                        format=prompt_format, instruction=instruction, ending=ending,
                        recipe=json.dumps(json.loads(run["recipe"]), indent=2)),
            encoding="utf-8",
        )
    return out_dir
