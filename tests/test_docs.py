"""The documentation builds, and the parameter tables match cookiecutter.json."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import QUESTIONS, TEMPLATE_DIR


def test_parameter_tables_are_generated_from_cookiecutter_json() -> None:
    result = subprocess.run(
        [sys.executable, str(TEMPLATE_DIR / "scripts" / "gen_parameters.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(QUESTIONS)


def test_readme_gives_exactly_two_setup_commands() -> None:
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands on a fresh machine", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (TEMPLATE_DIR / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in ci


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "parameters" / "index.html").is_file()
