"""Several Roleplayers in training (roles.roleplayer a list or a weighted mapping), on the tiny models."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter

from conftest import TINY_CI_OVERRIDES, cli

from stargate_lite.stages.simulate import Roleplayers, conversation_id

MIX = {"smollm2": 1.0, "smollm2-plain": 1.0}  # the same model with and without a repetition penalty


def test_the_draw_is_seeded_per_conversation_and_follows_the_weights():
    mix = Roleplayers({"a": 3.0, "b": 1.0}, get=None, seed=0)
    ids = [conversation_id(f"run/1/pair-{p}", s) for p in range(500) for s in range(4)]
    names = [mix.name_for(c) for c in ids]
    assert names == [Roleplayers({"a": 3.0, "b": 1.0}, get=None, seed=0).name_for(c) for c in ids]  # reproducible
    assert 0.72 < Counter(names)["a"] / len(names) < 0.78
    assert names != [Roleplayers({"a": 3.0, "b": 1.0}, get=None, seed=1).name_for(c) for c in ids]
    assert {Roleplayers({"only": 1.0}, get=None, seed=0).name_for(c) for c in ids} == {"only"}


def test_a_run_spreads_conversations_over_the_roleplayers_and_records_who_answered(with_data):
    home = with_data
    from stargate_lite.engines.chat_models import ChatModels, Sampling
    from stargate_lite.prompts import roleplayer_messages
    from stargate_lite.recipe import load_recipe
    from stargate_lite.stages.simulate import chunk_seed

    overrides = [*TINY_CI_OVERRIDES, "roles.roleplayer={smollm2: 1, smollm2-plain: 1}"]
    # The run stops itself once iteration 1's conversations are scored and kept: responding and training are not
    # this test's subject.
    stopped = cli("run", "--iterations", "1", *[a for o in overrides for a in ("--set", o)], home=home, check=False,
                  stop_at="select/1")
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-2000:]
    with sqlite3.connect(home / "stargate.db") as db:
        rows = db.execute("select c.id, c.roleplayer, p.idx, t.text from conversations c "
                          "join pairs p on p.id = c.pair_id join turns t on t.conversation_id = c.id "
                          "where t.idx = 1 order by c.id").fetchall()
        personas = dict(db.execute("select p.id, pe.text || '|' || tk.text from pairs p "
                                   "join personas pe on pe.id = p.persona_id join tasks tk on tk.id = p.task_id"))
        questions = dict(db.execute("select conversation_id, text from turns where idx = 0"))
    assert len(rows) == 4
    assert [name for _, name, _, _ in rows] == [Roleplayers(MIX, None, 0).name_for(cid) for cid, *_ in rows]
    assert {name for _, name, _, _ in rows} == set(MIX)  # this seed gives each of the two a conversation
    # Each first answer is the one its recorded Roleplayer gives (greedy, in-process: to the token).
    recipe = load_recipe("tiny", overrides)
    told_apart = 0
    with ChatModels(recipe.chat_models, home, home / "logs") as chat:
        for cid, name, chunk, first_answer in rows:
            persona, task = personas[cid.rsplit("#", 1)[0]].split("|")
            sampling = Sampling(recipe.simulate.answer_max_tokens, temperature=0.0, seed=chunk_seed(0, 1, chunk, 0) + 1)
            messages = roleplayer_messages(persona, task, [{"role": "questioner", "text": questions[cid]}])
            answers = {n: chat.get(n).complete_each([messages], sampling)[0].strip() for n in MIX}
            assert first_answer.startswith(answers[name][:60]), (cid, name)
            told_apart += len(set(answers.values())) > 1
    assert told_apart  # the two answer differently, so the check above tells which one answered
    (it,) = json.loads(cli("status", "--json", home=home).stdout)["runs"][0]["iterations"]
    assert it["roleplayers"] == dict(Counter(name for _, name, _, _ in rows))
