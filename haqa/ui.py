"""What the user sees while haqa works: status lines and progress (rich on a terminal, plain lines otherwise),
redacted of secrets."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from haqa.secrets import RedactingStream

# Everything printed here is redacted of secrets (haqa/secrets.py), whoever wrote the message.
console = Console(file=RedactingStream(lambda: sys.stderr), highlight=False, soft_wrap=True)


def step(message: str) -> None:
    console.print(f"[bold cyan]haqa[/]: {escape(message)}")


def note(message: str) -> None:
    console.print(f"  {message}", style="dim", markup=False)


class _Bar:
    def __init__(self, progress: Progress | None, task, label: str, total: float):
        self._progress, self._task, self._label, self._total = progress, task, label, total
        self._last_printed = -1.0

    def update(self, completed: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)
            return
        # No terminal (CI, a pipe): a plain line every 10 %.
        decile = int(10 * completed / self._total) * 10 if self._total else 0
        if decile > self._last_printed:
            self._last_printed = decile
            console.print(f"  {self._label}: {decile}%", markup=False)


@contextlib.contextmanager
def progress(label: str, total: float = 100.0) -> Iterator[_Bar]:
    start = time.monotonic()
    if console.is_terminal:
        with Progress(
            TextColumn("  {task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as p:
            task = p.add_task(label, total=total)
            yield _Bar(p, task, label, total)
    else:
        yield _Bar(None, None, label, total)
        console.print(f"  {label}: done in {time.monotonic() - start:.0f} s", markup=False)
