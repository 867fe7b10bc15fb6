"""Experiment tracking with MLflow: one run per training job, a tuning job's runs under one parent run.

Where it logs is MLflow's own variable MLFLOW_TRACKING_URI, which the launcher puts in the job's environment
(src/<package>/experiments.py): the ARN of a SageMaker managed MLflow App or tracking server
(config.toml [tracking] server_arn; the sagemaker-mlflow plugin signs the requests), or for `train --local`
the project's own sqlite store. MLFLOW_EXPERIMENT_NAME names the experiment. Unset: nothing is imported
and nothing is logged (`Tracker` is then a stand-in whose calls do nothing).

A run holds the hyperparameters (every `--name value` the job received, plus the instance type and count),
per-epoch metrics as they happen (`log_epoch`), and at the end (`finish`) the final metrics, the losses of
the recorder's saved steps, each rule's verdict (tags `rule.<name>`, profiler rules too), and as artifacts
rule_verdicts.json, history.json, the profiler report (its pictures inline) and the model's metadata.json.
`report` adds the report's pictures to the same run later (experiments.py).

A tuning job's training jobs are named `<tuning job>-<NNN>-<8 hex>` by SageMaker (TRAINING_JOB_NAME);
each run is a child (`mlflow.parentRunId`) of one parent run named after the tuning job and tagged with it.
Whichever child comes first creates the parent; two that race both see both parents afterwards, keep the
older and the younger's creator deletes its own.

Tracking never fails the job: every MLflow call goes through `Tracker._call`; the first failure prints one
line and turns tracking off for the rest of the job. MLflow's HTTP retries are bounded (HTTP_LIMITS: an
unreachable server costs seconds, not MLflow's default of minutes of retries). The training images have
no mlflow: on SageMaker `start_tracking` installs requirements-tracking.txt (within
INSTALL_TIMEOUT_SECONDS) before importing it; not through the toolkit's requirements.txt, whose failed
install would fail the job.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

TRACKING_URI, EXPERIMENT_NAME = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
# MLflow's defaults retry for about four minutes (7 retries, backoff 2, 120 s timeout per request).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RETRY_LOGGER = "urllib3.connectionpool"
REQUIREMENTS = Path(__file__).with_name("requirements-tracking.txt")
INSTALL_TIMEOUT_SECONDS = 300
# SageMaker's name for a tuning job's training job: the tuning job's name, a 3-digit index, 8 hex digits.
TUNING_CHILD_RE = re.compile(r"^(?P<tuning_job>.+)-\d{3}-[0-9a-f]{8}$")
TAG_TRAINING_JOB, TAG_TUNING_JOB = "sagemaker.training_job_name", "sagemaker.tuning_job_name"
TAG_KIND = "kind"  # "training", "tuning" (a tuning job's training job) or "tuning job" (the parent)
PARENT_TAG = "mlflow.parentRunId"
LOCAL_ARTIFACTS = "mlartifacts"  # beside a local sqlite store, as `mlflow server` names its default
# Arguments that are paths or cluster plumbing, not hyperparameters.
NOT_PARAMETERS = ("data_dir", "model_dir", "output_data_dir", "checkpoint_dir", "hosts", "current_host")
BATCH = 1000  # MLflow's limit on metrics per log_batch request


def job_name() -> str:
    """The training job's name as SageMaker sets it in the container (empty outside a job)."""
    return os.environ.get("TRAINING_JOB_NAME", "")


def tuning_job_of(training_job_name: str) -> str | None:
    match = TUNING_CHILD_RE.match(training_job_name)
    return match.group("tuning_job") if match else None


def _import_mlflow(uri: str, log: Callable[..., None]) -> Any | None:
    """mlflow, installed first on SageMaker (an ARN) when the image lacks it; None when it cannot be had."""
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        pass
    except Exception as error:  # installed but broken (e.g. against this image's protobuf)
        log(f"tracking: mlflow cannot be imported ({error}); training goes on unrecorded", flush=True)
        return None
    if not uri.startswith("arn:"):
        log(f"tracking: mlflow is not installed here, so this run is not recorded in {uri}", flush=True)
        return None
    # One retry per download: a job without a route to PyPI gives up in a minute, not pip's five retries.
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--retries",
        "1",
    ]
    try:
        subprocess.run(
            [*command, "-r", str(REQUIREMENTS)],
            check=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_DEFAULT_TIMEOUT": "20"},
        )
    except subprocess.CalledProcessError as error:
        last = (error.stderr or error.stdout or "").strip().splitlines()[-1:] or ["no output"]
        log(f"tracking: could not install mlflow ({last[0]}); training goes on unrecorded", flush=True)
        return None
    except subprocess.TimeoutExpired:
        took = f"installing mlflow took over {INSTALL_TIMEOUT_SECONDS}s"
        log(f"tracking: {took}; training goes on unrecorded", flush=True)
        return None
    importlib.invalidate_caches()
    try:
        return importlib.import_module("mlflow")
    except Exception as error:
        log(f"tracking: mlflow was installed but cannot be imported ({error}); training goes on", flush=True)
        return None


class Tracker:
    """The job's MLflow run, or nothing (`active` false): every method is safe to call either way."""

    def __init__(self, client: Any = None, run_id: str = "", uri: str = "", log: Callable[..., None] = print):
        self.client, self.run_id, self.uri, self.log = client, run_id, uri, log

    @property
    def active(self) -> bool:
        return self.client is not None

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        try:
            with _quiet(RETRY_LOGGER):
                return call()
        except Exception as error:  # tracking never fails the job
            reason = " ".join(str(error).split())[:300]
            self.log(
                f"tracking: {what} failed at {self.uri} ({reason}); training goes on unrecorded", flush=True
            )
            self.client = None
            return None

    def log_parameters(self, args: argparse.Namespace) -> None:
        from mlflow.entities import Param

        values = {k: v for k, v in vars(args).items() if k not in NOT_PARAMETERS}
        values["instance_type"] = os.environ.get("SM_CURRENT_INSTANCE_TYPE", "local")
        values["instance_count"] = len(args.hosts)
        params = [Param(k, str(v)[:6000]) for k, v in sorted(values.items())]
        self._call("logging the parameters", lambda: self.client.log_batch(self.run_id, params=params))

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        self.log_series((name, value, step) for name, value in values.items() if value is not None)

    def log_series(self, points: Iterable[tuple[str, float, int]]) -> None:
        """(name, value, step) points, in batches of MLflow's size."""
        from mlflow.entities import Metric

        if not self.active:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, int(step)) for name, value, step in points]
        for start in range(0, len(metrics), BATCH):
            chunk = metrics[start : start + BATCH]
            self._call(
                "logging metrics", lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk)
            )

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's figures at step `epoch` (1-based, as the log counts them)."""
        self.log_metrics(values, step=epoch)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if Path(path).is_file():
            self._call(
                f"uploading {Path(path).name}",
                lambda: self.client.log_artifact(self.run_id, str(path), folder),
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call("tagging the run", lambda k=key, v=value: self.client.set_tag(self.run_id, k, v))

    def finish(self, args: argparse.Namespace, result: dict, status: str = "FINISHED") -> None:
        """The end of the job: final metrics, saved-step losses, verdicts, and the files as artifacts."""
        if not self.active:
            return
        output, model = Path(args.output_data_dir), Path(args.model_dir)
        final = {
            "best_validation_loss": result.get("validation_loss"),
            "best_validation_accuracy": result.get("validation_accuracy"),
            **{k: result.get(k) for k in ("best_epoch", "epochs_run", "test_loss", "test_accuracy")},
            "skipped_images": result.get("skipped_images"),
        }
        self.log_metrics({k: v for k, v in final.items() if isinstance(v, (int, float))})
        self.log_series(saved_step_losses(_read_json(output / "recording.json")))
        verdicts = (_read_json(output / "rule_verdicts.json") or {}).get("rules", [])
        self.set_tags({f"rule.{v['rule']}": v["verdict"] for v in verdicts if "rule" in v and "verdict" in v})
        if verdicts:
            issues = sum(v.get("verdict") == "IssuesFound" for v in verdicts)
            self.log_metrics({"rules_with_issues": issues})
        for path, folder in (
            (output / "rule_verdicts.json", "rules"),
            (output / "profiler-report.html", "profiler"),
            (output / "history.json", None),
            (model / "metadata.json", "model"),
        ):
            self.log_artifact(path, folder)
        self.close(status)

    def close(self, status: str = "FINISHED") -> None:
        self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))
        self.client = None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger `name` says only errors meanwhile (urllib3 logs each retry of an unreachable server)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# What each mode's saved-step losses are called in the run.
STEP_METRICS = {"TRAIN": "step_train_loss", "EVAL": "step_validation_loss", "PREDICT": "step_test_loss"}


def saved_step_losses(recording: dict | None) -> list[tuple[str, float, int]]:
    """The recorder's losses at its saved steps (recording.json), as (metric, value, step) points."""
    losses = (recording or {}).get("losses", {})
    return [
        (STEP_METRICS[mode], float(value), int(step))
        for mode, points in losses.items()
        if mode in STEP_METRICS
        for step, value in points
    ]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created when missing (a local sqlite store keeps artifacts beside itself)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / LOCAL_ARTIFACTS / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def parent_run(client: Any, experiment_id: str, tuning_job: str) -> str:
    """The run id of the tuning job's parent run, created when no child has made it yet (see above)."""

    def parents() -> list[Any]:
        query = f"tags.`{TAG_TUNING_JOB}` = '{tuning_job}' and tags.`{TAG_KIND}` = 'tuning job'"
        runs = client.search_runs([experiment_id], query, max_results=50)
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    found = parents()
    if found:
        return found[0].info.run_id
    tags = {TAG_TUNING_JOB: tuning_job, TAG_KIND: "tuning job"}
    created = client.create_run(experiment_id, tags=tags, run_name=tuning_job).info.run_id
    client.set_terminated(created, "FINISHED")  # a grouping record: its children carry the figures
    oldest = parents()[0].info.run_id
    if oldest != created:  # a sibling made one at the same moment: keep the older
        client.delete_run(created)
    return oldest


def start_tracking(
    args: argparse.Namespace, *, tuning: bool, enabled: bool, log: Callable[..., None] = print
) -> Tracker:
    """The job's run in the tracking store MLFLOW_TRACKING_URI names, with its parameters logged.

    `tuning`: hpo.py, a tuning job's training job (its run goes under the tuning job's parent run).
    `enabled` false (not the main process), or no MLFLOW_TRACKING_URI: a Tracker that does nothing.
    """
    uri = os.environ.get(TRACKING_URI, "")
    if not (enabled and uri):
        return Tracker()
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    mlflow = _import_mlflow(uri, log)
    if mlflow is None:
        return Tracker()
    # The job's log carries this module's one line per failure; MLflow's own retries and warnings (e.g. a
    # request-header plugin that cannot read a non-ARN URI) would add lines that say the same.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    setup = Tracker(mlflow.MlflowClient(tracking_uri=uri), uri=uri, log=log)

    def open_run() -> str:
        client = setup.client
        experiment_id = _experiment_id(client, uri, os.environ.get(EXPERIMENT_NAME) or "Default")
        name = job_name() or f"local-{os.getpid()}"
        tags = {TAG_TRAINING_JOB: name, TAG_KIND: "tuning" if tuning else "training"}
        tuning_job = tuning_job_of(name) if tuning else None
        if tuning_job:
            tags.update(
                {TAG_TUNING_JOB: tuning_job, PARENT_TAG: parent_run(client, experiment_id, tuning_job)}
            )
        if job_name():  # a spot job restarted under the same name continues its run
            query = f"tags.`{TAG_TRAINING_JOB}` = '{name}'"
            earlier = client.search_runs([experiment_id], query, max_results=1)
            if earlier:
                client.update_run(earlier[0].info.run_id, "RUNNING")
                return earlier[0].info.run_id
        return client.create_run(experiment_id, tags=tags, run_name=name).info.run_id

    run_id = setup._call("opening the run", open_run)
    if run_id is None:
        return Tracker()
    tracker = Tracker(setup.client, run_id, uri, log)
    atexit.register(tracker.close, "FAILED")  # an exception ended the job before `finish` (a no-op after it)
    tracker.log_parameters(args)
    if tracker.active:
        log(f"tracking: MLflow run {run_id} in {uri}", flush=True)
    return tracker
