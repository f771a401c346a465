"""What the project's own score stage gives conversations that a trainer or an evaluator played through the
environment: the check that the reward is the same everywhere (docs/environment.md)."""

from __future__ import annotations

from stargate_lite.progress import Progress
from stargate_lite.stages.data import make_pairs
from stargate_lite.stages.score import score_stage
from stargate_lite.store import Store


def score_stage_rewards(env, conversation_ids: list[str]) -> list[float]:
    """Each stored conversation of the environment's namespace copied, turns as the store reads them back, into a
    namespace of its own ("check", its pairs drawn as the environment draws its own), scored there by score_stage
    with the environment's base model, and rewarded as selection rewards it, under the environment's recipe: the rewards, in the order given."""
    store: Store = env.store
    recipe = env.recipe
    make_pairs(store, recipe, "check", 0, env.split, f"{recipe.seed}/env")
    stored = {c["id"]: c for c in store.conversations(env.namespace, 0)}
    turns = store.turns(conversation_ids)
    store.save_conversations([
        {"id": f"check-{i}", "run_id": "check", "iteration": 0, "sample": i,
         "pair_id": stored[cid]["pair_id"].replace(f"{env.namespace}/", "check/"), "turns": stored[cid]["turns"],
         "policy": "base", "answer": stored[cid]["answer"], "messages": turns[cid]}
        for i, cid in enumerate(conversation_ids)])
    score_stage(store, "check", 0, env.model, env.questioner, recipe.score, Progress(enabled=False))
    rewards = {r["conversation_id"]: r["reward"] for r in store.rewards("check", 0, recipe.reward.terms)}
    return [rewards[f"check-{i}"] for i in range(len(conversation_ids))]
