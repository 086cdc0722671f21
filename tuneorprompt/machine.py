"""What this process takes of the machine: CPU threads, and peak memory per arm.

Threads. `model.num_threads: null` (the default) uses the CPU cores that are free when the model
loads. Measured with benchmarks/bench_threads.py (SmolLM2-135M, batched greedy decoding, 2 cores):
alone, 2 threads ran 1.84x the examples/s of 1 (13.1 against 7.1); with another CPU-bound process
running, 1 thread kept its speed (7.05) while 2 threads fell to 4.1, 0.58x of 1 thread, as torch's
threads wait for each other on a shared core. So the default takes every core nothing else is using.

And it keeps doing so while the run goes on (`ThreadsFollowLoad`): a job that starts beside the run
later would otherwise slow it several times over (the real demo, 2 threads chosen at start, took 978 s
instead of about 144 s once a CPU-bound neighbour started). Between generation batches and training
steps the run measures how many cores other processes kept busy since the last look, lowers torch's
thread count at once when they take a core, and raises it again once several looks in a row find the
cores free. Each change is recorded in environment.json.

Memory. Linux keeps the peak (VmHWM) and lets a process reset it to its current RSS, so a peak read
after an arm is that arm's: what it held at its highest, including the base model loaded before it.
Elsewhere there is no reset, and the peak is the process's lifetime one.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence


def free_cores(window_seconds: float = 0.2) -> int:
    """CPU cores not busy with other work, from two readings of /proc/stat `window_seconds` apart
    (this process is idle meanwhile). At least 1; all of them where /proc/stat cannot be read."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        first = _cpu_times()
        time.sleep(window_seconds)
        second = _cpu_times()
    except (OSError, ValueError):
        return cores
    busy, total = (b - a for a, b in zip(first, second))
    all_cores = os.cpu_count() or cores
    busy_cores = all_cores * busy / total if total > 0 else 0.0
    # A core counts as busy when more than half used: round, not ceil, so a background blip keeps it.
    return max(1, min(cores, all_cores - round(busy_cores)))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot: the first line of /proc/stat, idle and iowait not busy."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


# ---- threads that follow the load ---------------------------------------------------------------------

# A core counts as taken by other work when it is busy more than this share of the time: a brief blip
# (a shell, a log write) leaves it ours, while a neighbour using even a third of a core makes torch's
# threads wait for the one that shares it at every parallel region.
TAKEN_ABOVE = 0.25
SAMPLE_SECONDS = 1.0  # the shortest window a load sample covers: shorter ones are mostly noise
SAMPLES_KEPT = 3  # a thread comes back only once this many samples in a row find its core free


def threads_for_load(others_busy: Sequence[float], cpus: int, ceiling: int) -> int:
    """Torch threads to compute with, from recent samples (at least one) of how many CPU cores other
    processes kept busy: the cores left free in the busiest of them, between 1 and `ceiling`. The
    busiest, so that one sample with a neighbour lowers the count, and only a run of quiet ones raises it."""
    taken = max(0, math.ceil(max(others_busy) - TAKEN_ABOVE))
    return max(1, min(ceiling, cpus - taken))


@dataclass(frozen=True)
class CpuReading:
    at: float  # seconds, monotonic clock
    busy: float  # CPU-seconds all cores have been busy since boot (/proc/stat; idle and iowait not busy)
    own: float  # CPU-seconds this process has used (every thread, user and system)


def read_cpu() -> CpuReading | None:
    """The machine's and this process's CPU time now; None where /proc/stat cannot be read."""
    try:
        busy_jiffies, _ = _cpu_times()
    except (OSError, ValueError):
        return None
    own = os.times()
    return CpuReading(time.monotonic(), busy_jiffies / os.sysconf("SC_CLK_TCK"), own.user + own.system)


def others_busy(first: CpuReading, second: CpuReading) -> float:
    """Cores kept busy by other processes between two readings: all busy time less this process's own."""
    wall = second.at - first.at
    return max(0.0, ((second.busy - first.busy) - (second.own - first.own)) / wall) if wall > 0 else 0.0


class ThreadsFollowLoad:
    """Torch's thread count kept to the cores other processes leave free (`threads_for_load`), looked at
    whenever `check` is called (during generation and training) and at least `SAMPLE_SECONDS` apart;
    `changes` lists each change: its time, from, to, and why."""

    def __init__(self, initial: int, ceiling: int, read: Callable[[], CpuReading | None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.threads = initial
        self.ceiling = ceiling
        self.cpus = os.cpu_count() or ceiling
        self.changes: list[dict] = []
        self._read = read or (lambda: read_cpu())  # looked up at each call: a test scripts the machine's load
        self._clock = clock
        self._last = self._read()
        self._samples: list[float] = []

    def check(self) -> None:
        reading = self._read()
        if reading is None or self._last is None or reading.at - self._last.at < SAMPLE_SECONDS:
            return
        self._samples = [*self._samples, others_busy(self._last, reading)][-SAMPLES_KEPT:]
        self._last = reading
        wanted = threads_for_load(self._samples, self.cpus, self.ceiling)
        if wanted != self.threads:
            why = (f"other processes kept {max(self._samples):.1f} of {self.cpus} CPU cores busy over the last "
                   f"{len(self._samples)} samples")
            self.changes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._clock())),
                                 "from": self.threads, "to": wanted, "why": why})
            self.threads = wanted
        self.apply()

    def apply(self) -> None:
        """Set torch's count to the one chosen (torch is not imported for it: a run that computes nothing
        with torch has no threads to set)."""
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


# The run's follower, while one runs (`threads_follow_load`): torch's thread count is one per process.
_following: ThreadsFollowLoad | None = None


@contextmanager
def threads_follow_load(initial: int) -> Iterator[ThreadsFollowLoad]:
    """While inside, `check_load` and `use_threads` keep torch's threads to the free cores, starting
    from `initial` and never above the cores this process may run on."""
    global _following
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    follower, previous = ThreadsFollowLoad(initial, max(initial, cores)), _following
    _following = follower
    try:
        yield follower
    finally:
        _following = previous


def check_load() -> None:
    """Between generated tokens (at most once a second), batches and training steps: a look at the
    load, when a run follows it."""
    if _following is not None:
        _following.check()


def use_threads(configured: int) -> None:
    """Torch computes with `configured` threads (`model.num_threads` as resolved), or, while a run
    follows the load, with the count the load allows now."""
    import torch

    if _following is None:
        torch.set_num_threads(configured)
    else:
        _following.apply()


def reset_peak_rss() -> None:
    """Linux: writing 5 to /proc/self/clear_refs resets the process's peak RSS to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The process's peak resident set size since the last reset, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource  # not on Windows

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux
