"""Progress that is visible wherever the run's output goes.

In a terminal: rich's live bars. Anywhere else (a log file, CI, `nohup`, a dumb terminal) rich's
bars print nothing at all, since they redraw in place and ours are transient; there the same calls
print plain timestamped lines instead, so a log shows how far a long run has got.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tuneorprompt.safe_text import printable

# Between two log lines of one task, at most this long or this share of its total.
LOG_EVERY_SECONDS = 10.0
LOG_EVERY_FRACTION = 0.1


def make_progress(console: Console, clock: Callable[[], float] = time.time) -> Progress | LogProgress:
    """Live bars when `console` can redraw them, else log lines; either serves as the evaluator's
    `evaluate.Progress`. `clock` (seconds since the epoch) times the log lines."""
    if console.is_interactive:
        return Progress(
            _DescriptionColumn(), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )
    return LogProgress(console, clock)


class _DescriptionColumn(ProgressColumn):
    """A task's description in bold, as plain text: "[seed 0]" is no style tag, and control characters
    in the arm names it quotes from the config are made visible (`printable`)."""

    def render(self, task) -> Text:
        return Text(printable(task.description), style="bold")


@dataclass
class _Task:
    description: str
    total: float
    started: float
    completed: float = 0.0
    logged_at: float = 0.0  # clock time of the task's last line
    logged_tenth: int = 0  # tenths of the total done at its last line


class LogProgress:
    """rich `Progress`'s task calls, printed as lines such as
    `[12:03:41] lora [seed 0] test: 64/200 (32%), 41 s elapsed, ~87 s left`:
    one when a task starts, one when it finishes, and in between one whenever 10 s have passed or
    another tenth of the total is done since the task's last line."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.time):
        self._console = console
        self._clock = clock
        self._tasks: dict[int, _Task] = {}
        self._next_id = 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def add_task(self, description: str, total: float) -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        now = self._clock()
        self._tasks[task_id] = task = _Task(description, total, started=now, logged_at=now)
        self._print(task, now, "started")
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self._tasks[task_id]
        now = self._clock()
        task.completed += advance
        elapsed = now - task.started
        if task.completed >= task.total:
            self._print(task, now, f"{_duration(elapsed)} elapsed, done")
            return
        tenth = int(task.completed / task.total / LOG_EVERY_FRACTION)
        if tenth > task.logged_tenth or now - task.logged_at >= LOG_EVERY_SECONDS:
            status = f"{_duration(elapsed)} elapsed"
            if task.completed > 0:  # the rest is assumed to go at the pace so far
                status += f", ~{_duration(elapsed * (task.total - task.completed) / task.completed)} left"
            self._print(task, now, status)
            task.logged_at, task.logged_tenth = now, tenth

    def remove_task(self, task_id: int) -> None:
        del self._tasks[task_id]

    def _print(self, task: _Task, now: float, status: str) -> None:
        percent = int(100 * task.completed / task.total) if task.total else 100
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        line = f"[{stamp}] {task.description}: {task.completed:.0f}/{task.total:.0f} ({percent}%), {status}"
        # Printed verbatim and on one line: no markup ("[seed 0]"), highlighting or wrapping at the
        # console's width, so each line stays one greppable line in the log.
        self._console.print(printable(line), markup=False, highlight=False, emoji=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"
