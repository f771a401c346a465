"""The environment as a verifiers environment (verifiers 0.4's `verifiers.v1`): a taskset of a split's pairs and an
environment whose user is UserEnvironment's, scored by its reward, so that `vf-eval` (and prime-rl, which trains on
verifiers environments) can play the STaR-GATE user against any model an OpenAI-compatible endpoint serves.

verifiers finds an environment by its taskset's id, imported as a module that exports one Taskset and one Env
(`__all__`): this package installs that module as `stargate_clarify` (the id `stargate-clarify`), which re-exports
the classes here. An evaluation:

    vf-eval stargate-clarify -m MODEL --client.base-url http://127.0.0.1:PORT/v1 --no-push \\
        --env.taskset.home my-home --env.taskset.split A -n 2 -r 2

An episode: the Questioner (verifiers' agent `questioner`, the model under evaluation) gets the pair's opening
messages as the project builds them (UserEnvironment.opening: the user's greeting and request with the
instruction to ask); each of its replies is one step of the pair's UserEnvironment episode, answered by the
recipe's Roleplayer, free or gated; the episode ends as the environment's do (the Questioner's final response under
simulate.turns policy, or the pair's turn limit). Its reward (weight 1) is the environment's: the base Questioner's
log-prob of the gold given the conversation, less reward.question_cost per question; the questions asked and the
share of the persona's facts told when asked for are metrics (weight 0). The model's sampling is the run's
(`--sampling.temperature`, `--sampling.max-tokens`: give the recipe's simulate settings to play as the simulate
stage plays); a reply whose model call stopped at the token limit is stored cut, as the simulate stage stores it.

The episodes are played one at a time against the one UserEnvironment (an episode's wait for its turn counts
towards verifiers' --env.timeout.episode), made and stepped on a thread of its own
(its store's SQLite connection serves only the thread that opened it; its Roleplayer and base model serve one
episode at a time); with `--env.taskset.record true` it stores each under the environment's namespace.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pydantic import Field

from ..errors import StargateError
from ..progress import Progress
from ..recipe import load_recipe
from .user import UserEnvironment

try:
    import verifiers.v1 as vf
except ImportError:
    raise StargateError("verifiers is not installed: pip install 'stargate-lite[verifiers]' (or bash install.sh "
                        "--test)") from None


class ClarifyData(vf.TaskData):
    """One (task, persona) pair of the split: its number among the environment's pairs and its opening."""

    pair: int = 0
    opening: str = ""


class ClarifyTask(vf.Task[ClarifyData]):
    """Scored from what the environment wrote on the trace when the episode ended (ClarifyEnv.run)."""

    @vf.reward(weight=1.0)
    async def stargate_reward(self, trace) -> float:
        return float(trace.info["stargate"]["reward"])

    @vf.metric
    async def questions_asked(self, trace) -> float:
        return float(trace.info["stargate"]["questions"])

    @vf.metric
    async def facts_elicited_actively(self, trace) -> float:
        elicited = trace.info["stargate"]["elicitation"]
        return elicited["active"] / elicited["facts"] if elicited["facts"] else 0.0


class ClarifyTasksetConfig(vf.TasksetConfig):
    """Which environment: a home, and a finished run's recipe (`run`, or the latest) or a recipe by name or path with
    overrides (`recipe`), the split, another chat model of the recipe as the user, and whether to store episodes."""

    home: str | None = None
    run: str | None = None
    recipe: str | None = None
    overrides: list[str] = Field(default_factory=list)
    split: str = "A"
    roleplayer: str | None = None
    record: bool = False


class ClarifyTaskset(vf.Taskset[ClarifyTask, ClarifyTasksetConfig]):
    """The split's pairs, one task each, in the environment's order."""

    def __init__(self, config: ClarifyTasksetConfig) -> None:
        super().__init__(config)
        # Shared with the views verifiers copies this taskset into: the environment, and the one thread that makes
        # it and plays its episodes (its store's SQLite connection serves the thread that opened it alone).
        self._made: dict = {"worker": ThreadPoolExecutor(1, thread_name_prefix="stargate-environment")}

    @property
    def environment(self) -> UserEnvironment:
        """The UserEnvironment the tasks are drawn from and the episodes played in (made on first use)."""
        if "environment" not in self._made:
            self._made["environment"] = self._made["worker"].submit(self._make).result()
        return self._made["environment"]

    async def call(self, function, *args):
        """`function(*args)` on the environment's thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._made["worker"], function, *args)

    def close(self) -> None:
        """Stop the servers the environment started, if it was made, and its thread."""
        if "environment" in self._made:
            self._made["worker"].submit(self._made.pop("environment").close).result()
        self._made["worker"].shutdown()

    def _make(self) -> UserEnvironment:
        c = self.config
        options = {"roleplayer": c.roleplayer, "record": c.record, "policy": "verifiers",
                   "progress": Progress(enabled=False)}
        if c.recipe is not None:
            if c.run is not None:
                raise StargateError("give the taskset a run or a recipe, not both")
            return UserEnvironment(load_recipe(c.recipe, c.overrides), c.home, c.split, **options)
        if c.overrides:
            raise StargateError("overrides apply to a recipe (--env.taskset.recipe), not to a run's")
        return UserEnvironment.of_run(c.home, c.run, c.split, **options)

    def load(self):
        env = self.environment
        for n, pair in enumerate(env.pairs):
            (opening,) = env.opening(n)
            yield ClarifyTask(ClarifyData(id=pair["id"], prompt=None, pair=n, opening=opening["content"]),
                              self.config.task)


class ClarifyEnvConfig(vf.EnvConfig):
    """The one agent: the Questioner under evaluation, a plain chat loop run in a local process."""

    questioner: vf.AgentConfig = vf.AgentConfig(harness={"id": "null"}, runtime={"type": "subprocess"})


class ClarifyEnv(vf.Env[ClarifyEnvConfig]):
    """The Questioner against the STaR-GATE user: each reply one step of a UserEnvironment episode."""

    def __init__(self, config: ClarifyEnvConfig) -> None:
        super().__init__(config)
        self._one_at_a_time = asyncio.Lock()

    async def run(self, task, agents) -> None:
        async with self._one_at_a_time:
            await self._play(task, agents)

    async def stop(self) -> None:
        self.taskset.close()

    async def _play(self, task, agents) -> None:
        env = self.taskset.environment
        episode = await self.taskset.call(env.start, task.data.pair)
        async with agents.questioner.interaction(task) as questioner:
            segment = await questioner.turn(task.data.opening)
            while True:
                if segment.terminated:
                    raise StargateError(f"episode {episode.id}: the Questioner's run ended before the episode did "
                                        f"(after {episode.turns} turns of {episode.pair['turns']}): raise its "
                                        "--env.questioner.max-turns")
                (step,) = await self.taskset.call(env.step_many, [episode], [segment.last_reply],
                                                  [_cut(questioner.trace)])
                if step.done:
                    break
                segment = await questioner.turn(step.observation["messages"][-1]["content"])
            # The conversation the reward scores: the trace lacks the user's reply to the last turn, which ends
            # the episode at the turn limit and is never sent to the Questioner.
            questioner.trace.info["stargate"] = {"reward": step.reward, **step.info, "conversation": [
                {"role": m["role"], "text": m["text"]} for m in episode.messages]}


def _cut(trace) -> bool:
    """Whether the Questioner's last reply stopped at its token limit (its model call's finish reason), as the
    simulate stage stores a turn's `cut`."""
    last = next((call for call in reversed(trace.calls) if call.error is None), None)
    return bool(last and last.finish_reason == "length")


__all__ = ["ClarifyEnv", "ClarifyTaskset"]
