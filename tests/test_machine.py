"""The default thread count: the cores nothing else is using when a run starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tuneorprompt.machine import free_cores, peak_rss_mb, reset_peak_rss


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
