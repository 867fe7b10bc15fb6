"""Each chosen render passes its own test suite, in this environment (dependencies installed once).

The default render and a non-default backbone render run everything, the slow tier included (training,
serving, the notebook executed offline); other renders run the fast tier, which still covers the
dry-run requests their options produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import bake_ok, run_in_project

RENDERS = {
    "default": ({}, []),
    "mobilenet-extended-spot": (
        {
            "backbone": "mobilenet_v3_large",
            "rule_set": "extended",
            "finetune": "full",
            "use_spot": "yes",
            "training_instance_type": "ml.g5.xlarge",
            "tuning_instance_type": "ml.g5.2xlarge",
            "endpoint_instance_type": "ml.c5.2xlarge",
            "num_classes": "4",
        },
        [],
    ),
    "convnext-none-no-notebook": (
        {
            "backbone": "convnext_tiny",
            "rule_set": "none",
            "include_notebook": "no",
            "training_instance_count": "2",
        },
        ["-m", "not slow"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RENDERS))
def test_render_passes_its_own_suite(cookies, name: str) -> None:
    answers, pytest_args = RENDERS[name]
    project: Path = bake_ok(cookies, **answers)
    result = run_in_project(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, tail
    assert " passed" in result.stdout
