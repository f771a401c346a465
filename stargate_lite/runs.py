"""Runs: opening one (the recipe it was made with, checked on resume), its directory, its lock, and picking a
run, a trained iteration or an adapter for the commands that use one (eval, chat, export).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from .errors import FallbackNotice, StargateError
from .recipe import Recipe, load_recipe, validate_recipe
from .store import Store

# Tests stop a run at a named point with this variable: POINT (SIGKILL there), POINT=INT (SIGINT, a Ctrl-C) or
# POINT=STOP (SIGSTOP: the run waits, frozen, until the test sends SIGCONT).
STOP_AT_ENV = "STARGATE_STOP_AT"
_STOP_SIGNALS = {"": signal.SIGKILL, "KILL": signal.SIGKILL, "INT": signal.SIGINT, "STOP": signal.SIGSTOP}
_SECRET_KEY = re.compile(r"(?:^|_)(?:key|token|secret|password)$", re.IGNORECASE)
# An iteration's stages in order; each is marked done in the store when its rows are all written.
STAGES = ("pairs", "simulate", "score", "select", "respond", "train")
# The namespace an environment's pairs and episodes are stored under, NAME#env:SPLIT (NAME a run's id or a recipe's
# name; environment/user.py), which `status` lists.
ENVIRONMENT_MARK = "#env:"
# Recipe keys that moved since a run was stored: old path -> new path (section.key).
_MOVED_KEYS = {("eval", "judge_max_tokens"): ("judge", "max_tokens")}
# Recipe fields that say how a run executes, not what it computes: a run resumes after a change to them (and
# stores the new values, which eval then uses), where any other change is refused as a different recipe. They
# can move floats in their last bits (slots batch a llama-server's decoding, processes sum gradients in another
# order), never the method. "chat_models.*" stands for every chat model. Every field is classified in
# tests/test_recipe.py, so a new one is placed on purpose.
EXECUTION_ONLY = frozenset({
    "description", "train.processes", "track",
    *(f"questioner.vllm.{key}" for key in ("base_url", "score_base_url", "python", "devices", "score_devices",
                                           "kv_cache_gib", "max_concurrency", "startup_timeout", "request_timeout",
                                           "max_retries")),
    *(f"chat_models.*.{key}" for key in ("n_threads", "slots", "server_binary", "startup_timeout", "api_key_env",
                                         "max_concurrency", "request_timeout", "max_retries", "retry_base_seconds",
                                         "prompt_cache")),
})
# Fields whose default changed since they came in: (section, key) -> what a run stored without the field did.
_EARLIER_DEFAULTS = {("train", "format"): "instructed"}  # the default until 2026-12-02; the paper's is bare


def redact(value):
    """The recipe as stored: values under secret-looking keys (api_key, token, ...) are replaced.

    Recipes name the variable that holds a key (api_key_env) rather than the key, so this is a second guard."""
    if isinstance(value, dict):
        return {k: "<redacted>" if _SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def stop_point(point: str) -> None:
    """A named point of a run where finished work has just been committed: "personas", "golds", then per iteration
    "pairs/N", "simulate/N", "score/N", "select/N", "respond/N", "train/N" (after an optimizer step) and
    "trained/N" (the adapter written, its record not yet); a training worker passes "train-worker" as it starts.
    Where $STARGATE_STOP_AT names the point, the process signals itself there, so the resume and Ctrl-C tests
    stop a run exactly where they say, not after a guessed sleep. Unset (always, outside tests), it does nothing;
    once per process (a point is passed again only where a stage goes on to its next chunk)."""
    wanted, _, how = os.environ.get(STOP_AT_ENV, "").partition("=")
    if wanted == point:
        os.kill(os.getpid(), _STOP_SIGNALS[how])


# Packages whose versions a run's report states (read from their metadata: nothing is imported for it).
REPORTED_PACKAGES = ("stargate-lite", "torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes",
                     "unsloth", "llama-cpp-python", "vllm", "openai", "sqlite-utils")


def source_commit() -> tuple[str | None, bool | None]:
    """The git commit of the code this process runs and whether its tracked files differ from it; (None, None)
    for code that is not a git checkout (an installed package: its version stands for it)."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10, check=False)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def machine() -> dict:
    """This machine as a run's report states it: CPU, cores, memory, and the CUDA GPUs torch sees."""
    cpu = platform.processor() or None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(memory, 1) if memory else None, "gpus": gpus}


def start_session(store: Store, run_id: str) -> str:
    """Record this process's work on a run (code, package versions, machine) and return the session's id, which
    each stage it starts names."""
    commit, dirty = source_commit()
    versions = {"python": platform.python_version()}
    for package in REPORTED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    session = uuid.uuid4().hex
    store.start_session({"id": session, "run_id": run_id, "started_at": time.time(), "host": socket.gethostname(),
                         "commit": commit, "dirty": None if dirty is None else int(dirty),
                         "versions": json.dumps(versions), "hardware": json.dumps(machine())})
    return session


def environment_namespace(name: str, split: str) -> str:
    return f"{name}{ENVIRONMENT_MARK}{split}"


def split_for(iteration: int) -> str:
    """The train split an iteration generates data for: A, B, A, ... (the policy never sees its training pairs)."""
    return "A" if iteration % 2 == 1 else "B"


def run_dir(store: Store, run_id: str) -> Path:
    return store.home / "runs" / run_id.replace("/", "_")


def recipe_of_run(run: dict) -> Recipe:
    """The recipe a run was made with, as stored, with defaults for fields newer than the run (a field whose
    default changed since gets what the run did) and keys that moved since put where they are now."""
    data = json.loads(run["recipe"])
    for (section, key), (new_section, new_key) in _MOVED_KEYS.items():
        if key in data.get(section, {}):
            data.setdefault(new_section, {}).setdefault(new_key, data[section].pop(key))
    for (section, key), value in _EARLIER_DEFAULTS.items():
        data.setdefault(section, {}).setdefault(key, value)
    return validate_recipe(data, f"of run {run['id']}")


def _stored_form(recipe: Recipe) -> str:
    return json.dumps(redact(json.loads(recipe.to_json())), sort_keys=True)


def open_run(store: Store, recipe: Recipe, run_id: str | None = None) -> str:
    """Create the run, or check that an existing run of that id was made by the same recipe."""
    run_id = run_id or recipe.name
    stored = _stored_form(recipe)
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, recipe.name, stored, recipe.data.dataset, recipe.seed)
        path = run_dir(store, run_id)
        path.mkdir(parents=True, exist_ok=True)
        _write_recipe_file(path, stored)
        return run_id
    # Fill in fields added since the run was made, so only real changes count as a different recipe.
    before = recipe_of_run(existing)
    spare = spare_chat_models(before, recipe)
    changed = [k for k in recipe_changes(before, recipe) if _chat_model_of(k) not in spare]
    if changed or spare:
        different = [k for k in changed if not execution_only(k)]
        changed += [f"chat_models.{name} (named by no role)" for name in sorted(spare)]
        if different:
            raise StargateError(
                f"run {run_id!r} was made with a different recipe (changed: {', '.join(different[:5])}): "
                "rerun with the same settings to resume, or choose a new --run id"
            )
        store.set_run_recipe(run_id, stored)
        _write_recipe_file(run_dir(store, run_id), stored)
        warnings.warn(f"run {run_id} continues with new execution settings ({', '.join(changed)}); what it "
                      "computes is unchanged", FallbackNotice, stacklevel=2)
    return run_id


def _write_recipe_file(path: Path, stored: str) -> None:
    """The run's recipe as stored, readable beside its adapters (RUN/recipe.json)."""
    (path / "recipe.json").write_text(json.dumps(json.loads(stored), indent=2) + "\n")


def recipe_changes(before: Recipe, after: Recipe) -> list[str]:
    """The flattened keys ("simulate.max_turns") whose values differ between two recipes, as stored."""
    old, new = _flatten(json.loads(_stored_form(before))), _flatten(json.loads(_stored_form(after)))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def spare_chat_models(before: Recipe, after: Recipe) -> set[str]:
    """Chat models that one recipe has and the other lacks, named by no role of either: adding one (a Roleplayer
    for `eval --roleplayer`, as a shipped recipe may gain) or taking one away changes nothing a run computes."""
    named = {name for r in (before, after) for name in (*r.roles.roleplayer_weights, r.roles.oracle, r.roles.judge)}
    return (before.chat_models.keys() ^ after.chat_models.keys()) - named


def _chat_model_of(key: str) -> str | None:
    """The chat model a flattened recipe key belongs to ("chat_models.gemma.backend": gemma), if any."""
    section, _, rest = key.partition(".")
    return rest.partition(".")[0] if section == "chat_models" else None


def execution_only(key: str) -> bool:
    """Whether a flattened recipe key ("chat_models.smollm2.slots") is one of EXECUTION_ONLY."""
    section, _, rest = key.partition(".")
    if section == "chat_models":
        key = "chat_models.*." + rest.partition(".")[2]
    return key in EXECUTION_ONLY


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextmanager
def run_lock(store: Store, run_id: str) -> Iterator[None]:
    """Only one process works on a run at a time. The OS drops the lock when its holder dies, even by SIGKILL."""
    path = run_dir(store, run_id) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StargateError(
                f"run {run_id!r} is already running in another process (lock {path}): wait for it, or stop it "
                "and run the same command again to resume"
            ) from None
        yield


def pick_run(store: Store, run_id: str | None) -> dict:
    """The named run, or the latest one."""
    runs = store.list_runs()
    if run_id is None:
        if not runs:
            raise StargateError(f"no runs in {store.path}: start one with `stargate-lite run`")
        return runs[-1]
    run = store.get_run(run_id)
    if run is None:
        known = ", ".join(r["id"] for r in runs) or "none yet"
        raise StargateError(f"no run {run_id!r} in {store.path} (runs: {known})")
    return run


def trained_iterations(store: Store, run_id: str) -> list[int]:
    return [it["iteration"] for it in store.iterations(run_id) if store.training(run_id, it["iteration"])]


def policies(store: Store, run_id: str, iterations: list[int] | None) -> list[int]:
    """The policies a command compares: Q_0 and the asked-for iterations (every trained one by default), sorted;
    an iteration not trained yet is an error."""
    available = trained_iterations(store, run_id)
    wanted = sorted({0, *(available if iterations is None else iterations)})
    missing = [i for i in wanted if i and i not in available]
    if missing:
        raise StargateError(f"run {run_id} has no trained iteration {missing[0]} (trained: {available or 'none'})")
    return wanted


def check_chat_model(recipe: Recipe, run_id: str, option: str, name: str) -> None:
    """A chat model named on the command line (--roleplayer, --judge) must be one of the run's recipe."""
    if name not in recipe.chat_models:
        raise StargateError(f"{option} {name!r} is not a chat model of run {run_id}: "
                            f"choose one of {', '.join(sorted(recipe.chat_models))}")


def pick_training(store: Store, run: dict, iteration: int | None) -> dict:
    """The training record (adapter path, prompt format, ...) of a run's trained iteration, the latest by default."""
    trained = trained_iterations(store, run["id"])
    if not trained:
        raise StargateError(f"run {run['id']} has no trained adapter yet: finish an iteration first")
    iteration = trained[-1] if iteration is None else iteration
    if iteration not in trained:
        raise StargateError(f"run {run['id']} has no trained iteration {iteration} (trained: {trained})")
    return store.training(run["id"], iteration)


def training_format(training: dict | None, recipe: Recipe) -> str:
    """The prompt format an adapter was trained in; runs from before it was recorded were trained instructed."""
    if training is None:
        return recipe.train.format
    return training.get("format") or "instructed"


def check_adapter(adapter: str) -> None:
    """A LoRA adapter folder as peft saves one, checked before a home is made or a model loads: its config a LoRA's,
    its weights there and whole. (Without weights, peft takes the folder's path for a Hub repo id.)"""
    folder = Path(adapter)
    config_file = folder / "adapter_config.json"
    if not folder.exists():
        raise StargateError(f"--adapter {adapter} does not exist: give a LoRA adapter folder")
    if not config_file.is_file():
        raise StargateError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StargateError(f"{config_file} is not valid JSON ({err}): copy the adapter folder again") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise StargateError(f"{config_file} is not a LoRA adapter's (its peft_type is not LORA)")
    weights = [folder / name for name in ("adapter_model.safetensors", "adapter_model.bin") if (folder / name).is_file()]
    if not weights:
        raise StargateError(f"{adapter} has no adapter weights (adapter_model.safetensors): copy the whole folder")
    if weights[0].suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights[0], "numpy"):  # reads the header: every tensor it lists lies within the file
                pass
        except SafetensorError as err:
            raise StargateError(f"{weights[0]} cannot be read ({err}): it is cut short or damaged; copy it "
                                "again") from None


def adapter_policy(folder: str) -> str:
    """The policy name of an adapter given by its folder, not a run's: `chat --adapter`'s, and the probe's
    conversations of an adapter are stored under it."""
    return f"adapter:{folder}"


def resolve_checkpoint(store: Store, run_id: str | None, iteration: int | None, adapter: str | None,
                       base: bool) -> tuple[Recipe, str | None, str, str]:
    """(recipe, adapter path or None, a name for the policy, its prompt format) for the chosen checkpoint."""
    if adapter:
        check_adapter(adapter)
        run = store.get_run(run_id) if run_id else None
        recipe = recipe_of_run(run) if run else load_recipe("tiny")
        return recipe, adapter, adapter_policy(adapter), recipe.train.format
    if base and not store.list_runs():
        recipe = load_recipe("tiny")
        return recipe, None, "base", recipe.train.format
    run = pick_run(store, run_id)
    recipe = recipe_of_run(run)
    if base:
        return recipe, None, "base", recipe.train.format
    training = pick_training(store, run, iteration)
    return (recipe, training["adapter"], f"{run['id']}/iteration-{training['iteration']}",
            training_format(training, recipe))


def chunks_left(items: list, size: int, finished: Callable[[dict], bool]) -> tuple[list[list], int]:
    """The chunks of `size` items, cut at fixed indices, that are not wholly finished, and how many items the
    finished ones hold. Fixed indices make a resumed stage form the same chunks, and so the same batches, as an
    uninterrupted one (a chunk cut by a crash is done again whole)."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    left = [chunk for chunk in chunks if not all(finished(item) for item in chunk)]
    return left, len(items) - sum(len(chunk) for chunk in left)

