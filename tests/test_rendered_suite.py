"""Each chosen render passes its own test suite, in this environment (dependencies installed once).

The default render runs everything, the slow tier included (training, quantizing every backbone, serving,
the grader's full check, the notebook executed offline). A non-default backbone render runs the fast tier
plus the notebook executed offline (its slow tier repeats the default's on another network, at minutes of
CPU); the other renders run the fast tier, which still covers the dry-run requests their options produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import bake_ok, run_in_project

# On two workers, like the default's: while two suites run at once that oversubscribes the cores a little,
# but when one runs alone it no longer leaves a core idle.
FAST = ["-m", "not slow", "-n", "2", "--dist", "loadscope"]
NOTEBOOK = ["tests/test_notebook.py"]
# name -> (answers, one pytest run's arguments per entry)
RENDERS = {
    # Its own two workers: the longest single test of the template, balanced against the rest. A module's
    # tests stay on one worker, so a module fixture (a local training run, minutes) is built once.
    "default": ({}, [["-n", "2", "--dist", "loadscope"]]),
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
        [FAST, NOTEBOOK],
    ),
    "convnext-none-no-notebook": (
        {
            "backbone": "convnext_tiny",
            "rule_set": "none",
            "include_notebook": "no",
            "training_instance_count": "2",
        },
        [FAST],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RENDERS))
def test_render_passes_its_own_suite(cookies, name: str) -> None:
    answers, runs = RENDERS[name]
    project: Path = bake_ok(cookies, **answers)
    for pytest_args in runs:
        result = run_in_project(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        assert result.returncode == 0, tail
        assert " passed" in result.stdout
