"""What this process takes of the machine: CPU threads, and peak memory per arm.

Threads. `model.num_threads: null` (the default) uses the CPU cores that are free when the model
loads. Measured with benchmarks/bench_threads.py (SmolLM2-135M, batched greedy decoding, 2 cores):
alone, 2 threads ran 1.84x the examples/s of 1 (13.1 against 7.1); with another CPU-bound process
running, 1 thread kept its speed (7.05) while 2 threads fell to 4.1, 0.58x of 1 thread, as torch's
threads wait for each other on a shared core. So the default takes every core nothing else is using.

Memory. Linux keeps the peak (VmHWM) and lets a process reset it to its current RSS, so a peak read
after an arm is that arm's: what it held at its highest, including the base model loaded before it.
Elsewhere there is no reset, and the peak is the process's lifetime one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


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
