"""The hooks' functions, imported and called directly (cookiecutter runs the same files as scripts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import COOKIECUTTER_JSON, QUESTIONS, TEMPLATE_DIR


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE_DIR / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre_gen = load_hook("pre_gen_project")
post_gen = load_hook("post_gen_project")


def default_answers(context: dict | None = None, **given: str) -> dict:
    """The answers cookiecutter derives with --no-input (and `given`) from cookiecutter.json (or
    `context`), its Jinja defaults rendered by cookiecutter itself with the template's filters."""
    from cookiecutter.prompt import prompt_for_config

    if str(TEMPLATE_DIR) not in sys.path:
        sys.path.insert(0, str(TEMPLATE_DIR))  # local_extensions, as cookiecutter imports it
    context = {key: given.get(key, value) for key, value in (context or COOKIECUTTER_JSON).items()}
    answers = prompt_for_config({"cookiecutter": context}, no_input=True)
    return {key: value for key, value in answers.items() if not key.startswith("_")}


@pytest.mark.parametrize(
    ("given", "images"),
    [
        ({}, ("2.8.0", "py312", "2.6.0", "py312")),
        ({"sagemaker_sdk": "v3"}, ("2.14", "py312", "2.6.0", "py312")),
        ({"sagemaker_sdk": "v3", "aws_region": "us-gov-west-1"}, ("2.13", "py312", "2.6.0", "py312")),
        (
            {"sagemaker_sdk": "v3", "training_framework_version": "2.10.0"},
            ("2.10.0", "py313", "2.6.0", "py312"),
        ),
        ({"training_framework_version": "2.5"}, ("2.5", "py311", "2.6.0", "py312")),
    ],
)
def test_the_default_images_are_the_newest_the_sdk_answer_knows_in_the_region(given, images) -> None:
    """The image defaults follow the `sagemaker_sdk` answer (v2 before it is asked), which must come
    before them in cookiecutter.json for cookiecutter to have it when it renders them."""
    keys = list(COOKIECUTTER_JSON)
    if "sagemaker_sdk" in keys:
        assert keys.index("sagemaker_sdk") < keys.index("training_framework_version")
        context = COOKIECUTTER_JSON
    else:  # what the answer will be: v2 or v3, asked before the images
        at = keys.index("training_framework_version")
        context = dict([*COOKIECUTTER_JSON.items()][:at] + [("sagemaker_sdk", ["v2", "v3"])])
        context.update(COOKIECUTTER_JSON)
    answers = default_answers(context, **given)
    names = ("training_framework_version", "training_py_version", "inference_framework_version")
    assert tuple(answers[name] for name in (*names, "inference_py_version")) == images
    if "sagemaker_sdk" in keys:
        assert pre_gen.validate(answers) == []


def test_defaults_are_valid() -> None:
    assert pre_gen.validate(default_answers()) == []


schema = pre_gen.load_config_module(TEMPLATE_DIR, "schema")
aws_tables = pre_gen.load_config_module(TEMPLATE_DIR, "aws_tables")


def test_every_choice_in_cookiecutter_json_is_the_schemas() -> None:
    """cookiecutter.json's menus offer exactly what the schema allows (one list, shown twice)."""
    assert tuple(QUESTIONS["backbone"]) == schema.BACKBONES
    assert tuple(QUESTIONS["finetune"]) == schema.FINETUNE_MODES
    assert tuple(QUESTIONS["rule_set"]) == schema.RULE_SET_NAMES
    assert tuple(QUESTIONS["lr_scaling"]) == schema.LR_SCALINGS
    assert tuple(QUESTIONS["objective_type"]) == schema.OBJECTIVE_TYPES
    assert tuple(QUESTIONS["early_stopping_type"]) == schema.EARLY_STOPPING_TYPES
    assert set(QUESTIONS["python_version"]) == set(pre_gen.PYTHON_VERSIONS)


def test_backbones_come_from_the_schema() -> None:
    text = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "classifier" / "backbones.py").read_text()
    assert "from .choices import BACKBONES" in text
    assert '"resnet18"' not in text, "the names live in choices.py only"


def test_every_config_answer_is_found_on_its_line() -> None:
    source = (TEMPLATE_DIR / pre_gen.CONFIG).read_text(encoding="utf-8")
    keys, _, raw = pre_gen.answer_lines(source)
    assert keys[("model", "num_classes")] == "num_classes"
    assert keys[("tuning", "ranges", "lr", "min")] == "lr_min"
    assert keys[("instances", "endpoint", "type")] == "endpoint_instance_type"
    assert "batch_size_choices" in raw and "lr" in raw and "project_name" not in raw


def test_the_hook_finds_the_template_from_the_context(tmp_path: Path) -> None:
    assert pre_gen.find_template({"_repo_dir": str(TEMPLATE_DIR)}) == TEMPLATE_DIR
    # cruft passes no _repo_dir: the folder the hook was rendered in.
    assert pre_gen.find_template({}, str(TEMPLATE_DIR)) == TEMPLATE_DIR
    assert pre_gen.find_template({"_repo_dir": str(tmp_path)}, str(TEMPLATE_DIR)) == TEMPLATE_DIR


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
        ("package_name", "test", "standard-library"),
        ("package_name", "click", "shadow"),
        ("package_name", "sagemaker", "shadow"),
        ("package_name", "numpy", "shadow"),
        ("project_slug", "torch", "dependency"),
        ("project_slug", "boto3", "dependency"),
        ("project_slug", "sagemaker-training", "dependency"),
        ("project_slug", "classifier", "dependency"),
        ("package_name", "2dogs", "package_name"),
        ("package_name", "dog-breed", "package_name"),
        ("package_name", "classifier", "shadow"),
        ("tuning_instance_type", "g4dn.xlarge", "ml.<family>.<size>"),
        ("endpoint_instance_type", "ml.m5", "endpoint_instance_type"),
        ("training_instance_count", "0", "training_instance_count"),
        ("lr_min", "-0.1", "lr_min"),
        ("lr_min", "0", "greater than 0"),
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
        ("num_classes", "007", "write 7"),
        ("lr", "00.5", "write 0.5"),
        ("epochs", "+5", "write 5"),
        ("lr", "fast", "plain number"),
        ("num_classes", "7.5", "whole number"),
        ("batch_size_choices", "040,60", "batch_size_choices"),
        ("aws_region", "xx-east-1", "SageMaker SDK"),
        ("aws_region", "us-iso-east-1", "SageMaker SDK"),
        ("tuning_instance_type", "ml.trn1.2xlarge", "Trainium"),
        ("endpoint_instance_type", "ml.inf2.xlarge", "Neuron"),
        ("training_instance_type", "ml.c7g.xlarge", "Graviton"),
        ("training_instance_type", "ml.g6.xlarge", "[prices]"),
        ("training_framework_version", "9.9.9", "has no PyTorch training image that SageMaker SDK v2 knows"),
        ("inference_py_version", "py39", "comes with py312"),
        ("description", "{{ cookiecutter.project_name }}", "Jinja"),
        ("author_name", "{% raw %}", "Jinja"),
        ("use_spot", "perhaps", "yes or no"),
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
        # Accepted before, but the job would fail after the instance was billed:
        ("training_framework_version", "2.2.0", "older than 2.3.0"),
        ("training_framework_version", "2.0", "torch.amp.GradScaler"),
        (
            "training_image_uri",
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1.0-gpu-py310",
            "brings PyTorch 2.1.0, older than 2.3.0",
        ),
        ("s3_bucket", "sthree-course", "reserved"),
        ("s3_bucket", "xn--course", "reserved"),
        ("s3_bucket", "amzn-s3-demo-course", "reserved"),
        ("s3_bucket", "course-s3alias", "reserved"),
        ("s3_bucket", "course--ol-s3", "reserved"),
        ("s3_bucket", "course.mrap", "reserved"),
        ("s3_bucket", "course--x-s3", "reserved"),
        ("s3_bucket", "course--table-s3", "reserved"),
        ("s3_bucket", "c" * 64, "3-63"),
        ("s3_bucket", "course.", "s3_bucket"),
        ("dataset_url", "s3://sthree-data/dogs.zip", "reserved"),
        ("dataset_url", "s3://my-data", "zip object"),
        ("dataset_url", "https://example.com/" + "x" * 2100, "at most 2048"),
        ("objective_type", "Maximize", "must be Minimize for objective_metric_name validation:loss"),
        ("lr_max", "1e309", "finite"),
        ("lr", "100", "at most 10"),
        ("batch_size_choices", ",".join(str(n) for n in range(1, 32)), "30 at most"),
        ("num_classes", "9" * 5000, "5,000 characters; at most 32"),  # was a ValueError traceback
        ("batch_size_choices", "40," + "1" * 400, "400 characters; at most 32"),
    ],
)
def test_invalid_answer_is_named_in_one_line(key: str, value: str, words: str) -> None:
    answers = default_answers() | {key: value}
    problems = pre_gen.validate(answers)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}:")
    assert words in problems[0]
    assert "\n" not in problems[0]


def test_the_training_image_minimum_is_the_oldest_version_accepted() -> None:
    """Every image from the minimum on renders; every older one is refused (the list is the SDK's)."""
    minimum = aws_tables.version_tuple(aws_tables.MINIMUM_PYTORCH["training"])
    for version, py_versions in aws_tables.PYTORCH_IMAGES["v2"]["training"].items():
        answers = default_answers() | {
            "training_framework_version": version,
            "training_py_version": py_versions[0],
        }
        problems = pre_gen.validate(answers)
        assert (problems == []) is (aws_tables.version_tuple(version) >= minimum), (version, problems)
    prompt = COOKIECUTTER_JSON["__prompts__"]["training_framework_version"]
    minimum_text = aws_tables.MINIMUM_PYTORCH["training"]
    assert f"{minimum_text} or later" in prompt, "the prompt says the schema's minimum"


@pytest.mark.parametrize(
    ("metric", "objective_type", "accepted"),
    [
        ("validation:accuracy", "Maximize", True),
        ("validation:accuracy", "Minimize", False),
        ("val_acc", "Minimize", False),
        ("train-error", "Maximize", False),
        ("validation:loss", "Minimize", True),
        ("validation:f1", "Maximize", True),
        ("validation:throughput", "Maximize", True),  # says neither: the user's call
    ],
)
def test_the_objective_direction_follows_the_metric_name(metric: str, objective_type: str, accepted: bool):
    answers = default_answers() | {
        "objective_metric_name": metric,
        "objective_type": objective_type,
        "objective_metric_regex": metric + "=([0-9.]+)",
    }
    problems = pre_gen.validate(answers)
    if accepted:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith(f"objective_type: '{objective_type}' must be ")
        assert f"for objective_metric_name {metric}" in problem


@pytest.mark.parametrize(
    "bucket", ["my-team.sagemaker-data", "abc", "a" * 63, "1-2-3", "xn-data", "data-s3", "data.mrap1"]
)
def test_bucket_names_s3_accepts_pass(bucket: str) -> None:
    assert pre_gen.validate(default_answers() | {"s3_bucket": bucket}) == []


def test_a_long_answer_is_quoted_in_a_short_line() -> None:
    for key, value in (("num_classes", "1" * 400), ("description", "x" * 100_000), ("s3_bucket", "B" * 5000)):
        (problem,) = pre_gen.validate(default_answers() | {key: value})
        assert problem.startswith(f"{key}: ") and len(problem) < 300, problem


def test_reverse_logarithmic_scaling_needs_a_range_below_one() -> None:
    answers = default_answers() | {"lr_scaling": "ReverseLogarithmic"}
    assert pre_gen.validate(answers | {"lr_max": "0.5"}) == []
    (problem,) = pre_gen.validate(answers | {"lr_max": "1.5"})
    assert problem.startswith("lr_max: '1.5' must be below 1 with ReverseLogarithmic scaling")


def test_spot_needs_max_wait_at_least_max_run() -> None:
    answers = default_answers() | {"use_spot": True, "max_run_seconds": "7200", "max_wait_seconds": "3600"}
    assert pre_gen.validate(answers) == [
        "max_wait_seconds: '3600' must be at least max_run_seconds (7200) with use_spot = true"
    ]
    answers["use_spot"] = "no"
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
        "tuning_instance_type": "ml.p3.8xlarge",
        "num_classes": "10",
        "pretrained": "No",
        "include_notebook": False,
    }
    assert pre_gen.validate(answers) == []


def test_role_partition_follows_the_region() -> None:
    china = default_answers() | {"aws_region": "cn-north-1"}
    assert pre_gen.validate(china | {"role_arn": "arn:aws-cn:iam::123456789012:role/R"}) == []
    (problem,) = pre_gen.validate(china | {"role_arn": "arn:aws:iam::123456789012:role/R"})
    assert problem.startswith("role_arn: 'arn:aws:iam::") and "aws_region cn-north-1 is in aws-cn" in problem
    gov = default_answers() | {
        "aws_region": "us-gov-west-1",
        "role_arn": "arn:aws-us-gov:iam::123456789012:role/R",
    }
    assert pre_gen.validate(gov) == []


def test_a_long_name_is_blamed_on_the_name_not_the_derived_slug() -> None:
    name = "D" * 199
    answers = default_answers() | {"project_name": name, "project_slug": "d" * 199, "package_name": "d" * 199}
    (problem,) = pre_gen.validate(answers)
    assert problem.startswith("project_name: ") and "project_slug" in problem and "64" in problem
    # A slug the user typed is the slug's problem.
    (problem,) = pre_gen.validate(default_answers() | {"project_slug": "x" * 65})
    assert problem.startswith("project_slug: ")


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


def test_the_schema_renders_unchanged() -> None:
    """The hook reads the template's config/ modules, the project the rendered ones: the same text."""
    modules = sorted((TEMPLATE_DIR / pre_gen.CONFIG_PACKAGE).glob("*.py"))
    assert {path.name for path in modules} >= {"schema.py", "validation.py", "aws_tables.py"}
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert not any(marker in text for marker in ("{{", "{%", "{#")), path.name
