"""The learning probe (evaluation/probe.py): fresh conversations per policy under the same seeds, rewards paired
with Q_0's per pair, Q_0 made once (once for a sweep's runs that differ only in training), and what kind of turns
the Questioner takes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3

import pytest
from conftest import cli

from stargate_lite.errors import StargateError
from stargate_lite.evaluation.probe import (
    CONTROL,
    GROUPS,
    NO_QUESTIONS,
    policy_difference,
    probe,
    probe_namespace,
    response_words,
)
from stargate_lite.runs import open_run, recipe_of_run
from stargate_lite.store import Store

# The finished run's own data: every probe pair has a gold already, and A and B are exactly its training pairs.
TASKS, PERSONAS = {"A": 2, "B": 2, "test": 1}, {"A": 1, "B": 1, "test": 2}


def test_response_words_count_what_a_turn_says_besides_its_questions():
    assert response_words("What do you like to cook? How long do you have on weeknights?") == 0
    assert response_words("Here is a plan for Monday: soup and bread. Does that suit you?") == 9
    assert response_words("Sure, I can help with that") == 6  # no sentence end: all of it


def test_the_persona_reciter_answers_anything_with_the_persona_in_its_prompt():
    from stargate_lite.engines.chat_models import ChatFailure, Sampling
    from stargate_lite.evaluation.probe import PersonaReciter
    from stargate_lite.prompts import roleplayer_messages

    short, long = "I'm ANA. I paint.", "I'm ANA. I paint. I live by the sea."
    reciter = PersonaReciter([short, long])
    turns = [{"role": "questioner", "text": "What do you do on weekends?"}]
    answers = reciter.complete_each([roleplayer_messages(long, "Plan my week.", turns),
                                     roleplayer_messages(short, "Plan my week.", turns),
                                     roleplayer_messages("I'm BO.", "Plan my week.", turns)], Sampling(16))
    assert answers[:2] == [long, short] and isinstance(answers[2], ChatFailure)


def _rows(home) -> dict:
    with sqlite3.connect(home / "stargate.db") as db:
        return {table: db.execute(f"select count(*) from {table} where {key} like '%#probe:%'").fetchone()[0]
                for table, key in (("pairs", "run_id"), ("conversations", "run_id"), ("scores", "run_id"))}


def test_the_probe_pairs_each_policy_with_q0_under_the_same_seeds_and_makes_q0_once(finished):
    first = probe(finished, iterations=[1], tasks=TASKS, personas=PERSONAS, conversations=1)
    assert [p["iteration"] for p in first["policies"]] == [0, 1]
    q0, q1 = (p["splits"] for p in first["policies"])
    assert {g: (q1[g]["pairs"], q1[g]["trained_on"]) for g in q1} == {"A": (2, 2), "B": (2, 2), "A+B": (4, 4),
                                                                        "test": (2, 0)}
    store = Store(finished)
    for split in ("A", "B", "test"):
        pairs = [{p["task_id"] + "|" + p["persona_id"]: p for p in store.pairs(probe_namespace("tiny", "smollm2",
                                                                                              split, it), 0)}
                 for it in (0, 1)]
        # The same pairs with the same turn counts for both policies ...
        assert pairs[0].keys() == pairs[1].keys() and len(pairs[0]) == 2
        assert all(pairs[0][k]["turns"] == pairs[1][k]["turns"] for k in pairs[0])
        # ... and the gain is Q_1's reward less Q_0's on the same pair, averaged over pairs.
        rewards = [{s["pair_id"].split("/", 2)[2]: s["logprob"] for s in store.scores(probe_namespace(
            "tiny", "smollm2", split, it), 0)} for it in (0, 1)]
        assert rewards[0].keys() == pairs[0].keys() == rewards[1].keys()
        gains = [rewards[1][k] - rewards[0][k] for k in rewards[0]]
        assert abs(q1[split]["gain"].mean - sum(gains) / len(gains)) < 1e-9
        assert q1[split]["gain"].low <= q1[split]["gain"].mean <= q1[split]["gain"].high
        assert q0[split]["gain"] is None and q1[split]["questioner_turns"] > 0
    made = _rows(finished)
    assert made == {"pairs": 2 * 6, "conversations": 2 * 6, "scores": 2 * 6}

    # A rerun reuses everything; a later policy adds its own conversations and nothing for Q_0.
    assert probe(finished, iterations=[1], tasks=TASKS, personas=PERSONAS, conversations=1) == first
    assert _rows(finished) == made
    # Another size is another probe (its pairs and chunk seeds belong to its size): refused, naming the size it
    # was made at, rather than the stored one answering for it; nothing written.
    for sizes, made_at in (({"tasks": {**TASKS, "A": 1}}, r"2 tasks x 1 personas of split A and 1 conversation"),
                           ({"conversations": 2}, r"--tasks A=2 --personas A=1 --conversations 1\)")):
        with pytest.raises(StargateError, match=made_at):
            probe(finished, iterations=[1], **{"tasks": TASKS, "personas": PERSONAS, "conversations": 1, **sizes})
    assert _rows(finished) == made
    both = probe(finished, iterations=[1, 2], tasks=TASKS, personas=PERSONAS, conversations=1, control=True)
    assert _rows(finished) == {table: n * 2 for table, n in made.items()}  # Q_2's and the control's
    assert both["policies"][:2] == first["policies"]
    # Two policies against each other, paired per pair: Q_2 less Q_1 is the difference of their gains over Q_0.
    q2_less_q1 = policy_difference(store, ("tiny", 2), ("tiny", 1), "smollm2")
    for group in ("A", "B", "A+B", "test"):
        gains = [p["splits"][group]["gain"] for p in both["policies"][1:]]
        assert q2_less_q1[group].n == gains[0].n == gains[1].n
        assert q2_less_q1[group].mean == pytest.approx(gains[1].mean - gains[0].mean, abs=1e-9)
        assert q2_less_q1[group].low <= q2_less_q1[group].mean <= q2_less_q1[group].high
    # The positive control (Q_0 asking a Roleplayer that recites its persona) raises the reward on every split,
    # and its replies tell persona facts (by the gate, the reciter being a free user), asked or not.
    assert all(both["control"][g]["gain"].mean > 0 for g in ("A", "B", "test"))
    for group in ("A", "B", "test"):
        elicited = both["control"][group]["elicitation"]
        assert elicited["conversations"] == 2 and elicited["active"]["mean"] + elicited["passive"]["mean"] > 0
        assert q1[group]["elicitation"]["conversations"] == 2
        assert q1[group]["elicitation"]["never"]["mean"] <= q1[group]["elicitation"]["facts"]["mean"]

    # The no-question arm: one conversation per pair with no turn, its reward log p_base(gold | task) alone, and
    # the room to learn between it and the control, paired per pair.
    arms = probe(finished, iterations=[], tasks=TASKS, personas=PERSONAS, conversations=1, control=True,
                 no_questions=True)
    for split in ("A", "B", "test"):
        ns = probe_namespace("tiny", NO_QUESTIONS, split, 0)
        assert {c["turns"] for c in store.conversations(ns, 0)} == {0} and len(store.conversations(ns, 0)) == 2
        assert store.turns([c["id"] for c in store.conversations(ns, 0)]) == {c["id"]: [] for c in
                                                                               store.conversations(ns, 0)}
        control = {s["pair_id"].split("/", 2)[2]: s["logprob"] for s in store.scores(
            probe_namespace("tiny", CONTROL, split, 0), 0)}
        answer = {s["pair_id"].split("/", 2)[2]: s["logprob"] for s in store.scores(ns, 0)}
        assert arms["room"][split].mean == pytest.approx(sum(control[k] - answer[k] for k in answer) / 2, abs=1e-9)
        assert arms["no_questions"][split]["questioner_turns"] == 0
    assert _rows(finished) == {table: n * 2 + 6 for table, n in made.items()}  # the arm's one per probe pair
    # A sweep's run that differs only in training takes Q_0 (and the control) from this one, making nothing;
    # one that simulates otherwise is refused, naming what differs.
    recipe = recipe_of_run(store.get_run("tiny"))
    open_run(store, recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 3})}), "longer")
    shared = probe(finished, "longer", iterations=[], tasks=TASKS, personas=PERSONAS, conversations=1, control=True,
                   q0_from="tiny")
    assert _rows(finished) == {table: n * 2 + 6 for table, n in made.items()}

    def read(splits: dict) -> dict:  # what the probe measured; trained_on counts the probed run's own pairs
        return {g: {k: v for k, v in figures.items() if k != "trained_on"} for g, figures in splits.items()}

    assert read(shared["policies"][0]["splits"]) == read(both["policies"][0]["splits"])
    assert read(shared["control"]) == read(both["control"]) and shared["q0_run"] == "tiny"
    # A chat model the probe does not ask (added for another evaluation's Roleplayer) changes no Q_0 conversation,
    # nor do more conversations per pair in training (the probe sets its own).
    spare = {**recipe.chat_models, "spare": recipe.chat_models["smollm2"].model_copy(update={"n_ctx": 1024})}
    more = recipe.simulate.model_copy(update={"conversations_per_pair": 8})
    open_run(store, recipe.model_copy(update={"chat_models": spare, "simulate": more}), "wider")
    probe(finished, "wider", iterations=[], tasks=TASKS, personas=PERSONAS, conversations=1, q0_from="tiny")
    assert _rows(finished) == {table: n * 2 + 6 for table, n in made.items()}
    hotter = recipe.simulate.model_copy(update={"temperature": 1.2})
    open_run(store, recipe.model_copy(update={"simulate": hotter}), "hotter")
    with pytest.raises(StargateError, match="simulate.temperature"):
        probe(finished, "hotter", iterations=[], tasks=TASKS, personas=PERSONAS, conversations=1, q0_from="tiny")


def test_an_adapter_trained_elsewhere_is_probed_as_a_policy_on_the_same_pairs_and_seeds(finished, tmp_path):
    """An adapter given by name (here a copy of the run's own Q_1, as one trained elsewhere would come) makes its
    conversations under its own namespace on Q_1's pairs, seeds and Roleplayer: the copy's rewards are Q_1's pair for
    pair, so its gain over Q_0 is Q_1's and the two differ by nothing, paired. A rerun makes nothing; the name given
    to another folder, a name that reads as an iteration and a folder that is no adapter are refused, one line
    each, and nothing is made."""
    store = Store(finished)
    copy = shutil.copytree(store.training("tiny", 1)["adapter"], tmp_path / "elsewhere")
    summary = probe(finished, iterations=[1], tasks=TASKS, personas=PERSONAS, conversations=1,
                    adapters={"copy": str(copy)})
    (adapter,) = summary["adapters"]
    assert adapter["name"] == "copy" and adapter["adapter"] == str(copy.resolve())
    q1 = summary["policies"][1]["splits"]
    for split in ("A", "B", "test"):
        rewards = [{s["pair_id"].split("/", 2)[2]: s["logprob"] for s in store.scores(probe_namespace(
            "tiny", "smollm2", split, policy), 0)} for policy in (1, "copy")]
        assert rewards[0].keys() == rewards[1].keys() and len(rewards[0]) == 2
        assert [rewards[1][k] for k in rewards[0]] == pytest.approx(list(rewards[0].values()), abs=1e-4)
        made_by = {c["policy"] for c in store.conversations(probe_namespace("tiny", "smollm2", split, "copy"), 0)}
        assert made_by == {f"adapter:{copy.resolve()}"}
    for group in GROUPS:
        assert adapter["splits"][group]["gain"].mean == pytest.approx(q1[group]["gain"].mean, abs=1e-4)
        assert adapter["splits"][group]["trained_on"] is None  # trained elsewhere: not known here
    assert policy_difference(store, ("tiny", "copy"), ("tiny", 1), "smollm2")["A+B"].mean == pytest.approx(0,
                                                                                                         abs=1e-4)
    made = _rows(finished)
    assert made == {"pairs": 3 * 6, "conversations": 3 * 6, "scores": 3 * 6}
    assert probe(finished, iterations=[1], tasks=TASKS, personas=PERSONAS, conversations=1,
                 adapters={"copy": str(copy)}) == summary
    other = shutil.copytree(copy, tmp_path / "other")
    for adapters, refusal in (({"copy": str(other)}, "already holds copy made by .*elsewhere: give this"),
                              ({"2": str(copy)}, "name an adapter with a letter"),
                              ({"none": str(tmp_path)}, "is not a LoRA adapter folder")):
        with pytest.raises(StargateError, match=refusal):
            probe(finished, iterations=[1], tasks=TASKS, personas=PERSONAS, conversations=1, adapters=adapters)
    assert _rows(finished) == made

    # The command: the adapter's rows in the table, by name, after the run's policies.
    args = ["probe", "-i", "1", "--conversations", "1",
            *(a for split, n in TASKS.items() for a in ("--tasks", f"{split}={n}")),
            *(a for split, n in PERSONAS.items() for a in ("--personas", f"{split}={n}"))]
    table = cli(*args, "--adapter", f"copy={copy}", home=finished).stdout.splitlines()
    assert [line.split()[:3] for line in table[10:14]] == [["copy", group, "2" if group != "A+B" else "4"]
                                                          for group in GROUPS]
    refused = cli(*args, "--adapter", str(copy), home=finished, check=False)
    assert refused.returncode == 2 and "write it NAME=FOLDER" in refused.stderr
    assert _rows(finished) == made


def test_the_probe_command_prints_what_the_library_returns(finished, tmp_path):
    """`stargate-lite probe` is a thin shell over `probe`: its --json is the function's summary for the same
    arguments (the function's call finds the command's conversations stored), its table is that summary's, and
    --plot draws it."""
    sizes = {"A": 1, "B": 1, "test": 1}
    args = ["probe", "--iteration", "1", "--conversations", "1", "--plot", str(tmp_path / "gains.png"),
            *(a for split, n in sizes.items() for a in ("--tasks", f"{split}={n}", "--personas", f"{split}={n}"))]
    shown = json.loads(cli(*args, "--json", home=finished).stdout)
    summary = probe(finished, iterations=[1], tasks=sizes, personas=sizes, conversations=1)
    assert shown == json.loads(json.dumps(summary, default=dataclasses.asdict))
    assert [p["iteration"] for p in shown["policies"]] == [0, 1] and shown["policies"][1]["splits"]["A"]["pairs"] == 1
    assert (tmp_path / "gains.png").read_bytes().startswith(b"\x89PNG")
    table = cli(*args, home=finished).stdout.splitlines()
    assert table[0] == "learning probe: run tiny, roleplayer smollm2, reward = log p_base(gold) - 0.0 x questions"
    assert [line.split()[:2] for line in table[2:10]] == [[policy, group] for policy in ("Q_0", "Q_1")
                                                          for group in ("A", "B", "A+B", "test")]


def test_the_selection_anatomy_reads_what_an_iteration_kept_and_trained_on(finished):
    from stargate_lite.evaluation.anatomy import anatomy_table, selection_anatomy
    from stargate_lite.evaluation.audit import leakage

    a = selection_anatomy(finished, "tiny", 1)
    assert (a["pairs"], a["conversations"]) == (2, 4)
    store = Store(finished, create=False)
    trained = store.training("tiny", 1)["trained_tokens"]  # target tokens: these plus each turn's end marker
    assert 0 < sum(a["trained_tokens"].values()) <= trained
    assert a["trained_tokens"]["responses"] > 0
    # Each pair keeps its best conversation: never below the pair's mean, and the kept ones score higher.
    assert a["kept_minus_pair_mean"]["mean"] >= 0 and a["kept"]["logprob"] >= a["rest"]["logprob"]
    assert 0 <= a["kept"]["leakage"] <= 1 and 0 <= a["asking_share_of_trained"] <= 1
    # Leakage is the audit's: persona words the answers say that the question did not name.
    personas = {p["id"]: p["persona"] for p in store.pairs("tiny", 1)}
    kept = {s["conversation_id"]: personas[s["pair_id"]] for s in store.selections("tiny", 1)}
    turns = store.turns(list(kept))
    shares = [share for cid, persona in kept.items() if (share := leakage(persona, turns[cid])) is not None]
    assert a["kept"]["leakage"] == pytest.approx(sum(shares) / len(shares))
    assert anatomy_table(a).startswith("run tiny, iteration 1: 2 pairs, 4 conversations")
    # What a told fact is worth is read from every pair's conversations, the kept and the rest.
    assert [m["task"] for m in a["fact_moments"]] == sorted(p["task_id"] for p in store.pairs("tiny", 1))
    assert "a fact told, within a pair: " in anatomy_table(a)


def test_a_facts_worth_is_the_within_pair_slope_of_the_log_prob_on_the_facts_told():
    """Each pair has its own level (an easy task scores high whatever is told), which the within-pair slope
    ignores: log p(gold) = level + 2.5 x facts gives 2.5 exactly, every resample too; pairs whose conversations
    were all told as much say nothing about it and are left out."""
    from stargate_lite.evaluation.anatomy import fact_worth, pair_fact_moments

    levels = {("t1", "p1"): -100.0, ("t1", "p2"): -300.0, ("t2", "p1"): -50.0, ("t2", "p2"): -400.0}
    told = {("t1", "p1"): [0, 1, 3], ("t1", "p2"): [2, 0], ("t2", "p1"): [1, 1, 1], ("t2", "p2"): [4, 5, 6, 5]}
    moments = [pair_fact_moments(task, persona, [levels[task, persona] + 2.5 * f for f in facts], facts)
               for (task, persona), facts in told.items()]
    worth = fact_worth(moments, resamples=200)
    assert worth["mean"] == pytest.approx(2.5) and worth["low"] == pytest.approx(2.5)
    assert worth["high"] == pytest.approx(2.5) and (worth["pairs"], worth["tasks"], worth["personas"]) == (3, 2, 2)
    # Pooled levels would have said otherwise: across pairs, more facts went with lower log-probs here.
    assert fact_worth([pair_fact_moments("t", "p", [levels[k] + 2.5 * f for k, fs in told.items() for f in fs],
                                         [f for fs in told.values() for f in fs])])["mean"] < 0
    assert fact_worth([pair_fact_moments("t", "p", [-1.0, -2.0], [1, 1])]) is None
