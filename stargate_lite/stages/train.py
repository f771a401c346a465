"""Train stage: LoRA fine-tuning of the *base* Questioner on the iteration's examples, with the method that
train.method names (stargate_lite/methods/): the recipe's name is the one source of it, in this process and in
the child processes that train (Unsloth's, accelerate's), which look the method up by that name.

The questions and the final response are trained (each with its end-of-turn marker); the prompt and the
roleplayer's answers are masked. The adapter is written to a temporary folder and renamed into place, so a
folder at the final path is always complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engines.questioner import Questioner
from ..engines.training import load_for_training, resolve_backend, train_lora
from ..errors import StargateError
from ..recipe import TrainConfig
from ..training_methods import training_method


def train_adapter(
    questioner: Questioner,
    examples: list,
    config: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    on_step: Callable[[dict], None] | None = None,
    start_from: str | None = None,
    sampling: tuple[float, float] | None = None,
) -> dict:
    """The train stage: a fresh LoRA adapter on the base Questioner, or the adapter `start_from` trained further
    (train.init previous, peft only), with the backend the recipe resolves to. `examples` are of config.method's
    form (its `examples`); `sampling`: the (temperature, top_p) they were sampled at, which a policy gradient needs.

    Unsloth trains in a child process: it patches transformers' model classes when it loads a model, and
    those patches must not reach the generation and scoring this process does in later iterations.
    """
    method = training_method(config.method)
    backend = resolve_backend(config, questioner.device.type, method)
    if config.processes > 1:
        from .train_processes import train_in_processes

        return train_in_processes(questioner, examples, config, seed=seed, out_dir=out_dir, on_step=on_step,
                                  start_from=start_from, sampling=sampling)
    if backend == "unsloth":
        return train_isolated(questioner, examples, config, seed=seed, out_dir=out_dir, on_step=on_step)
    model, _ = load_for_training(questioner, config, seed, start_from, method=method)
    return train_lora(model, examples, config, method=method, seed=seed, out_dir=out_dir,
                      pad_token_id=questioner.tokenizer.pad_token_id, backend=backend, on_step=on_step,
                      sampling=sampling)


def train_isolated(
    questioner: Questioner,
    examples: list,
    config: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """`load_for_training` + `train_lora` in a fresh (spawned) process; steps (train_lora's on_step) are reported
    back as they end."""
    import multiprocessing as mp
    import queue as queues

    context = mp.get_context("spawn")
    messages = context.Queue()
    child = context.Process(
        target=_train_child,
        args=(questioner.config, str(questioner.home), examples, config, seed, str(out_dir), messages),
        daemon=True,  # ends with this process, e.g. on Ctrl-C
    )
    child.start()
    try:
        while True:
            try:
                kind, *payload = messages.get(timeout=2)
            except queues.Empty:
                if not child.is_alive():
                    raise StargateError(
                        f"the training process ended without a result (exit code {child.exitcode}): "
                        "rerun the same command to retry the train stage"
                    ) from None
                continue
            if kind == "step" and on_step:
                on_step(payload[0])
            elif kind == "done":
                return payload[0]
            elif kind == "error":
                raise StargateError(f"training failed: {payload[0]}")
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()


def _train_child(questioner_config, home: str, examples, config: TrainConfig, seed: int, out_dir: str,
                 messages) -> None:
    import importlib.util

    if config.backend != "peft" and importlib.util.find_spec("unsloth"):
        import unsloth  # noqa: F401 -- before transformers, so that all of its patches apply
    try:
        questioner = Questioner(questioner_config, Path(home))
        method = training_method(config.method)
        model, backend = load_for_training(questioner, config, seed, method=method)
        record = train_lora(model, examples, config, method=method, seed=seed, out_dir=Path(out_dir),
                            pad_token_id=questioner.tokenizer.pad_token_id, backend=backend,
                            on_step=lambda step: messages.put(("step", step)))
        messages.put(("done", record))
    except Exception as err:  # reported to the parent, which raises it as one line
        messages.put(("error", f"{type(err).__name__}: {err}"))
