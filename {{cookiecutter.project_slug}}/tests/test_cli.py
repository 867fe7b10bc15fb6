"""The click CLI: fast help, one-line errors, dry runs end to end, and the small pure helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import PACKAGE, project_module
from launch_helpers import copy_project

cli = project_module("cli")
launcher = project_module("launcher")
iam = project_module("iam")
costs = project_module("costs")
ProjectConfig = project_module("config").ProjectConfig
ProjectState = project_module("state").ProjectState

NO_ACCOUNT = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "SAGEMAKER_ROLE_ARN": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}

# Rich fits tables to the terminal: wide enough that names and sources stay whole on one line.
WIDE = {"COLUMNS": "250"}


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("cli") / "project")


def run(project, *args: str, env: dict | None = None):
    env = {**NO_ACCOUNT, **(env or {})}
    # rich reads $COLUMNS when the console is made (at import), not per command: set its width here.
    width = int(env["COLUMNS"]) if env.get("COLUMNS") else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.console, "width", width or cli.console.width)
        return CliRunner().invoke(cli.main, ["--project", str(project), *args], env=env)


def test_help_lists_every_command_without_importing_the_sdk(project_root):
    code = (
        f"import sys; from {PACKAGE}.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'sagemaker' not in sys.modules and 'moto' not in sys.modules, 'heavy import at start-up'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(project_root / "src")}
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    for command in (
        "data",
        "tune",
        "train",
        "deploy",
        "predict",
        "serve",
        "cost",
        "iam-policy",
        "status",
        "teardown",
    ):
        assert f"  {command} " in output


def test_subcommand_help_works_outside_a_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGE_CLASSIFIER_PROJECT_DIR", raising=False)
    result = CliRunner().invoke(cli.main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "--dry-run" in result.output


def test_missing_credentials_is_one_line_naming_what_to_set(project):
    result = run(project, "deploy", "--model-data", "s3://bucket/model.tar.gz")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no AWS credentials")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_role_names_the_setting(project, monkeypatch):
    sagemaker_api = project_module("sagemaker_api")
    context = project_module("context")

    def outside_sagemaker(session):
        raise ValueError("The current AWS identity is not a role")

    monkeypatch.setattr(sagemaker_api.sagemaker, "get_execution_role", outside_sagemaker)
    with pytest.raises(context.AwsSetupError, match=r"role_arn in config.toml or \$SAGEMAKER_ROLE_ARN"):
        sagemaker_api._execution_role(boto_session=None)


def test_no_project_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGE_CLASSIFIER_PROJECT_DIR", raising=False)
    result = CliRunner().invoke(cli.main, ["cost"])
    assert result.exit_code == 1
    assert "no config.toml" in result.output


def test_train_dry_run_writes_requests_and_uploads(project, tmp_path):
    dry = str(tmp_path)
    result = run(project, "train", "--dry-run", "--dry-run-dir", dry, "--hp", "lr=0.02", "--no-tuned")
    assert result.exit_code == 0, result.output
    calls = json.loads((tmp_path / "aws" / "requests.json").read_text())
    (job,) = [call["params"] for call in calls if call["operation"] == "CreateTrainingJob"]
    assert json.loads(job["HyperParameters"]["lr"]) == 0.02
    assert list((tmp_path / "aws" / "s3").rglob("sourcedir.tar.gz"))
    assert "CreateTrainingJob" in result.output
    assert "captured, not run" in result.output
    assert "InProgress" not in result.output and "Completed" not in result.output


def test_dry_run_commands_chain_like_real_ones(project, tiny_dataset, tmp_path):
    """tune -> train -> deploy -> predict -> status -> teardown, each its own command, all --dry-run."""
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path)]
    image = next((tiny_dataset / "valid").rglob("*.jpg"))
    outputs = {}
    for command in (["tune"], ["train"], ["deploy"], ["predict", str(image)], ["status"], ["teardown"]):
        result = run(project, *command, *dry)
        assert result.exit_code == 0, f"{command}: {result.output}"
        outputs[command[0]] = result.output
    assert "captured, not run" in outputs["tune"] and "InProgress" not in outputs["tune"]
    assert "No finished training job" not in outputs["tune"] + outputs["train"]
    assert "captured, not run: no model answered" in outputs["predict"]
    assert "endpoint" in outputs["status"] and "captured, not run" in outputs["status"]
    assert "deleted" in outputs["teardown"]
    # The real project state is untouched.
    assert ProjectState(ProjectConfig.load(project).state_dir).resources() == []


def test_train_uses_the_recorded_best_hyperparameters(project, tmp_path):
    config = ProjectConfig.load(project)
    state = ProjectState(tmp_path / "state")
    state.set_value(launcher.BEST_HYPERPARAMETERS, {"hyperparameters": {"lr": 0.0042, "batch_size": 60}})
    assert launcher.best_hyperparameters(state) == {"lr": 0.0042, "batch_size": 60}
    merged = launcher.training_hyperparameters(config, state, {"lr": 0.1})
    assert (merged["lr"], merged["batch_size"]) == (0.1, 60)
    untuned = launcher.training_hyperparameters(config, state, use_tuned=False)
    assert untuned["batch_size"] == config.hyperparameters["batch_size"]


def test_predict_dry_run_without_an_endpoint_says_what_to_do(project, tiny_dataset, tmp_path):
    image = next((tiny_dataset / "valid").rglob("*.jpg"))
    result = run(project, "predict", str(image), "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no endpoint recorded for this project; run `deploy`" in result.output
    assert "Traceback" not in result.output


def test_predict_refuses_what_is_not_an_image(project, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run(project, "predict", str(text), "--dry-run", "--dry-run-dir", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "not an image file by its name" in result.output


def test_teardown_dry_run_with_nothing_recorded(project, tmp_path):
    result = run(project, "teardown", "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "nothing to tear down" in result.output


def test_hyperparameter_overrides_parse_json_values():
    parsed = cli._parse_hyperparameters(("lr=0.01", "backbone=resnet50", "pretrained=false", "epochs=3"))
    assert parsed == {"lr": 0.01, "backbone": "resnet50", "pretrained": False, "epochs": 3}


def test_tuned_hyperparameters_lose_sagemakers_json_quoting():
    raw = {
        "batch_size": '"40"',
        "lr": "0.0031",
        "backbone": '"resnet18"',
        "_tuning_objective_metric": '"x"',
        "sagemaker_program": '"hpo.py"',
        "note": "plain text",
    }
    assert launcher.clean_hyperparameters(raw) == {
        "batch_size": 40,
        "lr": 0.0031,
        "backbone": "resnet18",
        "note": "plain text",
    }


def test_cost_prints_the_estimate_its_sources_and_the_budget(project):
    result = run(project, "cost", "--offline", env=WIDE)
    assert result.exit_code == 0, result.output
    config = ProjectConfig.load(project)
    total = costs.total(costs.estimate(config))
    assert f"{total:.2f}" in result.output
    assert "config.toml [prices]" in result.output
    if config.settings.budget.usd:
        assert f"[budget] usd = {config.settings.budget.usd:g}" in result.output


def test_role_policy_is_json(project):
    result = run(project, "iam-policy", "--for", "role")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["Statement"]


def test_user_policy_covers_every_call_the_workflow_makes(project):
    config = ProjectConfig.load(project)
    operations = iam.captured_operations(config)
    policy = iam.user_policy(config, operations)
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {iam.iam_action(service, operation) for service, operation in operations} <= allowed
    for expected in (
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:CreateTrainingJob",
        "sagemaker:CreateEndpoint",
        "sagemaker:DeleteEndpoint",
        "sagemaker:InvokeEndpoint",
        "s3:PutObject",
        "iam:PassRole",
    ):
        assert expected in allowed
    assert not any(action.endswith(":*") for action in allowed)


# --- launches that check first: budget, preflight, the deploy that proves itself ----------------------

dryrun = project_module("dryrun")


def with_budget(project, tmp_path, usd: float):
    """A copy of the project whose [budget] usd is `usd`."""
    import re
    import shutil

    copy = tmp_path / "budget-project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".state", "dry-run"))
    text = (copy / "config.toml").read_text()
    (copy / "config.toml").write_text(re.sub(r"(?m)^usd = .*$", f"usd = {usd}", text))
    return copy


def test_a_launch_over_the_budget_is_refused_without_yes(project, tmp_path):
    tight = with_budget(project, tmp_path, 0.01)
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    refused = run(tight, "train", "--skip-preflight", *dry)
    assert refused.exit_code == 1
    assert "over [budget] usd = 0.01" in refused.output and "--yes" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    calls = json.loads((tmp_path / "dry" / "aws" / "requests.json").read_text())
    assert not [call for call in calls if call["operation"] == "CreateTrainingJob"]
    allowed = run(tight, "train", "--skip-preflight", "--yes", *dry)
    assert allowed.exit_code == 0, allowed.output
    assert "CreateTrainingJob" in allowed.output


def test_a_launch_runs_preflight_first(project, tmp_path):
    result = run(project, "tune", "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "preflight for tune" in result.output and "not checked offline" in result.output


def test_tune_attach_starts_nothing_so_checks_neither_preflight_nor_budget(project, tmp_path):
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    assert run(project, "tune", "--no-wait", *dry).exit_code == 0
    attached = run(with_budget(project, tmp_path, 0.01), "tune", "--attach", *dry)
    assert attached.exit_code == 0, attached.output
    assert "preflight" not in attached.output and "over [budget]" not in attached.output
    assert "tuning job" in attached.output


def test_a_deploy_whose_endpoint_does_not_answer_prints_the_log_tail(project, tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    def model_error(self, **_):
        # What the container logged before it failed, in the endpoint's log group of the offline AWS.
        logs = self.context.client("logs")
        for endpoint in self.context.client("sagemaker").list_endpoints()["Endpoints"]:
            group = f"/aws/sagemaker/Endpoints/{endpoint['EndpointName']}"
            logs.create_log_group(logGroupName=group)
            logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0")
            logs.put_log_events(
                logGroupName=group,
                logStreamName="AllTraffic/i-0",
                logEvents=[
                    {"timestamp": int(time.time() * 1000), "message": "ModuleNotFoundError: no classifier"}
                ],
            )
        raise ClientError(
            {"Error": {"Code": "ModelError", "Message": "Received server error (500)"}}, "InvokeEndpoint"
        )

    monkeypatch.setattr(dryrun.OfflineAws, "answer_invocation", model_error)
    from launch_helpers import model_archive

    archive = model_archive(tmp_path / "model.tar.gz")
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    result = run(
        project, "deploy", "--model-data", str(archive), "--skip-preflight", "--teardown-on-failure", *dry
    )
    assert result.exit_code == 1
    assert "did not answer" in result.output and "Received server error (500)" in result.output
    assert "ModuleNotFoundError: no classifier" in result.output
    assert "deleted" in result.output and "does not answer (deleted)" in result.output
    state = ProjectState(tmp_path / "dry" / "state")
    assert state.resources("endpoint") == []


def test_status_and_teardown_reach_another_owner_by_tag(project, tmp_path):
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path)]
    assert run(project, "train", "--skip-preflight", *dry).exit_code == 0
    mine = run(project, "status", *dry, env=WIDE)
    assert mine.exit_code == 0 and "training-job" in mine.output
    nobody = run(project, "status", "--owner", "someone-else", *dry, env=WIDE)
    assert nobody.exit_code == 0 and "nothing found for owner someone-else" in nobody.output
    refused = CliRunner().invoke(
        cli.main, ["--project", str(project), "teardown", "--all-owners", *dry], env=NO_ACCOUNT, input="n\n"
    )
    assert refused.exit_code == 1 and "every owner" in refused.output


def test_predict_shrinks_a_body_over_the_limit_and_says_so(project, tmp_path, monkeypatch):
    import random

    from PIL import Image

    monkeypatch.setattr(launcher, "REALTIME_BODY_LIMIT", 60_000)
    monkeypatch.setattr(launcher, "SERVERLESS_BODY_LIMIT", 60_000)
    rng = random.Random(0)
    image = Image.frombytes("RGB", (300, 300), bytes(rng.randrange(256) for _ in range(300 * 300 * 3)))
    path = tmp_path / "noise.png"
    image.save(path)
    assert path.stat().st_size > 60_000
    body, content_type, note = launcher.fit_body(path.read_bytes(), "image/png", 60_000, 32)
    assert len(body) <= 60_000 and content_type == "image/jpeg"
    assert "over the endpoint's" in note and "shrunk on this machine" in note
    small, same_type, none = launcher.fit_body(b"tiny", "image/jpeg", 60_000, 32)
    assert (small, same_type, none) == (b"tiny", "image/jpeg", None)


@pytest.mark.parametrize(("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_policies_use_the_regions_partition(project, region, partition):
    import dataclasses

    config = ProjectConfig.load(project)
    data = {**config.data, "aws": {**config.data["aws"], "region": region, "role_arn": ""}}
    other = dataclasses.replace(config, data=data)
    operations = [("sagemaker", "CreateEndpoint"), ("s3", "PutObject"), ("logs", "GetLogEvents")]
    for policy in (iam.user_policy(other, operations), iam.execution_role_policy(other)):
        resources = [
            resource
            for statement in policy["Statement"]
            for resource in (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            if resource != "*"
        ]
        assert resources and all(resource.startswith(f"arn:{partition}:") for resource in resources), (
            resources
        )
    allowed = {
        action
        for statement in iam.user_policy(other, operations)["Statement"]
        for action in statement["Action"]
    }
    assert "sagemaker:AddTags" in allowed  # a Create request with Tags needs it
