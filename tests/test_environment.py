"""The STaR-GATE user as an environment (stargate_lite/environment/user.py), on the tiny models: the reward the
project's scorer gives, the gated user's facts, the records under the environment's namespace, and bad input in one
line."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_CI_OVERRIDES, QuietHandler, serve

from stargate_lite import StargateError, UserEnvironment
from stargate_lite.progress import Progress
from stargate_lite.recipe import load_recipe
from stargate_lite.store import Store

QUIET = Progress(enabled=False)
# Policy turns (every pair has the K = 2 turn limit, and a turn that is not a question ends it), a question cost,
# and the gold scored after each turn (reward.per_turn, which asks for a policy gradient's settings).
PER_TURN = ["simulate.turns=policy", "reward.question_cost=0.5", "reward.per_turn=true", "train.method=rloo",
            "train.init=previous", "train.lora_dropout=0", "train.target=none"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


def test_an_episode_gets_the_reward_the_score_stage_gives_its_conversation_and_is_recorded(with_data):
    """Two episodes played with fixed turns, at once: one to its turn limit, one ending on the Questioner's final
    response. Each reward, and each turn score, is what score_stage gives the same conversation written through the
    store in a namespace of its own, less 0.5 nats per question; the recorded episodes are what the store's readers
    (its conversations, export --data's, the audit, status) read under the environment's namespace."""
    from stargate_lite.commands.status import run_status
    from stargate_lite.evaluation.audit import audit
    from stargate_lite.runs import open_run
    from stargate_lite.stages.data import make_pairs
    from stargate_lite.stages.score import score_stage

    recipe = load_recipe("tiny", [*TINY_CI_OVERRIDES, *PER_TURN])
    store = Store(with_data)
    open_run(store, recipe)  # the run whose recipe the environment takes, and whose export reads its namespace
    with UserEnvironment.of_run(with_data, record=True, progress=QUIET) as env:
        assert env.namespace == "tiny#env:A" and env.recipe.reward.per_turn
        episodes = [env.start(pair=0, seed=1), env.start(pair=1, seed=1)]
        assert [env.observation(e)["turns"] for e in episodes] == [2, 2]
        first = env.step_many(episodes, ["What do you do for work?", "Which city do you live in?"])
        assert [(s.done, s.observation["turn"], s.info["roleplayer"]) for s in first] == [(False, 1, "smollm2")] * 2
        last = env.step_many(episodes, ["How much free time do you have?", "Here is a plan for your week."])
        assert [s.done for s in last] == [True, True] and last[0].observation is None
        with pytest.raises(StargateError, match="has ended") as ended:
            env.step_many(episodes[:1], ["Anything else?"])
        _one_line(ended)

    turns = store.turns([e.id for e in episodes])
    assert [len(turns[e.id]) for e in episodes] == [4, 2] and episodes[1].answer == "Here is a plan for your week."
    # The same conversations through the store and the score stage, in a namespace of their own.
    make_pairs(store, recipe, "check", 0, "A", f"{recipe.seed}/env")
    store.save_conversations([{"id": f"check-{i}", "run_id": "check", "iteration": 0, "sample": 0,
                               "pair_id": e.pair["id"].replace("tiny#env:A/", "check/"), "turns": e.turns,
                               "policy": "base", "messages": turns[e.id]} for i, e in enumerate(episodes)])
    score_stage(store, "check", 0, env.model, env.questioner, recipe.score, QUIET, per_turn=True)
    rewards = {r["conversation_id"]: r["reward"] for r in store.rewards("check", 0, recipe.reward.terms)}
    after = store.turn_scores("check", 0)
    assert [s.reward for s in last] == pytest.approx([rewards["check-0"], rewards["check-1"]], abs=1e-4)
    assert [s.info["turn_logprobs"] for s in last] == [pytest.approx(after["check-0"], abs=1e-4), {}]
    assert [s.info["questions"] for s in last] == [2, 1]
    assert last[0].reward == pytest.approx(last[0].info["logprob"] - 2 * 0.5, abs=1e-12)
    # Each turn's reward-to-go, as rloo and grpo reckon it: the gold's gain from that turn on less the cost of the
    # questions from it on; a final response's is 0 after a question.
    final, after_first = last[0].info["logprob"], last[0].info["turn_logprobs"][1]
    assert last[0].info["rewards_to_go"] == pytest.approx([final - 2 * 0.5, final - after_first - 0.5], abs=1e-12)
    assert last[1].info["rewards_to_go"] == pytest.approx([last[1].info["logprob"] - 0.5, 0.0], abs=1e-12)
    # Finished conversations scored in one batch give the same.
    rescored = env.score_many([(e.pair, turns[e.id]) for e in episodes])
    assert [r["reward"] for r in rescored] == pytest.approx([s.reward for s in last], abs=1e-4)
    with pytest.raises(StargateError, match="must alternate questioner and roleplayer") as unfinished:
        env.score_many([(0, turns[episodes[0].id][:3])])
    _one_line(unfinished)

    # The user's tokens and the Questioner's counted apart, its final response among the Questioner's.
    count = env.questioner.count_tokens
    said = {role: [[t["text"] for t in turns[e.id] if t["role"] == role] for e in episodes]
            for role in ("questioner", "roleplayer")}
    assert [s.info["user_tokens"] for s in last] == [sum(count(texts)) for texts in said["roleplayer"]]
    assert [s.info["questioner_tokens"] for s in last] == [sum(count(said["questioner"][0])),
                                                           sum(count([*said["questioner"][1], episodes[1].answer]))]
    assert all(s.info["elicitation"]["facts"] == len(json.loads(e.pair["persona_facts"])) and s.info["facts_given"]
               is None for s, e in zip(last, episodes, strict=True))

    # Recorded where the store's readers find them: one conversation each, its score and turn scores.
    recorded = {c["id"]: c for c in store.conversations("tiny#env:A", 0)}
    assert set(recorded) == {e.id for e in episodes} and recorded[episodes[1].id]["answer"] == episodes[1].answer
    assert {s["conversation_id"]: s["logprob"] for s in store.scores("tiny#env:A", 0)} == \
        {e.id: s.info["logprob"] for e, s in zip(episodes, last, strict=True)}
    assert store.turn_scores("tiny#env:A", 0) == {episodes[0].id: last[0].info["turn_logprobs"]}
    exported = {c["id"]: c for c in store.export_conversations("tiny", recipe.reward.terms) if c["namespace"] == "tiny#env:A"}
    assert [exported[e.id]["reward"] for e in episodes] == pytest.approx([s.reward for s in last], abs=1e-9)
    assert audit(store.audit_conversations("tiny#env:A", 0))["smollm2"]["conversations"] == 2
    (played,) = run_status(store)["environments"]
    assert (played["name"], played["split"], played["episodes"], played["scored"]) == ("tiny", "A", 2, 2)
    assert played["logprob"]["mean"] == pytest.approx(sum(s.info["logprob"] for s in last) / 2, abs=1e-9)
    assert played["efficiency"]["question_counts"] == {"1": 1, "2": 1}


def test_a_gated_users_info_shows_the_facts_it_was_given_and_its_reward_credits_them(with_data):
    """simulate.reveal asked: each reply's facts are those the gate picks for the turn (here one that names a fact
    of the persona), shown in the step's info and in the episode's, and credited reward.fact_credit nats each in
    its reward; nothing is recorded without `record`. The Questioner's opening holds the recipe's own instruction
    (simulate.instruction)."""
    from stargate_lite.stages.simulate import pair_facts

    mine = "Ask me about my home, then help."
    recipe = load_recipe("tiny", [*TINY_CI_OVERRIDES, "simulate.reveal=asked", "simulate.turns=policy",
                                  "reward.fact_credit=3", f"simulate.instruction={mine}"])
    with UserEnvironment(recipe, with_data, progress=QUIET) as env:
        assert env.opening(0)[0]["content"].endswith(f"\n\n{mine}")
        env.reset(pair=0)
        facts = pair_facts(env.episode.pair)
        question = f"Is it true that {facts[-1].rstrip('.')}?"
        step = env.step(question)
        given = [facts[i] for i in env.gate.asked(question, facts)]
        assert facts[-1] in given, given
        assert not step.done and step.info["facts_given"] == given
        end = env.step("Here is a plan for your week.")
        assert end.done and end.info["facts_given"] == [given] and end.info["questions"] == 1
        assert end.reward == end.info["logprob"] + 3.0 * len(given)
        assert end.info["elicitation"]["facts"] == len(facts)
    assert Store(with_data).conversations("tiny#env:A", 0) == []


def test_a_turn_over_a_context_or_an_endpoint_that_is_down_is_refused_and_changes_nothing(with_data):
    """Each in one line, the episode as before the step and nothing stored: a turn longer than the Questioner's
    context (SmolLM2's 8,192 tokens), one that fits it but not the Roleplayer's (n_ctx 2,048), and a Roleplayer
    endpoint that went down after the environment was made; an endpoint down from the start is refused then."""
    recipe = load_recipe("tiny", TINY_CI_OVERRIDES)
    with UserEnvironment(recipe, with_data, record=True, progress=QUIET) as env:
        opening = env.reset(pair=0)
        with pytest.raises(StargateError, match="Questioner's context of 8,192") as questioner_context:
            env.step("word " * 9000)
        with pytest.raises(StargateError, match=r"refused the turn for good .*n_ctx") as roleplayer_context:
            env.step("word " * 3000)
        assert env.observation(env.episode) == opening
    _one_line(questioner_context)
    _one_line(roleplayer_context)

    server, url = serve(QuietHandler)  # answers anything (501): up, for the environment's check
    user = f"chat_models.user={{backend: openai, model: user, base_url: '{url}/v1', max_retries: 0}}"
    down = load_recipe("tiny", [*TINY_CI_OVERRIDES, user])
    with UserEnvironment(down, with_data, roleplayer="user", record=True, progress=QUIET) as env:
        env.reset(pair=0)
        server.shutdown()
        server.server_close()
        with pytest.raises(StargateError, match="the Roleplayer user did not answer") as silent:
            env.step("What do you do for work?")
        assert env.episode.messages == [] and not env.episode.done
    _one_line(silent)
    with pytest.raises(StargateError, match="cannot reach") as unreachable:
        UserEnvironment(down, with_data, roleplayer="user", progress=QUIET)
    _one_line(unreachable)
    assert Store(with_data).conversations("tiny#env:A", 0) == []


def test_a_split_without_pairs_or_golds_is_refused_in_one_line_before_any_model_loads(home, tmp_path):
    """An unknown split, a chat model the recipe lacks, a home without runs, and a data set whose golds are all
    empty (the Oracle's are stored as they are: an empty one is no gold): no pair of the namespace is written."""
    from stargate_lite.stages.data import import_data

    for build, match in [(lambda: UserEnvironment(load_recipe("tiny"), home, split="C"), "unknown split 'C'"),
                         (lambda: UserEnvironment(load_recipe("tiny"), home, roleplayer="nobody"), "not a chat model"),
                         (lambda: UserEnvironment.of_run(home), "no stargate-lite store")]:
        with pytest.raises(StargateError, match=match) as refused:
            build()
        _one_line(refused)

    store = Store(home)
    for split, (task, name) in {"A": ("Plan my week.", "Ana"), "B": ("Pick a film.", "Bo"),
                                "test": ("Cook me dinner.", "Cy")}.items():
        files = {"tasks": [task], "personas": [{"name": name, "text": f"I'm {name.upper()}. I live by the sea."}],
                 "golds": {"prompt-0 persona-0": [""]}}
        for kind, items in files.items():
            (tmp_path / f"{split}-{kind}.json").write_text(json.dumps(items))
        import_data(store, "empty", split, *(tmp_path / f"{split}-{kind}.json" for kind in ("tasks", "personas")),
                    golds=tmp_path / f"{split}-golds.json")
    recipe = load_recipe("tiny", ["data.dataset=empty", "data.tasks={A: 1, B: 1, test: 1}",
                                  "data.personas={A: 1, B: 1, test: 1}"])
    with pytest.raises(StargateError, match="split A has no pair with a gold response") as no_golds:
        UserEnvironment(recipe, home, progress=QUIET)
    _one_line(no_golds)
    assert store.pairs("tiny#env:A", 0) == []


def test_an_environment_drawn_as_a_training_iteration_meets_its_pairs_and_turn_limits(finished):
    """turns_of=1: the environment's pairs are the run's iteration-1 pairs with their turn limits, so its episodes
    cost the Roleplayer calls that iteration's conversations did. A namespace whose stored pairs were drawn
    otherwise is refused in one line, not played with the old draw."""
    import sqlite3
    from contextlib import closing

    store = Store(finished)
    trained = [(p["task_id"], p["persona_id"], p["turns"]) for p in store.pairs("tiny", 1)]
    with UserEnvironment.of_run(finished, name="at-1", turns_of=1, progress=QUIET) as env:
        assert env.namespace == "at-1#env:A"
        assert [(p["task_id"], p["persona_id"], p["turns"]) for p in env.pairs] == trained
    with closing(sqlite3.connect(finished / "stargate.db")) as db, db:
        db.execute("update pairs set turns = turns + 1 where run_id = 'at-1#env:A' and idx = 0")
    with pytest.raises(StargateError, match="holds pairs drawn with other data or turn limits") as refused:
        UserEnvironment.of_run(finished, name="at-1", turns_of=1, progress=QUIET)
    _one_line(refused)
