"""Renders chosen on purpose: every value of every choice at least once, each output checked.

backbone x rule_set x finetune are covered pairwise (allpairspy); the independent yes/no
options are cycled through the same cases. Each render must compile, pass ruff, hold
exactly the files its options call for, and carry its answers into config.toml.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib
from allpairspy import AllPairs
from conftest import PROJECT_TEMPLATE, QUESTIONS, bake_ok, read_config

_STANDARD = (
    "vanishing_gradient",
    "overfit",
    "overtraining",
    "poor_weight_initialization",
    "loss_not_decreasing",
    "LowGPUUtilization",
    "ProfilerReport",
)
# What each rule_set answer means, as the issue and README define it (independently of the code).
RULE_SETS = {
    "standard": _STANDARD,
    "minimal": ("loss_not_decreasing", "ProfilerReport"),
    "extended": (*_STANDARD, "exploding_tensor", "dead_relu", "class_imbalance", "CPUBottleneck"),
    "none": (),
}

AXES = {
    "backbone": QUESTIONS["backbone"],
    "rule_set": QUESTIONS["rule_set"],
    "finetune": QUESTIONS["finetune"],
}
CYCLED = {
    "include_notebook": [True, False],
    "include_github_actions": [False, True],
    "use_spot": [True, False],
    "python_version": QUESTIONS["python_version"],
    "lr_scaling": QUESTIONS["lr_scaling"],
    # Each generation with and without the notebook.
    "sagemaker_sdk": ["v2", "v2", "v3", "v3"],
}


def matrix() -> list[dict]:
    cases = []
    for index, combo in enumerate(AllPairs(list(AXES.values()))):
        case = dict(zip(AXES, combo, strict=True))
        for key, values in CYCLED.items():
            case[key] = values[index % len(values)]
        cases.append(case)
    return cases


CASES = matrix()


def case_id(case: dict) -> str:
    return "-".join(f"{key}:{case[key]}" for key in AXES)


def expected_files(case: dict, package: str) -> set[str]:
    """The template's files, renamed as rendered, less what the options prune."""
    files = set()
    for path in PROJECT_TEMPLATE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.add(
                str(path.relative_to(PROJECT_TEMPLATE)).replace("{{cookiecutter.package_name}}", package)
            )
    if not case["include_notebook"]:
        files.discard("train_and_deploy.ipynb")
    if not case["include_github_actions"]:
        files = {f for f in files if not f.startswith(".github/")}
    return files


def test_matrix_covers_every_choice() -> None:
    for key, values in {**AXES, **CYCLED}.items():
        assert {case[key] for case in CASES} == set(values), key


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_render(cookies, case: dict) -> None:
    project = bake_ok(cookies, **case)
    config = read_config(project)
    package = config["project"]["package"]

    rendered = {
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert rendered == expected_files(case, package)

    assert config["model"]["backbone"] == case["backbone"]
    assert config["model"]["finetune"] == case["finetune"]
    # The rule set answer, expanded into the list a user edits (each set spelled out in test_defaults).
    assert config["debugger"]["rules"] == list(RULE_SETS[case["rule_set"]])
    assert config["jobs"]["use_spot"] is case["use_spot"]
    assert config["tuning"]["ranges"]["lr"]["scaling"] == case["lr_scaling"]
    assert (project / ".python-version").read_text().strip() == case["python_version"]
    # The SDK generation: the launcher's module, its pin, and (v3) the rules judged in the job.
    assert config["aws"]["sagemaker_sdk"] == case["sagemaker_sdk"]
    pin = {"v2": "sagemaker>=2.257,<3", "v3": "sagemaker>=3.27,<4"}[case["sagemaker_sdk"]]
    assert pin in tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    if case["sagemaker_sdk"] == "v3":
        assert config["debugger"]["evaluation"] == "in_job"
    if case["include_github_actions"]:
        workflow = (project / ".github" / "workflows" / "ci.yml").read_text()
        assert f'python-version: ["{case["python_version"]}"]' in workflow

    compiled = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(project)], capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    linted = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(project)],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_other_answers_reach_the_config(cookies) -> None:
    project = bake_ok(
        cookies,
        num_classes="10",
        image_size="160",
        batch_size_choices="16, 32,64",
        lr_min="1e-4",
        lr_max="0.05",
        max_jobs="8",
        max_parallel_jobs="4",
        training_instance_type="ml.p3.2xlarge",
        training_instance_count="2",
        endpoint_instance_type="ml.c5.2xlarge",
        aws_region="eu-west-1",
        s3_bucket="my-bucket",
        s3_prefix="course/student-7",
        role_arn="arn:aws:iam::123456789012:role/SageMakerRole",
        pretrained="no",
    )
    config = read_config(project)
    assert config["model"]["num_classes"] == 10 and config["model"]["image_size"] == 160
    assert config["model"]["pretrained"] is False
    assert config["tuning"]["ranges"]["batch_size"]["values"] == [16, 32, 64]
    assert config["tuning"]["ranges"]["lr"]["min"] == 1e-4
    assert config["tuning"]["max_jobs"] == 8 and config["tuning"]["max_parallel_jobs"] == 4
    assert config["instances"]["training"] == {"type": "ml.p3.2xlarge", "count": 2}
    assert config["instances"]["endpoint"]["type"] == "ml.c5.2xlarge"
    assert config["aws"] == {
        "region": "eu-west-1",
        "bucket": "my-bucket",
        "prefix": "course/student-7",
        "role_arn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "sagemaker_sdk": "v2",
    }
