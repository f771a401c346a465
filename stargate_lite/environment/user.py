"""The STaR-GATE user as an environment that a trainer drives (TRL through environment/trl.py, a loop of one's
own): the simulated user and the reward, without the project's trainer.

An episode is one conversation on one of a split's (task, persona) pairs, played as the simulate stage plays it
but with the Questioner's turns given from outside. `reset` draws a pair and returns the Questioner's opening
messages as the policy sees them (prompts.questioner_messages) with the pair's turn limit; `step` takes one
Questioner turn and answers it as the recipe's Roleplayer, free or gated, whatever its backend (the simulate
stage's own roleplayer_turn: what the user sees, the seed, the trim). The episode ends on the Questioner's final
response (simulate.turns policy: a turn that is not a question, prompts.is_question) or at the pair's turn limit.

Its reward is the project's, computed as the score stage computes it: log p_base(gold | task, conversation) under
the base Questioner (stages/score.py, score_golds), less reward.question_cost per question, plus
reward.fact_credit per fact a gated user was told (store/reward.py). With
reward.per_turn the gold's log-prob after each turn but the last comes too: the turn scores the score stage stores,
from which rloo and grpo reckon each turn's reward-to-go (store/reward.py's rewards_to_go, in info too). Beside it,
`info` holds what a trainer logs: the questions asked, what the conversation drew out of the persona
(evaluation/elicitation.py, counted with the recipe's gate for a free user too, as eval counts), the user's tokens
and the Questioner's counted apart (in the Questioner's tokenizer, the efficiency metrics' unit), which Roleplayer
answered and, for a gated user, the facts it was given for each reply.

The pairs live under a namespace of the environment's own, "NAME#env:SPLIT" (NAME a run's id, or the recipe's
name), made as evaluation makes its own (stages/data.py: missing personas and golds written by the recipe's
Oracle, then make_pairs with turn limits drawn from the recipe's seed): every episode and every environment of the
home meets the same pairs with the same limits. With `record`, each finished episode is stored there, its
conversation, turns, score and turn scores in one transaction per batch, where browse, the audit and
`export --data` of the run NAME read them.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ..engines.chat_models import ChatFailure, ChatModels, preflight
from ..engines.gate import Gate, embedder_source
from ..engines.questioner import Questioner
from ..errors import StargateError
from ..evaluation.elicitation import conversation_elicitation
from ..progress import Progress
from ..prompts import is_question, questioner_messages
from ..recipe import SPLITS, Recipe
from ..runs import environment_namespace, pick_run, recipe_of_run, run_dir
from ..stages.data import make_pairs, prepare_data, training_turns_seed
from ..stages.score import base_weights, score_golds
from ..stages.simulate import (
    Roleplayers,
    conversation_id,
    pair_facts,
    recipe_gate,
    roleplayer_turn,
    user_gate,
)
from ..store import Store
from ..store.reward import facts_told, reward, rewards_to_go


@dataclass
class Episode:
    """One conversation in play. `messages` are its turns as the simulate stage keeps them ({role, text, ...});
    once `done`, `reward` and `info` hold its result (UserEnvironment.step says what info holds)."""

    id: str
    pair: dict
    sample: int
    seed: int
    roleplayer: str
    messages: list[dict] = field(default_factory=list)
    answer: str | None = None
    answer_cut: int | None = None
    done: bool = False
    reward: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def turns(self) -> int:
        """Question-and-answer turns taken."""
        return len(self.messages) // 2


@dataclass(frozen=True)
class Step:
    """What a step returns: the Questioner's next observation (None once the episode is done), the reward (at the
    end only), whether the episode is done, and info."""

    observation: dict | None
    reward: float | None
    done: bool
    info: dict


class UserEnvironment:
    """The split's pairs of a recipe in a home, played one Questioner turn at a time against the recipe's Roleplayer.

        env = UserEnvironment(load_recipe("tiny"), "my-home", split="A")   # or UserEnvironment.of_run("my-home")
        observation = env.reset(pair=0)            # {"messages": [...], "turn": 0, "turns": the pair's limit}
        step = env.step("What do you cook most weeks?")
        ...                                        # until step.done; then step.reward and step.info

    roleplayer: answer with this chat model of the recipe instead of roles.roleplayer's draw. record: store each
    finished episode under the environment's namespace. policy: the name its conversations are stored under (the
    Questioner is the caller's). name: the namespace's NAME (default: the recipe's name); a recipe with other data
    or turn settings than the one that first drew a namespace's pairs needs a name of its own, since pairs are
    drawn once (one drawn otherwise is refused). turns_of: draw each pair's turn limit as training iteration
    `turns_of` draws it, so the episodes meet the pairs and turn limits that iteration's simulate stage played, at
    the same Roleplayer calls per conversation (to set a trainer beside the run's own iteration); by default the
    environment draws its own. Missing personas and golds are written by the recipe's Oracle first, with progress
    bars.

    Several episodes can be played at once (`start`, `step_many`: one Roleplayer request per turn for all of
    them), and finished conversations scored in one batch (`score_many`). One recording environment per home at a
    time: a conversation id already stored is refused, not overwritten."""

    def __init__(self, recipe: Recipe, home: Path | str | None = None, split: str = "A", *, name: str | None = None,
                 roleplayer: str | None = None, record: bool = False, policy: str = "external",
                 turns_of: int | None = None, progress: Progress | None = None):
        if split not in SPLITS:
            raise StargateError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        if roleplayer is not None and roleplayer not in recipe.chat_models:
            raise StargateError(f"roleplayer {roleplayer!r} is not a chat model of the recipe: choose one of "
                                f"{', '.join(sorted(recipe.chat_models))}")
        self.recipe, self.split, self.record, self.policy = recipe, split, record, policy
        self.store = Store(home)
        self.name = name or recipe.name
        self.namespace = environment_namespace(self.name, split)
        self.decide = recipe.simulate.turns == "policy"
        weights = {roleplayer: 1.0} if roleplayer else recipe.roles.roleplayer_weights
        embedder_source(recipe.simulate.gate.model)  # the gate counts elicitation for a free user too
        preflight(recipe.chat_models, {*weights, recipe.roles.oracle})
        has_run = self.store.get_run(self.name) is not None
        self.chat = ChatModels(recipe.chat_models, self.store.home, run_dir(self.store, self.name) if has_run else None)
        try:
            with progress or Progress() as bars:
                prepare_data(self.store, recipe, lambda: self.chat.get(recipe.roles.oracle), bars)
            drawn = make_pairs(self.store, recipe, self.namespace, 0, split,
                               training_turns_seed(recipe, turns_of) if turns_of else f"{recipe.seed}/env")
            self.pairs = self.store.pairs(self.namespace, 0)
            if [(p["id"], p["turns"]) for p in self.pairs] != [(p["id"], p["turns"]) for p in drawn]:
                raise StargateError(f"the store's {self.namespace} holds pairs drawn with other data or turn limits "
                                    "than these: give the environment a name of its own (name=...)")
            self.questioner = Questioner(recipe.questioner, self.store.home)
        except BaseException:
            self.chat.close()
            raise
        self.gate = user_gate(recipe.simulate, self.store.home)  # None: a free user
        self.roleplayers = Roleplayers(weights, self.chat.get, recipe.seed, self.gate)
        self._samples = Counter({c["pair_id"]: c["sample"] + 1 for c in self.store.conversations(self.namespace, 0)})
        self._started = 0
        self.episode: Episode | None = None

    @classmethod
    def of_run(cls, home: Path | str | None = None, run_id: str | None = None, split: str = "A",
               **options) -> UserEnvironment:
        """The environment of a finished run (the latest by default): its recipe, its namespace "RUN#env:SPLIT"
        (unless options name another)."""
        store = Store(home, create=False)
        run = pick_run(store, run_id)
        return cls(recipe_of_run(run), store.home, split, **{"name": run["id"], **options})

    def close(self) -> None:
        """Stop the servers the Roleplayers and the Questioner started, if any."""
        self.chat.close()
        self.questioner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models, loaded on first use ----------------------------------------------------------------------------
    @functools.cached_property
    def model(self):
        """The base Questioner that scores the gold (Q_0, as the score stage scores)."""
        return self.questioner.engine_policy(None)

    @functools.cached_property
    def elicitation_gate(self) -> Gate:
        """The gate that counts elicitation: the gated user's own, or the recipe's for a free user (as eval)."""
        return self.gate or recipe_gate(self.recipe.simulate, self.store.home)

    @functools.cached_property
    def context(self) -> int | None:
        """The Questioner's context in tokens (its model's max_position_embeddings), None where it names none."""
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(self.questioner.source), "max_position_embeddings", None)

    # -- episodes -----------------------------------------------------------------------------------------------
    def start(self, pair: int | None = None, seed: int | None = None) -> Episode:
        """A new episode on pair number `pair` of `pairs`, or one drawn with `seed`. The seed also seeds the
        Roleplayer's sampling (as a chunk's seed does in the simulate stage); without one, each episode's is drawn
        from the recipe's seed and how many episodes this environment started."""
        if seed is None:
            seed = random.Random(f"{self.recipe.seed}/env/{self._started}").randrange(2**31)
        self._started += 1
        if pair is None:
            pair = random.Random(seed).randrange(len(self.pairs))
        if not 0 <= pair < len(self.pairs):
            raise StargateError(f"pair {pair}: split {self.split} has {len(self.pairs)} pairs (0 to "
                                f"{len(self.pairs) - 1})")
        chosen = self.pairs[pair]
        sample = self._samples[chosen["id"]]
        self._samples[chosen["id"]] += 1
        cid = conversation_id(chosen["id"], sample)
        return Episode(cid, chosen, sample, seed, self.roleplayers.name_for(cid))

    def opening(self, pair: int) -> list[dict]:
        """The Questioner's opening messages on pair number `pair`: the first observation of its episodes."""
        p = self.pairs[pair]
        return questioner_messages(p["persona_name"], p["task"], [], final=False, decide=self.decide,
                                   instruction_text=self.recipe.simulate.instruction)

    def observation(self, episode: Episode) -> dict:
        """What the Questioner reads for its next turn: its messages as the policy sees them in simulation, the
        turns taken and the pair's turn limit."""
        p = episode.pair
        return {"messages": questioner_messages(p["persona_name"], p["task"], episode.messages, final=False,
                                                decide=self.decide, instruction_text=self.recipe.simulate.instruction),
                "turn": episode.turns, "turns": p["turns"]}

    def reset(self, pair: int | None = None, seed: int | None = None) -> dict:
        """Start the environment's episode (`start`) and return its opening observation."""
        self.episode = self.start(pair, seed)
        return self.observation(self.episode)

    def step(self, text: str, cut: bool = False) -> Step:
        """One Questioner turn of the environment's episode (`step_many` says what happens)."""
        if self.episode is None:
            raise StargateError("step before reset: call reset() to start an episode")
        return self.step_many([self.episode], [text], [cut])[0]

    def step_many(self, episodes: list[Episode], texts: list[str], cut: list[bool] | None = None) -> list[Step]:
        """One Questioner turn of each episode. `cut`: each turn was cut at the generation's token limit (stored,
        as the simulate stage stores it, so a policy gradient leaves the end-of-turn marker it never sampled).

        A turn that is not a question under simulate.turns policy is the episode's final response; any other turn
        is answered by the episode's Roleplayer, every episode's answer of one seed and turn requested at once. An
        episode ends there or at its pair's turn limit, and is scored: its Step's reward, and info {conversation_id,
        pair_id, turns, turn_limit, questions, answer, logprob, gold_tokens, turn_logprobs (reward.per_turn: the
        gold's log-prob after each turn k but the last, else None), rewards_to_go (reward.per_turn: each Questioner
        turn's reward-to-go as rloo and grpo reckon it, the final response's last, else None), roleplayer,
        facts_given (a gated user's facts per reply, else None), elicitation ({facts, active, passive, never}),
        questioner_tokens, user_tokens}.
        A step that goes on has info {turn, roleplayer, facts_given (this reply's), trimmed}.

        All or nothing: a turn longer than the Questioner's context, one the Roleplayer refuses for good (over its
        context) or a Roleplayer that does not answer (an endpoint down) is one StargateError, and no episode of
        the call changes."""
        cut = list(cut) if cut is not None else [False] * len(episodes)
        if not len(texts) == len(cut) == len(episodes):
            raise StargateError(f"{len(episodes)} episodes, {len(texts)} turns and {len(cut)} cut flags: give one "
                                "of each per episode")
        if len({id(e) for e in episodes}) != len(episodes):
            raise StargateError("an episode is named twice in one step: give each its one turn")
        for episode, text in zip(episodes, texts, strict=True):
            if episode.done:
                raise StargateError(f"episode {episode.id} has ended (reward {episode.reward:.4f}): start a new one "
                                    "with reset() or start()")
            self._check_fits(episode, text)
        answering = [(e, t, c) for e, t, c in zip(episodes, texts, cut, strict=True)
                     if self.decide and not is_question(t)]
        asking = [{"episode": e, "pair": e.pair, "roleplayer": e.roleplayer, "failed": None,
                   "messages": [*e.messages, {"role": "questioner", "text": t, "cut": int(c)}]}
                  for e, t, c in zip(episodes, texts, cut, strict=True) if not (self.decide and not is_question(t))]
        self._answer(asking)
        new = [m for c in asking for m in c["messages"][-2:]]
        for m, n in zip(new, self.questioner.count_tokens([m["text"] for m in new]), strict=True):
            m["n_tokens"] = n
        for c in asking:
            c["episode"].messages = c["messages"]
        for episode, text, was_cut in answering:
            episode.answer, episode.answer_cut = text, int(was_cut)
        ended = [e for e in episodes if e.answer is not None or e.turns >= e.pair["turns"]]
        if ended:
            self._finish(ended)
        return [Step(None, e.reward, True, e.info) if e.done else Step(self.observation(e), None, False,
                                                                       self._turn_info(e)) for e in episodes]

    def _check_fits(self, episode: Episode, text: str) -> None:
        """Refuse a turn that is no text, or with which the Questioner's view of the conversation outgrows its
        context."""
        if not isinstance(text, str):
            raise StargateError(f"episode {episode.id}: a Questioner turn is text, not {type(text).__name__}")
        if self.context is None:
            return
        p = episode.pair
        view = questioner_messages(p["persona_name"], p["task"], [*episode.messages, {"role": "questioner",
                                                                                     "text": text}],
                                   final=False, decide=self.decide, instruction_text=self.recipe.simulate.instruction)
        tokens = self.questioner.count_tokens([self.questioner.render(view)])[0]
        if tokens > self.context:
            (own,) = self.questioner.count_tokens([text])
            raise StargateError(f"episode {episode.id}: the Questioner's turn is {own:,} tokens, and with the "
                                f"conversation before it {tokens:,}, over the Questioner's context of "
                                f"{self.context:,} ({self.recipe.questioner.model}): shorten the turn")

    def _answer(self, asking: list[dict]) -> None:
        """The Roleplayers' replies to the asking episodes' last turns, appended to their messages
        (roleplayer_turn), grouped by seed and turn: a reply is sampled with its episode's seed and turn."""
        groups: dict[tuple[int, int], list[dict]] = {}
        for c in asking:
            groups.setdefault((c["episode"].seed, c["episode"].turns), []).append(c)
        for (seed, turn), group in groups.items():
            try:
                roleplayer_turn(group, self.roleplayers, self.recipe.simulate, seed, turn)
            except ChatFailure as failure:
                names = ", ".join(sorted({c["roleplayer"] for c in group}))
                raise StargateError(f"the Roleplayer {names} did not answer ({failure}): no episode changed; step "
                                    "again once it answers") from None
        failed = [c for c in asking if c["failed"]]
        if failed:
            raise StargateError(f"episode {failed[0]['episode'].id}: the Roleplayer refused the turn for good "
                                f"({failed[0]['failed']}): no episode changed; shorten the turn")

    @staticmethod
    def _turn_info(episode: Episode) -> dict:
        last = episode.messages[-1]
        facts = pair_facts(episode.pair)
        return {"turn": episode.turns, "roleplayer": episode.roleplayer, "trimmed": bool(last["trimmed"]),
                "facts_given": None if last["facts"] is None else [facts[i] for i in last["facts"]]}

    # -- the end: scores, info, records ---------------------------------------------------------------------------
    def _finish(self, episodes: list[Episode]) -> None:
        """Score the ended episodes in one batch, fill in their reward and info, and store them if recording."""
        scored = self._scores([(e.pair, _read_back(e.messages)) for e in episodes])
        answers = self.questioner.count_tokens([e.answer for e in episodes if e.answer is not None])
        answer_tokens = iter(answers)
        for episode, ((logprob, n), after) in zip(episodes, scored, strict=True):
            facts = pair_facts(episode.pair)
            questions = sum(m["role"] == "questioner" and is_question(m["text"]) for m in episode.messages)
            replies = [m for m in episode.messages if m["role"] == "roleplayer"]
            episode.done = True
            episode.reward = reward(logprob, questions, self.recipe.reward.terms, facts_told(replies))
            per_turn = {k: lp for k, (lp, _) in after.items()} if self.recipe.reward.per_turn else None
            episode.info = {
                "conversation_id": episode.id, "pair_id": episode.pair["id"], "turns": episode.turns,
                "turn_limit": episode.pair["turns"], "questions": questions, "answer": episode.answer,
                "logprob": logprob, "gold_tokens": n, "turn_logprobs": per_turn,
                "rewards_to_go": None if per_turn is None else rewards_to_go(
                    {"conversation_id": episode.id, "logprob": logprob, "answer": episode.answer},
                    episode.messages, per_turn, self.recipe.reward.terms),
                "roleplayer": episode.roleplayer,
                "facts_given": [[facts[i] for i in m["facts"]] for m in replies] if self.gate else None,
                "elicitation": conversation_elicitation(_read_back(episode.messages), facts, self.elicitation_gate),
                "questioner_tokens": sum(m["n_tokens"] for m in episode.messages if m["role"] == "questioner")
                + (next(answer_tokens) if episode.answer is not None else 0),
                "user_tokens": sum(m["n_tokens"] for m in replies),
            }
        if self.record:
            self._record(episodes, scored)

    def _scores(self, conversations: list[tuple[dict, list[dict]]]) -> list:
        with base_weights(self.model):
            return score_golds(self.model, self.questioner, self.recipe.score, conversations,
                               self.recipe.reward.per_turn)

    def score_many(self, conversations: list[tuple[int | dict, list[dict]]]) -> list[dict]:
        """Score finished conversations in one batch: each (pair: its number in `pairs`, or a pair of them; turns:
        [{role: questioner | roleplayer, text, facts: a gated reply's fact indices, credited by
        reward.fact_credit}], question and answer alternating), as the score stage scores.
        Returns per conversation {logprob, gold_tokens, questions, reward, turn_logprobs (reward.per_turn, else
        None)}."""
        items = []
        for n, (pair, turns) in enumerate(conversations):
            roles = [t.get("role") for t in turns]
            if roles != ["questioner", "roleplayer"] * (len(turns) // 2) or len(turns) % 2:
                raise StargateError(f"conversation {n}: its turns must alternate questioner and roleplayer, from the "
                                    "Questioner's first to the Roleplayer's last reply")
            if isinstance(pair, int) and not 0 <= pair < len(self.pairs):
                raise StargateError(f"conversation {n}: pair {pair} is not one of split {self.split}'s "
                                    f"{len(self.pairs)} pairs")
            items.append((self.pairs[pair] if isinstance(pair, int) else pair, turns))
        out = []
        for (_, turns), ((logprob, n), after) in zip(items, self._scores(items), strict=True):
            questions = sum(t["role"] == "questioner" and is_question(t["text"]) for t in turns)
            out.append({"logprob": logprob, "gold_tokens": n, "questions": questions,
                        "reward": reward(logprob, questions, self.recipe.reward.terms, facts_told(turns)),
                        "turn_logprobs": {k: lp for k, (lp, _) in after.items()} if self.recipe.reward.per_turn
                        else None})
        return out

    def _record(self, episodes: list[Episode], scored: list) -> None:
        """The episodes' conversations with their turns, scores and turn scores, in one transaction."""
        rows = [{"id": e.id, "run_id": self.namespace, "iteration": 0, "pair_id": e.pair["id"], "sample": e.sample,
                 "turns": e.turns, "policy": self.policy, "answer": e.answer, "answer_cut": e.answer_cut,
                 "roleplayer": e.roleplayer, "messages": e.messages} for e in episodes]
        with self.store.transaction():
            taken = self.store.conversation_ids(self.namespace, 0) & {e.id for e in episodes}
            if taken:
                raise StargateError(f"conversation {min(taken)} is already stored under {self.namespace} "
                                    "(another environment recording to this home?): nothing of this batch was "
                                    "stored")
            self.store.save_conversations(rows)
            self.store.insert_rows("turn_scores", [
                {"conversation_id": e.id, "turns": k, "run_id": self.namespace, "iteration": 0, "logprob": lp,
                 "n_tokens": n} for e, (_, after) in zip(episodes, scored, strict=True) for k, (lp, n) in after.items()
            ], pk=("conversation_id", "turns"))
            self.store.insert_rows("scores", [
                {"conversation_id": e.id, "run_id": self.namespace, "iteration": 0, "logprob": lp, "n_tokens": n}
                for e, ((lp, n), _) in zip(episodes, scored, strict=True)], pk="conversation_id")


def _read_back(messages: list[dict]) -> list[dict]:
    """Messages as Store.turns reads them back: role and text, with "facts" only on a gated user's replies."""
    return [{"role": m["role"], "text": m["text"], **({"facts": m["facts"]} if m.get("facts") is not None else {})}
            for m in messages]
