"""The hooks' functions, imported and called directly (cookiecutter runs the same files as scripts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import QUESTIONS, TEMPLATE_DIR


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE_DIR / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre_gen = load_hook("pre_gen_project")
post_gen = load_hook("post_gen_project")


def default_answers() -> dict:
    """The answers cookiecutter derives with --no-input."""
    answers = {key: value[0] if isinstance(value, list) else value for key, value in QUESTIONS.items()}
    answers.update(project_slug="dog-breed-classifier", package_name="dog_breed_classifier")
    answers["s3_prefix"] = "dog-breed-classifier"
    return answers


def test_defaults_are_valid() -> None:
    assert pre_gen.validate(default_answers()) == []


def test_every_choice_in_cookiecutter_json_is_accepted_by_the_hook() -> None:
    for key, allowed in pre_gen.CHOICES.items():
        assert tuple(QUESTIONS[key]) == tuple(allowed) or set(QUESTIONS[key]) == set(allowed), key


def test_backbones_match_the_rendered_project() -> None:
    text = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "classifier" / "backbones.py").read_text()
    for backbone in pre_gen.BACKBONES:
        assert f'"{backbone}"' in text


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("project_slug", "1dogs", "project_slug"),
        ("project_slug", "Dogs", "project_slug"),
        ("project_slug", "dogs--x", "project_slug"),
        ("project_slug", "d" * 65, "project_slug"),
        ("package_name", "class", "keyword"),
        ("package_name", "match", "keyword"),
        ("package_name", "json", "standard-library"),
        ("package_name", "2dogs", "package_name"),
        ("package_name", "dog-breed", "package_name"),
        ("package_name", "classifier", "shadow"),
        ("tuning_instance_type", "g4dn.xlarge", "ml.<family>.<size>"),
        ("endpoint_instance_type", "ml.m5", "endpoint_instance_type"),
        ("training_instance_count", "0", "training_instance_count"),
        ("lr_min", "-0.1", "lr_min"),
        ("lr_max", "nan", "lr_max"),
        ("lr_min", "0.05", "smaller than lr_max"),
        ("batch_size_choices", "40,x", "batch_size_choices"),
        ("batch_size_choices", "40,0", "batch_size_choices"),
        ("batch_size_choices", "40,40", "twice"),
        ("batch_size", "-5", "batch_size"),
        ("max_parallel_jobs", "5", "must not exceed max_jobs"),
        ("num_classes", "1", "num_classes"),
        ("image_size", "16", "image_size"),
        ("image_size", "99999", "image_size"),
        ("aws_region", "US-EAST-1", "aws_region"),
        ("aws_region", "useast1", "aws_region"),
        ("role_arn", "arn:aws:iam::123:role/x", "role_arn"),
        ("role_arn", "MyRole", "role_arn"),
        ("s3_bucket", "My_Bucket", "s3_bucket"),
        ("s3_bucket", "ab", "s3_bucket"),
        ("s3_bucket", "a..b", "s3_bucket"),
        ("s3_bucket", "192.168.1.1", "s3_bucket"),
        ("s3_prefix", "/abs", "s3_prefix"),
        ("objective_metric_regex", "loss=[0-9", "objective_metric_regex"),
        ("objective_metric_regex", "loss=[0-9.]+", "exactly one group"),
        ("profiler_interval_millis", "300", "profiler_interval_millis"),
        ("training_framework_version", "latest", "training_framework_version"),
        ("inference_image_uri", "pytorch:latest", "inference_image_uri"),
        ("project_name", "Dogs\nCats", "control character"),
        ("project_name", " ", "must not be empty"),
        ("description", "x" * 201, "at most 200"),
        ("author_email", "not-an-email", "author_email"),
        ("pretrained", "maybe", "yes or no"),
        ("dataset_url", "ftp://example.com/x.zip", "dataset_url"),
    ],
)
def test_invalid_answer_is_named_in_one_line(key: str, value: str, words: str) -> None:
    answers = default_answers() | {key: value}
    problems = pre_gen.validate(answers)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}:")
    assert words in problems[0]
    assert "\n" not in problems[0]


def test_spot_needs_max_wait_at_least_max_run() -> None:
    answers = default_answers() | {"use_spot": True, "max_run_seconds": "7200", "max_wait_seconds": "3600"}
    assert pre_gen.validate(answers) == [
        "max_wait_seconds: 3600 must be at least max_run_seconds (7200) with use_spot"
    ]
    answers["use_spot"] = False
    assert pre_gen.validate(answers) == []


def test_valid_optional_values_pass() -> None:
    answers = default_answers() | {
        "role_arn": "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole",
        "s3_bucket": "my-team.sagemaker-data",
        "aws_region": "eu-central-1",
        "training_image_uri": (
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py312"
        ),
        "lr_min": "1e-4",
        "tuning_instance_type": "ml.p3.16xlarge",
    }
    assert pre_gen.validate(answers) == []


def test_main_prints_each_problem_and_fails(capsys) -> None:
    import json

    answers = default_answers() | {"num_classes": "1", "aws_region": "mars"}
    assert pre_gen.main(json.dumps(answers)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ERROR: num_classes:")
    assert err[1].startswith("ERROR: aws_region:")
    assert "Nothing was generated" in err[-1]


def test_post_gen_prunes_only_what_was_declined(tmp_path: Path) -> None:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / "train_and_deploy.ipynb").write_text("{}")
    post_gen.main(default_answers() | {"include_notebook": False, "include_github_actions": True}, tmp_path)
    assert not (tmp_path / "train_and_deploy.ipynb").exists()
    assert (tmp_path / ".github").exists()
    post_gen.main(default_answers() | {"include_github_actions": False}, tmp_path)
    assert not (tmp_path / ".github").exists()
