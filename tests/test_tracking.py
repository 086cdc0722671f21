"""MLflow tracking against a real local SQLite store, read back through `MlflowClient`: what a
finished run logs, and that a failed or killed run never stays RUNNING nor loses its files."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

pytest.importorskip("mlflow", reason="tracking tests need the mlflow extra: pip install -e '.[mlflow]'")
from mlflow import MlflowClient  # noqa: E402

from tests.fakes import ScriptedBackend  # noqa: E402
from tests.test_experiment import answer_by_instruction, write_task  # noqa: E402
from tests.test_report import records  # noqa: E402
from tuneorprompt.config import ConfigError, config_from_dict  # noqa: E402
from tuneorprompt.data import OverlapReport  # noqa: E402
from tuneorprompt.experiment import run_experiment  # noqa: E402
from tuneorprompt.report import build_report  # noqa: E402
from tuneorprompt.summary import summarize_arm  # noqa: E402
from tuneorprompt.tracking import (  # noqa: E402
    MAX_PARAM_VALUE,
    PROBE_SECONDS,
    TrackingError,
    check_tracking,
    config_params,
    metric_prefix,
    result_metrics,
)


def tracked_config(tmp_path, **tracking) -> dict:
    return {
        "name": "tracked",
        "model": {"path": "unused-with-an-injected-backend"},
        "data": write_task(tmp_path / "data", n=12),
        "arms": ["baseline", {"kind": "few_shot", "k": [2]}],
        "target": {"accuracy": 0.3},
        "tracking": {"backend": "mlflow", **tracking},
    }


def only_run(run_dir, experiment="tracked"):
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {run_dir / 'mlflow.db'}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_a_finished_run_logs_config_results_recommendation_and_report(tmp_path):
    run_dir = tmp_path / "run"
    result = run_experiment(tracked_config(tmp_path), run_dir, backend=ScriptedBackend(answer_by_instruction))
    client, run = only_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"

    params = run.data.params
    assert params["model.path"] == "unused-with-an-injected-backend"
    assert params["arms.0.kind"] == "baseline" and params["arms.1.k"] == "[2]"
    assert params["target.accuracy"] == "0.3" and params["tracking.uri"] == "null"

    metrics = run.data.metrics
    for arm in result.report.to_dict()["arms"]:  # as report.json gives them
        prefix = metric_prefix(arm["name"])
        for figure in ("accuracy", "accuracy_lenient", "relevance"):
            assert metrics[f"{prefix}/{figure}"] == pytest.approx(arm[figure]["value"])
            assert metrics[f"{prefix}/{figure}_ci_low"] == pytest.approx(arm[figure]["ci_low"])
            assert metrics[f"{prefix}/{figure}_ci_high"] == pytest.approx(arm[figure]["ci_high"])
        assert metrics[f"{prefix}/prompt_tokens"] == pytest.approx(arm["prompt_tokens"])
        # A scripted backend is a model of unknown size: no FLOPs figure, and none logged.
        assert arm["flops_per_query"] is None and f"{prefix}/flops_per_query" not in metrics
    assert "few_shot_2/accuracy" in metrics  # `few_shot@2`: `@` is not allowed in an MLflow name

    tags = run.data.tags
    assert tags["recommendation"] == (result.report.recommendation.arm or "none")
    assert tags["recommendation.reason"] == result.report.recommendation.reason
    assert json.loads(tags["arms"]) == {"baseline": "baseline", "few_shot_2": "few_shot@2"}

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.html", "config.yaml", "environment.json"} <= artifacts
    # The default store keeps its artifacts in the run directory, not in ./mlruns of the caller.
    assert (run_dir / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_a_failed_run_is_marked_failed(tmp_path):
    def broken(prompt: str) -> str:
        raise RuntimeError("the model server went away")

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="went away"):
        run_experiment(tracked_config(tmp_path), run_dir, backend=ScriptedBackend(broken))
    _, run = only_run(run_dir)
    assert run.info.status == "FAILED"
    assert run.data.params["model.path"]  # params were logged at the start


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_stopped_by_ctrl_c_or_sigterm_is_marked_killed(tmp_path, signum):
    # Python's own Ctrl-C handler, also where this process was started with SIGINT ignored (a shell
    # starts background jobs so, and Python then leaves it ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def killed(prompt: str) -> str:
        # Ctrl-C, or what a scheduler's timeout sends (terminate_as_interrupt makes it RunInterrupted).
        os.kill(os.getpid(), signum)
        return " unreachable\n"

    run_dir = tmp_path / "run"
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(tracked_config(tmp_path), run_dir, backend=ScriptedBackend(killed))
    finally:
        signal.signal(signal.SIGINT, previous)
    _, run = only_run(run_dir)
    assert run.info.status == "KILLED"


def test_a_tracker_that_fails_only_warns_and_the_results_are_kept(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(MlflowClient, "log_artifact", refuse)
    out = io.StringIO()
    run_dir = tmp_path / "run"
    run_experiment(tracked_config(tmp_path), run_dir, backend=ScriptedBackend(answer_by_instruction),
                   console=Console(file=out, width=400))
    assert "Tracking warning" in out.getvalue() and "artifact store full" in out.getvalue()
    assert (run_dir / "report.json").is_file() and (run_dir / "report.html").is_file()
    _, run = only_run(run_dir)
    assert run.info.status == "FINISHED"


def test_an_unreachable_tracker_leaves_the_run_untracked_with_a_warning(tmp_path):
    out = io.StringIO()
    run_dir = tmp_path / "run"
    result = run_experiment(tracked_config(tmp_path, uri="nosuchscheme://tracker"), run_dir,
                            backend=ScriptedBackend(answer_by_instruction), console=Console(file=out, width=400))
    assert "cannot start an MLflow run at nosuchscheme://tracker" in out.getvalue()
    assert result.report.arms and (run_dir / "report.json").is_file()


def unanswered_port(listening: bool) -> socket.socket:
    """A local port that refuses connections, or (listening) one whose queue accepts them and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen(16)  # the kernel completes the connections; nothing ever reads the requests
    return sock


@pytest.mark.parametrize("listening", [False, True], ids=["closed port", "never answers"])
def test_an_mlflow_server_that_is_down_or_silent_is_warned_about_at_plan_time_within_seconds(tmp_path, listening):
    # MLflow's own client retries 7 times with backoff, 120 s each: minutes before any warning.
    with unanswered_port(listening) as sock:
        port = sock.getsockname()[1]
        url = f"http://user:hunter2@127.0.0.1:{port}"
        out = io.StringIO()
        started = time.monotonic()
        tracked = check_tracking(config_from_dict(tracked_config(tmp_path, uri=url)).tracking,
                                 Console(file=out, width=1000))
        seconds = time.monotonic() - started
    print(f"{'silent' if listening else 'closed'}: warned after {seconds:.1f} s")
    assert tracked is False
    assert seconds < PROBE_SECONDS + 3
    warning, = out.getvalue().splitlines()
    assert warning.startswith(f"Tracking warning: the MLflow server at http://***@127.0.0.1:{port} "
                              "did not answer (")
    assert f"a first request waits {PROBE_SECONDS} s, without retries); this run is not tracked" in warning
    assert ("timed out" if listening else "Connection refused") in warning and "hunter2" not in warning


def test_a_run_with_an_mlflow_server_that_is_down_warns_once_and_runs_untracked(tmp_path):
    out = io.StringIO()
    with unanswered_port(listening=False) as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        run_experiment(tracked_config(tmp_path, uri=url), tmp_path / "run",
                       backend=ScriptedBackend(answer_by_instruction), console=Console(file=out, width=400))
    assert [line for line in out.getvalue().splitlines() if "Tracking warning" in line] == [
        line for line in out.getvalue().splitlines() if "did not answer" in line] != []
    assert (tmp_path / "run" / "report.json").is_file()


STUCK_IN_AN_ARM = """
import json, sys, time
from pathlib import Path
from tests.fakes import ScriptedBackend
from tuneorprompt.experiment import run_experiment

def stuck(prompt):
    print("answering", flush=True)
    time.sleep(600)

run_experiment(json.loads(sys.argv[1]), Path(sys.argv[2]), backend=ScriptedBackend(stuck))
"""


@pytest.mark.slow
def test_a_run_left_running_by_kill_9_is_marked_killed_by_the_next_run_into_its_directory(tmp_path):
    config, run_dir = tracked_config(tmp_path), tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    killed = subprocess.Popen([sys.executable, "-c", STUCK_IN_AN_ARM, json.dumps(config), str(run_dir)], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline() == "answering\n"
    finally:
        killed.kill()  # SIGKILL: no handler, no cleanup
        killed.wait()
    client, left = only_run(run_dir)
    assert left.info.status == "RUNNING" and left.info.end_time is None  # what kill -9 leaves
    other_dir = tmp_path / "other"  # another run directory's run, in the same store's experiment, is left alone
    run_experiment(tracked_config(tmp_path, uri=f"sqlite:///{run_dir / 'mlflow.db'}"), other_dir,
                   backend=ScriptedBackend(answer_by_instruction))
    before = time.time() * 1000

    run_experiment(config, run_dir, backend=ScriptedBackend(answer_by_instruction))
    runs = {run.info.run_id: run for run in client.search_runs([left.info.experiment_id])}
    assert len(runs) == 3
    old = runs.pop(left.info.run_id)
    assert old.info.status == "KILLED" and old.info.end_time >= before
    assert sorted(run.info.status for run in runs.values()) == ["FINISHED", "FINISHED"]


def test_an_experiment_name_and_uri_are_used_as_given(tmp_path, monkeypatch):
    store = tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    run_dir = tmp_path / "run"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the working directory
    run_experiment(tracked_config(tmp_path, uri=f"sqlite:///{store}", experiment="team"), run_dir,
                   backend=ScriptedBackend(answer_by_instruction))
    assert not (run_dir / "mlflow.db").exists()
    _, run = only_run(store.parent, experiment="team")
    assert run.info.status == "FINISHED"


def test_a_custom_sqlite_store_keeps_artifacts_beside_it_not_in_the_working_directory(tmp_path, monkeypatch):
    store = tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    run_experiment(tracked_config(tmp_path, uri=f"sqlite:///{store}"), tmp_path / "run",
                   backend=ScriptedBackend(answer_by_instruction))
    client, run = only_run(store.parent)
    assert run.info.artifact_uri.startswith((store.parent / "mlartifacts").as_uri())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "config.yaml"}
    assert list((tmp_path / "cwd").iterdir()) == []  # no ./mlruns, nothing else


def test_a_sqlite_uri_in_a_missing_folder_is_refused_before_the_run(tmp_path):
    missing = tmp_path / "nonexistent" / "dir"
    config = config_from_dict(tracked_config(tmp_path, uri=f"sqlite:///{missing / 'mlflow.db'}"))
    with pytest.raises(TrackingError, match=r"^tracking\.uri: .*the folder .*nonexistent/dir does not exist"):
        run_experiment(config, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert not missing.parent.exists() and not (tmp_path / "run").exists()


# ---- config and names -----------------------------------------------------------------------------


def test_params_are_flat_masked_and_cut_to_mlflows_limit():
    params = config_params({
        "model": {"path": "gpt2", "api_key": "sk-123", "headers": {"Authorization": "Bearer x"}},
        "prompt": {"instructions": ["x" * 10_000]},
        "generation": {"max_new_tokens": 32, "stop": ["\n"]},
        "seeds": [0, 1],
        "costs": {"price_per_hour": None},
    })
    assert params["model.path"] == "gpt2"
    assert params["model.api_key"] == "***" and params["model.headers.Authorization"] == "***"
    assert params["generation.max_new_tokens"] == "32" and params["generation.stop"] == '["\\n"]'
    assert params["seeds"] == "[0, 1]" and params["costs.price_per_hour"] == "null"
    assert len(params["prompt.instructions"]) == MAX_PARAM_VALUE
    assert params["prompt.instructions"].endswith("[truncated; the full value is in the config.yaml artifact]")


def test_training_costs_and_prices_become_metrics_and_unmeasured_ones_are_left_out():
    cost = {"wall_seconds": 30.0, "train_tokens": 500, "trainable_params": 10, "total_params": 1000,
            "peak_rss_mb": 1.0, "peak_gpu_mb": None, "adapter_mb": 1.0, "flops": 1e12, "extra": {"learning_rate": 1e-4}}
    by_arm = {"lora+instruction": [records("lora+instruction", 0, right=6)]}  # 6 of 6 right, 0.01 s per query
    config = config_from_dict({
        "name": "priced", "model": {"path": "unused"},
        "data": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
        "arms": [{"kind": "lora", "instruction": True}], "target": {"accuracy": 0.3},
        "costs": {"price_per_hour": 3.6, "expected_queries": 10},
    })
    # No parameter count (a served model): no FLOPs per query.
    summary = summarize_arm("lora+instruction", "lora", by_arm["lora+instruction"], [{"training": cost}],
                            num_parameters=None, family="finetune", backend="hf")
    report = build_report(config=config, summaries=[summary], records=by_arm, overlap=OverlapReport(6, ()),
                          split_sizes={"train": 20, "dev": 4, "test": 6}, environment={})
    metrics = result_metrics(report)
    assert metrics["lora_instruction/accuracy_ci_low"] == report.arms[0].accuracy.ci_low
    assert metrics["lora_instruction/meets_target"] == 1.0
    assert metrics["lora_instruction/training_seconds"] == 30.0 and metrics["lora_instruction/training_flops"] == 1e12
    assert metrics["lora_instruction/price_per_query"] == pytest.approx(3.6 * 0.01 / 3600)
    assert metrics["lora_instruction/total_price_at_expected_queries"] == pytest.approx(3.6 * (30 + 10 * 0.01) / 3600)
    for absent in ("flops_per_query", "training_peak_gpu_mb", "training_extra"):
        assert f"lora_instruction/{absent}" not in metrics


def test_arm_names_become_valid_metric_prefixes():
    assert metric_prefix("few_shot@2") == "few_shot_2"
    assert metric_prefix("lora+instruction") == "lora_instruction"
    assert metric_prefix("baseline") == "baseline"


def test_an_unknown_tracking_key_is_named(tmp_path):
    raw = tracked_config(tmp_path)
    raw["tracking"]["urii"] = "x"
    with pytest.raises(ConfigError, match=r"tracking\.urii: unknown key"):
        config_from_dict(raw)
    raw["tracking"] = {"backend": "wandb"}
    with pytest.raises(ConfigError, match=r"tracking\.backend"):
        config_from_dict(raw)


def test_tracking_without_mlflow_installed_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    config = config_from_dict(tracked_config(tmp_path))
    with pytest.raises(TrackingError, match=r"tracking\.backend: mlflow .*tuneorprompt\[mlflow\]"):
        check_tracking(config.tracking)
    with pytest.raises(TrackingError):
        run_experiment(config, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert not (tmp_path / "run").exists()
