"""Experiment tracking: a run's config, results and report also logged to MLflow, to browse and
compare runs in `mlflow ui`.

The run directory stays the record; the tracker holds a copy. Two rules follow:
- A tracker that cannot be reached, or fails while logging, only warns: the run goes on, and its
  results are written to the run directory before anything is logged, so none is ever lost. An
  MLflow server is asked once before any work (`check_tracking`), within PROBE_SECONDS and without
  retries, so one that is down or never answers costs seconds, not the minutes of MLflow's retries.
- The tracked run always ends with a final status: FINISHED, FAILED on an exception, KILLED on
  Ctrl-C or SIGTERM (`rundir.terminate_as_interrupt` makes SIGTERM a KeyboardInterrupt); never
  left RUNNING, which MLflow would show forever as a run still in progress. A process killed
  outright (kill -9) cannot end its run: the next run into the same directory marks it KILLED.

What is logged (see `log_results` for the names): the resolved config as params (`model.path`,
`arms.0.kind`, ...), per arm the three headline figures with their 95% CI (`baseline/accuracy`,
`baseline/accuracy_ci_low`, ...) and its costs, the recommendation as tags, and report.json,
report.html, config.yaml and environment.json as artifacts.

The MLflow client is used directly (`MlflowClient`), not `mlflow.start_run`: the fluent API keeps
the tracking URI and the active run in global state, which a notebook's own MLflow use would share.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from rich.console import Console

from tuneorprompt.config import ExperimentConfig, TrackingConfig
from tuneorprompt.provenance import git_commit
from tuneorprompt.safe_text import for_terminal, mask_credentials

if TYPE_CHECKING:
    from tuneorprompt.report import Report

# MLflow's limits (mlflow/utils/validation.py): longer param values are refused, not cut, and a
# batch holds at most 100 params or tags and 1000 metrics.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
TRUNCATED = " ... [truncated; the full value is in the config.yaml artifact]"

# Metric and param names may hold only these characters; arm names such as `few_shot@2` or
# `lora+instruction` are logged with the others replaced by "_" (the `arms` tag maps them back).
_NOT_ALLOWED_IN_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")

# Config values that may carry credentials (an endpoint's key or headers) are not copied into
# params, which every viewer of the tracking server can read.
_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|token|authorization|headers|credentials?)$", re.I)

ARTIFACTS = ("report.json", "report.html", "config.yaml", "environment.json")
RUN_DIR_TAG = "tuneorprompt.run_dir"  # each MLflow run's run directory, resolved

# MLflow's client reads its HTTP limits from the environment on every request and takes them in no
# other way; a variable the user set is left as it is. By default it waits 120 s for an answer and
# retries 7 times with exponential backoff: about 4 minutes per call to a server that is down.
PROBE_SECONDS = 5  # the plan-time check: one request, no retry
RUN_RETRIES = 2  # each call during the run (backoff 2 s, 4 s); its timeout stays 120 s, for artifact uploads


class TrackingError(ValueError):
    """Tracking asked for and impossible before the run starts (MLflow not installed); a ValueError,
    so the CLI shows it as a set-up mistake with its message, not a traceback."""


def check_tracking(tracking: TrackingConfig | None, console: Console | None = None) -> bool:
    """Before any work: whether to track the run.

    Fails (TrackingError) when `tracking` names a tracker whose package is missing, or a SQLite store in a
    missing folder: set-up mistakes to fix now, not to find out after an hour of training. An MLflow
    server (an http or https URI) that does not answer a first request within PROBE_SECONDS only warns,
    one line on `console`, and the run goes on untracked, as it does after any tracker failure."""
    if tracking is None:
        return False
    try:
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401  # mlflow-skinny reads SQLite stores only with these two
        import alembic  # noqa: F401
    except ImportError as error:
        raise TrackingError(
            f"tracking.backend: mlflow needs the MLflow client ({error.name} is not installed): "
            "pip install 'tuneorprompt[mlflow]'"
        ) from None
    store = sqlite_store_path(tracking.uri) if tracking.uri else None
    if store is not None and not store.parent.is_dir():
        # SQLAlchemy would create the missing folders silently, a typo becoming a new directory tree.
        raise TrackingError(
            f"tracking.uri: {for_terminal(mask_credentials(tracking.uri))}: the folder {for_terminal(str(store.parent))} "
            "does not exist; create it first or fix the path"
        )
    if tracking.uri is None or tracking.uri.split(":", 1)[0].lower() not in ("http", "https"):
        return True
    from mlflow import MlflowClient

    try:
        with mlflow_http_limits(retries=0, timeout=PROBE_SECONDS):
            MlflowClient(tracking_uri=tracking.uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001  (refused, timed out, not an MLflow server, refused the token)
        _warn(console, f"the MLflow server at {mask_credentials(tracking.uri)} did not answer ({_root_cause(error)}; "
                       f"a first request waits {PROBE_SECONDS} s, without retries); this run is not tracked, its "
                       "results are written to its run directory as always")
        return False
    return True


def _root_cause(error: BaseException) -> str:
    """The first cause of `error`, in a few words: MLflow wraps the socket's error in three more, each
    quoting the last."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {mask_credentials(str(error))[:200]}"


@contextmanager
def mlflow_http_limits(retries: int, timeout: int | None = None) -> Iterator[None]:
    """Within the block, MLflow's HTTP requests retry at most `retries` times and wait `timeout` seconds
    (None: MLflow's own) for an answer, except where the user set MLFLOW_HTTP_REQUEST_MAX_RETRIES or
    MLFLOW_HTTP_REQUEST_TIMEOUT; the environment is as it was after the block."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries)}
    if timeout is not None:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    added = {name: value for name, value in wanted.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def sqlite_store_path(uri: str) -> Path | None:
    """The file of a `sqlite:///path` URI (`sqlite:////abs/path` absolute, `sqlite:///rel/path` from the
    working directory); None for another scheme or an in-memory database."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def artifact_location(uri: str | None, run_dir: Path) -> str | None:
    """Where a new experiment's artifacts go. MLflow's client would put those of a database store in
    ./mlruns of whatever directory the run was started from; instead: the run directory's `mlartifacts`
    for its own store, the folder of a shared SQLite store (`<its folder>/mlartifacts`), the run
    directory for another database. A server (http, databricks) or a file store places them itself (None)."""
    if uri is None:
        return (run_dir.resolve() / "mlartifacts").as_uri()
    store = sqlite_store_path(uri)
    if store is not None:
        return (store.resolve().parent / "mlartifacts").as_uri()
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        return (run_dir.resolve() / "mlartifacts").as_uri()
    return None


def tracking_uri(tracking: TrackingConfig, run_dir: Path) -> str:
    """The configured URI, or a SQLite store in the run directory (absolute, so the URI does not
    depend on the working directory of whoever opens it later)."""
    return tracking.uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


@contextmanager
def track_run(config: ExperimentConfig, run_dir: Path, console: Console, enabled: bool = True) -> Iterator[Tracker]:
    """Within the block, an MLflow run is open (or nothing, without `config.tracking`); it ends
    FINISHED when the block completes, KILLED on KeyboardInterrupt, FAILED on any other exception.
    The exception itself always propagates unchanged."""
    tracker = Tracker.start(config, Path(run_dir), console) if enabled and config.tracking else Tracker(None, None)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")


class Tracker:
    """One MLflow run; every method warns instead of raising. Without a client it does nothing."""

    def __init__(self, client: Any, run_id: str | None, run_dir: Path | None = None, console: Console | None = None):
        self.client, self.run_id, self.run_dir, self.console = client, run_id, run_dir, console

    @classmethod
    def start(cls, config: ExperimentConfig, run_dir: Path, console: Console) -> Tracker:
        """Open a run in the configured experiment (created when missing) and log the config as params.
        Call it holding the run directory's lock: the runs of this directory that a killed process left
        RUNNING in the experiment are then marked KILLED (`_end_abandoned`)."""
        tracking = config.tracking
        uri = tracking_uri(tracking, run_dir)
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            name = tracking.experiment or config.name
            with mlflow_http_limits(RUN_RETRIES):
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    location = artifact_location(tracking.uri, run_dir)
                    experiment_id = client.create_experiment(name, artifact_location=location)
                else:
                    experiment_id = experiment.experiment_id
                run = client.create_run(experiment_id, run_name=config.name, tags=_start_tags(run_dir))
        except Exception as error:  # noqa: BLE001  (any tracker failure: warn, and run untracked)
            _warn(console, f"cannot start an MLflow run at {mask_credentials(uri)} ({type(error).__name__}: {error}); "
                           f"this run is not tracked, its results are written to {run_dir} as always")
            return cls(None, None)
        tracker = cls(client, run.info.run_id, run_dir, console)
        tracker._guarded("mark the runs a killed process left RUNNING as KILLED", tracker._end_abandoned, experiment_id)
        tracker._guarded("log the config as params", tracker._log_params, config)
        return tracker

    def log_results(self, report: Report) -> None:
        """Metrics, tags and artifacts of a finished run; call after the report files are written."""
        self._guarded("log the results", self._log_results, report)

    def end(self, status: str) -> None:
        if self.client is None:
            return
        try:
            with mlflow_http_limits(RUN_RETRIES):
                self.client.set_terminated(self.run_id, status=status)
        except KeyboardInterrupt:
            # A second Ctrl-C while ending: still never leave the run RUNNING.
            self._guarded("mark the run KILLED", self.client.set_terminated, self.run_id, "KILLED")
            raise
        except Exception as error:  # noqa: BLE001
            self._warning(f"could not mark MLflow run {self.run_id} {status} ({type(error).__name__}: {error})")

    def _end_abandoned(self, experiment_id: str) -> None:
        """Mark KILLED, ended now, the runs of this run directory still RUNNING in the experiment: their
        process was killed (kill -9, out of memory, a lost machine) before it could end them, and a run
        that holds the directory's lock knows no other process is still writing them."""
        ours = str(self.run_dir.resolve())
        # The status is filtered by MLflow and the tag here: a path may hold quotes the filter syntax would misread.
        running = self.client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
        for run in running:
            if run.info.run_id != self.run_id and run.data.tags.get(RUN_DIR_TAG) == ours:
                self.client.set_terminated(run.info.run_id, status="KILLED")

    # ---- what is logged -------------------------------------------------------------------------

    def _log_params(self, config: ExperimentConfig) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in config_params(config.model_dump(mode="json")).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_BATCH], synchronous=True)

    def _log_results(self, report: Report) -> None:
        import time

        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in result_metrics(report).items()]
        tags = [RunTag(key, value) for key, value in result_tags(report).items()]
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + METRICS_PER_BATCH], synchronous=True)
        for start in range(0, len(tags), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=tags[start:start + PARAMS_PER_BATCH], synchronous=True)
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))

    # ---- failures warn, never raise -------------------------------------------------------------

    def _guarded(self, what: str, function, *args) -> None:
        if self.client is None:
            return
        try:
            with mlflow_http_limits(RUN_RETRIES):
                function(*args)
        except Exception as error:  # noqa: BLE001  (the run's own files are already safe on disk)
            self._warning(f"could not {what} to MLflow run {self.run_id} ({type(error).__name__}: {error})")

    def _warning(self, message: str) -> None:
        where = f"; the run's results are in {self.run_dir}" if self.run_dir else ""
        _warn(self.console, message + where)


def _warn(console: Console | None, message: str) -> None:
    (console or Console(stderr=True)).print(f"[bold yellow]Tracking warning:[/] {for_terminal(message)}")


def _start_tags(run_dir: Path) -> dict[str, str]:
    tags = {RUN_DIR_TAG: str(run_dir.resolve())}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


# ---- pure: config and report -> MLflow names and values --------------------------------------------


def config_params(config: dict[str, Any]) -> dict[str, str]:
    """The config flattened to dotted keys (`model.path`, `arms.0.kind`, `seeds`): nested mappings
    and lists of mappings are walked, other lists and scalars are written as JSON (a string as
    itself). Values longer than MLflow accepts are cut with a note; credentials are masked."""
    params: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
            return
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(item, f"{key}.{index}")
            return
        text = mask_credentials(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, "", {}, []):
            text = "***"
        if len(text) > MAX_PARAM_VALUE:
            text = text[:MAX_PARAM_VALUE - len(TRUNCATED)] + TRUNCATED
        params[_NOT_ALLOWED_IN_NAME.sub("_", key)] = text

    walk(config, "")
    return params


def metric_prefix(arm: str) -> str:
    return _NOT_ALLOWED_IN_NAME.sub("_", arm)


def result_metrics(report: Report) -> dict[str, float]:
    """Per arm `<arm>/<name>`: accuracy, accuracy_lenient and relevance with `_ci_low`/`_ci_high` (each
    on its reported scale, as in report.json: accuracies as fractions 0-1, relevance 0-100),
    `meets_target` (0/1), the per-query costs, the training costs of fine-tuned arms, and prices where
    the config gives them."""
    metrics: dict[str, float] = {}
    meets = report.recommendation.meets_target
    costs = {row.arm: row for row in report.costs}
    for arm in report.arms:
        prefix = metric_prefix(arm.name)

        def put(name: str, value: Any) -> None:
            if isinstance(value, (int, float)):  # None (not measured) and lists (training extras) are left out
                metrics[f"{prefix}/{name}"] = float(value)

        for figure, estimate in (("accuracy", arm.accuracy), ("accuracy_lenient", arm.accuracy_lenient),
                                 ("relevance", arm.relevance)):
            put(figure, estimate.value)
            put(f"{figure}_ci_low", estimate.ci_low)
            put(f"{figure}_ci_high", estimate.ci_high)
        if arm.name in meets:
            put("meets_target", meets[arm.name])
        put("prompt_tokens", arm.prompt_tokens)
        put("generated_tokens", arm.generated_tokens)
        put("seconds_per_query", arm.seconds_per_query)
        put("queries_per_second", arm.queries_per_second)
        put("flops_per_query", arm.flops_per_query)
        for name, value in (arm.training.to_dict() if arm.training else {}).items():
            put("training_seconds" if name == "wall_seconds" else f"training_{name}", value)
        cost = costs.get(arm.name)
        if cost is not None:
            put("price_per_query", cost.query_price)
            put("one_time_price", cost.one_time_price)
            put("total_price_at_expected_queries", cost.total_price_at_expected_queries)
    return metrics


def result_tags(report: Report) -> dict[str, str]:
    """The recommendation (`recommendation`: the arm, or `none` when no arm meets the target), its
    reason, the most accurate arm, the warnings' codes, and the metric prefix of each arm."""
    decision = report.recommendation
    tags = {
        "recommendation": decision.arm or "none",
        "recommendation.reason": decision.reason,
        "recommendation.best": decision.best,
        "warnings": ",".join(w["code"] for w in report.warnings),
        "arms": json.dumps({metric_prefix(a.name): a.name for a in report.arms}, ensure_ascii=False),
    }
    return {key: value if len(value) <= MAX_TAG_VALUE else value[:MAX_TAG_VALUE - 3] + "..." for key, value in tags.items()}
