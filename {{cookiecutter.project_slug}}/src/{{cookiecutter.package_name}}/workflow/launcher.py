"""The workflow on SageMaker as plain functions: what the CLI commands and the notebook call.

Every function takes the project config and a `session.Session` that the caller opened: the real
account, or a dry run on the offline AWS. The functions do not know which, except where a dry run
must say the truth: nothing ran, so statuses read "captured, not run" and predictions are empty.
What each step creates is recorded in the session's state, so the next step finds it.
"""

from __future__ import annotations

import io
import json
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from ..aws import ray_package, sdk
from ..aws.context import CAPTURED
from ..aws.sagemaker_jobs import Deployment, watch_hyperparameters
from ..aws.session import Session
from ..aws.state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB, ProjectState
from ..config import ProjectConfig
from . import dataset, payload

BEST_HYPERPARAMETERS = "best_hyperparameters"
# The endpoint's content types, by file name (inference.py decodes each format PIL reads).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
# Lines of the endpoint's CloudWatch log shown when its first invocation fails.
LOG_TAIL_LINES = 40


class LaunchError(Exception):
    """An expected failure (nothing to deploy, no endpoint, ...); the message is one line."""


# --- data -----------------------------------------------------------------------------------------


def upload_data(
    config: ProjectConfig, session: Session, data_dir: Path | None = None
) -> dataset.UploadResult:
    """Copy the prepared dataset to `s3://<bucket>/<prefix>/data/` (see `dataset.upload`)."""
    return dataset.upload(session.aws, Path(data_dir) if data_dir else config.data_dir)


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
    api = sdk.sagemaker_api(config)
    name = api.job_name(config, "hpo", max_length=32)
    api.launch_tuning(config, session.aws, tuning_job_name=name)
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
        sdk.sagemaker_api(config).wait_for_tuning(session.aws, tuning_job_name)
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
    return config.script_hyperparameters({**watch_hyperparameters(config), **tuned, **(overrides or {})})


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
    api = sdk.sagemaker_api(config)
    name = api.job_name(config, "train")
    wait = wait and not session.dry_run
    launch = api.launch_training(config, session.aws, merged, training_job_name=name, wait=wait)
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
) -> Deployment:
    """Deploy a model.tar.gz (S3 URI, local file, or the last trained model) behind an endpoint."""
    if config.settings.endpoint.server == "ray_serve":
        ray_package.toolkit_source()  # before anything is uploaded: the package needs it
    api = sdk.sagemaker_api(config)
    model_name = api.job_name(config, "model")
    uri = _model_data_uri(session, model_data, model_name)
    _require_object(session, uri)
    deployment = api.deploy_model(
        config,
        session.aws,
        uri,
        model_name=model_name,
        endpoint_name=api.job_name(config, "endpoint"),
        wait=wait and not session.dry_run,
    )
    record_deployment(session, deployment)
    return deployment


def record_deployment(session: Session, deployment: Deployment) -> None:
    """Remember the model, endpoint config and endpoint (`predict`, `status` and `teardown` find them)."""
    session.state.record(MODEL, deployment.model_name, model_data=deployment.repacked_model_data)
    session.state.record(ENDPOINT_CONFIG, deployment.endpoint_config_name)
    session.state.record(ENDPOINT, deployment.endpoint_name)


@dataclass
class EndpointCheck:
    """The first invocation after a deploy: did a model answer? If not, the endpoint's log tail."""

    endpoint_name: str
    ok: bool
    detail: str
    sample: str
    log_group: str = ""
    log_tail: list[str] = field(default_factory=list)


def sample_image(config: ProjectConfig) -> tuple[bytes, str, str]:
    """(bytes, content type, where from): the first image of the prepared test split, else a generated one."""
    test = config.data_dir / "test"
    if test.is_dir():
        for path in sorted(test.rglob("*")):
            if path.is_file() and mimetypes.guess_type(path.name)[0] in ("image/jpeg", "image/png"):
                return path.read_bytes(), image_content_type(path), str(path)
    from PIL import Image

    size = config.section("model")["image_size"]
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (150, 110, 70)).save(buffer, format="JPEG")
    return buffer.getvalue(), "image/jpeg", f"a generated {size}x{size} JPEG (no {test})"


def log_group(endpoint_name: str) -> str:
    return f"/aws/sagemaker/Endpoints/{endpoint_name}"


def endpoint_log_tail(session: Session, endpoint_name: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of the endpoint's CloudWatch log (its two latest streams, in time order)."""
    group = log_group(endpoint_name)
    logs = session.aws.client("logs")
    try:
        streams = logs.describe_log_streams(
            logGroupName=group, orderBy="LastEventTime", descending=True, limit=2
        )["logStreams"]
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return [f"(no log group {group}: the container wrote nothing yet)"]
        raise
    events = []
    for stream in streams:
        answer = logs.get_log_events(
            logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=False, limit=lines
        )
        events.extend(
            (event["timestamp"], stream["logStreamName"], event["message"]) for event in answer["events"]
        )
    return [message.rstrip() for _, _, message in sorted(events)[-lines:]] or [f"({group} holds no events)"]


def verify_endpoint(config: ProjectConfig, session: Session, endpoint_name: str) -> EndpointCheck:
    """Invoke the endpoint once with a sample image; on failure, fetch the tail of its CloudWatch log.

    InService only says the container started; this says a model loaded and answered. In a dry run the
    invocation is captured and nothing answers (`ok`, with the detail saying so)."""
    payload, content_type, where = sample_image(config)
    invoke = sdk.sagemaker_api(config).endpoint_invoker(session.aws, endpoint_name)
    try:
        answer = invoke(payload, content_type, "application/json;top_k=1")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        reason = " ".join(str(error).split())
        tail = endpoint_log_tail(session, endpoint_name)
        return EndpointCheck(endpoint_name, False, reason, where, log_group(endpoint_name), tail)
    if session.dry_run:
        return EndpointCheck(endpoint_name, True, f"the invocation was {CAPTURED}", where)
    try:
        best = answer["predictions"][0]["top_k"][0]
    except (KeyError, IndexError, TypeError):
        tail = endpoint_log_tail(session, endpoint_name)
        reason = f"the answer is not a prediction: {json.dumps(answer)[:200]}"
        return EndpointCheck(endpoint_name, False, reason, where, log_group(endpoint_name), tail)
    return EndpointCheck(
        endpoint_name, True, f"answered {best.get('label')} ({best.get('probability', 0):.2f})", where
    )


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
    """Send each image's bytes to the endpoint (a photo over the request limit shrunk to fit: `payload`).

    Returns one `{"image": path, "top_k": [{"label", "class_name", "index", "probability"}, ...]}` per
    image, with a "note" when the image was shrunk. A dry run captures the requests; no model answers,
    so `top_k` is empty and `status` says so. Every file is checked before any is read or sent.
    """
    if top_k < 1:
        raise LaunchError(f"top_k must be at least 1, got {top_k}")
    limit = payload.body_limit(config)
    try:
        payload.check_image_files(images, limit)
    except payload.ImageFileError as error:
        raise LaunchError(str(error)) from None
    content_types = [image_content_type(image) for image in images]
    if endpoint_name is None:
        latest = session.state.latest(ENDPOINT)
        if latest is None:
            raise LaunchError("no endpoint recorded for this project; run `deploy` or pass --endpoint")
        endpoint_name = latest["name"]
    invoke = sdk.sagemaker_api(config).endpoint_invoker(session.aws, endpoint_name)
    results = []
    for image, content_type in zip(images, content_types, strict=True):
        try:
            body, sent_type, note = payload.request_body(image, content_type, limit)
        except payload.ImageFileError as error:
            raise LaunchError(str(error)) from None
        answer = invoke(body, sent_type, f"application/json;top_k={top_k}")
        if session.dry_run:
            result: dict[str, Any] = {"image": str(image), "top_k": [], "status": CAPTURED}
        else:
            result = {"image": str(image), "top_k": answer["predictions"][0]["top_k"][:top_k]}
        if note:
            result["note"] = note
        results.append(result)
    return results
