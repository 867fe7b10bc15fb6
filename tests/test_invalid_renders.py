"""A refused answer stops cookiecutter with one line per problem and leaves nothing on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE_DIR

INVALID = [
    ("project_slug", "9lives"),
    ("package_name", "import"),
    ("training_instance_type", "p3.2xlarge"),
    ("lr_min", "0"),
    ("lr_max", "0.0001"),
    ("batch_size_choices", "40;60"),
    ("max_parallel_jobs", "10"),
    ("num_classes", "1"),
    ("image_size", "8"),
    ("aws_region", "eu_west_1"),
    ("role_arn", "arn:aws:iam::12:role/r"),
    ("s3_bucket", "-bucket"),
    ("project_name", "two\nlines"),
    ("num_classes", "007"),
    ("package_name", "test"),
    ("project_slug", "click"),
    ("training_instance_type", "ml.trn1.2xlarge"),
    ("endpoint_instance_type", "ml.g6.xlarge"),
    ("aws_region", "xx-east-1"),
    ("pretrained", "maybe"),
    ("use_spot", "sometimes"),
    ("project_name", "{{ }}"),
    ("description", "{% if %}"),
    ("project_name", "   "),
    ("project_name", "D" * 199),
    # Answers the SageMaker job or S3 would refuse only after the render (and the bill) started:
    ("training_framework_version", "2.2.0"),
    ("s3_bucket", "sthree-course"),
    ("objective_type", "Maximize"),
    ("dataset_url", "s3://course--x-s3/dogs.zip"),
    ("lr_max", "1e309"),
]


def cookiecutter(tmp_path: Path, *answers: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "-o",
            str(tmp_path),
            str(TEMPLATE_DIR),
            *answers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


# Answers each valid alone and refused together: (the key the error names, the answers).
INVALID_TOGETHER = [
    # BatchNorm cannot train on one image when the whole network trains.
    ("batch_size", ("finetune=full", "batch_size=1")),
    ("batch_size_choices", ("finetune=full", "batch_size_choices=1,40")),
]


def assert_refused_cleanly(tmp_path: Path, key: str, *answers: str) -> None:
    result = cookiecutter(tmp_path, *answers)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    # cookiecutter adds its own "ERROR: Stopping generation because ..." line after a hook's.
    errors = [line for line in output.splitlines() if line.startswith("ERROR: ") and "Stopping" not in line]
    assert errors and key in errors[0], output
    assert "Traceback" not in output, "one line per problem, not a traceback"
    assert len(output.splitlines()) <= 5, output
    assert list(tmp_path.iterdir()) == [], "a refused render must leave nothing behind"


@pytest.mark.parametrize(("key", "value"), INVALID, ids=[f"{k}={v[:20]!r}" for k, v in INVALID])
def test_refused_cleanly(tmp_path: Path, key: str, value: str) -> None:
    assert_refused_cleanly(tmp_path, key, f"{key}={value}")


@pytest.mark.parametrize(("key", "answers"), INVALID_TOGETHER, ids=[" ".join(a) for _, a in INVALID_TOGETHER])
def test_refused_together_cleanly(tmp_path: Path, key: str, answers: tuple[str, ...]) -> None:
    assert_refused_cleanly(tmp_path, key, *answers)
    # Each answer alone renders.
    for answer in answers:
        alone = cookiecutter(tmp_path / answer.partition("=")[0], answer)
        assert alone.returncode == 0, alone.stderr


def test_a_git_clone_of_the_template_validates_with_its_schema(tmp_path: Path) -> None:
    """`cookiecutter <git url>` renders from a clone in ~/.cookiecutters: the hook finds the schema there."""
    import shutil

    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, repo, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "site"))
    env = {f"GIT_{who}_{what}": "t" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "v1"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**__import__("os").environ, **env})
    home = tmp_path / "home"
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out), f"file://{repo}"]
    isolated = {**__import__("os").environ, "HOME": str(home)}
    refused = subprocess.run([*command, "num_classes=007"], capture_output=True, text=True, env=isolated)
    assert "ERROR: num_classes: '007'" in refused.stderr
    accepted = subprocess.run(command, capture_output=True, text=True, env=isolated)
    assert accepted.returncode == 0, accepted.stderr
    assert (out / "dog-breed-classifier" / "config.toml").is_file()


def test_refused_with_pytest_cookies(cookies) -> None:
    result = cookies.bake(extra_context={"max_jobs": "2", "max_parallel_jobs": "3"})
    assert result.exit_code != 0
    assert result.project_path is None or not Path(result.project_path).exists()
