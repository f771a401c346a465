"""`stargate-lite export`: base + adapter merged into one model folder that transformers, vLLM or llama.cpp's
converter loads as it is: safetensors weights, the tokenizer with its chat template, and a model card.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engines.questioner import Questioner
from ..errors import StargateError
from ..prompts import questioner_instruction
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


def check_new_folder(out_dir: Path, option: str) -> None:
    """Refuse, in one line and before any work, an output folder that exists or that cannot be made: under a file,
    or in a folder this process may not write in (its permissions, a read-only file system)."""
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        raise StargateError(f"{out_dir} exists: choose a new {option} folder")
    above = next(folder for folder in out_dir.absolute().parents if folder.exists())
    if not above.is_dir():
        raise StargateError(f"{above} is a file, so {option} {out_dir} cannot be made: choose a folder outside it")
    if not os.access(above, os.W_OK | os.X_OK):
        why = "a read-only file system" if os.statvfs(above).f_flag & os.ST_RDONLY else "permission denied"
        raise StargateError(f"cannot write in {above} ({why}), so {option} {out_dir} cannot be made: choose a "
                            "folder you can write in")


@contextmanager
def written_aside(out_dir: Path, option: str) -> Iterator[Path]:
    """A new folder beside out_dir, under a fresh name of this call's own (OUT.RANDOM.tmp), renamed to out_dir when
    the block ends: a folder at out_dir is complete. If the block fails, the folder is removed, with any folders
    above it that this call made; nothing this call did not make is ever removed (an OUT.tmp of the user's, or a
    folder left by an export that was killed, stays as it is). The folder is made before the block's work, so a
    destination that cannot be written is refused before it."""
    out_dir = Path(out_dir)
    check_new_folder(out_dir, option)
    made = [folder for folder in out_dir.absolute().parents if not folder.exists()]  # nearest first
    tmp = out_dir.with_name(f"{out_dir.name}.{secrets.token_hex(4)}.tmp")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # never an existing folder: a name taken is an error, not a folder to write into
    except OSError as err:
        _remove_empty(made)
        raise StargateError(f"cannot make {option} {out_dir}: {err.strerror} ({err.filename})") from None
    try:
        yield tmp
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a call made, nearest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def export(home: Path | str | None, out_dir: Path, run_id: str | None = None, iteration: int | None = None) -> Path:
    """Merge a run's adapter into its base model and save it to out_dir (written aside, then renamed)."""
    out_dir = Path(out_dir)
    check_new_folder(out_dir, "--out")  # before the store: a refused destination makes no home
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    training = pick_training(store, run, iteration)
    iteration, adapter = training["iteration"], training["adapter"]
    recipe = recipe_of_run(run)
    prompt_format = training_format(training, recipe)
    decide = recipe.simulate.turns == "policy"
    asked_to = questioner_instruction(decide, recipe.simulate.instruction)
    instruction = (f", followed by a blank line and this instruction: \"{asked_to}\""
                   if prompt_format == "instructed" else ", nothing else: it asks its questions by itself")
    ending = ("it asks until it knows enough, then answers in its own turn (a turn without a question is its answer)."
              if decide else "when the user repeats the request after an answer, it answers.")
    # Made before the merge, which takes minutes on a large model: a destination that cannot be written fails first.
    with written_aside(out_dir, "--out") as tmp:
        # Merging needs full-precision base weights: a 4-bit base is loaded unquantised for export.
        questioner = Questioner(recipe.questioner.model_copy(update={"load_in_4bit": False}), store.home)
        merged = questioner.load_policy(adapter).merge_and_unload()
        merged.save_pretrained(tmp)
        questioner.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            CARD.format(base=recipe.questioner.model, name=out_dir.name, run=run["id"], iteration=iteration,
                        format=prompt_format, instruction=instruction, ending=ending,
                        recipe=json.dumps(json.loads(run["recipe"]), indent=2)),
            encoding="utf-8",
        )
    return out_dir
