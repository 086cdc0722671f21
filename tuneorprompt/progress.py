"""Progress that is visible wherever the run's output goes.

In a terminal: rich's live bars. Anywhere else (a log file, CI, `nohup`, a dumb terminal) rich's
bars print nothing at all, since they redraw in place and ours are transient; there the same calls
print plain timestamped lines instead, so a log shows how far a long run has got.

Three kinds of work report here: evaluation (a task per arm and split, advanced by prompts answered),
fine-tuning (a task per learning rate, advanced by optimizer steps, with a `status` of epoch, loss and
learning rate), and steps of unknown length such as loading a model (`long_step`: a task without a
total, whose log lines come from a timer, since nothing advances it).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

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
            TimeElapsedColumn(), TimeRemainingColumn(), _StatusColumn(), console=console, transient=True,
        )
    return LogProgress(console, clock)


@contextmanager
def long_step(progress: Progress | LogProgress | None, description: str) -> Iterator[None]:
    """Work of unknown length (loading a model, converting a GGUF file) shown while it runs: a bar with
    its elapsed time in a terminal; in a log, a line when it starts, one every 10 s while it runs and
    one when it is done."""
    if progress is None:
        yield
        return
    task = progress.add_task(description, total=None)
    try:
        yield
        progress.update(task, total=1, completed=1)
    finally:
        progress.remove_task(task)


class _DescriptionColumn(ProgressColumn):
    """A task's description in bold, as plain text: "[seed 0]" is no style tag, and control characters
    in the arm names it quotes from the config are made visible (`printable`)."""

    def render(self, task) -> Text:
        return Text(printable(task.description), style="bold")


class _StatusColumn(ProgressColumn):
    """A task's `status` field (fine-tuning's epoch, loss and learning rate), where it has one."""

    def render(self, task) -> Text:
        return Text(printable(task.fields.get("status", "")))


@dataclass
class _Task:
    description: str
    total: float | None  # None: not known (a `long_step`), until it is done
    started: float
    completed: float = 0.0
    initial: float = 0.0  # done before this process took it up (a resumed training): not part of its pace
    status: str = ""  # what the task says of itself beside its counts (fine-tuning: epoch, loss, lr)
    logged_at: float = 0.0  # clock time of the task's last line
    logged_tenth: int = 0  # tenths of the total done at its last line
    stop_timer: threading.Event | None = None  # a task begun without a total: set to end its timer


class LogProgress:
    """rich `Progress`'s task calls, printed as lines such as
    `[12:03:41] lora [seed 0] test: 64/200 (32%), 41 s elapsed, ~87 s left`:
    one when a task starts, one when it finishes, and in between one whenever 10 s have passed or
    another tenth of the total is done since the task's last line. A task without a total (a
    `long_step`) gets a line every `timer_seconds` from a timer thread while it runs."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.time,
                 timer_seconds: float = LOG_EVERY_SECONDS):
        self._console = console
        self._clock = clock
        self._timer_seconds = timer_seconds
        self._tasks: dict[int, _Task] = {}
        self._next_id = 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for task_id in list(self._tasks):
            self.remove_task(task_id)

    def add_task(self, description: str, total: float | None, completed: float = 0, status: str = "") -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        now = self._clock()
        task = _Task(description, total, started=now, completed=completed, initial=completed, status=status,
                     logged_at=now)
        self._tasks[task_id] = task
        if total is None:
            task.stop_timer = threading.Event()
        self._print(task, now, "started")
        if total is None:
            threading.Thread(target=self._tick, args=(task,), daemon=True, name="tuneorprompt-progress").start()
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float = 0, status: str | None = None) -> None:
        """rich's `Progress.update`, for the arguments this package passes."""
        task = self._tasks[task_id]
        now = self._clock()
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        task.completed += advance
        if status is not None:
            task.status = status
        if task.total is None:
            return  # the timer prints its lines
        elapsed = now - task.started
        if task.completed >= task.total:
            self._stop_timer(task)
            self._print(task, now, f"{_duration(elapsed)} elapsed, done")
            return
        tenth = int(task.completed / task.total / LOG_EVERY_FRACTION)
        if tenth > task.logged_tenth or now - task.logged_at >= LOG_EVERY_SECONDS:
            said = f"{_duration(elapsed)} elapsed"
            done = task.completed - task.initial
            if done > 0:  # the rest is assumed to go at this process's pace so far
                said += f", ~{_duration(elapsed * (task.total - task.completed) / done)} left"
            self._print(task, now, said)
            task.logged_at, task.logged_tenth = now, tenth

    def remove_task(self, task_id: int) -> None:
        self._stop_timer(self._tasks.pop(task_id))

    def _tick(self, task: _Task) -> None:
        while not task.stop_timer.wait(self._timer_seconds):
            now = self._clock()
            self._print(task, now, f"{_duration(now - task.started)} elapsed")

    @staticmethod
    def _stop_timer(task: _Task) -> None:
        if task.stop_timer is not None:
            task.stop_timer.set()

    def _print(self, task: _Task, now: float, status: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        if task.stop_timer is not None:  # no counts to show
            line = f"[{stamp}] {task.description}: {status}"
        else:
            percent = int(100 * task.completed / task.total) if task.total else 100
            line = f"[{stamp}] {task.description}: {task.completed:.0f}/{task.total:.0f} ({percent}%), {status}"
        if task.status:
            line += f"; {task.status}"
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
