"""Every use of the SageMaker Python SDK by the package, in one module.

The notebook writes the same constructions out in its cells for its reader (with this module's helpers for
what is not an SDK call); tests/test_notebook_requests.py keeps both sending the same requests.

This is SDK v2's module (`sagemaker>=2.257,<3`, config.toml `[aws] sagemaker_sdk = "v2"`); SDK v3's
ModelTrainer, tuner and ModelBuilder live in `sagemaker_api_v3`, with the same functions, and
`sdk.sagemaker_api(config)` picks one. What both send is decided in `sagemaker_jobs` (re-exported here).
Nothing imports this module at start-up (the CLI imports it inside commands),
so `--help` does not pay for importing the SDK.

Inputs are the project config, an `AwsContext` and plain values; outputs are
names and S3 URIs, so callers never hold SDK objects.

The code SageMaker receives is named here once: `training/` (or `inference/`) as the source directory,
with the shared `classifier/` package passed as the SDK's `dependencies=` (the SDK copies it next to the
entry point in `sourcedir.tar.gz`, and to `code/lib/` in the repacked model). Local runs build the same
archives with the same SDK functions (`training_source_archive`, `repack_model_locally`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# The SDK logs where it looked for its own optional config file on every import.
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)


def _not_unfinished_job_warning(record: logging.LogRecord) -> bool:
    # The SDK warns whenever an estimator's model data is read before its job finished; the launcher
    # never builds on an unfinished estimator (it names the model URI itself), so the line only misleads.
    return not record.getMessage().startswith("No finished training job found")


logging.getLogger("sagemaker.estimator").addFilter(_not_unfinished_job_warning)

import botocore.exceptions  # noqa: E402
import sagemaker  # noqa: E402
from sagemaker.debugger import (  # noqa: E402
    CollectionConfig,
    DebuggerHookConfig,
    ProfilerConfig,
    ProfilerRule,
    Rule,
    rule_configs,
)
from sagemaker.deserializers import JSONDeserializer  # noqa: E402
from sagemaker.model import Model  # noqa: E402
from sagemaker.predictor import Predictor  # noqa: E402
from sagemaker.pytorch import PyTorch, PyTorchModel  # noqa: E402
from sagemaker.serializers import IdentitySerializer  # noqa: E402
from sagemaker.serverless import ServerlessInferenceConfig  # noqa: E402
from sagemaker.session_settings import SessionSettings  # noqa: E402
from sagemaker.tuner import (  # noqa: E402
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
)
from sagemaker.utils import create_tar_file, name_from_base, repack_model  # noqa: E402

from ..config import ProjectConfig  # noqa: E402
from . import ray_package, tagging  # noqa: E402
from .context import AwsContext, connect_account, execution_role_or_setup_error  # noqa: E402

# Re-exported: callers and the notebook read these here, whichever generation they use.
from .sagemaker_jobs import (  # noqa: E402, F401
    DATA_CHANNEL,
    IN_JOB_PROFILER_RULE,
    INFERENCE_ENTRY_POINT,
    LAST_FRAMEWORK_WITH_SMDEBUG,
    LOGGED_METRICS,
    SHARED_PACKAGE,
    TRAINING_ENTRY_POINT,
    TUNING_ENTRY_POINT,
    Deployment,
    RuleSet,
    TrainingLaunch,
    data_channels,
    image_uri_of,
    in_job_rules,
    job_environment,
    job_name_base,
    metric_definitions,
    parameter_ranges,
    refused_for_debugger,
    repack_on_disk,
    rule_job_count,
    rule_notes,
    rule_parameters,
    rule_set,
    source_arguments,
    training_output,
    watch_hyperparameters,
    where_judged,
)

# The single input channel; the scripts read SM_CHANNEL_TRAINING/{train,valid,test}.


_RANGE_TYPES = {"continuous": ContinuousParameter, "integer": IntegerParameter}


# --- session, role, bucket -----------------------------------------------------------------------


def sagemaker_session(aws: AwsContext) -> sagemaker.Session:
    return sagemaker.Session(boto_session=aws.boto_session, default_bucket=aws.bucket)


def _execution_role(boto_session: Any) -> str:
    """The notebook's or Studio's execution role, as SDK v2 finds it; one line naming the setting outside."""
    return execution_role_or_setup_error(
        lambda: sagemaker.get_execution_role(sagemaker.Session(boto_session=boto_session))
    )


def connect(config: ProjectConfig) -> AwsContext:
    """The real account (`context.connect_account`), with SDK v2's default bucket and execution role."""
    return connect_account(
        config,
        default_bucket=lambda boto_session: sagemaker.Session(boto_session=boto_session).default_bucket(),
        execution_role=_execution_role,
    )


# --- the code SageMaker receives -------------------------------------------------------------------


def training_source_archive(config: ProjectConfig, destination: Path) -> Path:
    """sourcedir.tar.gz as the estimator uploads it, written to `destination` (for local runs)."""
    arguments = source_arguments(config, "training")
    folder = Path(arguments["source_dir"])
    # What `fw_utils.tar_and_upload_dir` compresses: the source directory's entries, then the dependencies.
    files = [str(path) for path in sorted(folder.iterdir()) if path.name != "__pycache__"]
    archive = create_tar_file(files + arguments["dependencies"], str(destination))
    return Path(archive)


def repack_model_locally(config: ProjectConfig, model_data: Path, destination: Path) -> Path:
    """model.tar.gz with `code/` added, as the endpoint receives it, but on this disk (SDK v2's repack)."""
    return repack_on_disk(config, model_data, destination, repack_model, SessionSettings)


# --- configuration turned into SDK objects ---------------------------------------------------------


def hyperparameter_ranges(config: ProjectConfig) -> dict[str, Any]:
    """[tuning.ranges.<name>] tables as SDK v2 parameter ranges."""
    return parameter_ranges(config, CategoricalParameter, _RANGE_TYPES)


def rule_collections(
    base_config: dict[str, Any], train_interval: int, eval_interval: int
) -> list[CollectionConfig]:
    """The collections a built-in rule reads, saved at the hook's intervals.

    `rule_configs.<rule>()` asks for its collections with `save_interval: 500`;
    the SDK merges those into the hook config, where they override the hook's
    own intervals. With ~170 steps per epoch on dogImages that saves one step
    per few epochs and the rules see (almost) nothing. Keep each collection's
    other parameters (e.g. include_regex) and replace its intervals.
    """
    collections = []
    for item in base_config.get("CollectionConfigurations", []):
        parameters = {
            key: value
            for key, value in item.get("CollectionParameters", {}).items()
            if "save_interval" not in key
        }
        parameters["train.save_interval"] = str(train_interval)
        parameters["eval.save_interval"] = str(eval_interval)
        collections.append(CollectionConfig(name=item["CollectionName"], parameters=parameters))
    return collections


def sagemaker_rule_parameters(debugger: dict[str, Any], rule: str) -> dict[str, str]:
    """`rule`'s [debugger.rule_parameters] as Rule.sagemaker's `rule_parameters` (SageMaker's
    RuleParameters are strings; its rule containers read "True"/"False" as Python writes them)."""
    return {key: str(value) for key, value in rule_parameters(debugger).get(rule, {}).items()}


def debugger_rules(selected: RuleSet, debugger: dict[str, Any]) -> list[Any]:
    """`Rule.sagemaker` and `ProfilerRule.sagemaker` objects for a rule set, at [debugger]'s intervals,
    each debugger rule with its [debugger.rule_parameters] (the same values the in-job rules take)."""
    rules: list[Any] = []
    for name in selected.debugger:
        base_config = getattr(rule_configs, name)()
        collections = rule_collections(
            base_config, debugger["train_save_interval"], debugger["eval_save_interval"]
        )
        values = sagemaker_rule_parameters(debugger, name)
        rules.append(
            Rule.sagemaker(
                base_config, rule_parameters=values or None, collections_to_save=collections or None
            )
        )
    rules.extend(ProfilerRule.sagemaker(getattr(rule_configs, name)()) for name in selected.profiler)
    return rules


def _image_arguments(config: ProjectConfig, role: str) -> dict[str, str | None]:
    """[images.<role>] as the SDK takes it: a custom image_uri, when set, wins over the versions."""
    images = config.section("images")[role]
    return {
        "framework_version": images["framework_version"],
        "py_version": images["py_version"],
        "image_uri": images.get("image_uri") or None,
    }


def image_uri(config: ProjectConfig, scope: str, instance_type: str | None, region: str) -> str:
    """The image SDK v2 names for [images.<scope>] (`sagemaker_jobs.image_uri_of`)."""
    return image_uri_of(config, scope, instance_type, region, sagemaker.image_uris.retrieve)


def job_name(config: ProjectConfig, kind: str, max_length: int = 63) -> str:
    """`<slug>-<kind>-<timestamp>` within SageMaker's limits (63 characters; 32 for tuning jobs)."""
    base, short = job_name_base(config, kind, max_length)
    return name_from_base(base, max_length=max_length, short=short)


# What an estimator without the debugger gets: no hook, no rules, no system profiling.
_NO_DEBUGGER: dict[str, Any] = {"debugger_hook_config": False, "disable_profiler": True}


def debugger_settings(config: ProjectConfig, aws: AwsContext) -> dict[str, Any]:
    """The estimator arguments of the configured rule set: `rules` (Rule / ProfilerRule objects),
    `debugger_hook_config` (DebuggerHookConfig at [debugger]'s intervals) and `profiler_config`
    (ProfilerConfig, system metrics every [profiler] interval). No rules: the hook and profiler are off."""
    selected = rule_set(config)
    if not (selected.debugger or selected.profiler):
        return dict(_NO_DEBUGGER)
    intervals = config.section("debugger")
    hook = DebuggerHookConfig(
        s3_output_path=aws.s3_uri("debug-output"),
        hook_parameters={
            "train.save_interval": str(intervals["train_save_interval"]),
            "eval.save_interval": str(intervals["eval_save_interval"]),
        },
    )
    return {
        "rules": debugger_rules(selected, intervals),
        "debugger_hook_config": hook if selected.debugger else False,
        # System metrics only: framework profiling collects nothing on PyTorch >= 2.
        "profiler_config": ProfilerConfig(
            s3_output_path=aws.s3_uri("profiler-output"),
            system_monitor_interval_millis=config.section("profiler")["system_monitor_interval_millis"],
        ),
    }


def pytorch_estimator(
    config: ProjectConfig,
    aws: AwsContext,
    entry_point: str,
    hyperparameters: dict[str, Any],
    *,
    instances: str,
    debugger: bool,
    checkpoint_job_name: str | None = None,
) -> PyTorch:
    """The PyTorch estimator both tuning (`instances="tuning"`) and training use.

    `debugger=True` adds the configured rule set, the hook's save intervals and
    system profiling; otherwise the debugger hook and profiler are off.
    `checkpoint_job_name` turns on checkpoint upload (needed to resume spot jobs).
    """
    machines = config.section("instances")[instances]
    jobs = config.section("jobs")
    arguments: dict[str, Any] = {
        "entry_point": entry_point,
        **source_arguments(config, "training"),
        "role": aws.role_arn,
        "sagemaker_session": sagemaker_session(aws),
        "instance_type": machines["type"],
        "instance_count": machines["count"],
        "hyperparameters": dict(hyperparameters),  # the SDK adds its own entries to it
        "metric_definitions": metric_definitions(config),
        "output_path": aws.s3_uri("output"),
        "code_location": aws.s3_uri("code"),
        "max_run": jobs["max_run_seconds"],
        "environment": job_environment(config),
        # The training job's tags; a tuner adds its estimator's tags to the tuning job's, which SageMaker
        # copies onto every training job the tuning job starts.
        "tags": tagging.project_tags(config),
        **_image_arguments(config, "training"),
    }
    if jobs["use_spot"]:
        arguments.update(
            use_spot_instances=True, max_wait=max(jobs["max_wait_seconds"], jobs["max_run_seconds"])
        )
    if checkpoint_job_name:
        arguments["checkpoint_s3_uri"] = aws.s3_uri("checkpoints", checkpoint_job_name)
    if machines["count"] > 1:
        arguments["distribution"] = {"torch_distributed": {"enabled": True}}
    arguments.update(debugger_settings(config, aws) if debugger else _NO_DEBUGGER)
    return PyTorch(**arguments)


# --- tuning and training ---------------------------------------------------------------------------


def tuning_estimator(config: ProjectConfig, aws: AwsContext) -> PyTorch:
    """The estimator each tuning job runs: hpo.py with config.toml's fixed hyperparameters, no debugger."""
    ranges = hyperparameter_ranges(config)
    static = {key: value for key, value in config.script_hyperparameters().items() if key not in ranges}
    return pytorch_estimator(config, aws, TUNING_ENTRY_POINT, static, instances="tuning", debugger=False)


def tuner(config: ProjectConfig, estimator: PyTorch) -> HyperparameterTuner:
    """[tuning]'s search over `estimator`: the ranges, the objective metric and the job limits."""
    tuning = config.section("tuning")
    return HyperparameterTuner(
        estimator,
        objective_metric_name=tuning["objective_metric_name"],
        hyperparameter_ranges=hyperparameter_ranges(config),
        metric_definitions=estimator.metric_definitions,
        objective_type=tuning["objective_type"],
        max_jobs=tuning["max_jobs"],
        max_parallel_jobs=tuning["max_parallel_jobs"],
        early_stopping_type=tuning.get("early_stopping_type", "Off"),
        # The estimator's own tags (the SDK adds them anyway): tags made a second later would give the
        # tuning job a second `created` tag.
        tags=estimator.tags,
    )


def launch_tuning(config: ProjectConfig, aws: AwsContext, *, tuning_job_name: str) -> None:
    """Start the tuning job over hpo.py, without waiting (see `wait_for_tuning`)."""
    tuner(config, tuning_estimator(config, aws)).fit(data_channels(aws), job_name=tuning_job_name, wait=False)


def wait_for_tuning(aws: AwsContext, tuning_job_name: str) -> None:
    """Block until the tuning job ends, printing a dot per poll (the SDK's progress)."""
    sagemaker_session(aws).wait_for_tuning_job(tuning_job_name)


def training_estimator(
    config: ProjectConfig,
    aws: AwsContext,
    hyperparameters: dict[str, Any],
    *,
    training_job_name: str,
    debugger: bool = True,
) -> PyTorch:
    """The final job's estimator: train_model.py with the rules, hook and profiler of `debugger_settings`,
    checkpoints under `checkpoints/<job>/` (a spot job resumes from them)."""
    return pytorch_estimator(
        config,
        aws,
        TRAINING_ENTRY_POINT,
        hyperparameters,
        instances="training",
        debugger=debugger,
        checkpoint_job_name=training_job_name,
    )


def launch_training(
    config: ProjectConfig,
    aws: AwsContext,
    hyperparameters: dict[str, Any],
    *,
    training_job_name: str,
    wait: bool,
) -> TrainingLaunch:
    """Start the training job over train_model.py with the debugger; with `wait`, stream its logs.

    When CreateTrainingJob is refused for its Debugger or Profiler configuration, the job is launched once
    more without it (the in-job rules still judge the run), and the launch's notes say so.
    """
    notes: list[str] = []

    def fit(debugger: bool) -> None:
        estimator = training_estimator(
            config, aws, hyperparameters, training_job_name=training_job_name, debugger=debugger
        )
        estimator.fit(
            data_channels(aws), job_name=training_job_name, wait=wait, logs="All" if wait else "None"
        )

    try:
        fit(debugger=True)
    except botocore.exceptions.ClientError as error:
        if not refused_for_debugger(error):
            raise
        reason = " ".join(str(error.response.get("Error", {}).get("Message", "")).split())
        notes.append(
            f"SageMaker refused the Debugger/Profiler configuration ({reason}); relaunched once without it: "
            "the rules are judged in the job only"
        )
        fit(debugger=False)
    notes.extend(rule_notes(config))
    return TrainingLaunch(training_job_name, training_output(aws, training_job_name), tuple(notes))


# --- deployment and prediction ---------------------------------------------------------------------


def pytorch_model(
    config: ProjectConfig, aws: AwsContext, model_data: str, *, model_name: str
) -> PyTorchModel:
    """`model_data` (an S3 URI) served by inference.py in the configured PyTorch inference image."""
    return PyTorchModel(
        model_data=model_data,
        role=aws.role_arn,
        entry_point=INFERENCE_ENTRY_POINT,
        **source_arguments(config, "inference"),
        sagemaker_session=sagemaker_session(aws),
        code_location=aws.s3_uri("code"),
        name=model_name,
        **_image_arguments(config, "inference"),
    )


def serverless_config(config: ProjectConfig) -> ServerlessInferenceConfig | None:
    """[endpoint]'s serverless settings as the SDK's object; None for an endpoint on instances."""
    endpoint = config.settings.endpoint
    if not endpoint.serverless:
        return None
    return ServerlessInferenceConfig(
        memory_size_in_mb=endpoint.memory_mb, max_concurrency=endpoint.max_concurrency
    )


def deploy_arguments(config: ProjectConfig, endpoint_name: str) -> dict[str, Any]:
    """`model.deploy(**deploy_arguments(...))`: [instances.endpoint] (or [endpoint] serverless), raw JPEG
    bytes in, JSON out; the model, endpoint config and endpoint all carry the project's tags."""
    serverless = serverless_config(config)
    if serverless is not None:
        machines: dict[str, Any] = {"serverless_inference_config": serverless}
    else:
        endpoint = config.section("instances")["endpoint"]
        machines = {"initial_instance_count": endpoint["count"], "instance_type": endpoint["type"]}
    return {
        **machines,
        "endpoint_name": endpoint_name,
        "serializer": IdentitySerializer("image/jpeg"),
        "deserializer": JSONDeserializer(),
        "tags": tagging.project_tags(config),
    }


def ray_serve_model(config: ProjectConfig, aws: AwsContext, model_data: str, *, model_name: str) -> Model:
    """`model_data` (an S3 URI) packaged for AWS's Ray Serve container (`ray_package`: config.yaml,
    deployment.py and the same code/ as TorchServe's), uploaded beside it, in a plain `Model`."""
    endpoint = config.section("instances")["endpoint"]
    instance_type = None if config.settings.endpoint.serverless else endpoint["type"]
    package = ray_package.upload_package(config, aws, model_data, model_name=model_name)
    return Model(
        image_uri=ray_package.image_uri(config, aws.region, instance_type),
        model_data=package,
        role=aws.role_arn,
        sagemaker_session=sagemaker_session(aws),
        name=model_name,
        predictor_cls=Predictor,
    )


def deployment_of(model: Model, model_data: str) -> Deployment:
    """The names a deployed `model` created; the SDK names the endpoint config after the endpoint."""
    endpoint_name = model.endpoint_name
    served = getattr(model, "repacked_model_data", None) or model.model_data
    return Deployment(model.name, endpoint_name, endpoint_name, served or model_data)


def deploy_model(
    config: ProjectConfig,
    aws: AwsContext,
    model_data: str,
    *,
    model_name: str,
    endpoint_name: str,
    wait: bool,
) -> Deployment:
    """Package `model_data` (an S3 URI) with inference.py and its sources for the configured server
    ([endpoint] server), and start an endpoint."""
    arguments = deploy_arguments(config, endpoint_name)
    if config.settings.endpoint.server == "ray_serve":
        model: Model = ray_serve_model(config, aws, model_data, model_name=model_name)
        ami = ray_package.inference_ami_version(arguments.get("instance_type"))
        if ami:
            arguments["inference_ami_version"] = ami
    else:
        model = pytorch_model(config, aws, model_data, model_name=model_name)
    model.deploy(**arguments, wait=wait)
    return deployment_of(model, model_data)


def endpoint_invoker(aws: AwsContext, endpoint_name: str) -> Callable[[bytes, str, str], Any]:
    """`invoke(payload, content_type, accept)`: send raw image bytes, get the JSON answer decoded.

    One session and predictor serve every call; each request carries its own content type.
    """
    predictor = Predictor(
        endpoint_name,
        sagemaker_session=sagemaker_session(aws),
        serializer=IdentitySerializer(),
        deserializer=JSONDeserializer(),
    )

    def invoke(payload: bytes, content_type: str, accept: str) -> Any:
        return predictor.predict(payload, initial_args={"ContentType": content_type, "Accept": accept})

    return invoke
