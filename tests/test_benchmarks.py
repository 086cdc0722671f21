"""The benchmark scripts in their smoke mode, as CI runs them: each runs end to end on the testbed
model, checks its own invariants (answers identical on every path, ...) and exits non-zero when one
fails. Their figures are not asserted: timings are the scripts' business, not a unit test's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.json"

SMOKE = {
    "bench_generation": ["--model", "testbed", "--smoke"],
    "bench_training": ["--model", "testbed", "--smoke"],
    "bench_threads": ["--model", "testbed", "--smoke"],
    "bench_lm_eval": ["--model", "testbed", "--smoke"],
    "bench_demo": ["--smoke"],
    "bench_stats": ["--smoke"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_in_smoke_mode_and_writes_nothing(script):
    if script == "bench_lm_eval" and importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (pip install -e '.[bench]'; CI installs it)")
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *SMOKE[script]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before  # smoke figures are not results


def test_committed_results_carry_every_figure_the_readme_reports():
    results = json.loads(RESULTS.read_text())
    for key in ("eval_speedup_vs_naive", "eval_speedup_vs_lm_eval", "predictions_identical_to_lm_eval",
                "rerun_time_fraction", "ft_speedup_vs_naive", "ft_fraction_of_matmul_peak", "demo_seconds",
                "real_demo_seconds", "demo_peak_rss_mb", "machine", "eval_threads"):
        assert key in results, key
