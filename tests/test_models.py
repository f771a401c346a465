"""A built-in model is converted into a cache that several processes share (a run and a `chat`, test workers)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stargate_lite.engines import models


def test_two_converters_of_one_model_take_turns_and_the_second_reads_the_first_ones_folder(tmp_path, monkeypatch):
    """The conversion itself is replaced (it is what the lock guards, 23 s of real work); a second caller that
    arrives while the first converts must not start a conversion of its own: before the lock, the two wrote the
    same temporary folder and one removed it under the other."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"the weights")
    first_inside, second_arrived, second_inside = threading.Event(), threading.Event(), threading.Event()
    converted = []

    def convert(source: Path, target: Path) -> None:
        if first_inside.is_set():
            second_inside.set()
        first_inside.set()
        converted.append(target)
        # Held open until the second caller is at the lock, and a while after: it must not get in meanwhile.
        assert second_arrived.wait(30)
        second_inside.wait(1)
        target.mkdir()
        (target / "config.json").write_text("{}")

    def second() -> Path:
        assert first_inside.wait(30)
        second_arrived.set()
        return models.convert_gguf(gguf, tmp_path / "cache")

    monkeypatch.setattr(models, "_convert", convert)
    with ThreadPoolExecutor(2) as pool:
        folders = [pool.submit(models.convert_gguf, gguf, tmp_path / "cache"), pool.submit(second)]
        first, then = (f.result(timeout=60) for f in folders)
    assert not second_inside.is_set()
    assert converted == [first] and then == first and (first / "config.json").is_file()
