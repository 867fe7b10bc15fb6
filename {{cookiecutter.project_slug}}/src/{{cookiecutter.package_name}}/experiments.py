"""Where the jobs record their MLflow runs, and reading them back (`runs`, the report's link).

Two stores (config.toml [tracking]):

- local: `mlflow.db` (sqlite, the store MLflow 3 uses by default) in the project folder, artifacts in
  `mlartifacts/` beside it. `train --local` and the notebook's offline runs always record there when the
  `tracking` extra is installed; `mlflow ui --backend-store-uri sqlite:///mlflow.db` opens it (UI_COMMAND).
- server: a SageMaker managed MLflow App or tracking server (`server_arn`); the SageMaker jobs then
  install mlflow and log there (training/tracking.py), and `runs --server` reads it.

The jobs learn where to log from MLflow's own variables in their environment (`job_environment`); the
training side (training/tracking.py) does the logging and never fails a job over it. mlflow is imported
inside the functions that read runs: the commands that do not need it work without the extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import extras
from .config import ProjectConfig

LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"  # training/tracking.py puts a local experiment's artifacts here
UI_COMMAND = f"mlflow ui --backend-store-uri sqlite:///{LOCAL_STORE}"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
TRACKING_URI, EXPERIMENT_NAME = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
# The same bounds training/tracking.py sets in the jobs: a list or a report must not wait minutes.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# The tags training/tracking.py puts on each run.
TAG_TRAINING_JOB, TAG_TUNING_JOB = "sagemaker.training_job_name", "sagemaker.tuning_job_name"
TAG_KIND = "kind"
PARENT_TAG = "mlflow.parentRunId"
# The columns `runs` shows, metric name -> column.
KEY_METRICS = {
    "best_validation_loss": "valid loss",
    "best_validation_accuracy": "valid acc",
    "test_accuracy": "test acc",
    "best_epoch": "best epoch",
    "rules_with_issues": "rules w/ issues",
}
COUNTS = ("best_epoch", "rules_with_issues")  # shown as whole numbers
MAX_RUNS = 1000


class TrackingError(Exception):
    """The tracking store cannot be read (none configured, unreachable, refused)."""


def local_store_uri(config: ProjectConfig) -> str:
    """The project's mlflow.db, unless MLFLOW_TRACKING_URI is set here (MLflow's own convention; set but
    empty, local runs record nothing: the project's tests do that)."""
    override = os.environ.get(TRACKING_URI)
    if override is not None:
        return override
    return f"sqlite:///{(config.root / LOCAL_STORE).resolve().as_posix()}"


def experiment_name(config: ProjectConfig) -> str:
    return config.settings.tracking.experiment or config.settings.project.slug


def server_arn(config: ProjectConfig) -> str:
    return config.settings.tracking.server_arn


def job_environment(config: ProjectConfig, *, local: bool) -> dict[str, str]:
    """MLflow's variables for a job: the local store (`local`), the configured server, or nothing."""
    uri = local_store_uri(config) if local else server_arn(config)
    return {TRACKING_URI: uri, EXPERIMENT_NAME: experiment_name(config)} if uri else {}


def store_uri(config: ProjectConfig, server: bool) -> str:
    """The store `runs` and the report read: the configured server (`server`) or the local one."""
    if not server:
        return local_store_uri(config)
    if not server_arn(config):
        raise TrackingError("no MLflow server configured: set [tracking] server_arn in config.toml")
    return server_arn(config)


def _local_store_exists(uri: str) -> bool:
    """False for an sqlite store not made yet (MLflow would create it on reading) or no store at all."""
    if not uri:
        return False
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def _client(uri: str) -> Any:
    extras.require("tracking", "reading MLflow runs")
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str | None:
    experiment = client.get_experiment_by_name(name)
    return None if experiment is None else experiment.experiment_id


@dataclass(frozen=True)
class RunLink:
    run_id: str
    experiment_id: str
    uri: str  # the store

    def ui_path(self) -> str:
        """The run's page in MLflow's UI, after its address."""
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def describe(self) -> str:
        if self.uri.startswith("sqlite:"):
            return f"{UI_ADDRESS}/{self.ui_path()} (after `{UI_COMMAND}` in the project folder)"
        return f"MLflow run {self.run_id} in {self.uri} (Studio > MLflow, then {self.ui_path()})"


def _read(what: str, call: Any) -> Any:
    try:
        return call()
    except extras.MissingExtraError:
        raise
    except Exception as error:  # unreachable, refused, a store of another MLflow version
        raise TrackingError(f"cannot read {what}: {' '.join(str(error).split())[:300]}") from None


def list_runs(config: ProjectConfig, *, server: bool = False, limit: int = 20) -> list[dict[str, Any]]:
    """The latest `limit` runs of the project's experiment, newest first, one dict each: name, kind,
    status, started, the KEY_METRICS, the tuning job and parent of a tuning job's run, and the run id."""
    uri = store_uri(config, server)
    if not server and not _local_store_exists(uri):
        return []  # nothing recorded yet; do not create an empty store by looking
    client = _client(uri)
    name = experiment_name(config)
    experiment_id = _read(f"experiment {name} in {uri}", lambda: _experiment_id(client, name))
    if experiment_id is None:
        return []
    runs = _read(
        f"the runs in {uri}",
        lambda: client.search_runs(
            [experiment_id], max_results=min(limit, MAX_RUNS), order_by=["attributes.start_time DESC"]
        ),
    )
    return [run_row(run) for run in runs]


def run_row(run: Any) -> dict[str, Any]:
    import datetime

    tags, metrics = run.data.tags, run.data.metrics
    started = datetime.datetime.fromtimestamp(run.info.start_time / 1000, tz=datetime.timezone.utc)
    row: dict[str, Any] = {
        "run": run.info.run_name,
        "kind": tags.get(TAG_KIND, ""),
        "status": run.info.status,
        "started (UTC)": started.strftime("%Y-%m-%d %H:%M"),
    }
    for metric, column in KEY_METRICS.items():
        value = metrics.get(metric)
        row[column] = None if value is None else (int(value) if metric in COUNTS else round(value, 4))
    row["tuning job"] = tags.get(TAG_TUNING_JOB)
    row["parent run"] = tags.get(PARENT_TAG)
    row["run id"] = run.info.run_id
    return row


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A `run_row` for a terminal: the parent's id left out (the tuning job names it) and ids shortened
    to the 8 characters MLflow's UI shows; `--json` keeps everything."""
    shown = {key: value for key, value in row.items() if key != "parent run"}
    shown["run id"] = row["run id"][:8]
    return shown


def find_run(config: ProjectConfig, training_job_name: str, *, server: bool) -> RunLink | None:
    """The run a job recorded (by its job-name tag), or None: no store, not recorded, or unreadable."""
    if extras.missing_modules("tracking"):
        return None
    try:
        uri = store_uri(config, server)
    except TrackingError:
        return None
    if not server and not _local_store_exists(uri):
        return None
    try:
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment_name(config))
        if experiment_id is None:
            return None
        query = f"tags.`{TAG_TRAINING_JOB}` = '{training_job_name}'"
        runs = client.search_runs([experiment_id], query, max_results=1)
    except Exception:  # the report goes on without its link
        return None
    return RunLink(runs[0].info.run_id, experiment_id, uri) if runs else None


def attach_pictures(link: RunLink, pictures: dict[str, Path]) -> str | None:
    """The report's pictures as artifacts of the run (`report/<name>.png`); a one-line note on failure."""
    try:
        client = _client(link.uri)
        for path in pictures.values():
            client.log_artifact(link.run_id, str(path), "report")
    except Exception as error:
        return (
            f"the pictures were not added to MLflow run {link.run_id}: {' '.join(str(error).split())[:200]}"
        )
    return None
