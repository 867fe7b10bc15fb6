"""The default render reproduces the reference configuration, and nothing of the template leaks into it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import tomllib
import yaml
from conftest import read_config

REFERENCE = {
    "model": {
        "backbone": "resnet18",
        "num_classes": 133,
        "image_size": 224,
        "finetune": "head",
        "pretrained": True,
    },
    # The reference's four hyperparameters, plus which network a CPU endpoint serves (int8 when it costs
    # at most 0.5 points of validation accuracy).
    "hyperparameters": {
        "epochs": 5,
        "batch_size": 40,
        "test_batch_size": 100,
        "lr": 0.005,
        "quantize": "auto",
    },
    "tuning": {
        "max_jobs": 4,
        "max_parallel_jobs": 2,
        "objective_metric_name": "validation:loss",
        "objective_type": "Minimize",
        "objective_metric_regex": r"validation:loss=([0-9\.]+)",
        "early_stopping_type": "Off",
        "ranges": {
            "lr": {"type": "continuous", "min": 0.001, "max": 0.01, "scaling": "Logarithmic"},
            "batch_size": {"type": "categorical", "values": [40, 60]},
        },
    },
    "debugger": {
        # The reference's five debugger rules and two profiler rules, judged in the job and by SageMaker.
        "rules": [
            "vanishing_gradient",
            "overfit",
            "overtraining",
            "poor_weight_initialization",
            "loss_not_decreasing",
            "LowGPUUtilization",
            "ProfilerReport",
        ],
        "evaluation": "both",
        "train_save_interval": 100,
        "eval_save_interval": 10,
    },
    "instances": {
        "tuning": {"type": "ml.g4dn.xlarge", "count": 1},
        "training": {"type": "ml.g4dn.xlarge", "count": 1},
        "endpoint": {"type": "ml.m5.large", "count": 1},
    },
}

TEXT_SUFFIXES = {".py", ".toml", ".md", ".txt", ".yml", ".yaml", ".json", ".ipynb", ".cfg", ".ini", ""}


def test_config_is_the_reference_configuration(default_project: Path) -> None:
    config = read_config(default_project)
    for section, expected in REFERENCE.items():
        assert config[section] == expected, section
    assert config["project"] == {
        "name": "Dog Breed Classifier",
        "slug": "dog-breed-classifier",
        "package": "dog_breed_classifier",
        "description": config["project"]["description"],
        "owner": "",  # empty: the slug tags the resources
    }
    assert config["jobs"]["use_spot"] is False
    assert config["jobs"]["max_wait_seconds"] >= config["jobs"]["max_run_seconds"]
    assert config["aws"]["bucket"] == "" and config["aws"]["role_arn"] == ""
    assert config["aws"]["prefix"] == "dog-breed-classifier"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", config["images"]["training"]["framework_version"])
    assert config["data"]["url"].endswith("dogImages.zip")


def test_objective_regex_reads_the_line_the_scripts_print(default_project: Path) -> None:
    regex = read_config(default_project)["tuning"]["objective_metric_regex"]
    match = re.search(regex, "epoch 3 validation:loss=0.734512 validation:accuracy=0.801000")
    assert match and float(match.group(1)) == 0.734512


def test_no_template_syntax_left(default_project: Path) -> None:
    leftovers = []
    for path in default_project.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            # GitHub Actions expressions (${{ }}) are meant to survive rendering.
            stripped = re.sub(r"\$\{\{.*?\}\}", "", text)
            # `.cookiecutter.json` (the answers record) is a file name, not a leftover variable.
            if "{{" in stripped or "{%" in stripped or re.search(r"cookiecutter\.(?!json)", stripped):
                leftovers.append(str(path.relative_to(default_project)))
    assert leftovers == []


def test_python_files_hold_no_jinja_in_the_template() -> None:
    from conftest import PROJECT_TEMPLATE

    offenders = [
        str(path.relative_to(PROJECT_TEMPLATE))
        for path in PROJECT_TEMPLATE.rglob("*.py")
        if "{{" in path.read_text(encoding="utf-8") or "{%" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_pyproject(default_project: Path) -> None:
    pyproject = tomllib.loads((default_project / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    assert project["name"] == "dog-breed-classifier"
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"dog-breed-classifier": "dog_breed_classifier.cli:main"}
    assert {"debug", "dev", "local"} <= set(project["optional-dependencies"])
    assert "sagemaker>=2.257,<3" in project["dependencies"]
    # Nothing holds numpy below 2 (a render installs beside numpy 2: tests/test_install_paths.py), and
    # smdebug (which needs numpy<2 and protobuf<=3.20.3) is no dependency, core or extra.
    every = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    assert not [dep for dep in every if dep.startswith(("smdebug", "numpy"))]
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert (default_project / "src" / "dog_breed_classifier" / "__init__.py").is_file()


def test_github_workflow_keeps_its_expressions(default_project: Path) -> None:
    workflow_path = default_project / ".github" / "workflows" / "ci.yml"
    text = workflow_path.read_text(encoding="utf-8")
    assert "${{ matrix.python-version }}" in text
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["test"]["steps"]
    assert any("pytest" in step.get("run", "") for step in steps)


def test_requirements_split_between_containers(default_project: Path) -> None:
    def requirements(role: str) -> list[str]:
        text = (default_project / role / "requirements.txt").read_text(encoding="utf-8")
        return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]

    # Neither container installs anything over its image: smdebug 1.0.34 would downgrade the training
    # image's numpy and protobuf (the rules are judged in the job instead), and serving needs nothing more.
    image_packages = ("smdebug", "numpy", "protobuf", "torch")
    for role in ("training", "inference"):
        assert not any(line.startswith(image_packages) for line in requirements(role))


def test_entry_points_exist(default_project: Path) -> None:
    for relative in ("training/hpo.py", "training/train_model.py", "inference/inference.py"):
        assert (default_project / relative).is_file(), relative


def test_notebook_is_valid_and_stripped(default_project: Path) -> None:
    notebook = nbformat.read(default_project / "train_and_deploy.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_answers_are_recorded_for_updates(default_project: Path) -> None:
    import json

    answers = json.loads((default_project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]
    assert answers["project_name"] == "Dog Breed Classifier"
    assert answers["backbone"] == "resnet18"
    assert "_template" not in answers
