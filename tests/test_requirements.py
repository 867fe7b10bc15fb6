"""requirements-dev.txt installs what a rendered project needs, so renders are tested in one environment."""

from __future__ import annotations

import re

import tomllib
from conftest import TEMPLATE_DIR


def names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower() for line in requirements if line.strip()
    }


def test_dev_requirements_cover_the_rendered_project(default_project) -> None:
    pyproject = tomllib.loads((default_project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = list(pyproject["dependencies"])
    for extra in pyproject["optional-dependencies"].values():
        needed += [dep for dep in extra if not dep.startswith(pyproject["name"])]
    lines = [
        line
        for line in (TEMPLATE_DIR / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    missing = names(needed) - names(lines) - {"tomli"}  # tomli: Python < 3.11 only
    assert missing == set()


def test_heavy_pins_match_the_reference_environment() -> None:
    text = (TEMPLATE_DIR / "requirements-dev.txt").read_text(encoding="utf-8")
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
    assert "sagemaker>=2.257,<3" in text
    # numpy 2, as a render's users have it; smdebug (numpy<2, protobuf<=3.20.3) is no dependency any more.
    lines = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert "numpy>=2" in lines and not names(line for line in lines if line.startswith(("numpy<", "smdebug")))
