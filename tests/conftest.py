"""Shared helpers for the template's tests: where the template is, how to bake it, what to expect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
COOKIECUTTER_JSON = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
# Answers that are asked (not private `_x` keys, not the prompt texts).
QUESTIONS = {key: value for key, value in COOKIECUTTER_JSON.items() if not key.startswith("_")}

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# Minutes each (a render's own suite); the rest of the template's tests take seconds.
LONGEST_FIRST = ("test_rendered_suite.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The renders' own suites first: the workers start on them, and the short tests fill in around
    them (scripts/test.sh lets an idle worker steal), instead of one worker finishing its share and
    waiting while the other runs two suites one after the other."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)


def read_config(project: Path) -> dict:
    return tomllib.loads((project / "config.toml").read_text(encoding="utf-8"))


def project_env(project: Path) -> dict[str, str]:
    """The environment a render's own tools run in: this interpreter's packages, the render's sources.

    Heavy dependencies (torch, sagemaker, the toolkits) are installed once in the template's
    environment; each render is put on PYTHONPATH instead of being pip-installed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(project / "src"), str(project)])
    env["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"
    env.pop("IMAGE_CLASSIFIER_PROJECT_DIR", None)
    return env


def run_in_project(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bake_ok(cookies, **answers) -> Path:
    """Render with these answers and return the project folder; fail the test on any error."""
    result = cookies.bake(extra_context=answers)
    assert result.exception is None, f"render failed for {answers}: {result.exception!r}"
    assert result.exit_code == 0
    return Path(result.project_path)


@pytest.fixture(scope="session")
def default_project(cookies_session) -> Path:
    """The default render (the reference configuration), shared by the tests that only read it."""
    return bake_ok(cookies_session)
