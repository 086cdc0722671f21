"""Progress in a terminal (rich's bars) and in a log (plain lines), timed by a clock the test moves."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console
from rich.progress import Progress

from tuneorprompt.progress import LogProgress, make_progress

START = 1_800_000_000.0  # seconds since the epoch


class Clock:
    """Stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def log_console(width: int = 200) -> Console:
    return Console(file=io.StringIO(), width=width)  # a file, as under nohup or in CI


def lines(console: Console) -> list[str]:
    """Printed lines, each checked for and stripped of its [HH:MM:SS] stamp."""
    out = []
    for line in console.file.getvalue().splitlines():
        assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] .*", line), line
        out.append(line[11:])
    return out


def test_a_log_gets_a_line_at_start_each_tenth_or_ten_seconds_and_finish():
    console, clock = log_console(), Clock()
    with make_progress(console, clock) as progress:
        task = progress.add_task("lora [seed 0] test", total=200)
        for seconds, done in ((1, 5), (2, 15), (5, 5), (12, 5), (20, 170)):
            clock.now = START + seconds
            progress.advance(task, done)
        progress.remove_task(task)
    assert lines(console) == [
        "lora [seed 0] test: 0/200 (0%), started",
        "lora [seed 0] test: 20/200 (10%), 2 s elapsed, ~18 s left",  # a tenth done
        "lora [seed 0] test: 30/200 (15%), 12 s elapsed, ~1 min 08 s left",  # 10 s since the last line
        "lora [seed 0] test: 200/200 (100%), 20 s elapsed, done",
    ]


def test_the_stamp_is_the_clock_time_of_day():
    console, clock = log_console(), Clock()
    make_progress(console, clock).add_task("x", total=1)
    assert console.file.getvalue().startswith(f"[{time.strftime('%H:%M:%S', time.localtime(START))}] x: 0/1")


def test_long_runs_read_in_hours_and_tasks_are_kept_apart():
    console, clock = log_console(), Clock()
    progress = make_progress(console, clock)
    train, test = progress.add_task("full [seed 0] dev", total=10), progress.add_task("baseline [seed 0] test", total=4)
    clock.now = START + 5000
    progress.advance(train, 1)
    progress.advance(test, 4)
    assert lines(console)[2:] == [
        "full [seed 0] dev: 1/10 (10%), 1 h 23 min elapsed, ~12 h 30 min left",
        "baseline [seed 0] test: 4/4 (100%), 1 h 23 min elapsed, done",
    ]


def test_a_line_longer_than_the_console_is_not_wrapped():
    console = log_console(width=30)
    make_progress(console, Clock()).add_task("few_shot_knn@16 [seed 3] test", total=1000)
    assert lines(console) == ["few_shot_knn@16 [seed 3] test: 0/1000 (0%), started"]


def test_a_terminal_gets_rich_bars_that_keep_the_seed_in_the_description():
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=120)
    progress = make_progress(console, Clock())
    assert isinstance(progress, Progress)
    with progress:
        progress.add_task("few_shot@2 [seed 0] test", total=4)
        progress.refresh()
    assert "few_shot@2 [seed 0] test" in console.file.getvalue()


def test_control_characters_in_a_description_are_shown_escaped_in_bars_and_lines():
    bars = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=120)
    for console in (bars, log_console()):
        with make_progress(console, Clock()) as progress:
            progress.add_task("arm\x1b]0;pwned\x07 test", total=4)
            if console is bars:
                progress.refresh()  # draw the bar now, as the test's clock never moves
        shown = console.file.getvalue()
        assert "\x1b]0;pwned" not in shown and "\x07" not in shown  # the window title stays the terminal's
        assert "arm\\x1b]0;pwned\\x07 test" in shown


def test_a_dumb_terminal_gets_log_lines():
    """TERM=dumb: rich cannot redraw a bar there, and a transient one would print nothing."""
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=False, width=120)
    assert isinstance(make_progress(console, Clock()), LogProgress)
