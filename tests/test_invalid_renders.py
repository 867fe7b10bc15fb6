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
]


@pytest.mark.parametrize(("key", "value"), INVALID, ids=[f"{k}={v!r}" for k, v in INVALID])
def test_refused_cleanly(tmp_path: Path, key: str, value: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "-o",
            str(tmp_path),
            str(TEMPLATE_DIR),
            f"{key}={value}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert any(key in line for line in errors), result.stderr
    assert list(tmp_path.iterdir()) == [], "a refused render must leave nothing behind"


def test_refused_with_pytest_cookies(cookies) -> None:
    result = cookies.bake(extra_context={"max_jobs": "2", "max_parallel_jobs": "3"})
    assert result.exit_code != 0
    assert result.project_path is None or not Path(result.project_path).exists()
