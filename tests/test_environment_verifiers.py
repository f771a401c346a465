"""The environment as a verifiers environment (stargate_lite/environment/verifiers.py), evaluated with verifiers' own
`vf-eval` against llama.cpp's server serving the tiny Questioner: the user is the environment's, each rollout's
reward is the one the project's score stage gives its conversation, and the elicitation figures are metrics of
weight 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import THREADS, TINY_CI_OVERRIDES
from scored_elsewhere import score_stage_rewards

from stargate_lite import UserEnvironment
from stargate_lite.progress import Progress
from stargate_lite.recipe import ChatModelConfig, load_recipe
from stargate_lite.store import Store

SERVED = ChatModelConfig(backend="llama-server", model="builtin:smollm2-135m-instruct", n_ctx=2048,
                         n_threads=THREADS, max_retries=1)


@pytest.mark.usefixtures("binary")
def test_vf_eval_plays_the_user_and_rewards_each_rollout_as_the_score_stage(with_data, tmp_path):
    """Two pairs, one rollout each, the Questioner served by llama-server asking to each pair's turn limit (uniform
    turns, 1 or 2): vf-eval finds the environment by its id (stargate-clarify), each rollout's conversation is the
    one the environment recorded (the Questioner's turns and the user's replies, in order; the last reply, which ends
    it, in the trace's info), its reward (weight 1) is
    the score stage's on that conversation, to 1e-4, and the questions and elicitation are weight-0 metrics."""
    from stargate_lite.engines.chat_models import ChatModels
    from stargate_lite.runs import open_run

    recipe = load_recipe("tiny", TINY_CI_OVERRIDES)
    open_run(Store(with_data), recipe)  # the run whose recipe the environment takes (--env.taskset.home)
    bin_dir = Path(sys.executable).parent
    with ChatModels({"served": SERVED}, tmp_path, tmp_path / "logs") as chat:
        url = chat.get("served").server.url
        result = subprocess.run(
            [bin_dir / "vf-eval", "stargate-clarify", "-m", "smollm2", "--client.base-url", url,
             "--client.api-key-var", "STARGATE_UNUSED_KEY", "--no-push", "--no-rich", "-n", "2", "-r", "1",
             "-o", tmp_path / "out", "--run.name", "clarify", "--env.taskset.home", with_data,
             "--env.taskset.record", "true", "--sampling.max-tokens", str(recipe.simulate.question_max_tokens),
             "--sampling.temperature", str(recipe.simulate.temperature)],
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, capture_output=True, text=True,
            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in (tmp_path / "out" / "clarify" / "traces.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["ok"] for line in lines), lines

    with UserEnvironment(recipe, with_data, progress=Progress(enabled=False)) as env:
        stored = {c["id"]: c for c in env.store.conversations("tiny#env:A", 0)}
        traces = [line["traces"][0] for line in lines]
        ids = [trace["info"]["stargate"]["conversation_id"] for trace in traces]
        assert set(ids) == set(stored) and {stored[i]["policy"] for i in ids} == {"verifiers"}
        turns = env.store.turns(ids)
        cut = env.store.cut_turns("tiny#env:A", 0)
        for trace, cid in zip(traces, ids, strict=True):
            # A turn is stored cut when its model call stopped at the token limit (6 tokens: most do).
            reasons = [call.get("finish_reason") for call in trace["calls"] if call.get("error") is None]
            asked = [idx for idx, t in enumerate(turns[cid]) if t["role"] == "questioner"]
            assert {(cid, idx) for idx, reason in zip(asked, reasons, strict=True) if reason == "length"} == {
                (c, idx) for c, idx in cut if c == cid}
            said = [(n["message"]["role"], n["message"]["content"].strip()) for n in trace["nodes"]][1:]
            # The Questioner's side: every turn but the user's last reply, which ends the episode unsent; the
            # conversation the reward scores, whole, in the trace's info.
            assert said == [("assistant" if t["role"] == "questioner" else "user", t["text"]) for t in turns[cid]][:-1]
            assert trace["info"]["stargate"]["conversation"] == turns[cid]
            answer = stored[cid]["answer"]
            assert answer is None and stored[cid]["turns"] == trace["info"]["stargate"]["turn_limit"] >= 1
            assert trace["rewards"]["stargate_reward"]["weight"] == 1.0
            assert trace["metrics"]["questions_asked"] == trace["info"]["stargate"]["questions"]
            assert "facts_elicited_actively" in trace["metrics"]
        assert cut, "no turn was cut at 6 tokens"
        given = [trace["rewards"]["stargate_reward"]["score"] for trace in traces]
        assert given == pytest.approx(score_stage_rewards(env, ids), abs=1e-4)


def test_without_verifiers_the_module_names_the_install_command(monkeypatch):
    """Importing the verifiers environment where verifiers is not installed: one line that says what to install."""
    from stargate_lite import StargateError

    monkeypatch.setitem(sys.modules, "verifiers", None)  # what `import verifiers` meets where it is not installed
    monkeypatch.setitem(sys.modules, "verifiers.v1", None)
    monkeypatch.delitem(sys.modules, "stargate_lite.environment.verifiers", raising=False)
    with pytest.raises(StargateError, match=r"verifiers is not installed: pip install 'stargate-lite\[verifiers\]'") \
            as absent:
        import stargate_lite.environment.verifiers  # noqa: F401
    assert "\n" not in str(absent.value)
