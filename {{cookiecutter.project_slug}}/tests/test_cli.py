"""The click CLI: fast help, one-line errors, dry runs end to end, and the small pure helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("cli") / "project")


def run(project, *args: str, env: dict | None = None):
    return CliRunner().invoke(cli.main, ["--project", str(project), *args], env={**NO_ACCOUNT, **(env or {})})


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


def test_cost_prints_the_estimate(project):
    result = run(project, "cost")
    assert result.exit_code == 0, result.output
    total = costs.total(costs.estimate(ProjectConfig.load(project)))
    assert f"{total:.2f}" in result.output


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
