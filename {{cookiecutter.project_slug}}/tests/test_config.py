"""config.toml is checked against classifier/schema.py: every command refuses an invalid edit in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from classifier import schema

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = next(p.parent.name for p in (PROJECT_ROOT / "src").glob("*/config.py"))
config_module = __import__(f"{PACKAGE}.config", fromlist=["ProjectConfig"])
cli = __import__(f"{PACKAGE}.cli", fromlist=["main"])

COMMANDS = [
    ["data", "upload", "--dry-run"],
    ["tune", "--dry-run"],
    ["train", "--dry-run"],
    ["deploy", "--dry-run"],
    ["cost"],
    ["status"],
    ["teardown", "--dry-run", "--yes"],
    ["iam-policy"],
    ["predict", "--dry-run", "dog.jpg"],
]
EDITS = {
    "lr is text": ("lr = ", 'lr = "fast"\n#', '[hyperparameters] lr = "fast": must be a number'),
    "typo'd key": ("epochs = ", "epochz = ", "[hyperparameters] epochz: is not a known key"),
    "unknown rule": ("rules = [", 'rules = ["loud_rule", ', "[debugger] rules = "),
    "unknown evaluation": (
        'evaluation = "',
        'evaluation = "often" #"',
        '[debugger] evaluation = "often": must be',
    ),
    "missing key": ("num_classes = ", "# num_classes = ", "[model] num_classes: is missing"),
}


def edited_project(tmp_path: Path, old: str, new: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    text = (PROJECT_ROOT / "config.toml").read_text(encoding="utf-8")
    assert old in text
    (project / "config.toml").write_text(text.replace(old, new, 1), encoding="utf-8")
    for folder in ("classifier", "training", "inference"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder)
    return project


def test_the_rendered_config_fits_the_schema() -> None:
    config = config_module.ProjectConfig.load(PROJECT_ROOT)
    assert config.settings.model.backbone in schema.BACKBONES
    assert config.settings.tuning.max_jobs == config.section("tuning")["max_jobs"]
    assert config.settings.hyperparameters.lr == config.hyperparameters["lr"]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_load_names_file_key_value_and_what_is_allowed(tmp_path: Path, edit: str) -> None:
    old, new, words = EDITS[edit]
    project = edited_project(tmp_path, old, new)
    with pytest.raises(config_module.ConfigError) as raised:
        config_module.ProjectConfig.load(project)
    message = str(raised.value)
    assert message.startswith(str(project / "config.toml") + ": ")
    assert words in message and "\n" not in message


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_refuses_an_invalid_config_in_one_line(tmp_path: Path, command: list[str]) -> None:
    project = edited_project(tmp_path, *EDITS["lr is text"][:2])
    (project / "dog.jpg").write_bytes(b"not read: the config is refused first")
    command = [str(project / part) if part == "dog.jpg" else part for part in command]
    result = CliRunner().invoke(cli.main, ["--project", str(project), *command], catch_exceptions=False)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and "[hyperparameters] lr" in lines[-1], result.output
    assert "Traceback" not in result.output


def test_optional_tables_and_ranges_of_any_hyperparameter_are_allowed() -> None:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    document = {**document, "environment": {"MY_FLAG": "1"}, "prices": {"ml.g6.xlarge": 1.0}}
    momentum = {"type": "continuous", "min": 0.5, "max": 0.99}
    document["tuning"] = {**document["tuning"], "ranges": {"momentum": momentum}}
    assert schema.validate(document) == []
    document["tuning"]["ranges"] = {"momentun": {"type": "continuous", "min": 0.5, "max": 0.99}}
    assert "tunes no hyperparameter" in schema.validate(document)[0].text()


def test_the_schema_regions_and_images_are_what_the_sdk_serves() -> None:
    image_uris = pytest.importorskip("sagemaker.image_uris")
    for scope, versions in schema.PYTORCH_IMAGES.items():
        for version, py_versions in versions.items():
            for py_version in py_versions:
                image_uris.retrieve(
                    "pytorch",
                    "us-east-1",
                    version=version,
                    py_version=py_version,
                    instance_type="ml.g4dn.xlarge",
                    image_scope=scope,
                )
    config = config_module.ProjectConfig.load(PROJECT_ROOT).settings
    for region in schema.SAGEMAKER_REGIONS:
        for scope in ("training", "inference"):
            image = getattr(config.images, scope)
            image_uris.retrieve(
                "pytorch",
                region,
                version=image.framework_version,
                py_version=image.py_version,
                instance_type="ml.m5.large",
                image_scope=scope,
            )


def test_rule_sets_and_image_suffixes_are_defined_once(training) -> None:
    # The in-job rules (training/rules.py) know exactly the schema's rule names.
    rules = training("rules")
    assert set(rules.KNOWN_RULES) == set(schema.KNOWN_RULES)
    assert set(config_module.ProjectConfig.load(PROJECT_ROOT).section("debugger")["rules"]) <= set(
        schema.KNOWN_RULES
    )
    assert ".tif" in schema.IMAGE_SUFFIXES


def test_a_rule_between_keys_names_both() -> None:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    document["tuning"] = {**document["tuning"], "max_parallel_jobs": document["tuning"]["max_jobs"] + 1}
    (problem,) = schema.validate(document)
    assert problem.text().startswith("[tuning] max_parallel_jobs = ")
    assert "must not exceed [tuning] max_jobs" in problem.text()
