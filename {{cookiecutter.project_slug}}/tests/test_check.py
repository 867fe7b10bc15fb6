"""`check`: what a grader runs on a project. It passes on this one, names the check that fails on a
broken copy, skips what depends on a failed check, and bounds every check in time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PACKAGE, project_module

checks = project_module("checks.project_check")
main = project_module("cli").main

# What a copy leaves out: records of earlier runs and caches, none of which `check` reads.
NOT_COPIED = shutil.ignore_patterns(
    "dry-run", ".state", "runs", "data", "__pycache__", ".venv", ".pytest_cache", ".ruff_cache"
)


def copy_of(project_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(project_root, tmp_path / "project", ignore=NOT_COPIED))


def run_check(project: Path, *args: str) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(main, ["--project", str(project), "check", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, records


def by_name(records: list[dict]) -> dict[str, dict]:
    return {record["name"]: record for record in records}


def test_this_project_passes_the_fast_check(project_root):
    code, records = run_check(project_root, "--fast")
    assert code == 0, records
    assert [record["name"] for record in records] == list(checks.NAMES)
    assert set(records[0]) == {"name", "status", "seconds", "detail"}
    statuses = {record["name"]: record["status"] for record in records}
    assert statuses.pop("train --local") == statuses.pop("serve") == "skip"
    assert set(statuses.values()) == {"pass"}
    assert "valid against botocore" in by_name(records)["deploy --dry-run"]["detail"]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("def model_fn(model_dir:\n", "SyntaxError: '(' was never closed"),
        ("\nimport module_that_is_not_installed\n", "import fails: ModuleNotFoundError"),
        ("\nfrom __future__ import annotations\n", "SyntaxError: from __future__ imports must occur"),
    ],
    ids=["syntax", "import", "compile"],
)
def test_a_broken_inference_script_fails_its_check(project_root, tmp_path, broken, expected):
    project = copy_of(project_root, tmp_path)
    script = project / "inference" / "inference.py"
    text = script.read_text(encoding="utf-8")
    script.write_text(broken + text if broken.startswith("def") else text + broken, encoding="utf-8")
    code, records = run_check(project, "--fast", "--only", "inference/inference.py")
    assert code == 1
    (record,) = records
    assert (record["name"], record["status"]) == ("inference/inference.py", "fail")
    assert expected in record["detail"]


def test_the_table_names_the_failed_check(project_root, tmp_path):
    project = copy_of(project_root, tmp_path)
    (project / "inference" / "inference.py").write_text("def broken(:\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["--project", str(project), "check", "--only", "inference/inference.py"], terminal_width=200
    )
    assert result.exit_code == 1
    assert "failed: inference/inference.py" in result.output


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("\nepochs = ", "\nepochs = -", "[hyperparameters] epochs"),
        # Images the SDK serves, but whose PyTorch lacks what the training code calls: refused here,
        # not after a billed instance has started.
        (
            "[images.training]\n",
            '[images.training]\nframework_version = "2.2.0"\n#',  # the rendered version commented out
            '[images.training] framework_version = "2.2.0": is older than 2.3.0',
        ),
        ("\nmax = ", "\nmax = inf #", "[tuning.ranges.lr] max = inf: must be a finite number"),
    ],
    ids=["negative epochs", "training image too old", "infinite range"],
)
def test_an_invalid_config_fails_config_and_skips_the_dry_runs(project_root, tmp_path, old, new, words):
    project = copy_of(project_root, tmp_path)
    config = project / "config.toml"
    text = config.read_text(encoding="utf-8")
    assert old in text
    config.write_text(text.replace(old, new, 1), encoding="utf-8")
    code, records = run_check(project, "--fast", "--only", "tune --dry-run")
    assert code == 1
    found = by_name(records)
    assert found["config"]["status"] == "fail"
    assert words in found["config"]["detail"], found["config"]
    assert found["tune --dry-run"]["status"] == "skip"
    assert "needs config" in found["tune --dry-run"]["detail"]


def test_a_missing_notebook_fails_unless_the_render_declined_it(project_root, tmp_path):
    project = copy_of(project_root, tmp_path)
    (project / checks.NOTEBOOK).unlink(missing_ok=True)
    answers = project / project_module("checks.handin").ANSWERS_FILE
    record = {"cookiecutter": {"include_notebook": "yes"}}
    answers.write_text(json.dumps(record), encoding="utf-8")
    assert run_check(project, "--only", checks.NOTEBOOK)[0] == 1
    record["cookiecutter"]["include_notebook"] = "no"
    answers.write_text(json.dumps(record), encoding="utf-8")
    assert run_check(project, "--only", checks.NOTEBOOK)[0] == 0


def test_a_notebook_importing_what_the_package_lacks_fails(project_root, tmp_path):
    package = PACKAGE
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    project = copy_of(project_root, tmp_path)
    for source, ok in [
        (f"%matplotlib inline\nfrom {package}.report import tables\nfrom {package}.aws import state\n", True),
        (f"from {package} import no_such_module\n", False),
        (f"from {package}.no_such_module import thing\n", False),
    ]:
        notebook["cells"] = [{**cell, "source": source}]
        (project / checks.NOTEBOOK).write_text(json.dumps(notebook), encoding="utf-8")
        code, records = run_check(project, "--only", checks.NOTEBOOK)
        assert (code == 0) is ok, records


def test_only_runs_what_a_check_needs_and_refuses_unknown_names(project_root):
    names = [check.name for check in checks.selected(["deploy --dry-run"])]
    assert names == ["config", "train --dry-run", "deploy --dry-run"]
    result = CliRunner().invoke(main, ["--project", str(project_root), "check", "--only", "nope"])
    assert result.exit_code == 2
    assert "no check named nope" in result.output


def test_an_in_process_check_past_its_limit_fails_as_timed_out(tmp_path):
    def spin(workspace, timeout):
        while True:
            pass

    started = time.monotonic()
    result = checks.run_one(checks.Check("spin", spin, 0.5), checks.Workspace(tmp_path, tmp_path))
    assert time.monotonic() - started < 5
    assert (result.status, result.detail) == ("fail", "timed out: spin took longer than 0.5 s")


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_child_past_its_limit_is_killed_with_its_own_children(tmp_path):
    marker = tmp_path / "grandchild.pid"
    grandchild = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"  # noqa: E501
    with pytest.raises(subprocess.TimeoutExpired):
        checks.run_bounded([sys.executable, "-c", grandchild], 3, cwd=tmp_path, env=dict(os.environ))
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the grandchild outlived the check"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed process stays a zombie until its parent (init, once orphaned) reaps it.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


@pytest.mark.slow
def test_the_full_check_trains_and_serves(project_root):
    code, records = run_check(project_root, "--only", "serve")
    assert code == 0, records
    found = by_name(records)
    assert found["train --local"]["status"] == found["serve"]["status"] == "pass"
    assert "answered" in found["serve"]["detail"]
