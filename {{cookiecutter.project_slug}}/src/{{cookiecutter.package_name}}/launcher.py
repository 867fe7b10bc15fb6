"""The workflow on SageMaker as plain functions: what the CLI commands and the notebook call.

Every function takes the project config and a `session.Session` that the caller opened: the real
account, or a dry run on the offline AWS. The functions do not know which, except where a dry run
must say the truth: nothing ran, so statuses read "captured, not run" and predictions are empty.
What each step creates is recorded in the session's state, so the next step finds it.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from . import data, sagemaker_api
from .config import ProjectConfig
from .context import CAPTURED
from .session import Session
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB, ProjectState

BEST_HYPERPARAMETERS = "best_hyperparameters"
# The endpoint's content types, by file name (inference.py decodes each format PIL reads).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")


class LaunchError(Exception):
    """An expected failure (nothing to deploy, no endpoint, ...); the message is one line."""


# --- data -----------------------------------------------------------------------------------------


def upload_data(config: ProjectConfig, session: Session, data_dir: Path | None = None) -> data.UploadResult:
    """Copy the prepared dataset to `s3://<bucket>/<prefix>/data/` (see `data.upload`)."""
    return data.upload(session.aws, Path(data_dir) if data_dir else config.data_dir)


# --- tuning ---------------------------------------------------------------------------------------


def clean_hyperparameters(raw: dict[str, str]) -> dict[str, Any]:
    """SageMaker's hyperparameter strings as typed values: `'"40"'` -> 40, `'"resnet18"'` -> "resnet18".

    Drops the SDK's own entries (`sagemaker_*`, `_tuning_objective_metric`).
    """
    cleaned: dict[str, Any] = {}
    for name, value in raw.items():
        if name.startswith(("sagemaker_", "_tuning")):
            continue
        # Categorical values come back quoted twice ('"40"'); numbers once ('0.0031').
        for _ in range(2):
            if not isinstance(value, str):
                break
            try:
                value = json.loads(value)
            except ValueError:
                break
        cleaned[name] = value
    return cleaned


@dataclass
class TuningResult:
    tuning_job_name: str
    status: str
    best_training_job: str | None = None
    # Only the tuned hyperparameters, typed; `train` merges them over config.toml's defaults.
    best_hyperparameters: dict[str, Any] = field(default_factory=dict)
    objective_value: float | None = None


def tuning_result(session: Session, tuning_job_name: str) -> TuningResult:
    """Status and best job of a tuning job, as SageMaker reports it now (a dry run: captured)."""
    if session.dry_run:
        return TuningResult(tuning_job_name, CAPTURED)
    description = session.aws.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning_job_name
    )
    best = description.get("BestTrainingJob") or {}
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    return TuningResult(
        tuning_job_name=tuning_job_name,
        status=description["HyperParameterTuningJobStatus"],
        best_training_job=best.get("TrainingJobName"),
        best_hyperparameters=clean_hyperparameters(best.get("TunedHyperParameters", {})),
        objective_value=objective.get("Value"),
    )


def _record_best(state: ProjectState, result: TuningResult) -> None:
    if result.best_hyperparameters:
        state.set_value(
            BEST_HYPERPARAMETERS,
            {
                "tuning_job": result.tuning_job_name,
                "training_job": result.best_training_job,
                "hyperparameters": result.best_hyperparameters,
            },
        )


def record_tuning(session: Session, tuning_job_name: str) -> None:
    """Remember a tuning job started in this session (`attach_tuning` and `status` find it)."""
    session.state.record(TUNING_JOB, tuning_job_name)


def tune(config: ProjectConfig, session: Session, *, wait: bool = True) -> TuningResult:
    """Start the hyperparameter tuning job over hpo.py; with `wait`, also fetch and record the best job.

    A dry run captures the request and waits for nothing (nothing runs).
    """
    name = sagemaker_api.job_name(config, "hpo", max_length=32)
    sagemaker_api.launch_tuning(config, session.aws, tuning_job_name=name)
    record_tuning(session, name)
    if session.dry_run or not wait:
        return TuningResult(name, CAPTURED if session.dry_run else "InProgress")
    return attach_tuning(config, session, name)


def attach_tuning(
    config: ProjectConfig, session: Session, tuning_job_name: str | None = None, *, wait: bool = True
) -> TuningResult:
    """Wait for a tuning job started earlier (default: the last one recorded) and record its best job."""
    if tuning_job_name is None:
        latest = session.state.latest(TUNING_JOB)
        if latest is None:
            raise LaunchError("no tuning job recorded for this project; run `tune` first")
        tuning_job_name = latest["name"]
    if wait and not session.dry_run:
        sagemaker_api.wait_for_tuning(session.aws, tuning_job_name)
    result = tuning_result(session, tuning_job_name)
    _record_best(session.state, result)
    return result


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    training_job_name: str
    model_data: str
    hyperparameters: dict[str, Any]
    status: str
    # One line each, to show the user (e.g. a relaunch without the Debugger configuration).
    notes: tuple[str, ...] = ()


def best_hyperparameters(state: ProjectState) -> dict[str, Any]:
    """The tuned values recorded by `tune`, or {} (then config.toml's defaults apply)."""
    recorded = state.value(BEST_HYPERPARAMETERS) or {}
    return dict(recorded.get("hyperparameters", {}))


def training_hyperparameters(
    config: ProjectConfig,
    state: ProjectState,
    overrides: dict[str, Any] | None = None,
    *,
    use_tuned: bool = True,
) -> dict[str, Any]:
    """What train_model.py receives: config.toml's defaults and what the in-job rules need, then the best
    tuned ones, then `overrides`."""
    tuned = best_hyperparameters(state) if use_tuned else {}
    return config.script_hyperparameters(
        {**sagemaker_api.watch_hyperparameters(config), **tuned, **(overrides or {})}
    )


def record_training(session: Session, training_job_name: str, model_data: str) -> None:
    """Remember a training job and where its model.tar.gz lands (`deploy` and `report` find them)."""
    session.state.record(TRAINING_JOB, training_job_name, model_data=model_data)


def train(
    config: ProjectConfig,
    session: Session,
    *,
    hyperparameters: dict[str, Any] | None = None,
    use_tuned: bool = True,
    wait: bool = True,
) -> TrainingResult:
    """Train train_model.py with the debugger and profiler rules of the configured rule set."""
    merged = training_hyperparameters(config, session.state, hyperparameters, use_tuned=use_tuned)
    name = sagemaker_api.job_name(config, "train")
    wait = wait and not session.dry_run
    launch = sagemaker_api.launch_training(config, session.aws, merged, training_job_name=name, wait=wait)
    record_training(session, name, launch.model_data)
    if session.dry_run:
        status = CAPTURED
    else:
        client = session.aws.client("sagemaker")
        status = client.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    return TrainingResult(name, launch.model_data, merged, status, launch.notes)


# --- deployment -----------------------------------------------------------------------------------


def _model_data_uri(session: Session, model_data: str | Path | None, model_name: str) -> str:
    if model_data is None:
        latest = session.state.latest(TRAINING_JOB)
        if latest is None:
            raise LaunchError("no trained model recorded for this project; run `train` or pass --model-data")
        return latest["model_data"]
    if str(model_data).startswith("s3://"):
        return str(model_data)
    path = Path(model_data)
    if not path.is_file():
        raise LaunchError(f"--model-data {path} is neither an s3:// URI nor a file")
    aws = session.aws
    aws.client("s3").upload_file(str(path), aws.bucket, aws.s3_key("models", model_name, "model.tar.gz"))
    return aws.s3_uri("models", model_name, "model.tar.gz")


def _require_object(session: Session, uri: str) -> None:
    """A missing model.tar.gz is one line naming the URI, not the SDK's raw 404 from HeadObject."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        session.aws.client("s3").head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise LaunchError(f"{uri} does not exist (has the training job finished? see `status`)") from None
        raise


def deploy(
    config: ProjectConfig, session: Session, model_data: str | Path | None = None, *, wait: bool = True
) -> sagemaker_api.Deployment:
    """Deploy a model.tar.gz (S3 URI, local file, or the last trained model) behind an endpoint."""
    model_name = sagemaker_api.job_name(config, "model")
    uri = _model_data_uri(session, model_data, model_name)
    _require_object(session, uri)
    deployment = sagemaker_api.deploy_model(
        config,
        session.aws,
        uri,
        model_name=model_name,
        endpoint_name=sagemaker_api.job_name(config, "endpoint"),
        wait=wait and not session.dry_run,
    )
    record_deployment(session, deployment)
    return deployment


def record_deployment(session: Session, deployment: sagemaker_api.Deployment) -> None:
    """Remember the model, endpoint config and endpoint (`predict`, `status` and `teardown` find them)."""
    session.state.record(MODEL, deployment.model_name, model_data=deployment.repacked_model_data)
    session.state.record(ENDPOINT_CONFIG, deployment.endpoint_config_name)
    session.state.record(ENDPOINT, deployment.endpoint_name)


# --- prediction -----------------------------------------------------------------------------------


def image_content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(Path(path).name)
    if guessed == "image/x-ms-bmp":  # Python < 3.13 names BMP so
        guessed = "image/bmp"
    if guessed not in IMAGE_TYPES:
        raise LaunchError(
            f"{path}: not an image file by its name; the endpoint accepts {', '.join(IMAGE_TYPES)}"
        )
    return guessed


def predict(
    config: ProjectConfig,
    session: Session,
    images: Sequence[Path],
    *,
    endpoint_name: str | None = None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Send each image's raw bytes to the endpoint.

    Returns one `{"image": path, "top_k": [{"label", "class_name", "index", "probability"}, ...]}` per
    image. A dry run captures the requests; no model answers, so `top_k` is empty and `status` says so.
    """
    if top_k < 1:
        raise LaunchError(f"top_k must be at least 1, got {top_k}")
    content_types = [image_content_type(image) for image in images]
    if endpoint_name is None:
        latest = session.state.latest(ENDPOINT)
        if latest is None:
            raise LaunchError("no endpoint recorded for this project; run `deploy` or pass --endpoint")
        endpoint_name = latest["name"]
    invoke = sagemaker_api.endpoint_invoker(session.aws, endpoint_name)
    results = []
    for image, content_type in zip(images, content_types, strict=True):
        answer = invoke(Path(image).read_bytes(), content_type, f"application/json;top_k={top_k}")
        if session.dry_run:
            results.append({"image": str(image), "top_k": [], "status": CAPTURED})
        else:
            results.append({"image": str(image), "top_k": answer["predictions"][0]["top_k"][:top_k]})
    return results


# --- status and teardown --------------------------------------------------------------------------


def _is_missing(error: Exception) -> bool:
    """SageMaker answers ValidationException 'Could not find ...' for names that do not exist."""
    response = getattr(error, "response", {}) or {}
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message", "")
    return code in ("ValidationException", "ResourceNotFound") and "find" in message.lower()


_DESCRIBE = {
    TUNING_JOB: (
        "describe_hyper_parameter_tuning_job",
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus",
    ),
    TRAINING_JOB: ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    MODEL: ("describe_model", "ModelName", None),
    ENDPOINT_CONFIG: ("describe_endpoint_config", "EndpointConfigName", None),
    ENDPOINT: ("describe_endpoint", "EndpointName", "EndpointStatus"),
}
_DELETE = {
    ENDPOINT: ("delete_endpoint", "EndpointName"),
    ENDPOINT_CONFIG: ("delete_endpoint_config", "EndpointConfigName"),
    MODEL: ("delete_model", "ModelName"),
}
_STOP = {
    TUNING_JOB: ("stop_hyper_parameter_tuning_job", "HyperParameterTuningJobName"),
    TRAINING_JOB: ("stop_training_job", "TrainingJobName"),
}
RUNNING_STATUSES = ("InProgress", "Creating", "Updating", "Stopping")


def _current_status(session: Session, kind: str, name: str) -> str:
    method, key, status_key = _DESCRIBE[kind]
    try:
        description = getattr(session.aws.client("sagemaker"), method)(**{key: name})
    except botocore.exceptions.ClientError as error:
        if _is_missing(error):
            return "Deleted"
        raise
    if session.dry_run:
        return CAPTURED  # the offline AWS's own statuses were produced by nothing
    return description[status_key] if status_key else "Exists"


def status(config: ProjectConfig, session: Session) -> list[dict[str, Any]]:
    """Every resource this project recorded, with its status now (`Deleted` when it is gone)."""
    return [
        {**item, "status": _current_status(session, item["kind"], item["name"])}
        for item in session.state.resources()
    ]


def teardown(
    config: ProjectConfig, session: Session, *, stop_jobs: bool = False
) -> list[tuple[str, str, str]]:
    """Delete the endpoints, endpoint configs and models this project created; optionally stop its jobs.

    Returns (kind, name, what happened). Something already gone counts as deleted.
    """
    actions: list[tuple[str, str, str]] = []
    client = session.aws.client("sagemaker")
    for kind in (ENDPOINT, ENDPOINT_CONFIG, MODEL):
        method, key = _DELETE[kind]
        for item in session.state.resources(kind):
            try:
                getattr(client, method)(**{key: item["name"]})
                outcome = "deleted"
            except botocore.exceptions.ClientError as error:
                if not _is_missing(error):
                    raise
                outcome = "already gone"
            actions.append((kind, item["name"], outcome))
            session.state.forget(kind, item["name"])
    if stop_jobs:
        for kind in (TUNING_JOB, TRAINING_JOB):
            method, key = _STOP[kind]
            for item in session.state.resources(kind):
                if session.dry_run or _current_status(session, kind, item["name"]) == "InProgress":
                    getattr(client, method)(**{key: item["name"]})
                    actions.append((kind, item["name"], "stopping"))
    return actions
