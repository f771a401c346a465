"""The learning probe: does training raise the reward it optimises, on the splits it trained on and on the test
split, and by asking or by answering?

For each policy Q_eta of a run (0 = the base model) and each split A, B and test, fresh conversations on a fixed
probe set of pairs (the split's first tasks x personas, the run's own pairs among them), under the same seeds for
every policy, scored as training scores them: log p_base(gold | task, conversation), less reward.question_cost
per question. A pair's reward is the mean over its conversations; Q_eta's gain on a pair is its reward there less
Q_0's, and the mean gain gets a 95% interval from the crossed bootstrap over tasks and personas
(intervals.crossed_bootstrap): the pairs share both, so they are not independent draws.

What kind of gain it is: the share of Questioner turns that ask (prompts.is_question), and the share that hold
response text, RESPONSE_WORDS or more words outside their questions. A Questioner that writes the answer into
its turns raises log p(gold) without eliciting anything, which the reward alone cannot tell apart. And what the
conversations drew out (elicitation.py): per conversation, the persona's facts told in reply to a turn that asked
for them (active), told unasked (passive) and never told, counted with the run's gate for every user.

The positive control (`control=True`) shows the probe can see a gain: Q_0 again, with a Roleplayer that recites
its persona whenever it is asked anything (PersonaReciter), so the conversations hold what a perfect interview
would elicit. Each gain comes with the smallest gain the probe detects at its size: 2.8 standard errors (a
two-sided 5% test with 80% power), the standard error read from the gain's own interval.

A LoRA adapter trained elsewhere (TRL's GRPOTrainer on the environment, say) is probed beside the run's policies
(`adapters`, by a name): the same pairs, seeds and Roleplayer, paired with Q_0 as they are.

Each (split, policy) is an evaluation namespace of its own ("RUN#probe:ROLEPLAYER:SPLIT:ETA", ETA the iteration or
an adapter's name; iteration 0), so
every policy meets the same turn counts, the same sampling seeds and the same Roleplayer seeds, and a rerun
reuses what is stored: Q_0's conversations are made once. A sweep's runs that differ only in what happens after
simulation (training, responses, reward, evaluation) make the same Q_0 conversations, so one run's probe can use
another's (`q0_from`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..engines.chat_models import ChatFailure, ChatModels, Sampling, preflight
from ..engines.gate import Gate
from ..engines.questioner import Questioner, SharedBase
from ..errors import StargateError
from ..progress import Progress
from ..prompts import is_question
from ..recipe import SPLITS, Recipe
from ..runs import (
    adapter_policy,
    check_adapter,
    check_chat_model,
    execution_only,
    pick_run,
    policies,
    recipe_changes,
    recipe_of_run,
    run_dir,
    trained_iterations,
)
from ..stages.data import make_pairs, prepare_data, usable_pairs
from ..stages.score import score_stage
from ..stages.simulate import Roleplayers, pair_facts, recipe_gate, simulate, user_gate
from ..store import Store
from ..store.reward import RewardTerms, reward
from .elicitation import conversation_elicitation, elicitation
from .evaluate import closing_questioner
from .intervals import Interval, crossed_bootstrap

RESPONSE_WORDS = 8  # about one sentence of content besides the question
CONTROL = "recite"  # the positive control's Roleplayer, in its namespace's name
NO_QUESTIONS = "answer-at-once"  # the no-question arm: Q_0 answering at once, no Roleplayer (its namespace's name)
DETECTABLE_SE = 2.8  # z(0.975) + z(0.80): the gain a two-sided 5% test finds 80% of the time, in standard errors
PROBE_SEED = 104_729  # added to the run's seed: conversations apart from training's and evaluation's
_SENTENCE = re.compile(r"[^.!?]*[.!?]+|[^.!?]+$")
_ADAPTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# Recipe sections that act only after simulation: runs that differ in nothing else make the same Q_0 conversations.
AFTER_SIMULATION = ("name", "description", "reward", "respond", "train", "eval", "judge")
# The probe set: per split, its first tasks and personas (48 training-distribution pairs and 12 test pairs).
PROBE_TASKS = {"A": 6, "B": 6, "test": 6}
PROBE_PERSONAS = {"A": 4, "B": 4, "test": 2}
GROUPS = ("A", "B", "A+B", "test")  # the splits, and A and B taken together: the training distribution


def probe_namespace(run_id: str, roleplayer: str, split: str, policy: int | str) -> str:
    """The namespace of one policy's probe on one split: `policy` is an iteration, or an adapter's name."""
    return f"{run_id}#probe:{roleplayer}:{split}:{policy}"


def _policy_namespace(run_id: str, q0_run: str, roleplayer: str, split: str, policy: int | str) -> str:
    """Q_0's probe (and the control's) lives under q0_run, each trained policy's (and adapter's) under its own run."""
    return probe_namespace(q0_run if policy == 0 else run_id, roleplayer, split, policy)


def check_probe_adapters(store: Store, run_id: str, roleplayer: str, adapters: dict[str, str]) -> dict[str, str]:
    """Each adapter by name, its folder checked and made absolute. A name is a word that is not an iteration; one
    probed before with another folder is refused (its conversations would be another policy's)."""
    out = {}
    for name, folder in adapters.items():
        if not _ADAPTER_NAME.fullmatch(name):
            raise StargateError(f"--adapter {name}={folder}: name an adapter with a letter, then letters, digits, "
                                "'-', '_' or '.' (it names the adapter's probe in the store)")
        check_adapter(folder)
        out[name] = str(Path(folder).resolve())
        for split in SPLITS:
            made = {c["policy"] for c in store.conversations(probe_namespace(run_id, roleplayer, split, name), 0)}
            other = made - {adapter_policy(out[name])}
            if other:
                raise StargateError(f"--adapter {name}: run {run_id}'s probe already holds {name} made by "
                                    f"{min(other).removeprefix('adapter:')}: give this adapter another name")
    return out


def response_words(text: str) -> int:
    """Words of a Questioner turn outside its questions (sentences that end in '?')."""
    return sum(len(s.split()) for s in _SENTENCE.findall(text) if not s.strip().endswith("?"))


class PersonaReciter:
    """The positive control's Roleplayer: whatever it is asked, it answers with its persona's text (simulate then
    keeps the first max_answer_sentences sentences, as it does for any answer). It finds its persona among the
    probe's in the system text it is given."""

    name = CONTROL

    def __init__(self, personas: list[str]):
        self.personas = sorted(set(personas), key=len, reverse=True)  # a persona inside another: the longer first

    def complete_each(self, conversations: list[list[dict]], sampling: Sampling) -> list[str | ChatFailure]:
        answers: list[str | ChatFailure] = []
        for messages in conversations:
            system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
            found = next((p for p in self.personas if p in system), None)
            answers.append(found if found is not None else ChatFailure("no probe persona in the Roleplayer's prompt"))
        return answers

    def choice_logprobs(self, conversations, choices):
        raise NotImplementedError("the persona reciter only answers questions")


def split_sizes(items: list[str], option: str = "--tasks") -> dict[str, int]:
    """Per split, a count written SPLIT=N (`--tasks A=8 --tasks test=4`), as the command line gives it."""
    sizes = {}
    for item in items:
        split, _, n = item.partition("=")
        if not n.isdigit():
            raise StargateError(f"{option} {item}: expected SPLIT=N with N a whole number, e.g. {option} A=6")
        sizes[split] = int(n)
    return sizes


def probe_sizes(tasks: dict[str, int] | None, personas: dict[str, int] | None) -> tuple[dict, dict]:
    """The probe set's tasks and personas per split: the defaults (PROBE_TASKS, PROBE_PERSONAS) with the given
    splits' counts instead; a split that is not one, or a count under 1, is refused."""
    for option, given in (("--tasks", tasks or {}), ("--personas", personas or {})):
        for split, n in given.items():
            if split not in SPLITS:
                raise StargateError(f"{option} {split}={n}: unknown split {split!r} (choose {', '.join(SPLITS)})")
            if n < 1:
                raise StargateError(f"{option} {split}={n}: the probe needs at least one per split")
    return {**PROBE_TASKS, **(tasks or {})}, {**PROBE_PERSONAS, **(personas or {})}


def probe_recipe(recipe: Recipe, tasks: dict[str, int], personas: dict[str, int], conversations: int) -> Recipe:
    """The run's recipe with the probe's data sizes and conversations per pair; everything else as trained."""
    data = recipe.data.model_copy(update={"tasks": recipe.data.tasks.model_copy(update=tasks),
                                          "personas": recipe.data.personas.model_copy(update=personas)})
    simulate_config = recipe.simulate.model_copy(update={"conversations_per_pair": conversations})
    return recipe.model_copy(update={"data": data, "simulate": simulate_config})


def check_q0_source(store: Store, run_id: str, recipe: Recipe, q0_from: str, roleplayer: str) -> None:
    """Refuse to take Q_0's probe conversations from a run whose recipe would make other ones. Chat models the
    probe does not ask (neither its Roleplayer nor the Oracle: one added for `eval --roleplayer`, say) make none,
    nor does simulate.conversations_per_pair (the probe sets its own)."""
    source = recipe_of_run(pick_run(store, q0_from))

    def makes_other(key: str) -> bool:
        if key == "simulate.conversations_per_pair":
            return False
        section, _, rest = key.partition(".")
        if section == "chat_models" and rest.partition(".")[0] not in {roleplayer, recipe.roles.oracle}:
            return False
        return section not in AFTER_SIMULATION and not execution_only(key)

    different = [k for k in recipe_changes(source, recipe) if makes_other(k)]
    if different:
        raise StargateError(f"run {q0_from!r} makes other Q_0 conversations than run {run_id!r} (its recipe differs "
                            f"in {', '.join(different[:5])}): probe without taking Q_0 from it")


def check_probe_size(store: Store, ns: str, sized: Recipe, split: str, conversations: int) -> None:
    """Refuse to read or grow a probe made at other sizes as if it were this one. Its pairs, and where each falls
    among the chunks whose seeds its conversations were drawn from, belong to the size it was made at, so it is
    another probe, not the start of this one (and a finished one would silently stand in for it)."""
    made_pairs = store.pairs(ns, 0)
    if not made_pairs:
        return
    try:
        asked = {f"{t['id']}|{p['id']}" for t, p in usable_pairs(store, sized, split)}
    except (StargateError, KeyError):  # the store holds less data or fewer golds than the size asked: not this one
        asked = None
    samples = [c["sample"] for c in store.conversations(ns, 0)]
    made_conversations = max(samples) + 1 if samples else conversations
    if {f"{p['task_id']}|{p['persona_id']}" for p in made_pairs} == asked and made_conversations == conversations:
        return
    n_tasks, n_personas = len({p["task_id"] for p in made_pairs}), len({p["persona_id"] for p in made_pairs})
    raise StargateError(
        f"the probe stored as {ns!r} was made with {n_tasks} tasks x {n_personas} personas of split {split} and "
        f"{made_conversations} conversation(s) per pair, not the {getattr(sized.data.tasks, split)} x "
        f"{getattr(sized.data.personas, split)} and {conversations} asked; its pairs and seeds belong to that "
        f"size: ask with it (--tasks {split}={n_tasks} --personas {split}={n_personas} --conversations "
        f"{made_conversations}), or probe the new size in a copy of the home")


def probe(home: Path | str | None = None, run_id: str | None = None, iterations: list[int] | None = None,
          tasks: dict[str, int] | None = None, personas: dict[str, int] | None = None, conversations: int = 3,
          roleplayer: str | None = None, control: bool = False, q0_from: str | None = None,
          progress: Progress | None = None, no_questions: bool = False,
          adapters: dict[str, str] | None = None) -> dict:
    """Run (or resume) the probe for a run's policies and return its summary (`summarize_probe`).

    tasks / personas: per split, how many of the split's first tasks and personas make the probe's pairs
    (PROBE_TASKS and PROBE_PERSONAS for the splits not given: A and B 6 x 4, test 6 x 2, so 48 training pairs
    and 12 test pairs). Missing personas and golds are written by the run's Oracle, as the data stage writes
    them. q0_from: another run of the home whose recipe
    differs only after simulation; Q_0's conversations (and the control's) are read from its probe, or made
    there. no_questions: also the no-question arm, each pair's conversation with no turn at all (Q_0 made to
    answer at once; its reward is log p_base(gold | task), one conversation per pair since nothing is sampled):
    the reward of not asking, below which asking has lost and up to the control's the room to learn lies.
    adapters: LoRA adapter folders by a name (trained on the run's base Questioner), each probed as a policy of the
    run, its gain paired with Q_0's."""
    tasks, personas = probe_sizes(tasks, personas)
    store = Store(home, create=False)
    run = pick_run(store, run_id)
    run_id, recipe = run["id"], recipe_of_run(run)
    q0_run = q0_from or run_id
    roleplayer = roleplayer or recipe.roles.main_roleplayer
    check_chat_model(recipe, run_id, "--roleplayer", roleplayer)
    if q0_run != run_id:
        check_q0_source(store, run_id, recipe, q0_run, roleplayer)
    if conversations < 1:
        raise StargateError("the probe needs at least one conversation per pair")
    wanted = policies(store, run_id, iterations)
    adapters = check_probe_adapters(store, run_id, roleplayer, adapters or {})
    sized = probe_recipe(recipe, tasks, personas, conversations)
    # (split, answering Roleplayer, policy): the control is Q_0 with the persona reciter.
    runs = [(split, roleplayer, it) for split in SPLITS for it in [*wanted, *adapters]]
    runs += [(split, CONTROL, 0) for split in SPLITS] if control else []
    runs += [(split, NO_QUESTIONS, 0) for split in SPLITS] if no_questions else []
    namespace = functools.partial(_policy_namespace, run_id, q0_run)
    for split, rp, it in runs:
        check_probe_size(store, namespace(rp, split, it), sized, split, 1 if rp == NO_QUESTIONS else conversations)
    todo = [(split, rp, it) for split, rp, it in runs if not store.stage_done(namespace(rp, split, it), 0, "probe")]
    progress = progress or Progress()
    if todo:
        preflight(recipe.chat_models, {roleplayer, recipe.roles.oracle})

    @functools.cache
    def models() -> SharedBase:
        return SharedBase(Questioner(recipe.questioner, store.home))

    gate = functools.cache(lambda: user_gate(sized.simulate, store.home))

    with progress, ChatModels(recipe.chat_models, store.home, run_dir(store, run_id)) as chat, \
            closing_questioner(models):
        if todo:
            prepare_data(store, sized, lambda: chat.get(recipe.roles.oracle), progress)
        for split, rp, it in todo:
            ns = namespace(rp, split, it)
            make_pairs(store, sized, ns, 0, split, f"{recipe.seed}/probe")
            get = chat.get
            if rp == CONTROL:
                get = {CONTROL: PersonaReciter([p["persona"] for p in store.pairs(ns, 0)])}.__getitem__
            if isinstance(it, str):
                adapter, label = adapters[it], adapter_policy(adapters[it])
            else:
                adapter = store.training(run_id, it)["adapter"] if it else None
                label = f"iteration-{it}" if it else "base"
            with models().policy(adapter) as policy:
                if rp == NO_QUESTIONS:
                    store.save_conversations([
                        {"id": f"{p['id']}#000", "run_id": ns, "iteration": 0, "pair_id": p["id"], "sample": 0,
                         "turns": 0, "policy": "base", "answer": None, "answer_cut": None, "roleplayer": None,
                         "messages": []} for p in store.pairs(ns, 0)])
                    score_stage(store, ns, 0, policy, models().questioner, recipe.score, progress)
                    store.mark_stage(ns, 0, "probe")
                    continue
                simulate(store, ns, 0, policy, label, models().questioner,
                         Roleplayers({rp: 1.0}, get, recipe.seed, None if rp == CONTROL else gate()),
                         sized.simulate, recipe.seed + PROBE_SEED,
                         progress)
                score_stage(store, ns, 0, policy, models().questioner, recipe.score, progress)
            store.mark_stage(ns, 0, "probe")
    return summarize_probe(store, run_id, roleplayer, wanted, recipe.reward.question_cost, control, q0_run,
                           gate() or recipe_gate(sized.simulate, store.home), no_questions, adapters)


def _policy_split(store: Store, ns: str, question_cost: float,
                  gate: Gate | None = None) -> tuple[dict[str, tuple[str, str, float]], dict]:
    """Per pair key (task, persona, mean reward); the Questioner's turns, those that ask, those with response text,
    and each conversation's elicitation counts ("elicited", with a gate)."""
    conversations = {c["id"]: c for c in store.conversations(ns, 0)}
    pairs = {p["id"]: p for p in store.pairs(ns, 0)}
    rewards: dict[str, list[float]] = {}
    terms = RewardTerms(question_cost)  # the probe reports the gold's log-prob: a fact credit is not its measure
    for s in store.scores(ns, 0):
        questions = conversations[s["conversation_id"]]["questions"] or 0
        rewards.setdefault(s["pair_id"], []).append(reward(s["logprob"], questions, terms))
    by_key = {}
    for pair_id, values in rewards.items():
        p = pairs[pair_id]
        by_key[f"{p['task_id']}|{p['persona_id']}"] = (p["task_id"], p["persona_id"], sum(values) / len(values))
    stored = store.turns(list(conversations))
    turns = [t["text"] for ts in stored.values() for t in ts if t["role"] == "questioner"]
    counts = {"questioner_turns": len(turns), "asking": sum(map(is_question, turns)),
              "response_text": sum(response_words(t) >= RESPONSE_WORDS for t in turns),
              "elicited": [conversation_elicitation(stored[cid], pair_facts(pairs[c["pair_id"]]), gate)
                           for cid, c in conversations.items()] if gate else []}
    return by_key, counts


def summarize_probe(store: Store, run_id: str, roleplayer: str, iterations: list[int], question_cost: float = 0.0,
                    control: bool = False, q0_run: str | None = None, gate: Gate | None = None,
                    no_questions: bool = False, adapters: dict[str, str] | None = None) -> dict:
    """The probe as stored: per policy (each adapter and the control too) and split, the mean reward, the gain over Q_0 paired per
    pair with its crossed-bootstrap interval and the smallest gain detectable at that size, the asking and
    response-text shares, elicitation (elicitation.py: facts told asked, told unasked and never, per conversation;
    None without a gate), and how many probe pairs the run trained on. A and B are also taken together ("A+B"):
    the training distribution's pairs, twice as many as either split's. With the no-question arm, "room": per
    group, the control's reward less the no-question arm's, paired per pair with its interval: how far a perfect
    interview lifts the reward above not asking at all, the most that learning to ask could gain."""
    trained_on = {f"{p['task_id']}|{p['persona_id']}" for it in trained_iterations(store, run_id)
                  for p in store.pairs(run_id, it)}
    q0_run = q0_run or run_id
    namespace = functools.partial(_policy_namespace, run_id, q0_run)
    base = {split: _policy_split(store, namespace(roleplayer, split, 0), question_cost)[0] for split in SPLITS}

    def splits_of(rp: str, it: int | str, paired: bool) -> dict:
        measured = {split: _policy_split(store, namespace(rp, split, it), question_cost, gate) for split in SPLITS}
        out = {}
        for name, members in {**{split: (split,) for split in SPLITS}, "A+B": ("A", "B")}.items():
            rewards = {k: v for m in members for k, v in measured[m][0].items()}
            reference = {k: v for m in members for k, v in base[m].items()}
            counted = {c: sum(measured[m][1][c] for m in members)
                       for c in ("questioner_turns", "asking", "response_text")}
            turns = counted["questioner_turns"]
            keys = sorted(rewards.keys() & reference.keys())
            gain = None
            if paired and keys:
                gain = crossed_bootstrap([rewards[k][2] - reference[k][2] for k in keys],
                                         [rewards[k][0] for k in keys], [rewards[k][1] for k in keys])
            out[name] = {
                # An adapter's training is not the run's: what it trained on is not known here.
                "pairs": len(rewards), "trained_on": None if isinstance(it, str) else len(rewards.keys() & trained_on),
                "reward": sum(r for *_, r in rewards.values()) / len(rewards) if rewards else None,
                "gain": gain, "detectable": detectable(gain) if gain else None, "questioner_turns": turns,
                "asking_share": counted["asking"] / turns if turns else None,
                "response_text_share": counted["response_text"] / turns if turns else None,
                "elicitation": elicitation([n for m in members for n in measured[m][1]["elicited"]])
                if gate else None,
            }
        return out

    room = None
    if control and no_questions:
        room = {}
        arms = [{split: _policy_split(store, namespace(rp, split, 0), question_cost)[0] for split in SPLITS}
                for rp in (CONTROL, NO_QUESTIONS)]
        for name, members in {**{split: (split,) for split in SPLITS}, "A+B": ("A", "B")}.items():
            recite, answer = ({k: v for m in members for k, v in arm[m].items()} for arm in arms)
            keys = sorted(recite.keys() & answer.keys())
            room[name] = crossed_bootstrap([recite[k][2] - answer[k][2] for k in keys], [recite[k][0] for k in keys],
                                           [recite[k][1] for k in keys]) if keys else None
    return {"run": run_id, "q0_run": q0_run, "roleplayer": roleplayer, "question_cost": question_cost,
            "policies": [{"iteration": it, "splits": splits_of(roleplayer, it, it != 0)} for it in iterations],
            "adapters": [{"name": name, "adapter": folder, "splits": splits_of(roleplayer, name, True)}
                         for name, folder in (adapters or {}).items()],
            "control": splits_of(CONTROL, 0, True) if control else None,
            "no_questions": splits_of(NO_QUESTIONS, 0, True) if no_questions else None, "room": room}


def policy_difference(store: Store, policy: tuple[str, int | str], other: tuple[str, int | str], roleplayer: str,
                      question_cost: float = 0.0) -> dict[str, Interval | None]:
    """Per group (A, B, test, A+B), one probed policy (run, iteration or adapter name) less another, paired per
    probe pair, with the crossed-bootstrap interval: how two trained policies compare under the same seeds (a
    sweep's runs of one home, two iterations of a run, or an adapter against an iteration). None where the two
    share no probed pair."""
    measured = [{split: _policy_split(store, probe_namespace(run, roleplayer, split, it), question_cost)[0]
                 for split in SPLITS} for run, it in (policy, other)]
    out = {}
    for name, members in {**{split: (split,) for split in SPLITS}, "A+B": ("A", "B")}.items():
        a, b = ({k: v for m in members for k, v in split_rewards[m].items()} for split_rewards in measured)
        keys = sorted(a.keys() & b.keys())
        out[name] = crossed_bootstrap([a[k][2] - b[k][2] for k in keys], [a[k][0] for k in keys],
                                      [a[k][1] for k in keys]) if keys else None
    return out


def detectable(gain: Interval) -> float:
    """The smallest true gain this probe finds (5% two-sided, 80% power), from the gain's interval read as
    +-z(1 - (1 - confidence) / 2) standard errors."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - gain.confidence) / 2)
    return DETECTABLE_SE * (gain.high - gain.low) / (2 * z)


def probe_table(summary: dict) -> str:
    """The probe's summary as the text table `stargate-lite probe` prints: one row per policy (and arm) and group."""
    q0 = f" (Q_0 from run {summary['q0_run']})" if summary.get("q0_run", summary["run"]) != summary["run"] else ""
    title = (f"learning probe: run {summary['run']}{q0}, roleplayer {summary['roleplayer']}, "
             f"reward = log p_base(gold) - {summary['question_cost']} x questions")
    header = (f"{'policy':<8} {'split':<5} {'pairs':>5} {'trained':>7} {'reward':>9}  "
              f"{'gain over Q_0 [95% interval]':<32} {'detects':>7} {'asks':>6} {'resp.':>6} {'active':>6} "
              f"{'passive':>7}")
    rows = [(f"Q_{p['iteration']}", p["splits"]) for p in summary["policies"]]
    rows += [(a["name"], a["splits"]) for a in summary.get("adapters") or []]
    rows += [("control", summary["control"])] if summary.get("control") else []
    rows += [("no-q", summary["no_questions"])] if summary.get("no_questions") else []
    lines = [title, header]
    for label, splits in rows:
        for group in GROUPS:
            s = splits[group]
            gain = s["gain"]
            shown = (f"{gain.mean:+.2f} [{gain.low:+.2f}, {gain.high:+.2f}]{' *' if gain.excludes_zero() else ''}"
                     if gain else "-")
            detects = f"{s['detectable']:.2f}" if s["detectable"] is not None else "-"
            reward = f"{s['reward']:.2f}" if s["reward"] is not None else "-"
            share = [f"{s[k]:.2f}" if s[k] is not None else "-" for k in ("asking_share", "response_text_share")]
            elicited = s.get("elicitation")
            facts = [f"{elicited[k]['mean']:.2f}" if elicited and elicited[k]["mean"] is not None else "-"
                     for k in ("active", "passive")]
            trained = s["trained_on"] if s["trained_on"] is not None else "-"
            lines.append(f"{label:<8} {group:<5} {s['pairs']:>5} {trained:>7} {reward:>9}  "
                         f"{shown:<32} {detects:>7} {share[0]:>6} {share[1]:>6} {facts[0]:>6} {facts[1]:>7}")
    lines.append("trained: probe pairs the run trained on; * interval excludes 0; detects: the smallest gain found "
                 "80% of the time (5% two-sided); asks: Questioner turns that ask; resp.: turns with response text; "
                 "active, passive: the persona's facts per conversation told when asked, told unasked; "
                 "control: Q_0 with a Roleplayer that recites its persona; no-q: Q_0 answering at once, no question"
                 + ("; other rows: the adapters given by name" if summary.get("adapters") else ""))
    for group, room in (summary.get("room") or {}).items():
        if room:
            lines.append(f"room to learn, {group}: control less no-q {room.mean:+.2f} [{room.low:+.2f}, {room.high:+.2f}]")
    return "\n".join(lines)


def plot_probe(summary: dict, path: Path) -> Path:
    """Each trained policy's gain over Q_0 per iteration, A+B and test, with its interval, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for group in ("A+B", "test"):
        points = [(p["iteration"], p["splits"][group]["gain"]) for p in summary["policies"] if p["iteration"]]
        xs = [0, *(i for i, _ in points)]
        means = [0.0, *(g.mean for _, g in points)]
        errors = [[0.0, *(g.mean - g.low for _, g in points)], [0.0, *(g.high - g.mean for _, g in points)]]
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=4, label=f"{group} pairs")
    ax.set_xticks(sorted({0, *(p["iteration"] for p in summary["policies"])}))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("iteration (policy Q_eta)")
    ax.set_ylabel("gain in log p(gold) over Q_0, per pair")
    ax.set_title(f"learning probe: run {summary['run']} (95% crossed bootstrap)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
