"""The workflow on SageMaker as plain functions: what the CLI commands and the notebook call.

Each function takes the project config and either
- nothing more: it runs against the real account (credentials, region, role from the usual places)
  and records what it created in `.state/`;
- `dry_run_dir=DIR`: it runs offline (moto) and writes DIR/requests.json and DIR/s3/; nothing is
  recorded, but the inputs (best hyperparameters, last model) are read from `.state/` as a real run would;
- `aws=context` (from `aws.offline(config, DIR)` or `aws.connect(config)`) and optionally `state=`:
  several steps share one session, e.g. a whole offline deploy -> predict -> teardown.
"""

from __future__ import annotations

import json
import mimetypes
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws import AwsContext, aws_context
from .config import ProjectConfig
from .sources import stage_sources
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB, ProjectState

BEST_HYPERPARAMETERS = "best_hyperparameters"
IMAGE_TYPES = ("image/jpeg", "image/png")


class LaunchError(Exception):
    """An expected failure (nothing to deploy, no endpoint, ...); the message is one line."""


@contextmanager
def _session(
    config: ProjectConfig, aws: AwsContext | None, dry_run_dir: Path | None, state: ProjectState | None
) -> Iterator[tuple[AwsContext, ProjectState, ProjectState | None]]:
    """(context, state to read inputs from, state to record into or None for a dry run)."""
    reads = state or ProjectState(config.state_dir)
    if aws is not None:
        yield aws, reads, reads
    else:
        with aws_context(config, Path(dry_run_dir) if dry_run_dir else None) as context:
            yield context, reads, (None if dry_run_dir else reads)


@contextmanager
def _staged(config: ProjectConfig, role: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"{role}-sources-") as folder:
        yield stage_sources(config.root, role, Path(folder) / role)


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


def tuning_result(aws: AwsContext, tuning_job_name: str) -> TuningResult:
    """Status and best job of a tuning job, as SageMaker reports it now."""
    description = aws.client("sagemaker").describe_hyper_parameter_tuning_job(
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


def _record_best(state: ProjectState | None, result: TuningResult) -> None:
    if state is not None and result.best_hyperparameters:
        state.set_value(
            BEST_HYPERPARAMETERS,
            {
                "tuning_job": result.tuning_job_name,
                "training_job": result.best_training_job,
                "hyperparameters": result.best_hyperparameters,
            },
        )


def tune(
    config: ProjectConfig,
    *,
    wait: bool = True,
    dry_run_dir: Path | None = None,
    aws: AwsContext | None = None,
    state: ProjectState | None = None,
) -> TuningResult:
    """Start the hyperparameter tuning job over hpo.py; with `wait`, also fetch and record the best job.

    A dry run never waits (nothing would finish).
    """
    from . import sagemaker_api

    with (
        _session(config, aws, dry_run_dir, state) as (context, _, records),
        _staged(config, "training") as source,
    ):
        name = sagemaker_api.job_name(config, "hpo", max_length=32)
        wait = wait and not context.dry_run
        sagemaker_api.launch_tuning(config, context, source, tuning_job_name=name)
        if records is not None:
            records.record(TUNING_JOB, name)
        if not wait:
            return TuningResult(name, "InProgress")
        sagemaker_api.wait_for_tuning(context, name)
        result = tuning_result(context, name)
        _record_best(records, result)
        return result


def attach_tuning(
    config: ProjectConfig,
    tuning_job_name: str | None = None,
    *,
    wait: bool = True,
    state: ProjectState | None = None,
) -> TuningResult:
    """Wait for a tuning job started earlier (default: the last one recorded) and record its best job."""
    from . import sagemaker_api

    with _session(config, None, None, state) as (context, reads, records):
        if tuning_job_name is None:
            latest = reads.latest(TUNING_JOB)
            if latest is None:
                raise LaunchError("no tuning job recorded for this project; run `tune` first")
            tuning_job_name = latest["name"]
        if wait:
            sagemaker_api.wait_for_tuning(context, tuning_job_name)
        result = tuning_result(context, tuning_job_name)
        _record_best(records, result)
        return result


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    training_job_name: str
    model_data: str
    hyperparameters: dict[str, Any]
    status: str


def best_hyperparameters(config: ProjectConfig, state: ProjectState | None = None) -> dict[str, Any]:
    """The tuned values recorded by `tune`, or {} (then config.toml's defaults apply)."""
    recorded = (state or ProjectState(config.state_dir)).value(BEST_HYPERPARAMETERS) or {}
    return dict(recorded.get("hyperparameters", {}))


def train(
    config: ProjectConfig,
    *,
    hyperparameters: dict[str, Any] | None = None,
    use_tuned: bool = True,
    wait: bool = True,
    dry_run_dir: Path | None = None,
    aws: AwsContext | None = None,
    state: ProjectState | None = None,
) -> TrainingResult:
    """Train train_model.py with the debugger and profiler rules of the configured rule set.

    Hyperparameters: config.toml's defaults, then the best tuned ones (`use_tuned`), then `hyperparameters`.
    """
    from . import sagemaker_api

    with (
        _session(config, aws, dry_run_dir, state) as (context, reads, records),
        _staged(config, "training") as source,
    ):
        overrides = {**(best_hyperparameters(config, reads) if use_tuned else {}), **(hyperparameters or {})}
        merged = config.script_hyperparameters(overrides)
        name = sagemaker_api.job_name(config, "train")
        wait = wait and not context.dry_run
        launch = sagemaker_api.launch_training(
            config, context, source, merged, training_job_name=name, wait=wait
        )
        if records is not None:
            records.record(TRAINING_JOB, name, model_data=launch.model_data)
        status = context.client("sagemaker").describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
        return TrainingResult(name, launch.model_data, merged, status)


# --- deployment -----------------------------------------------------------------------------------


def _model_data_uri(
    context: AwsContext,
    model_data: str | Path | None,
    reads: ProjectState,
    model_name: str,
) -> str:
    if model_data is None:
        latest = reads.latest(TRAINING_JOB)
        if latest is None:
            raise LaunchError("no trained model recorded for this project; run `train` or pass --model-data")
        return latest["model_data"]
    if str(model_data).startswith("s3://"):
        return str(model_data)
    path = Path(model_data)
    if not path.is_file():
        raise LaunchError(f"--model-data {path} is neither an s3:// URI nor a file")
    key = context.s3_key("models", model_name, "model.tar.gz")
    context.client("s3").upload_file(str(path), context.bucket, key)
    return context.s3_uri("models", model_name, "model.tar.gz")


def deploy(
    config: ProjectConfig,
    model_data: str | Path | None = None,
    *,
    wait: bool = True,
    dry_run_dir: Path | None = None,
    aws: AwsContext | None = None,
    state: ProjectState | None = None,
) -> Any:
    """Deploy a model.tar.gz (S3 URI, local file, or the last trained model) behind an endpoint.

    Returns `sagemaker_api.Deployment` (model, endpoint config and endpoint names, repacked model URI).
    """
    from . import sagemaker_api

    with (
        _session(config, aws, dry_run_dir, state) as (context, reads, records),
        _staged(config, "inference") as source,
    ):
        model_name = sagemaker_api.job_name(config, "model")
        uri = _model_data_uri(context, model_data, reads, model_name)
        endpoint_name = sagemaker_api.job_name(config, "endpoint")
        deployment = sagemaker_api.deploy_model(
            config,
            context,
            uri,
            source,
            model_name=model_name,
            endpoint_name=endpoint_name,
            wait=wait and not context.dry_run,
        )
        if records is not None:
            records.record(MODEL, deployment.model_name, model_data=deployment.repacked_model_data)
            records.record(ENDPOINT_CONFIG, deployment.endpoint_config_name)
            records.record(ENDPOINT, deployment.endpoint_name)
        return deployment


# --- prediction -----------------------------------------------------------------------------------


def image_content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(Path(path).name)
    if guessed not in IMAGE_TYPES:
        raise LaunchError(
            f"{path}: not a JPEG or PNG file (by its name); the endpoint accepts {', '.join(IMAGE_TYPES)}"
        )
    return guessed


def _fake_answer(config: ProjectConfig, top_k: int) -> bytes:
    """What a dry run's endpoint says: the endpoint's JSON shape, with obviously made-up classes."""
    k = min(top_k, config.model["num_classes"])
    rows = [
        {
            "label": f"dry run class {i + 1}",
            "class_name": f"{i + 1:03d}.dry_run_class_{i + 1}",
            "index": i,
            "probability": round(1 / (i + 2), 6),
        }
        for i in range(k)
    ]
    return json.dumps({"predictions": [{"top_k": rows}]}).encode()


def predict(
    config: ProjectConfig,
    images: Sequence[Path],
    *,
    endpoint_name: str | None = None,
    top_k: int = 5,
    dry_run_dir: Path | None = None,
    aws: AwsContext | None = None,
    state: ProjectState | None = None,
) -> list[dict[str, Any]]:
    """Send each image's raw bytes to the endpoint.

    Returns one `{"image": path, "top_k": [{"label", "class_name", "index", "probability"}, ...]}` per image.
    """
    from . import sagemaker_api

    if top_k < 1:
        raise LaunchError(f"top_k must be at least 1, got {top_k}")
    content_types = [image_content_type(image) for image in images]
    with _session(config, aws, dry_run_dir, state) as (context, reads, _):
        if endpoint_name is None:
            latest = reads.latest(ENDPOINT)
            if latest is None and not context.dry_run:
                raise LaunchError("no endpoint recorded for this project; run `deploy` or pass --endpoint")
            endpoint_name = latest["name"] if latest else f"{config.section('project')['slug']}-endpoint"
        if context.offline is not None:
            context.offline.answer_invocations_with(_fake_answer(config, top_k))
        invoke = sagemaker_api.endpoint_invoker(context, endpoint_name)
        results = []
        for image, content_type in zip(images, content_types, strict=True):
            answer = invoke(
                Path(image).read_bytes(),
                content_type,
                f"application/json;top_k={top_k}",
            )
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


def _current_status(client: Any, kind: str, name: str) -> str:
    import botocore.exceptions

    method, key, status_key = _DESCRIBE[kind]
    try:
        description = getattr(client, method)(**{key: name})
    except botocore.exceptions.ClientError as error:
        if _is_missing(error):
            return "Deleted"
        raise
    return description[status_key] if status_key else "Exists"


def status(
    config: ProjectConfig, *, aws: AwsContext | None = None, state: ProjectState | None = None
) -> list[dict[str, Any]]:
    """Every resource this project recorded, with its status now (`Deleted` when it is gone)."""
    with _session(config, aws, None, state) as (context, reads, _):
        client = context.client("sagemaker")
        return [
            {**item, "status": _current_status(client, item["kind"], item["name"])}
            for item in reads.resources()
        ]


def teardown(
    config: ProjectConfig,
    *,
    stop_jobs: bool = False,
    dry_run_dir: Path | None = None,
    aws: AwsContext | None = None,
    state: ProjectState | None = None,
) -> list[tuple[str, str, str]]:
    """Delete the endpoints, endpoint configs and models this project created; optionally stop its jobs.

    Returns (kind, name, what happened). Something already gone counts as deleted.
    """
    import botocore.exceptions

    actions: list[tuple[str, str, str]] = []
    with _session(config, aws, dry_run_dir, state) as (context, reads, records):
        client = context.client("sagemaker")
        for kind in (ENDPOINT, ENDPOINT_CONFIG, MODEL):
            method, key = _DELETE[kind]
            for item in reads.resources(kind):
                try:
                    getattr(client, method)(**{key: item["name"]})
                    outcome = "deleted"
                except botocore.exceptions.ClientError as error:
                    if not _is_missing(error):
                        raise
                    outcome = "already gone"
                actions.append((kind, item["name"], outcome))
                if records is not None:
                    records.forget(kind, item["name"])
        if stop_jobs:
            for kind in (TUNING_JOB, TRAINING_JOB):
                method, key = _STOP[kind]
                for item in reads.resources(kind):
                    if _current_status(client, kind, item["name"]) == "InProgress":
                        getattr(client, method)(**{key: item["name"]})
                        actions.append((kind, item["name"], "stopping"))
    return actions
