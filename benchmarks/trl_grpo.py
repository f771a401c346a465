"""TRL's GRPOTrainer on the environment beside the project's own `train.method: grpo`, at equal Roleplayer calls.

Given a run whose iteration 1 trained with grpo, this trains a LoRA adapter with TRL's GRPOTrainer through the
environment (stargate_lite.environment.trl.GRPORollouts) on what that iteration trained on: the same split's pairs
with the same turn limits (UserEnvironment turns_of=1), as many conversations per pair (simulate.
conversations_per_pair, TRL's num_generations), so the Roleplayer answers as many turns; the same LoRA (rank,
alpha, dropout, target modules), learning rate, warm-up share, weight decay, clip (train.clip_epsilon) and KL
weight (train.kl_beta), the advantage less the pair's mean over its spread, every token weighing the same
(TRL's loss_type "dapo"), and train.epochs passes over one generation batch of all the pairs (TRL's
num_iterations). Then both policies are probed (stargate-lite probe: fresh conversations on fixed pairs, the same
seeds, paired with Q_0 per pair, crossed-bootstrap 95% intervals), and TRL's less the run's, paired.

    stargate-lite run -n 1 --run grpo --set train.method=grpo --set train.init=previous \\
        --set train.lora_dropout=0 --set train.target=none
    python -m benchmarks.trl_grpo --home H --run grpo --out trl-grpo --conversations 1 --json trl-grpo.json

What still differs, named so a difference in the result can be read: TRL's optimizer steps hold one pair's
conversations each (the run's hold train.batch_size x train.gradient_accumulation conversations of any pairs),
its schedule is cosine from a zero learning rate (the run's warm-up starts at 1/(warm-up+1)), and its episodes
are fresh samples of the same policy Q_0 (the run trains on the conversations its simulate stage made). Not a
timing; the adapter is written once (delete --out to train again) and the probe's conversations are stored, so a
rerun reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from stargate_lite.evaluation.probe import split_sizes

ITERATION = 1  # the run's iteration set beside TRL's training: its first, trained from Q_0 as TRL's is


def train_with_trl(home: str, run_id: str, out: Path) -> dict:
    """Train the adapter at `out/adapter` (unless it is there) and return what the training did: episodes,
    Roleplayer calls, optimizer steps and the trainer's log."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from stargate_lite import UserEnvironment
    from stargate_lite.environment.trl import GRPORollouts
    from stargate_lite.runs import split_for

    record = out / "training.json"
    if (out / "adapter" / "adapter_config.json").is_file() and record.is_file():
        return json.loads(record.read_text())
    with UserEnvironment.of_run(home, run_id, split_for(ITERATION), name=f"{run_id}-trl", turns_of=ITERATION,
                                record=True, policy="trl-grpo") as env:
        recipe, rollouts = env.recipe, GRPORollouts(env)
        per_pair, pairs = recipe.simulate.conversations_per_pair, len(env.pairs)
        args = GRPOConfig(
            output_dir=str(out / "trainer"), use_cpu=True, bf16=False, seed=recipe.seed, report_to="none",
            save_strategy="no", logging_steps=1, num_generations=per_pair, per_device_train_batch_size=per_pair,
            gradient_accumulation_steps=1, steps_per_generation=pairs, num_iterations=recipe.train.epochs,
            max_steps=pairs * recipe.train.epochs, learning_rate=recipe.train.learning_rate,
            warmup_steps=recipe.train.warmup_ratio, weight_decay=recipe.train.weight_decay, lr_scheduler_type="cosine",
            beta=recipe.train.kl_beta, epsilon=recipe.train.clip_epsilon, loss_type="dapo", scale_rewards="group",
            temperature=recipe.simulate.temperature, top_p=recipe.simulate.top_p,
            max_completion_length=recipe.train.max_length, reward_weights=rollouts.reward_weights)
        lora = LoraConfig(r=recipe.train.lora_r, lora_alpha=recipe.train.lora_alpha,
                          lora_dropout=recipe.train.lora_dropout, target_modules=recipe.train.target_modules,
                          task_type="CAUSAL_LM")
        trainer = GRPOTrainer(AutoModelForCausalLM.from_pretrained(env.questioner.source),
                              reward_funcs=rollouts.reward_funcs, args=args, train_dataset=rollouts.dataset(),
                              processing_class=env.questioner.tokenizer, rollout_func=rollouts, peft_config=lora)
        trainer.train()
        trainer.model.save_pretrained(out / "adapter")
        done = {"episodes": len(env.store.conversations(env.namespace, 0)), "pairs": pairs,
                "conversations_per_pair": per_pair, "roleplayer_calls": roleplayer_calls(env.store, env.namespace, 0),
                "optimizer_steps": trainer.state.global_step, "log": trainer.state.log_history}
    record.write_text(json.dumps(done, indent=2) + "\n")
    return done


def roleplayer_calls(store, namespace: str, iteration: int) -> int:
    """The Roleplayer's answers in a namespace's conversations of an iteration: one per user turn."""
    turns = store.turns([c["id"] for c in store.conversations(namespace, iteration)])
    return sum(t["role"] != "questioner" for ts in turns.values() for t in ts)


def _shown(interval) -> str:
    if interval is None:
        return "-"
    return f"{interval.mean:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]{' *' if interval.excludes_zero() else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the home holding the run")
    parser.add_argument("--run", required=True, help="a run whose iteration 1 trained with train.method grpo")
    parser.add_argument("--out", type=Path, required=True, help="folder for TRL's adapter and training record")
    parser.add_argument("--tasks", nargs="*", default=[], metavar="SPLIT=N",
                        help="the probe's first N tasks per split [default: A=6 B=6 test=6]")
    parser.add_argument("--personas", nargs="*", default=[], metavar="SPLIT=N",
                        help="the probe's first N personas per split [default: A=4 B=4 test=2]")
    parser.add_argument("--conversations", type=int, default=3, help="the probe's conversations per pair and policy")
    parser.add_argument("--q0-from", default=None, metavar="RUN", help="take Q_0's probe from this run")
    parser.add_argument("--json", type=Path, default=None, help="write the training record and the probe here")
    a = parser.parse_args()

    from stargate_lite.evaluation.probe import policy_difference, probe, probe_table
    from stargate_lite.runs import pick_run, recipe_of_run
    from stargate_lite.store import Store

    recipe = recipe_of_run(pick_run(Store(a.home, create=False), a.run))
    if recipe.train.method != "grpo":
        raise SystemExit(f"run {a.run} trains with {recipe.train.method}: give a run of train.method grpo")
    a.out.mkdir(parents=True, exist_ok=True)
    trained = train_with_trl(a.home, a.run, a.out)
    calls = roleplayer_calls(Store(a.home, create=False), a.run, ITERATION)
    summary = probe(a.home, a.run, [ITERATION], split_sizes(a.tasks, "--tasks"), split_sizes(a.personas, "--personas"),
                    a.conversations, q0_from=a.q0_from, adapters={"trl": str(a.out / "adapter")})
    difference = policy_difference(Store(a.home, create=False), (a.run, "trl"), (a.run, ITERATION),
                                   summary["roleplayer"], recipe.reward.question_cost)
    print(f"Roleplayer calls: TRL {trained['roleplayer_calls']} ({trained['episodes']} episodes, "
          f"{trained['optimizer_steps']} optimizer steps), run {a.run}'s iteration {ITERATION}: {calls}")
    print(probe_table(summary))
    print("TRL's adapter less the run's Q_1, paired per pair: "
          + ", ".join(f"{group} {_shown(interval)}" for group, interval in difference.items()))
    if a.json:
        a.json.write_text(json.dumps({"trained": {k: v for k, v in trained.items() if k != "log"},
                                      "run_roleplayer_calls": calls, "probe": summary, "trl_less_run": difference},
                                     indent=2, default=dataclasses.asdict) + "\n")


if __name__ == "__main__":
    main()
