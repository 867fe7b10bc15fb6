"""Every use of SageMaker Python SDK v3 by the package, in one module ([aws] sagemaker_sdk = "v3").

The same functions as `sagemaker_api` (SDK v2), built on v3's objects: `ModelTrainer` (with `SourceCode`,
`Compute`, `InputData`, `StoppingCondition`, `CheckpointConfig`) for the jobs, `HyperparameterTuner(
model_trainer=...)` for tuning and `ModelBuilder(source_code=SourceCode(..., entry_script="inference.py"))`
for the repacked model and endpoint. `sdk.sagemaker_api(config)` picks this module or v2's; what both send
is decided in `sagemaker_jobs`, and the render's tests/test_sdk_requests.py compares the two generations'
requests field by field.

v3 has no Debugger or Profiler fields: the rules are judged in the job by train_model.py, so a v3 config
has `[debugger] evaluation = "in_job"` (the schema refuses anything else).

v3 has no `dependencies=`: the shared `classifier/` package is copied next to the entry point in a staging
folder that becomes the source directory, which is what v2 builds in `sourcedir.tar.gz` and `code/`.

An endpoint with [endpoint] server = "ray_serve" is not a ModelBuilder's: its package (`ray_package`) goes
to AWS's Ray Serve image in a plain `Model`, `EndpointConfig` and `Endpoint` (sagemaker-core's resources),
the three requests v2's plain `Model.deploy` sends.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The SDK logs each step of a build or upload at INFO and DEBUG; the CLI prints what matters itself.
for _name in ("sagemaker", "sagemaker.config"):
    logging.getLogger(_name).setLevel(logging.WARNING)

from sagemaker.core import image_uris  # noqa: E402
from sagemaker.core.common_utils import create_tar_file, name_from_base, repack_model  # noqa: E402
from sagemaker.core.helper.session_helper import Session, get_execution_role  # noqa: E402
from sagemaker.core.inference_config import ServerlessInferenceConfig  # noqa: E402
from sagemaker.core.parameter import (  # noqa: E402
    CategoricalParameter,
    ContinuousParameter,
    IntegerParameter,
)
from sagemaker.core.resources import Endpoint, EndpointConfig, Model, TrainingJob  # noqa: E402
from sagemaker.core.session_settings import SessionSettings  # noqa: E402
from sagemaker.core.shapes import ContainerDefinition, MetricDefinition, ProductionVariant, Tag  # noqa: E402
from sagemaker.core.training.configs import (  # noqa: E402
    CheckpointConfig,
    Compute,
    InputData,
    OutputDataConfig,
    SourceCode,
    StoppingCondition,
)
from sagemaker.train import ModelTrainer  # noqa: E402
from sagemaker.train.distributed import Torchrun  # noqa: E402
from sagemaker.train.tuner import HyperparameterTuner  # noqa: E402

from ..config import ProjectConfig  # noqa: E402
from . import ray_package, tagging  # noqa: E402
from .context import AwsContext, connect_account, execution_role_or_setup_error  # noqa: E402

# Re-exported: callers and the notebook read these here, whichever generation they use.
from .sagemaker_jobs import (  # noqa: E402, F401
    DATA_CHANNEL,
    IN_JOB_PROFILER_RULE,
    INFERENCE_ENTRY_POINT,
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
    repack_on_disk,
    rule_job_count,
    rule_notes,
    rule_set,
    source_arguments,
    training_output,
    watch_hyperparameters,
    where_judged,
)

_RANGE_TYPES = {"continuous": ContinuousParameter, "integer": IntegerParameter}
# What the staging folder leaves out of the source (as v2's `create_tar_file` of the folder's entries).
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc")


# --- session, role, bucket -----------------------------------------------------------------------


@contextmanager
def sdk_environment(aws: AwsContext) -> Iterator[None]:
    """What v3 reads from the environment while it builds and sends requests, set for the duration only.

    ModelTrainer and ModelBuilder check the role with iam:SimulatePrincipalPolicy, which the project's policy
    (checks/iam.py) does not grant and moto does not answer; `preflight` checks the role itself, so
    SAGEMAKER_VALIDATE_ROLE=false skips it. `sagemaker.serve` needs a region when it is imported and used."""
    wanted = {"SAGEMAKER_VALIDATE_ROLE": "false", "AWS_DEFAULT_REGION": aws.region}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# SDK v3 reports each train, tune and deploy call over HTTPS unless its config opts out:
# a dry run sends nothing.
_NO_TELEMETRY = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


def sagemaker_session(aws: AwsContext) -> Session:
    return Session(
        boto_session=aws.boto_session,
        default_bucket=aws.bucket,
        # What v3 uploads by itself (the code, its drivers, the repacked model) goes under the project's
        # prefix, like v2's code_location: the user policy allows objects under that prefix only.
        default_bucket_prefix=aws.prefix or None,
        sagemaker_config=_NO_TELEMETRY if aws.dry_run else None,
    )


def _execution_role(boto_session: Any) -> str:
    """The notebook's or Studio's execution role, as SDK v3 finds it; one line naming the setting outside."""
    return execution_role_or_setup_error(lambda: get_execution_role(Session(boto_session=boto_session)))


def connect(config: ProjectConfig) -> AwsContext:
    """The real account (`context.connect_account`), with SDK v3's default bucket and execution role."""
    return connect_account(
        config,
        default_bucket=lambda boto_session: Session(boto_session=boto_session).default_bucket(),
        execution_role=_execution_role,
    )


# --- the code SageMaker receives -------------------------------------------------------------------


@contextmanager
def staged_source(config: ProjectConfig, role: str) -> Iterator[Path]:
    """A temporary folder holding `training/` (or `inference/`) and `classifier/` where v2's `dependencies=`
    puts it: beside the entry point in sourcedir.tar.gz, under `lib/` in the model's `code/` (inference.py
    adds code/lib to sys.path). It is the source directory a `SourceCode` uploads."""
    arguments = source_arguments(config, role)
    with tempfile.TemporaryDirectory(prefix=f"{role}-source-") as folder:
        staged = Path(folder) / "source"
        shutil.copytree(arguments["source_dir"], staged, ignore=_NOT_SHIPPED)
        libraries = staged if role == "training" else staged / "lib"
        for dependency in arguments["dependencies"]:
            shutil.copytree(dependency, libraries / Path(dependency).name, ignore=_NOT_SHIPPED)
        yield staged


def training_source_archive(config: ProjectConfig, destination: Path) -> Path:
    """sourcedir.tar.gz with what a training job receives, written to `destination` (for local runs)."""
    arguments = source_arguments(config, "training")
    folder = Path(arguments["source_dir"])
    files = [str(path) for path in sorted(folder.iterdir()) if path.name != "__pycache__"]
    return Path(create_tar_file(files + arguments["dependencies"], str(destination)))


def repack_model_locally(config: ProjectConfig, model_data: Path, destination: Path) -> Path:
    """model.tar.gz with `code/` added, as the endpoint receives it, but on this disk (SDK v3's repack)."""
    return repack_on_disk(config, model_data, destination, repack_model, SessionSettings)


# --- configuration turned into SDK objects ---------------------------------------------------------


def hyperparameter_ranges(config: ProjectConfig) -> dict[str, Any]:
    """[tuning.ranges.<name>] tables as SDK v3 parameter ranges."""
    return parameter_ranges(config, CategoricalParameter, _RANGE_TYPES)


def image_uri(config: ProjectConfig, scope: str, instance_type: str | None, region: str) -> str:
    """The image SDK v3 names for [images.<scope>] (`sagemaker_jobs.image_uri_of`)."""
    return image_uri_of(config, scope, instance_type, region, image_uris.retrieve)


def job_name(config: ProjectConfig, kind: str, max_length: int = 63) -> str:
    """`<slug>-<kind>-<timestamp>` within SageMaker's limits (63 characters; 32 for tuning jobs)."""
    base, short = job_name_base(config, kind, max_length)
    return name_from_base(base, max_length=max_length, short=short)


def sdk_tags(config: ProjectConfig) -> list[dict[str, str]]:
    """The project's tags as v3's pydantic objects take them (`key`/`value`; boto's are `Key`/`Value`)."""
    return [{"key": tag["Key"], "value": tag["Value"]} for tag in tagging.project_tags(config)]


def model_trainer(
    config: ProjectConfig,
    aws: AwsContext,
    source_dir: Path,
    entry_point: str,
    hyperparameters: dict[str, Any],
    *,
    instances: str,
    checkpoint_job_name: str | None = None,
) -> ModelTrainer:
    """The ModelTrainer both tuning (`instances="tuning"`) and training use: `entry_point` in the staged
    `source_dir` (see `staged_source`), on [instances.<instances>], with the config's image, limits, tags."""
    machines = config.section("instances")[instances]
    jobs = config.section("jobs")
    spot = jobs["use_spot"]
    trainer = ModelTrainer(
        sagemaker_session=sagemaker_session(aws),
        role=aws.role_arn,
        base_job_name=job_name_base(config, instances, 63)[0],
        source_code=SourceCode(source_dir=str(source_dir), entry_script=entry_point),
        compute=Compute(
            instance_type=machines["type"],
            instance_count=machines["count"],
            enable_managed_spot_training=True if spot else None,
        ),
        distributed=Torchrun() if machines["count"] > 1 else None,
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=jobs["max_run_seconds"],
            max_wait_time_in_seconds=max(jobs["max_wait_seconds"], jobs["max_run_seconds"]) if spot else None,
        ),
        training_image=image_uri(config, "training", machines["type"], aws.region),
        output_data_config=OutputDataConfig(s3_output_path=aws.s3_uri("output")),
        # The code and driver channels are uploaded under <prefix>/code/, where v2 puts sourcedir.tar.gz.
        input_s3_key_prefix=aws.s3_key("code"),
        checkpoint_config=(
            CheckpointConfig(s3_uri=aws.s3_uri("checkpoints", checkpoint_job_name))
            if checkpoint_job_name
            else None
        ),
        hyperparameters=dict(hyperparameters),
        environment=job_environment(config),
        tags=sdk_tags(config),
    )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=item["Name"], regex=item["Regex"]) for item in metric_definitions(config)]
    )


def input_data(aws: AwsContext) -> list[InputData]:
    """`data_channels` as v3's InputData list."""
    return [InputData(channel_name=name, data_source=uri) for name, uri in data_channels(aws).items()]


# --- tuning and training ---------------------------------------------------------------------------


def tuner(config: ProjectConfig, trainer: ModelTrainer) -> HyperparameterTuner:
    """[tuning]'s search over `trainer`: the ranges, the objective metric and the job limits."""
    tuning = config.section("tuning")
    return HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=tuning["objective_metric_name"],
        hyperparameter_ranges=hyperparameter_ranges(config),
        metric_definitions=metric_definitions(config),
        objective_type=tuning["objective_type"],
        max_jobs=tuning["max_jobs"],
        max_parallel_jobs=tuning["max_parallel_jobs"],
        early_stopping_type=tuning.get("early_stopping_type", "Off"),
        tags=tagging.project_tags(config),
    )


def launch_tuning(config: ProjectConfig, aws: AwsContext, *, tuning_job_name: str) -> None:
    """Start the tuning job over hpo.py with config.toml's fixed hyperparameters, without waiting."""
    ranges = hyperparameter_ranges(config)
    static = {key: value for key, value in config.script_hyperparameters().items() if key not in ranges}
    with sdk_environment(aws), staged_source(config, "training") as source_dir:
        trainer = model_trainer(config, aws, source_dir, TUNING_ENTRY_POINT, static, instances="tuning")
        # tune() takes no extra keyword arguments (it raises TypeError on **kwargs).
        tuner(config, trainer).tune(inputs=input_data(aws), job_name=tuning_job_name, wait=False)


def wait_for_tuning(aws: AwsContext, tuning_job_name: str) -> None:
    """Block until the tuning job ends, printing a dot per poll (the SDK's progress)."""
    sagemaker_session(aws).wait_for_tuning_job(tuning_job_name)


def launch_training(
    config: ProjectConfig,
    aws: AwsContext,
    hyperparameters: dict[str, Any],
    *,
    training_job_name: str,
    wait: bool,
) -> TrainingLaunch:
    """Start the training job over train_model.py (its rules judged in the job); with `wait`, stream its logs.

    `ModelTrainer.train()` names the job itself (`<base>-<yyyymmddHHMMSS>`); the launcher names it first
    (its checkpoints' folder, the record in .state/, the IAM policy's name patterns), so the request that
    train() would send is built by the trainer and sent under the launcher's name.
    """
    with sdk_environment(aws), staged_source(config, "training") as source_dir:
        trainer = model_trainer(
            config,
            aws,
            source_dir,
            TRAINING_ENTRY_POINT,
            hyperparameters,
            instances="training",
            checkpoint_job_name=training_job_name,
        )
        request = trainer._create_training_job_args(input_data_config=input_data(aws))
        request["training_job_name"] = training_job_name
        job = TrainingJob.create(session=aws.boto_session, region=aws.region, **request)
    if wait:
        job.wait(logs=True)
    return TrainingLaunch(training_job_name, training_output(aws, training_job_name), rule_notes(config))


# --- deployment and prediction ---------------------------------------------------------------------


def serverless_config(config: ProjectConfig) -> ServerlessInferenceConfig | None:
    """[endpoint]'s serverless settings as the SDK's object; None for an endpoint on instances.

    The class from `sagemaker.core.inference_config`: ModelBuilder.deploy refuses the one of the same name
    in `sagemaker.core.serverless_inference_config` ("Deployment Options not supported")."""
    endpoint = config.settings.endpoint
    if not endpoint.serverless:
        return None
    return ServerlessInferenceConfig(
        memory_size_in_mb=endpoint.memory_mb, max_concurrency=endpoint.max_concurrency
    )


def model_builder(config: ProjectConfig, aws: AwsContext, model_data: str, source_dir: Path) -> Any:
    """`model_data` (an S3 URI) served by inference.py (in the staged `source_dir`) in the configured
    PyTorch inference image; `build()` repacks the code into `code/` of a new model.tar.gz."""
    from sagemaker.serve.model_builder import ModelBuilder  # needs a region at import (sdk_environment)

    endpoint = config.section("instances")["endpoint"]
    instance_type = None if config.settings.endpoint.serverless else endpoint["type"]
    builder = ModelBuilder(
        model_path=model_data,
        image_uri=image_uri(config, "inference", instance_type, aws.region),
        source_code=SourceCode(source_dir=str(source_dir), entry_script=INFERENCE_ENTRY_POINT),
        role_arn=aws.role_arn,
        sagemaker_session=sagemaker_session(aws),
        instance_type=instance_type,
        log_level=logging.WARNING,  # its default sets the SDK's logger to DEBUG
    )
    # ModelBuilder names a fresh upload folder as the model's data when it is built, before it reads
    # `model_path`; the repack would then read that empty folder instead of the trained model.
    builder.s3_model_data_url = model_data
    return builder


def deploy_ray_serve(
    config: ProjectConfig,
    aws: AwsContext,
    model_data: str,
    *,
    model_name: str,
    endpoint_name: str,
    wait: bool,
) -> Deployment:
    """The Ray Serve package in AWS's Ray Serve image on [instances.endpoint]: CreateModel,
    CreateEndpointConfig (named as the endpoint, as v2 names it) and CreateEndpoint, through sagemaker-core's
    plain resources (ModelBuilder would add a model server of its own choosing)."""
    instance_type = config.section("instances")["endpoint"]["type"]  # the schema refuses a serverless one
    count = config.section("instances")["endpoint"]["count"]
    tags = [Tag(key=tag["Key"], value=tag["Value"]) for tag in tagging.project_tags(config)]
    package = ray_package.upload_package(config, aws, model_data, model_name=model_name)
    where = {"session": aws.boto_session, "region": aws.region}
    Model.create(
        model_name=model_name,
        primary_container=ContainerDefinition(
            image=ray_package.image_uri(config, aws.region, instance_type),
            model_data_url=package,
            environment={},
        ),
        execution_role_arn=aws.role_arn,
        tags=tags,
        **where,
    )
    ami = ray_package.inference_ami_version(instance_type)
    variant = ProductionVariant(
        variant_name="AllTraffic",
        model_name=model_name,
        initial_variant_weight=1,
        initial_instance_count=count,
        instance_type=instance_type,
        **({"inference_ami_version": ami} if ami else {}),
    )
    EndpointConfig.create(
        endpoint_config_name=endpoint_name, production_variants=[variant], tags=tags, **where
    )
    endpoint = Endpoint.create(
        endpoint_name=endpoint_name, endpoint_config_name=endpoint_name, tags=tags, **where
    )
    if wait:
        endpoint.wait_for_status("InService")
    return Deployment(model_name, endpoint_name, endpoint_name, package)


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
    ([endpoint] server), and start an endpoint: ModelBuilder's repack for TorchServe, the plain resources
    of `deploy_ray_serve` for Ray Serve."""
    if config.settings.endpoint.server == "ray_serve":
        return deploy_ray_serve(
            config, aws, model_data, model_name=model_name, endpoint_name=endpoint_name, wait=wait
        )
    tags = tagging.project_tags(config)
    serverless = serverless_config(config)
    endpoint = config.section("instances")["endpoint"]
    machines: dict[str, Any] = (
        {"inference_config": serverless}
        if serverless is not None
        else {"initial_instance_count": endpoint["count"], "instance_type": endpoint["type"]}
    )
    with sdk_environment(aws), staged_source(config, "inference") as source_dir:
        builder = model_builder(config, aws, model_data, source_dir)
        builder.build(model_name=model_name, tags=tags)
        builder.deploy(endpoint_name=endpoint_name, wait=wait, tags=tags, **machines)
    repacked = getattr(builder, "repacked_model_data", None) or getattr(builder, "s3_model_data_url", None)
    return Deployment(model_name, endpoint_name, endpoint_name, repacked or model_data)


def endpoint_invoker(aws: AwsContext, endpoint_name: str) -> Callable[[bytes, str, str], Any]:
    """`invoke(payload, content_type, accept)`: send raw image bytes, get the JSON answer decoded."""
    import json

    runtime = sagemaker_session(aws).sagemaker_runtime_client

    def invoke(payload: bytes, content_type: str, accept: str) -> Any:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint_name, Body=payload, ContentType=content_type, Accept=accept
        )
        return json.loads(answer["Body"].read())

    return invoke
