"""Golden reports: the bundled demos' report.json as a refactor must leave it.

A report is compared without what a machine's speed or a run's folder decides (timings, memory,
prices from timings, the environment, paths under the run directory). What remains (every
accuracy, interval, paired test, cost estimate, note and sentence of the verdict) must be
byte-identical after a change that is meant to change no behaviour.

Floating point on another CPU (another SIMD width) can round a kernel differently and flip a near
tie in a greedy decode or a training step, so a golden file is compared only on the CPU capability
and torch version it was written with; elsewhere the test says why it skips.

Written by `python -m tests.golden_reports RUN_DIR NAME` after a run of `tuneorprompt demo`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "golden"

# Keys whose values depend on the machine's speed or load, not on the protocol.
MACHINE_KEYS = frozenset({
    "seconds_per_query", "queries_per_second", "wall_seconds", "peak_rss_mb", "peak_gpu_mb", "dev_seconds",
    "seconds", "price", "total_price_at_expected_queries", "environment",
})


def machine() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def normalized(report: dict, run_dir: Path) -> dict:
    """The report without machine-dependent values; run-directory paths as <run>, and the installed
    package's folder (the bundled testbed model's path) as <package>."""
    import tuneorprompt

    package = str(Path(tuneorprompt.__file__).parent)

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in MACHINE_KEYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace(str(run_dir), "<run>").replace(package, "<package>")
        return value

    return clean(report)


def as_text(report: dict) -> str:
    """What is compared: JSON in the report's own key order (floats round-trip exactly by repr)."""
    return json.dumps(report, indent=1, ensure_ascii=False)


def golden_path(name: str) -> Path:
    return HERE / f"{name}.json"


def read_golden(name: str) -> tuple[dict[str, str], dict]:
    stored = json.loads(golden_path(name).read_text(encoding="utf-8"))
    return stored["machine"], stored["report"]


def write_golden(run_dir: Path, name: str) -> None:
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    stored = {"machine": machine(), "report": normalized(report, run_dir)}
    golden_path(name).write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_golden(Path(sys.argv[1]).resolve(), sys.argv[2])
