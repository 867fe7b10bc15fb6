"""Each chosen render passes its own test suite, in this environment (dependencies installed once).

The default render runs everything, the slow tier included (training, quantizing a backbone of each
architecture, serving, the grader's full check, the notebook executed offline). A non-default backbone
render runs the fast tier plus the notebook executed offline (its slow tier repeats the default's on another
network, at minutes of CPU); the other renders run the fast tier, which still covers the dry-run requests
their options produce. Those two leave out the tests that read nothing their answers change
(SAME_IN_EVERY_RENDER): on the same source files they would run the same code on the same inputs as the
default render's run of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import bake_ok, run_in_project

# Test modules, and single tests (`module::name`), that read neither config.toml nor the notebook (what two
# renders' answers change) nor drive the command line (which reads config.toml): inference.py, the presets,
# the profiler, the rules, the endpoint's bounds, the training requirements, on networks, images and
# settings of their own. The conftest fixtures they use read config.toml only for where the sources are.
SAME_IN_EVERY_RENDER = (
    "tests/test_inference.py",
    "tests/test_inference_functions.py",
    "tests/test_presets.py",
    "tests/test_profiler.py",
    "tests/test_rules.py",
    "tests/test_debugger_hook.py",
    "tests/test_endpoint_bounds.py",
    "tests/test_serving_habits.py",
    "tests/test_training_requirements.py",
    # The schema's image tables against the installed SDK's own.
    "tests/test_config.py::test_the_schema_regions_and_images_are_what_the_sdk_serves",
    # The training loop's caches, on a network and settings of their own.
    "tests/test_training.py::test_feature_cache_trains_the_same_head_as_decoding_every_epoch",
    "tests/test_training.py::test_the_pixel_cache_trains_the_model_of_decoding_every_epoch",
    "tests/test_input_pipeline.py::test_a_killed_training_process_leaves_no_cache_behind",
)
# What a test reads the answers through (its fixtures, the config, the notebook, the command line).
READS_THE_ANSWERS = re.compile(
    r"project_config|ProjectConfig|config\.toml|read_config|\.settings\b|notebook|ipynb|sdk_module|"
    r"\bcli\b|CliRunner|pyproject|README"
)
LEFT_OUT = [f"--deselect={entry}" if "::" in entry else f"--ignore={entry}" for entry in SAME_IN_EVERY_RENDER]
# On two workers, like the default's: while two suites run at once that oversubscribes the cores a little,
# but when one runs alone it no longer leaves a core idle.
FAST = ["-m", "not slow", *LEFT_OUT, "-n", "2", "--dist", "loadscope"]
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


def test_what_other_renders_leave_out_reads_nothing_their_answers_change(cookies, default_project) -> None:
    """The left-out tests read no answer, and every source file they run is the same in every render."""
    for entry in SAME_IN_EVERY_RENDER:
        module, _, name = entry.partition("::")
        text = (default_project / module).read_text(encoding="utf-8")
        if name:  # the test and the module's fixtures it names
            nodes = ast.parse(text).body
            functions = {node.name: node for node in nodes if isinstance(node, ast.FunctionDef)}
            used = [name] + [argument.arg for argument in functions[name].args.args]
            text = "\n".join(ast.get_source_segment(text, functions[n]) for n in used if n in functions)
        assert not READS_THE_ANSWERS.findall(text), f"{entry} reads {set(READS_THE_ANSWERS.findall(text))}"
    shared = ("tests", "src", "training", "inference", "classifier")
    for name, (answers, _) in RENDERS.items():
        if not answers:
            continue
        other = bake_ok(cookies, **answers)
        for folder in shared:
            files = sorted(p.relative_to(default_project) for p in (default_project / folder).rglob("*.py"))
            assert files == sorted(p.relative_to(other) for p in (other / folder).rglob("*.py")), name
            for path in files:
                same = (other / path).read_bytes() == (default_project / path).read_bytes()
                assert same, f"{path} differs between the default render and {name}"


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
