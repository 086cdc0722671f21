"""Peak resident memory of this process, for the cost of each arm (and of each fine-tuning job).

Linux keeps the peak (VmHWM) and lets a process reset it to its current RSS, so a peak read after
an arm is that arm's: what it held at its highest, including the base model loaded before it.
Elsewhere there is no reset, and the peak is the process's lifetime one.
"""

from __future__ import annotations

import sys
from pathlib import Path


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
