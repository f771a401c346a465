"""Rich progress bars with rate and ETA for every long stage; quiet when output is not a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """One live display per command; each stage adds a bar that stays on screen when it finishes."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self._bars = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )

    def __enter__(self) -> Progress:
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    def log(self, message: str) -> None:
        self.console.print(message)

    @contextmanager
    def stage(self, description: str, total: int, done: int = 0) -> Iterator[Bar]:
        """A bar for one stage; call the yielded Bar to advance it. `done` counts work already in the store."""
        yield Bar(self._bars, self._bars.add_task(description, total=total, completed=done, rate=""))


class Bar:
    def __init__(self, bars: RichProgress, task: TaskID):
        self._bars, self._task = bars, task

    def __call__(self, n: int = 1) -> None:
        self._bars.advance(self._task, n)
        speed = self._bars._tasks[self._task].speed
        self._bars.update(self._task, rate=f"{speed:.2f}/s" if speed else "")

    def set_total(self, total: int) -> None:
        self._bars.update(self._task, total=total)
