"""The default thread count: the cores nothing else is using when a run starts, and as it goes on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console

from tests.test_stale_results import base_config, models  # noqa: F401  (a fixture)
from tuneorprompt.experiment import run_experiment
from tuneorprompt.machine import (
    SAMPLE_SECONDS, CpuReading, ThreadsFollowLoad, free_cores, peak_rss_mb, reset_peak_rss, threads_for_load,
)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_core_kept_busy_by_another_process_is_not_counted_free():
    cores = len(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert 1 <= free_cores(window_seconds=0.5) <= max(1, cores - 1)
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux resets the peak RSS")
def test_peak_memory_is_measured_from_the_last_reset():
    reset_peak_rss()
    before = peak_rss_mb()
    block = bytearray(64 * 2**20)  # 64 MiB, touched
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert peak_rss_mb() >= before + 60
    del block
    reset_peak_rss()
    assert peak_rss_mb() < before + 60


# ---- threads that follow the load ------------------------------------------------------------------------


@pytest.mark.parametrize("others, threads", [
    ([0.0], 2),  # alone: every core
    ([0.2], 2),  # a blip (a shell, a log write) leaves the core ours
    ([1.0], 1),  # a CPU-bound neighbour takes a core
    ([0.4], 1),  # even a third of a core shared makes torch's threads wait for each other
    ([0.0, 0.0, 1.0], 1),  # lowered at the first busy sample
    ([1.0, 0.0, 0.0], 1),  # raised only once every sample kept is quiet
    ([3.0], 1),  # more work than cores: never below one thread
])
def test_the_thread_count_is_the_cores_other_processes_leave_free(others, threads):
    assert threads_for_load(others, cpus=2, ceiling=2) == threads


def test_the_thread_count_stays_within_the_ceiling():
    assert threads_for_load([0.0], cpus=16, ceiling=4) == 4
    assert threads_for_load([5.0], cpus=16, ceiling=4) == 4
    assert threads_for_load([13.0], cpus=16, ceiling=4) == 3


class Machine:
    """The load as a test scripts it: each reading is `SAMPLE_SECONDS` and a bit after the last, with
    `others` cores busy with other work meanwhile and this process computing on one."""

    def __init__(self, others: list[float]):
        self.others = iter(others)
        self.at = self.busy = self.own = 0.0

    def __call__(self) -> CpuReading:
        reading = CpuReading(self.at, self.busy, self.own)
        wall = SAMPLE_SECONDS * 1.1
        self.at += wall
        self.busy += (next(self.others, 0.0) + 1.0) * wall  # the machine's busy time counts ours too
        self.own += 1.0 * wall
        return reading


def test_torch_threads_drop_when_a_neighbour_starts_and_come_back_after_it_stops(monkeypatch):
    follower = ThreadsFollowLoad(initial=2, ceiling=2, read=Machine([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    monkeypatch.setattr(follower, "cpus", 2)
    torch.set_num_threads(2)
    try:
        seen = []
        for _ in range(7):
            follower.check()
            seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(1)  # as conftest set it for the rest of the tests
    assert seen == [2, 1, 1, 1, 1, 2, 2]  # down at once; up after three quiet samples
    assert [(c["from"], c["to"]) for c in follower.changes] == [(2, 1), (1, 2)]
    assert "other processes kept 1.0 of 2 CPU cores busy" in follower.changes[0]["why"]


def test_a_run_records_its_thread_changes_in_environment_json_and_the_report(models, tmp_path, monkeypatch):
    """The load is scripted (quiet, then a neighbour for good), so the run must change its count at
    least once whatever it chose at start; each change is kept with its time, from, to and why."""
    machine = Machine([0.0] * 4 + [2.0] * 1000)
    monkeypatch.setattr("tuneorprompt.machine.read_cpu", machine)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    config = base_config(tmp_path / "data", models["model"])
    config["model"] = {**config["model"], "num_threads": None, "batch_size": 1}
    try:
        result = run_experiment(config, tmp_path / "run", console=Console(file=io.StringIO()))
    finally:
        torch.set_num_threads(1)
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    changes = environment["thread_changes"]
    assert environment["threads_follow_load"] and changes
    assert changes[-1]["to"] == 1 and "of 2 CPU cores busy" in changes[-1]["why"]
    assert all(earlier["to"] == later["from"] for earlier, later in zip(changes, changes[1:]))
    assert all(set(change) == {"time", "from", "to", "why"} for change in changes)
    assert result.report.environment["thread_changes"] == changes


def test_a_thread_count_the_user_gave_is_kept(models, tmp_path, monkeypatch):
    monkeypatch.setattr("tuneorprompt.machine.read_cpu", Machine([2.0] * 1000))
    config = base_config(tmp_path / "data", models["model"])  # model.num_threads: 1
    run_experiment(config, tmp_path / "run", console=Console(file=io.StringIO()))
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert (environment["threads_follow_load"], environment["thread_changes"]) == (False, [])
