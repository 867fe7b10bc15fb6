"""Dry runs of tune, train, deploy, predict and teardown: the exact requests and uploads, offline.

Expectations come from config.toml, so the same tests check every render;
the rule sets are spelled out here, independently of the code, as the issue defines them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY_TRAINING, project_module
from launch_helpers import (
    archive_names,
    archive_text,
    calls_of,
    copy_project,
    model_archive,
    only,
    requirements,
    s3_object,
    validation_errors,
)

launcher = project_module("workflow.launcher")
workflow_resources = project_module("workflow.resources")
dryrun = project_module("aws.offline")
open_session = project_module("aws.session").open_session
ProjectConfig = project_module("config").ProjectConfig
ProjectState = project_module("aws.state").ProjectState
# Tests of SDK v2's own request layout (script-mode hyperparameters JSON-encoded, sourcedir.tar.gz, the
# Debugger/Profiler fields, a hand-written v2 estimator). A v3 render's requests are compared with v2's
# field by field by the template's tests/test_sdk_generations.py, which names each difference.
v2_layout = pytest.mark.skipif(
    ProjectConfig.load(PROJECT_ROOT).aws.get("sagemaker_sdk", "v2") != "v2",
    reason="SDK v2's request layout; the template's test_sdk_generations compares v3's with it",
)

# SageMaker's names of the built-in rules, spelled out here independently of the code.
RULE_CONFIGURATION_NAMES = {
    "vanishing_gradient": "VanishingGradient",
    "overfit": "Overfit",
    "overtraining": "Overtraining",
    "poor_weight_initialization": "PoorWeightInitialization",
    "loss_not_decreasing": "LossNotDecreasing",
    "exploding_tensor": "ExplodingTensor",
    "dead_relu": "DeadRelu",
    "class_imbalance": "ClassImbalance",
}
PROFILER_RULES = {"LowGPUUtilization", "ProfilerReport", "CPUBottleneck"}


def expected_sagemaker_rules(config) -> tuple[set[str], set[str]]:
    """(debugger, profiler) rule names the CreateTrainingJob request carries for this config."""
    debugger = config.section("debugger")
    if debugger["evaluation"] == "in_job":
        return set(), set()
    image = config.section("images")["training"]
    # SageMaker's debugger rules read smdebug's tensors: only images up to PyTorch 2.0 (or custom) have it.
    has_smdebug = bool(image["image_uri"]) or tuple(
        int(p) for p in image["framework_version"].split(".")[:2]
    ) <= (2, 0)
    names = debugger["rules"]
    debugger_rules = {RULE_CONFIGURATION_NAMES[n] for n in names if n in RULE_CONFIGURATION_NAMES}
    return (debugger_rules if has_smdebug else set()), {n for n in names if n in PROFILER_RULES}


@pytest.fixture(scope="module")
def config(project_root, tmp_path_factory) -> ProjectConfig:
    return ProjectConfig.load(copy_project(project_root, tmp_path_factory.mktemp("project") / "project"))


@pytest.fixture(scope="module", autouse=True)
def no_real_credentials():
    """Dry runs must not need (or find) an account: hide any from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def tune_run(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dry-tune")
    with open_session(config, dry_run=True, folder=out) as session:
        result = launcher.tune(config, session)
    assert result.status == "captured, not run"
    return out


@pytest.fixture(scope="module")
def train_run(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dry-train")
    with open_session(config, dry_run=True, folder=out) as session:
        launcher.train(config, session)
    return out


@pytest.fixture(scope="module")
def deploy_run(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dry-deploy")
    with open_session(config, dry_run=True, folder=out) as session:
        launcher.deploy(config, session, model_archive(out.parent / "model.tar.gz"))
    return out


def requests_of(out: Path) -> list[dict]:
    return dryrun.load_requests(out / "aws")


@pytest.mark.parametrize("run", ["tune_run", "train_run", "deploy_run"])
def test_every_request_is_valid_for_botocore(run, request):
    calls = requests_of(request.getfixturevalue(run))
    assert calls
    for call in calls:
        assert validation_errors(call) == "", f"{call['operation']}: {validation_errors(call)}"


def test_nothing_was_recorded_in_the_project_state(config, tune_run, train_run, deploy_run):
    assert ProjectState(config.state_dir).resources() == []
    # ... but in the dry run's own state, where the next dry-run command finds it.
    assert [item["kind"] for item in ProjectState(tune_run / "state").resources()] == ["tuning-job"]
    assert [item["kind"] for item in ProjectState(train_run / "state").resources()] == ["training-job"]


# --- tune -----------------------------------------------------------------------------------------


@v2_layout
def test_tuning_job_carries_the_configured_search(config, tune_run):
    job = only(requests_of(tune_run), "CreateHyperParameterTuningJob")
    tuning = config.section("tuning")
    settings = job["HyperParameterTuningJobConfig"]
    assert settings["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": tuning["max_jobs"],
        "MaxParallelTrainingJobs": tuning["max_parallel_jobs"],
    }
    assert settings["HyperParameterTuningJobObjective"] == {
        "Type": tuning["objective_type"],
        "MetricName": tuning["objective_metric_name"],
    }
    assert settings["TrainingJobEarlyStoppingType"] == tuning["early_stopping_type"]
    lr = tuning["ranges"]["lr"]
    assert settings["ParameterRanges"]["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": str(lr["min"]), "MaxValue": str(lr["max"]), "ScalingType": lr["scaling"]}
    ]
    (batch,) = settings["ParameterRanges"]["CategoricalParameterRanges"]
    assert batch["Name"] == "batch_size"
    assert [json.loads(value) for value in batch["Values"]] == [
        str(v) for v in tuning["ranges"]["batch_size"]["values"]
    ]
    definition = job["TrainingJobDefinition"]
    metrics = {m["Name"]: m["Regex"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]}
    assert metrics[tuning["objective_metric_name"]] == tuning["objective_metric_regex"]
    assert metrics["validation:accuracy"] == r"validation:accuracy=([0-9\.]+)"
    machines = config.section("instances")["tuning"]
    assert definition["HyperParameterTuningResourceConfig"]["InstanceType"] == machines["type"]
    assert definition["HyperParameterTuningResourceConfig"]["InstanceCount"] == machines["count"]
    static = definition["StaticHyperParameters"]
    assert json.loads(static["sagemaker_program"]) == "hpo.py"
    script_names = set(config.script_hyperparameters())
    assert {n for n in static if not n.startswith("sagemaker_")} == script_names - {"lr", "batch_size"}
    assert definition["InputDataConfig"][0]["ChannelName"] == "training"


@v2_layout
def test_tuning_source_archive_holds_what_the_container_runs(tune_run):
    job = only(requests_of(tune_run), "CreateHyperParameterTuningJob")
    uri = json.loads(job["TrainingJobDefinition"]["StaticHyperParameters"]["sagemaker_submit_directory"])
    names = archive_names(s3_object(tune_run / "aws", uri))
    assert {"hpo.py", "train_model.py", "requirements.txt", "classifier/__init__.py"} <= names


# --- train ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_job(train_run) -> dict:
    return only(requests_of(train_run), "CreateTrainingJob")


@v2_layout
def test_training_job_runs_train_model_with_the_configured_hyperparameters(config, training_job):
    parameters = training_job["HyperParameters"]
    assert json.loads(parameters["sagemaker_program"]) == "train_model.py"
    script = {
        name: json.loads(value) for name, value in parameters.items() if not name.startswith("sagemaker_")
    }
    # config.toml's values plus what the in-job rules need (the rules of [debugger], its intervals).
    watch = project_module("aws.sagemaker_api").watch_hyperparameters(config)
    assert script == config.script_hyperparameters(watch)
    in_job = config.section("debugger")["evaluation"] != "sagemaker"
    assert script["rules"] == (",".join(config.section("debugger")["rules"]) if in_job else "")
    machines = config.section("instances")["training"]
    assert training_job["ResourceConfig"]["InstanceType"] == machines["type"]
    assert training_job["ResourceConfig"]["InstanceCount"] == machines["count"]
    distributed = parameters.get("sagemaker_torch_distributed_enabled")
    assert (distributed == "true") == (machines["count"] > 1)
    images = config.section("images")["training"]
    image = training_job["AlgorithmSpecification"]["TrainingImage"]
    if images["image_uri"]:
        assert image == images["image_uri"]
    else:
        assert f"pytorch-training:{images['framework_version']}-" in image


def test_spot_training_checkpoints_and_waits(config, training_job):
    jobs = config.section("jobs")
    assert training_job["StoppingCondition"]["MaxRuntimeInSeconds"] == jobs["max_run_seconds"]
    assert training_job.get("EnableManagedSpotTraining", False) == jobs["use_spot"]
    if jobs["use_spot"]:
        assert training_job["StoppingCondition"]["MaxWaitTimeInSeconds"] >= jobs["max_run_seconds"]
    checkpoint = training_job["CheckpointConfig"]["S3Uri"]
    assert checkpoint.endswith(f"/checkpoints/{training_job['TrainingJobName']}")


def test_training_job_has_the_rule_set_of_the_config(config, training_job):
    debugger_rules, profiler_rules = expected_sagemaker_rules(config)
    names = {rule["RuleConfigurationName"] for rule in training_job.get("DebugRuleConfigurations", [])}
    assert names == debugger_rules
    names = {rule["RuleConfigurationName"] for rule in training_job.get("ProfilerRuleConfigurations", [])}
    assert names == profiler_rules


def test_debugger_collections_are_saved_at_the_hook_intervals(config, training_job):
    """The SDK's rule defaults (save_interval 500) must not reach the request."""
    debugger = config.section("debugger")
    if not expected_sagemaker_rules(config)[0]:
        assert "DebugHookConfig" not in training_job
        return
    hook = training_job["DebugHookConfig"]
    intervals = {
        "train.save_interval": str(debugger["train_save_interval"]),
        "eval.save_interval": str(debugger["eval_save_interval"]),
    }
    assert hook["HookParameters"] == intervals
    collections = hook["CollectionConfigurations"]
    assert collections, "the rules read collections; they must be configured"
    for collection in collections:
        parameters = collection["CollectionParameters"]
        assert {k: parameters[k] for k in intervals} == intervals, collection
        assert "save_interval" not in parameters, collection


@v2_layout
def test_profiler_monitors_the_system_only(config, training_job):
    profiler = training_job["ProfilerConfig"]
    if expected_sagemaker_rules(config) == (set(), set()):
        assert profiler.get("DisableProfiler") is True
        return
    assert (
        profiler["ProfilingIntervalInMilliseconds"]
        == config.section("profiler")["system_monitor_interval_millis"]
    )
    assert "ProfilingParameters" not in profiler


# --- deploy ---------------------------------------------------------------------------------------


def test_deployment_repacks_the_model_with_the_inference_sources(config, deploy_run):
    calls = requests_of(deploy_run)
    container = only(calls, "CreateModel")["PrimaryContainer"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    images = config.section("images")["inference"]
    if images["image_uri"]:
        assert container["Image"] == images["image_uri"]
    else:
        assert f"pytorch-inference:{images['framework_version']}-" in container["Image"]
    repacked = s3_object(deploy_run / "aws", container["ModelDataUrl"])
    names = archive_names(repacked)
    # The SDK's `dependencies=` puts the shared package under code/lib/ (inference.py adds it to sys.path).
    assert {
        "model.pth",
        "metadata.json",
        "code/inference.py",
        "code/protocol.py",
        "code/requirements.txt",
        "code/lib/classifier/__init__.py",
    } <= names
    assert not any(name.startswith("code/training") or name.endswith("hpo.py") for name in names)
    assert "smdebug" not in requirements(archive_text(repacked, "code/requirements.txt"))
    variant = only(calls, "CreateEndpointConfig")["ProductionVariants"][0]
    machines = config.section("instances")["endpoint"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (machines["type"], machines["count"])


# --- the chain: each dry-run step finds what the one before it "created" -------------------------


def test_dry_runs_chain_from_tuning_to_teardown_across_sessions(config, tiny_dataset, tmp_path):
    """Each step in its own session, as separate CLI commands are: the offline AWS remembers."""
    image = next((tiny_dataset / "test").rglob("*.jpg"))
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        assert launcher.tune(config, session).status == "captured, not run"
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        training = launcher.train(config, session)
        assert training.status == "captured, not run"
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        # No --model-data: the last trained model, a labelled stand-in in the offline S3.
        deployment = launcher.deploy(config, session)
    model = only(requests_of(tmp_path), "CreateModel")["PrimaryContainer"]["ModelDataUrl"]
    # What the training job "made", repacked with the inference code as for a real model.
    assert {dryrun.STAND_IN_MODEL_NOTE, "code/inference.py"} <= archive_names(
        s3_object(tmp_path / "aws", model)
    )
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        (prediction,) = launcher.predict(config, session, [image], top_k=3)
        statuses = {item["kind"]: item["status"] for item in workflow_resources.status(config, session)}
    assert prediction["top_k"] == [] and prediction["status"] == "captured, not run"
    call = only(requests_of(tmp_path), "InvokeEndpoint")
    assert call["EndpointName"] == deployment.endpoint_name
    assert call["ContentType"] == "image/jpeg"
    assert call["Accept"] == "application/json;top_k=3"
    assert call["Body"] == f"<{image.stat().st_size} bytes>"
    assert set(statuses.values()) == {"captured, not run"}
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        actions = workflow_resources.teardown(config, session)
        client = session.aws.client("sagemaker")
        assert client.list_endpoints()["Endpoints"] == []
    assert {(kind, outcome) for kind, _, outcome in actions} == {
        ("endpoint", "deleted"),
        ("endpoint-config", "deleted"),
        ("model", "deleted"),
    }
    assert ProjectState(config.state_dir).resources() == []


def test_deploy_of_a_missing_model_is_one_line_naming_it(config, tmp_path):
    missing = "s3://nowhere-bucket/output/job/output/model.tar.gz"
    with (
        open_session(config, dry_run=True, folder=tmp_path) as session,
        pytest.raises(launcher.LaunchError, match=f"{missing} does not exist"),
    ):
        launcher.deploy(config, session, missing)


def test_teardown_removes_exactly_what_deploy_created(config, tmp_path):
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        session.state.record("endpoint", "someone-elses-endpoint-that-is-gone")
        deployment = launcher.deploy(config, session, model_archive(tmp_path / "model.tar.gz"))
        created = {
            "endpoint": deployment.endpoint_name,
            "endpoint-config": deployment.endpoint_config_name,
            "model": deployment.model_name,
        }
        resources = session.state.resources()
        assert {r["kind"]: r["name"] for r in resources if r["name"] in created.values()} == created
        actions = workflow_resources.teardown(config, session)
        client = session.aws.client("sagemaker")
        assert client.list_endpoints()["Endpoints"] == []
        assert client.list_endpoint_configs()["EndpointConfigs"] == []
        assert client.list_models()["Models"] == []
        calls = list(session.offline.calls)
        assert session.state.resources() == []
    assert {(kind, name) for kind, name, outcome in actions if outcome == "deleted"} == set(created.items())
    assert ("endpoint", "someone-elses-endpoint-that-is-gone", "already gone") in actions
    assert len(calls_of(calls, "DeleteEndpoint")) == 2


@pytest.mark.slow  # it trains: hpo.py under the training toolkit
@v2_layout
def test_a_hand_written_estimator_over_training_runs_hpo_under_the_toolkit(config, tiny_dataset, tmp_path):
    """`PyTorch(source_dir="training", dependencies=["classifier"])`, as a notebook author writes it:
    the archive the SDK uploads runs hpo.py under the training toolkit."""
    from sagemaker.pytorch import PyTorch

    local_training = project_module("local.training_run")
    sagemaker_api = project_module("aws.sagemaker_api")
    with open_session(config, dry_run=True, folder=tmp_path / "dry") as session:
        estimator = PyTorch(
            entry_point="hpo.py",
            source_dir=str(config.root / "training"),
            dependencies=[str(config.root / "classifier")],
            role=session.aws.role_arn,
            sagemaker_session=sagemaker_api.sagemaker_session(session.aws),
            instance_type="ml.m5.large",
            instance_count=1,
            framework_version="2.8.0",
            py_version="py312",
            hyperparameters={"epochs": 1},
        )
        estimator.fit({"training": session.aws.s3_uri("data")}, wait=False, logs="None")
    job = only(requests_of(tmp_path / "dry"), "CreateTrainingJob")
    uri = json.loads(job["HyperParameters"]["sagemaker_submit_directory"])
    archive = s3_object(tmp_path / "dry" / "aws", uri)
    run = tmp_path / "run"
    model = local_training.run_toolkit(
        archive,
        "hpo.py",
        {**TINY_TRAINING, "epochs": 1, "backbone": "resnet18", "finetune": "full"},
        tiny_dataset,
        run,
    )
    assert {"model.pth", "metadata.json"} <= archive_names(model)
    assert "validation:loss=" in (run / "training.log").read_text()


def test_a_refused_debugger_configuration_relaunches_once_without_it(config, tmp_path):
    """An account Debugger is closed to: CreateTrainingJob is refused for its rules; one relaunch follows."""
    from botocore.exceptions import ClientError

    attempts = []

    def refuse_debugger(params, **_):
        attempts.append(params)
        if params.get("DebugRuleConfigurations") or params.get("ProfilerRuleConfigurations"):
            raise ClientError(
                {"Error": {"Code": "ValidationException", "Message": "SageMaker Debugger is not available"}},
                "CreateTrainingJob",
            )

    with open_session(config, dry_run=True, folder=tmp_path) as session:
        session.aws.boto_session.events.register(
            "provide-client-params.sagemaker.CreateTrainingJob", refuse_debugger
        )
        result = launcher.train(config, session)
    if expected_sagemaker_rules(config) == (set(), set()):
        assert len(attempts) == 1
        return
    assert len(attempts) == 2
    assert not attempts[1].get("DebugRuleConfigurations") and not attempts[1].get(
        "ProfilerRuleConfigurations"
    )
    assert "DebugHookConfig" not in attempts[1]
    note = result.notes[0]
    assert "relaunched once without it" in note and "SageMaker Debugger is not available" in note
    # The relaunched job is the one recorded: deploy and report find it.
    assert [item["name"] for item in session.state.resources("training-job")] == [result.training_job_name]


def test_any_other_refusal_is_not_retried(config, tmp_path):
    from botocore.exceptions import ClientError

    attempts = []

    def refuse_quota(params, **_):
        attempts.append(params)
        raise ClientError(
            {
                "Error": {
                    "Code": "ResourceLimitExceeded",
                    "Message": "account-level service limit is 0 Instances",
                }
            },
            "CreateTrainingJob",
        )

    with open_session(config, dry_run=True, folder=tmp_path) as session:
        session.aws.boto_session.events.register(
            "provide-client-params.sagemaker.CreateTrainingJob", refuse_quota
        )
        with pytest.raises(ClientError, match="service limit"):
            launcher.train(config, session)
    assert len(attempts) == 1


# --- tags, teardown by tag, the deploy that proves itself, serverless ---------------------------------

tagging = project_module("aws.tagging")


@pytest.mark.parametrize("run", ["tune_run", "train_run", "deploy_run"])
def test_every_create_request_carries_the_project_tags(config, run, request):
    creates = [
        call
        for call in requests_of(request.getfixturevalue(run))
        if call["service"] == "sagemaker" and call["operation"].startswith("Create")
    ]
    assert creates
    for call in creates:
        tags = {tag["Key"]: tag["Value"] for tag in call["params"].get("Tags", [])}
        assert tags.get("template") == tagging.TEMPLATE_NAME, call["operation"]
        assert tags.get("project") == config.section("project")["slug"], call["operation"]
        assert tags.get("owner") == tagging.owner_of(config), call["operation"]
        assert tags.get("created", "").endswith("Z"), call["operation"]


def owned(config: ProjectConfig, owner: str, root: Path) -> ProjectConfig:
    """The same project as another owner would render it (its own folder, so its own .state/)."""
    folder = root / owner
    if not folder.exists():
        shutil.copytree(config.root, folder)
    text = (folder / "config.toml").read_text()
    text = re.sub(r'(?m)^owner = ".*"$', f'owner = "{owner}"', text)
    (folder / "config.toml").write_text(text)
    return ProjectConfig.load(folder)


def test_teardown_by_tag_deletes_one_owners_resources_and_nothing_else(config, tmp_path):
    """Two owners deploy into one (offline) account; a fresh clone of one tears down exactly its own."""
    alice, bob = owned(config, "alice", tmp_path), owned(config, "bob", tmp_path)
    dry = tmp_path / "dry"
    deployed = {}
    for person in (alice, bob):
        with open_session(person, dry_run=True, folder=dry) as session:
            deployed[tagging.owner_of(person)] = launcher.deploy(
                person, session, model_archive(tmp_path / "model.tar.gz")
            )
    with open_session(config, dry_run=True, folder=dry) as session:
        client = session.aws.client("sagemaker")
        # Someone else's model, untagged: no search by tag may reach it.
        client.create_model(
            ModelName="not-this-project",
            PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"},
            ExecutionRoleArn=session.aws.role_arn,
        )
    shutil.rmtree(dry / "state")  # a fresh clone: no local record of what was created
    with open_session(alice, dry_run=True, folder=dry) as session:
        assert session.state.resources() == []
        actions = workflow_resources.teardown(alice, session)
        client = session.aws.client("sagemaker")
        endpoints = {item["EndpointName"] for item in client.list_endpoints()["Endpoints"]}
        models = {item["ModelName"] for item in client.list_models()["Models"]}
    mine, theirs = deployed["alice"], deployed["bob"]
    assert {(kind, name) for kind, name, outcome in actions if outcome == "deleted"} == {
        ("endpoint", mine.endpoint_name),
        ("endpoint-config", mine.endpoint_config_name),
        ("model", mine.model_name),
    }
    assert endpoints == {theirs.endpoint_name}
    assert models == {theirs.model_name, "not-this-project"}
    # Staff, from alice's machine: bob's by his id.
    with open_session(alice, dry_run=True, folder=dry) as session:
        listed = workflow_resources.status(alice, session, owner="bob")
        actions = workflow_resources.teardown(alice, session, owner="bob")
        assert session.aws.client("sagemaker").list_endpoints()["Endpoints"] == []
    assert {item["name"] for item in listed} == {
        theirs.endpoint_name,
        theirs.endpoint_config_name,
        theirs.model_name,
    }
    assert {item["owner"] for item in listed} == {"bob"}
    assert {name for _, name, outcome in actions if outcome == "deleted"} == {
        theirs.endpoint_name,
        theirs.model_name,
    }


def test_a_failing_first_invocation_returns_the_endpoints_log_tail(config, tmp_path):
    from botocore.exceptions import ClientError

    with open_session(config, dry_run=True, folder=tmp_path) as session:
        deployment = launcher.deploy(config, session, model_archive(tmp_path / "model.tar.gz"))
        group = launcher.log_group(deployment.endpoint_name)
        logs = session.aws.client("logs")
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0")
        lines = ["loading model.pth", "RuntimeError: Attempting to deserialize object on a CUDA device"]
        now = int(time.time() * 1000)  # CloudWatch (and moto) keep no events from weeks ago
        logs.put_log_events(
            logGroupName=group,
            logStreamName="AllTraffic/i-0",
            logEvents=[{"timestamp": now + n, "message": line} for n, line in enumerate(lines)],
        )

        def model_error(**_):
            raise ClientError(
                {"Error": {"Code": "ModelError", "Message": "Received server error (500) from primary"}},
                "InvokeEndpoint",
            )

        session.aws.boto_session.events.register_first(
            "before-call.sagemaker-runtime.InvokeEndpoint", model_error
        )
        check = launcher.verify_endpoint(config, session, deployment.endpoint_name)
    assert not check.ok
    assert "Received server error (500)" in check.detail
    assert check.log_group == f"/aws/sagemaker/Endpoints/{deployment.endpoint_name}"
    assert check.log_tail == lines


def test_a_dry_run_first_invocation_is_captured_not_answered(config, tmp_path):
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        deployment = launcher.deploy(config, session, model_archive(tmp_path / "model.tar.gz"))
        check = launcher.verify_endpoint(config, session, deployment.endpoint_name)
    assert check.ok and "captured, not run" in check.detail
    call = only(requests_of(tmp_path), "InvokeEndpoint")
    assert call["EndpointName"] == deployment.endpoint_name


def test_the_serverless_option_makes_a_valid_endpoint_config(config, tmp_path):
    data = json.loads(json.dumps(config.data))
    data["endpoint"] = {"serverless": True, "memory_mb": 4096, "max_concurrency": 3}
    serverless = dataclasses.replace(config, data=data)
    with open_session(serverless, dry_run=True, folder=tmp_path) as session:
        launcher.deploy(serverless, session, model_archive(tmp_path / "model.tar.gz"))
    calls = requests_of(tmp_path)
    (endpoint_config,) = [call for call in calls if call["operation"] == "CreateEndpointConfig"]
    assert validation_errors(endpoint_config) == ""
    (variant,) = endpoint_config["params"]["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 3}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert {tag["Key"] for tag in endpoint_config["params"]["Tags"]} >= {"project", "owner", "created"}


@v2_layout
def test_rule_parameters_reach_sagemakers_rules_and_the_in_job_ones(config):
    """[debugger.rule_parameters] goes to Rule.sagemaker(rule_parameters=...) as strings, and to
    train_model.py as one JSON hyperparameter holding the rules judged in the job (a v3 render's jobs get
    the same hyperparameter: the template's test_sdk_generations sees it in both generations' requests)."""
    sagemaker_api = project_module("aws.sagemaker_api")
    document = json.loads(json.dumps(config.data))
    parameters = {"overfit": {"patience": 3}, "exploding_tensor": {"only_nan": True}}
    document["debugger"].update(
        rules=["overfit", "exploding_tensor"], evaluation="both", rule_parameters=parameters
    )
    edited = dataclasses.replace(config, data=document)
    selected = sagemaker_api.RuleSet(debugger=("overfit", "exploding_tensor"), profiler=())
    rules = sagemaker_api.debugger_rules(selected, document["debugger"])
    by_name = {rule.name: rule.rule_parameters for rule in rules}
    assert by_name["Overfit"]["patience"] == "3" and by_name["Overfit"]["rule_to_invoke"] == "Overfit"
    assert by_name["ExplodingTensor"]["only_nan"] == "True"
    watch = sagemaker_api.watch_hyperparameters(edited)
    assert json.loads(watch["rule_parameters"]) == parameters
    assert "rule_parameters" not in sagemaker_api.watch_hyperparameters(config)  # none set: AWS's defaults
