"""What the SageMaker jobs are, decided from the config without the SDK: shared by both SDK generations.

`sagemaker_api` (SDK v2) and `sagemaker_api_v3` (SDK v3) turn these into SDK objects; `sdk.sagemaker_api`
picks one by config.toml's `[aws] sagemaker_sdk`. Everything here imports without any SageMaker SDK, so the
rules, names and channels are the same whichever generation sends the requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions

from .. import experiments
from ..config import ConfigError, ProjectConfig, aws_tables, schema
from . import ray_package
from .context import AwsContext

DATA_CHANNEL = "training"
TUNING_ENTRY_POINT = "hpo.py"
TRAINING_ENTRY_POINT = "train_model.py"
INFERENCE_ENTRY_POINT = "inference.py"
# Shipped with both source directories (see the module's docstring).
SHARED_PACKAGE = "classifier"

# The scripts print `validation:loss=0.123456 validation:accuracy=0.912345` once per epoch; the
# objective's own regex comes from config.toml, these are what the console charts besides.
LOGGED_METRICS = ("validation:loss", "validation:accuracy")


@dataclass(frozen=True)
class RuleSet:
    """Built-in rules by their `rule_configs` names: debugger rules (functions), profiler rules (classes)."""

    debugger: tuple[str, ...]
    profiler: tuple[str, ...]


# The last PyTorch training image with smdebug, which SageMaker's debugger rules read tensors from:
# smdebug 1.0.34 cannot go on later images without breaking numpy 2 and protobuf (training/requirements.txt).
LAST_FRAMEWORK_WITH_SMDEBUG = (2, 0)


def source_arguments(config: ProjectConfig, role: str) -> dict[str, Any]:
    """`source_dir` and `dependencies` for `PyTorch` (role "training") or `PyTorchModel` ("inference")."""
    folder = config.training_dir if role == "training" else config.inference_dir
    return {"source_dir": str(folder), "dependencies": [str(config.root / SHARED_PACKAGE)]}


def metric_definitions(config: ProjectConfig) -> list[dict[str, str]]:
    """Loss and accuracy, with the config's regex for the objective metric."""
    tuning = config.section("tuning")
    regexes = {name: re.escape(name) + r"=([0-9\.]+)" for name in LOGGED_METRICS}
    regexes[tuning["objective_metric_name"]] = tuning["objective_metric_regex"]
    return [{"Name": name, "Regex": regex} for name, regex in regexes.items()]


def _image_has_smdebug(config: ProjectConfig) -> bool:
    image = config.section("images")["training"]
    if image.get("image_uri"):
        return True  # a custom image: its author decides what it holds
    major, minor = (int(part) for part in image["framework_version"].split(".")[:2])
    return (major, minor) <= LAST_FRAMEWORK_WITH_SMDEBUG


def in_job_rules(config: ProjectConfig) -> tuple[str, ...]:
    """The rules train_model.py judges itself ([debugger] evaluation "in_job" or "both")."""
    debugger = config.section("debugger")
    return () if debugger["evaluation"] == "sagemaker" else tuple(debugger["rules"])


def rule_set(config: ProjectConfig) -> RuleSet:
    """The rules SageMaker's own rule jobs judge ([debugger] evaluation "sagemaker" or "both").

    Debugger rules need the hook's tensors, so smdebug in the job: on images without it they are left to
    the in-job evaluation (`rule_notes` says so). Profiler rules read SageMaker's own system metrics."""
    debugger = config.section("debugger")
    if debugger["evaluation"] == "in_job":
        return RuleSet(debugger=(), profiler=())
    rules = debugger["rules"]
    debugger_rules = tuple(name for name in rules if name in schema.SAGEMAKER_DEBUGGER_RULES)
    return RuleSet(
        debugger=debugger_rules if _image_has_smdebug(config) else (),
        profiler=tuple(name for name in rules if name in schema.SAGEMAKER_PROFILER_RULES),
    )


def rule_notes(config: ProjectConfig) -> tuple[str, ...]:
    """One line for each configured rule that SageMaker's rule jobs cannot judge here, and why."""
    debugger = config.section("debugger")
    skipped = [name for name in debugger["rules"] if name in schema.SAGEMAKER_DEBUGGER_RULES]
    if debugger["evaluation"] == "in_job" or not skipped or _image_has_smdebug(config):
        return ()
    version = config.section("images")["training"]["framework_version"]
    where = "in the job only" if debugger["evaluation"] == "both" else 'by nobody: set evaluation = "both"'
    return (
        f"SageMaker's debugger rules ({', '.join(skipped)}) need smdebug, which the PyTorch {version} "
        f"training image cannot install; they are judged {where}",
    )


# The rule train_model.py adds by itself whenever its profiler runs (training/rules.py).
IN_JOB_PROFILER_RULE = "DataLoadingBottleneck"


def where_judged(config: ProjectConfig) -> list[str]:
    """One line for each rule judged for the training job: where, on this image and account, and why.

    The notebook prints these lines; train_model.py's log names the rules it judges itself (debugger.py)."""
    debugger = config.section("debugger")
    evaluation = debugger["evaluation"]
    selected = rule_set(config)
    version = config.section("images")["training"]["framework_version"]
    account = "on accounts with SageMaker Debugger (closed to new customers since 2026-07-30)"
    names = list(debugger["rules"])
    profiled = any(name in (*schema.SAGEMAKER_PROFILER_RULES, *schema.IN_JOB_ONLY_RULES) for name in names)
    if evaluation != "sagemaker" and profiled and IN_JOB_PROFILER_RULE not in names:
        names.append(IN_JOB_PROFILER_RULE)
    lines = []
    for name in names:
        places = (
            ["in the job by train_model.py's own rules (every account)"] if evaluation != "sagemaker" else []
        )
        if name in selected.debugger:
            places.append(f"by SageMaker's rule container from smdebug's tensors, {account}")
        elif name in selected.profiler:
            places.append(
                f"by SageMaker's rule container from its system metrics (no smdebug needed), {account}"
            )
        if name in selected.debugger or name in selected.profiler:
            why = ""
        elif name in schema.IN_JOB_ONLY_RULES:
            added = "" if name in debugger["rules"] else "added whenever the in-job profiler runs; "
            why = f"{added}SageMaker has no built-in rule of that name"
        elif evaluation == "in_job":
            why = 'not by SageMaker: [debugger] evaluation = "in_job"'
        else:
            why = (
                f"not by SageMaker: its rule reads smdebug's tensors, which the PyTorch {version} training "
                "image cannot install (training/requirements.txt)"
            )
        where = " and ".join(places) if places else 'by nobody (set [debugger] evaluation = "both")'
        lines.append(f"{name}: judged {where}" + (f"; {why}" if why else ""))
    return lines


def rule_parameters(debugger: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """[debugger.rule_parameters]: per rule, the parameters set over AWS's defaults."""
    return {rule: dict(values) for rule, values in debugger.get("rule_parameters", {}).items()}


def watch_hyperparameters(config: ProjectConfig) -> dict[str, Any]:
    """What train_model.py needs to judge the rules in the job: the rules, their parameters, save intervals,
    profiler rate."""
    debugger = config.section("debugger")
    judged = in_job_rules(config)
    parameters = {rule: values for rule, values in rule_parameters(debugger).items() if rule in judged}
    return {
        "rules": ",".join(judged),
        # Only where set: a job launched without it judges with AWS's defaults (train_model.py's "{}").
        **({"rule_parameters": json.dumps(parameters, sort_keys=True)} if parameters else {}),
        "train_save_interval": debugger["train_save_interval"],
        "eval_save_interval": debugger["eval_save_interval"],
        "profiler_interval_millis": config.section("profiler")["system_monitor_interval_millis"],
    }


def job_environment(config: ProjectConfig) -> dict[str, str]:
    """The jobs' environment variables: config.toml's [environment], then MLflow's where [tracking] names a
    server (training/tracking.py installs mlflow in the job and logs there; without it, nothing)."""
    variables = {str(key): str(value) for key, value in config.data.get("environment", {}).items()}
    return {**variables, **experiments.job_environment(config, local=False)}


def rule_job_count(config: ProjectConfig) -> int:
    """Processing jobs SageMaker starts beside the training job: one per rule of `rule_set` (one
    instance each), all counted against the account's processing-instance quota."""
    selected = rule_set(config)
    return len(selected.debugger) + len(selected.profiler)


def data_channels(aws: AwsContext) -> dict[str, str]:
    """The jobs' one input channel: the uploaded dataset (the scripts read SM_CHANNEL_TRAINING)."""
    return {DATA_CHANNEL: aws.s3_uri("data")}


@dataclass(frozen=True)
class TrainingLaunch:
    job_name: str
    model_data: str
    # One line each, for the user: e.g. that the job was relaunched without the Debugger configuration.
    notes: tuple[str, ...] = ()


def training_output(aws: AwsContext, training_job_name: str) -> str:
    """Where SageMaker writes the job's model.tar.gz."""
    return aws.s3_uri("output", training_job_name, "output", "model.tar.gz")


def refused_for_debugger(error: botocore.exceptions.ClientError) -> bool:
    """CreateTrainingJob refused because of its Debugger or Profiler configuration (e.g. an account that
    Debugger is closed to): the rules, hook and profiler are what it names."""
    if getattr(error, "operation_name", "") != "CreateTrainingJob":
        return False
    message = str(error.response.get("Error", {}).get("Message", "")).lower()
    return any(word in message for word in ("debug", "profiler", "rule"))


@dataclass(frozen=True)
class Deployment:
    model_name: str
    endpoint_config_name: str
    endpoint_name: str
    # The model.tar.gz with code/ added, as the endpoint loads it.
    repacked_model_data: str


def job_name_base(config: ProjectConfig, kind: str, max_length: int) -> tuple[str, bool]:
    """`<slug>-<kind>` and whether the SDK's short timestamp is used, for `name_from_base(base, max_length,
    short)`: the slug is shortened first so the kind survives; every name starts with (part of) the slug,
    which is what the IAM policy's resource patterns match."""
    short = max_length < 40
    timestamp_length = 12 if short else 24  # "-yyMMdd-HHmm" or "-yyyy-mm-dd-HH-MM-SS-mmm"
    slug = config.section("project")["slug"][: max_length - timestamp_length - len(kind) - 1].rstrip("-")
    return f"{slug}-{kind}", short


def parameter_ranges(
    config: ProjectConfig, categorical: Callable[[list], Any], numeric: Mapping[str, Callable[..., Any]]
) -> dict[str, Any]:
    """[tuning.ranges.<name>] tables as the SDK generation's parameter ranges: `categorical(values)`, and
    `numeric["continuous" | "integer"](min, max, scaling_type=...)`."""
    ranges = {}
    for name, spec in config.section("tuning").get("ranges", {}).items():
        kind = spec.get("type")
        if kind == "categorical":
            ranges[name] = categorical(list(spec["values"]))
        elif kind in numeric:
            ranges[name] = numeric[kind](spec["min"], spec["max"], scaling_type=spec.get("scaling", "Auto"))
        else:
            raise ConfigError(
                f"[tuning.ranges.{name}] type is {kind!r}; choose continuous, integer or categorical"
            )
    return ranges


def repack_on_disk(
    config: ProjectConfig,
    model_data: Path,
    destination: Path,
    repack_model: Callable[..., Any],
    session_settings: Callable[[], Any],
) -> Path:
    """model.tar.gz with `code/` added, as the endpoint receives it, but on this disk: the SDK generation's
    own `repack_model` (and its `SessionSettings`), on file:// URIs."""
    arguments = source_arguments(config, "inference")
    repack_model(
        INFERENCE_ENTRY_POINT,
        arguments["source_dir"],
        arguments["dependencies"],
        f"file://{Path(model_data).resolve()}",
        f"file://{Path(destination).resolve()}",
        # For file:// URIs the SDK reads only the session's settings; no AWS session is needed.
        sagemaker_session=SimpleNamespace(settings=session_settings()),
    )
    return Path(destination)


def image_uri_of(
    config: ProjectConfig, scope: str, instance_type: str | None, region: str, retrieve: Callable[..., str]
) -> str:
    """The image for [images.<scope>] ("training" or "inference") on `instance_type` (None: serverless, a
    CPU image), as the SDK generation's `image_uris.retrieve` names it; a custom image_uri as it is; AWS's
    Ray Serve image for an endpoint with [endpoint] server = "ray_serve". ValueError when there is none."""
    if scope == "inference" and config.data.get("endpoint", {}).get("server") == "ray_serve":
        return ray_package.image_uri(config, region, instance_type)
    images = config.section("images")[scope]
    if images.get("image_uri"):
        return images["image_uri"]
    return retrieve(
        # From 2.11 the training images are Amazon Linux 2023 ones, a framework of their own in the tables.
        aws_tables.sdk_image_framework(images["framework_version"]),
        region=region,
        version=images["framework_version"],
        py_version=images["py_version"],
        instance_type=instance_type or "ml.m5.large",
        image_scope=scope,
    )
