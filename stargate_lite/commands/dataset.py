"""`stargate-lite export --data`: a run's records as a Hugging Face dataset, to share the research artefact
without the database: one configuration per table (conversations, pairs, selections, responses, judgments) in
Parquet, and a dataset card (README.md) whose YAML lists them, so `datasets.load_dataset(FOLDER, "conversations")`
or `load_dataset("parquet", data_files=...)` reads them, locally or from the Hub after `--push-to-hub`.

Every namespace of the run is in: the training loop's own ("train") and its evaluations' and probes'
("eval:ROLEPLAYER", "probe:..."), in each row's `namespace` column.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from ..engines.gate import Gate
from ..errors import StargateError
from ..evaluation.elicitation import conversation_elicitation
from ..runs import pick_run, recipe_of_run
from ..stages.simulate import pair_facts, recipe_gate
from ..store import Store
from ..store.reward import RewardTerms
from .export import check_new_folder, written_aside

CONFIGS = ("conversations", "pairs", "selections", "responses", "judgments")
DATA_FILE = "train-00000-of-00001.parquet"  # one split per configuration, named as the Hub names one

CARD = """---
# Fill in before sharing: the license your tasks, personas and the models' outputs allow.
license: unknown
pretty_name: "stargate-lite run {run}"
tags: [stargate-lite, star-gate, clarifying-questions, synthetic]
configs:
{configs}
---
# stargate-lite run `{run}`

The records of a [STaR-GATE](https://arxiv.org/abs/2403.19154) run made with stargate-lite {version}: simulated
conversations between a Questioner and a Roleplayer playing a hidden persona, each scored by the base
Questioner's log-probability of a gold response, the conversation kept for training in each pair, the responses
trained after it, and the judge's verdicts of the evaluation.

| configuration | rows | one row is |
|---|---|---|
{counts}

- Questioner: `{questioner}`
- Roleplayer: {roleplayers}
- Oracle (personas, gold responses): `{oracle}`
- Judge: `{judge}`
- Data set: `{dataset}`; {iterations} iteration(s) trained

How it was made: `stargate-lite run --recipe {recipe_name}` (the recipe below), then
`stargate-lite export --data FOLDER --run {run}`. A row's `namespace` is `{run}` for the training loop and
`{run}#eval:ROLEPLAYER` for an evaluation; a conversation's `reward` is its `logprob` less
{question_cost} per question plus {fact_credit} per fact a gated user was told, and `kept` marks the one selection
trained on.

Elicitation, per conversation: of the persona's `facts` (its sentences), `facts_active` were told in reply to a
turn that asked for them (or after one had), `facts_passive` were told unasked, `facts_never` were not told.
What a turn asks for, and what a free user's reply states, are found by the run's gate (a sentence-embedding
model; simulate.gate in the recipe); a gated user (simulate.reveal asked) tells the facts it was given, which
each of its turns lists in `facts` (null elsewhere).

Load it:

```python
from datasets import load_dataset
conversations = load_dataset("FOLDER_OR_HUB_ID", "conversations", split="train")
```

## Recipe

```json
{recipe}
```
"""

DESCRIBED = {
    "conversations": "a simulated conversation: turns as [{role, text, facts}], Roleplayer, gold log-prob, reward, "
                     "kept, the persona's facts told asked (facts_active), unasked (facts_passive) and never",
    "pairs": "a (task, persona) pair of an iteration or evaluation, with the gold response",
    "selections": "the conversation selection kept for a pair, with its reward",
    "responses": "the response trained after a kept conversation (the regulariser)",
    "judgments": "a judge's verdict on Q_eta's response against Q_0's, both side by side",
}


def dataset_tables(store: Store, run_id: str, terms: RewardTerms, gate: Gate) -> dict[str, list[dict]]:
    """The run's rows per configuration, shaped for Parquet (turns as a list, flags as booleans). A conversation
    has its elicitation counts (facts, active, passive, never: evaluation/elicitation.py, by `gate`), and each
    turn the persona facts a gated user's reply was given, as texts (None for a Questioner turn or a free user's
    reply)."""
    conversations = store.export_conversations(run_id, terms)
    turns = store.turns([c["id"] for c in conversations])
    for c in conversations:
        facts = pair_facts(c)
        counts = conversation_elicitation(turns[c["id"]], facts, gate)
        c.update(facts=counts["facts"], facts_active=counts["active"], facts_passive=counts["passive"],
                 facts_never=counts["never"])
        c["turns"] = [{"role": t["role"], "text": t["text"],
                       "facts": [facts[i] for i in t["facts"]] if "facts" in t else None} for t in turns[c["id"]]]
        c["kept"] = bool(c["kept"])
        del c["persona"], c["persona_facts"]
    judgments = store.export_judgments(run_id)
    for j in judgments:
        j["swapped"], j["policy_is_a"] = bool(j["swapped"]), bool(j["policy_is_a"])
    return {"conversations": conversations, "pairs": store.export_pairs(run_id),
            "selections": store.export_selections(run_id), "responses": store.export_responses(run_id),
            "judgments": judgments}


def export_dataset(home: Path | str | None, out_dir: Path, run_id: str | None = None,
                   push_to_hub: str | None = None, private: bool = True) -> dict[str, int]:
    """Write a run's records to out_dir as a dataset (written aside, then renamed) and return the rows per
    configuration; with push_to_hub ("user/name"), also upload the folder to that dataset repo on the Hub."""
    try:
        from datasets import Dataset
    except ImportError as err:
        raise StargateError('--data needs the `datasets` package: pip install "stargate-lite[dataset]" '
                            "(bash install.sh --test installs it)") from err

    out_dir = Path(out_dir)
    check_new_folder(out_dir, "--data")  # before the store: a refused destination makes no home
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    recipe = recipe_of_run(run)
    tables = dataset_tables(store, run["id"], recipe.reward.terms, recipe_gate(recipe.simulate, store.home))
    kept = {name: rows for name, rows in tables.items() if rows}  # an empty table has no columns to write
    configs = "\n".join(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/{DATA_FILE}"
                        + ("\n  default: true" if name == "conversations" else "") for name in kept)
    roles = recipe.roles
    roleplayers = ", ".join(f"`{recipe.chat_models[name].model}` ({name})" for name in roles.roleplayer_weights)
    trained = sum(store.training(run["id"], it["iteration"]) is not None for it in store.iterations(run["id"]))
    card = CARD.format(
        run=run["id"], version=version("stargate-lite"), configs=configs,
        counts="\n".join(f"| {name} | {len(tables[name])} | {DESCRIBED[name]} |" for name in CONFIGS),
        questioner=recipe.questioner.model, roleplayers=roleplayers, oracle=recipe.chat_models[roles.oracle].model,
        judge=recipe.chat_models[roles.judge].model, dataset=run["dataset"], iterations=trained,
        recipe_name=run["recipe_name"], question_cost=recipe.reward.question_cost,
        fact_credit=recipe.reward.fact_credit,
        recipe=json.dumps(json.loads(run["recipe"]), indent=2))
    with written_aside(out_dir, "--data") as tmp:
        for name, rows in kept.items():
            (tmp / name).mkdir()
            Dataset.from_list(rows).to_parquet(tmp / name / DATA_FILE)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        push_folder(out_dir, push_to_hub, private)
    return {name: len(rows) for name, rows in tables.items()}


def push_folder(folder: Path, repo: str, private: bool) -> None:
    """Upload a dataset folder to a dataset repo on the Hub (made if missing); a failure is one line."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub import errors as hub

    if get_token() is None:  # without one the Hub answers 401, as it does to a bad token: say which it is
        raise StargateError(f"pushing to {repo}: not logged in to the Hugging Face Hub: run `hf auth login` or set "
                            f"HF_TOKEN (a token with write access); the dataset is in {folder}")
    try:
        api = HfApi()
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
    except (hub.HfHubHTTPError, OSError, ValueError) as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        why = {401: "the Hub refused the token (HTTP 401): log in again (`hf auth login`) or set HF_TOKEN",
               403: "the token may not write there (HTTP 403): use a token with write access to that namespace",
               }.get(status, f"HTTP {status}" if status else f"{type(err).__name__}: "
                     f"{(str(err).strip().splitlines() or [''])[0][:160]}")
        raise StargateError(f"pushing to {repo} on the Hugging Face Hub failed: {why}; the dataset is in "
                            f"{folder}") from err
