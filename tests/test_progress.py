"""Progress in a terminal (rich's bars) and in a log (plain lines), timed by a clock the test moves."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console
from rich.progress import Progress

from tuneorprompt.progress import LogProgress, long_step, make_progress

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


def test_a_step_of_unknown_length_logs_its_start_a_line_every_period_while_it_runs_and_its_end():
    """Loading or converting a model advances nothing: a timer keeps the log saying it is still at work."""
    console, clock = log_console(), Clock()
    progress = LogProgress(console, clock, timer_seconds=0.01)
    with long_step(progress, "loading model m"):
        clock.now = START + 25
        deadline = time.monotonic() + 5
        while console.file.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        clock.now = START + 90
    shown = lines(console)
    assert shown[0] == "loading model m: started"
    assert shown[1:3] == ["loading model m: 25 s elapsed"] * 2
    assert shown[-1] == "loading model m: 1 min 30 s elapsed, done"
    time.sleep(0.05)
    assert console.file.getvalue().count("\n") == len(shown)  # the timer stopped with the step


def test_a_failed_step_stops_its_timer_without_saying_done():
    console = log_console()
    progress = LogProgress(console, Clock(), timer_seconds=0.01)
    with pytest.raises(OSError):
        with long_step(progress, "converting m.gguf"):
            raise OSError("disk full")
    time.sleep(0.05)
    assert lines(console) == ["converting m.gguf: started"]


def test_training_status_and_a_resumed_tasks_pace_in_lines_and_bars():
    console, clock = log_console(), Clock()
    progress = make_progress(console, clock)
    task = progress.add_task("lora [seed 0] training", total=100, completed=60, status="epoch 1.80/3")
    clock.now = START + 10
    progress.update(task, advance=10, status="epoch 2.10/3, loss 1.2345, lr 5.00e-04")
    # 10 steps in 10 s since this process resumed at step 60: 30 left take ~30 s, not the 4 s the
    # 70 steps done would suggest.
    assert lines(console) == [
        "lora [seed 0] training: 60/100 (60%), started; epoch 1.80/3",
        "lora [seed 0] training: 70/100 (70%), 10 s elapsed, ~30 s left; epoch 2.10/3, loss 1.2345, lr 5.00e-04",
    ]
    bars = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=160)
    with make_progress(bars, Clock()) as progress:
        progress.add_task("lora [seed 0] training", total=100, status="epoch 2.10/3, loss 1.2345")
        progress.refresh()
    assert "epoch 2.10/3, loss 1.2345" in bars.file.getvalue()
