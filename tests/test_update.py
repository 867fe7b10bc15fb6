"""A render can take in later template changes: cruft update keeps local edits; replay re-creates it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE_DIR, read_config

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(cwd: Path, *args: str) -> str:
    import os

    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return result.stdout


def template_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the template (cruft follows templates by commit)."""
    repo = tmp_path / "template"
    shutil.copytree(
        TEMPLATE_DIR,
        repo,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "site", "__pycache__", ".pytest_cache", ".ruff_cache"
        ),
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "template v1")
    return repo


@pytest.mark.slow
def test_cruft_update_brings_template_changes_and_keeps_local_edits(tmp_path: Path) -> None:
    cruft = pytest.importorskip("cruft")
    repo = template_repo(tmp_path)
    out = tmp_path / "projects"
    project = Path(
        cruft.create(str(repo), output_dir=out, no_input=True, extra_context={"backbone": "resnet50"})
    )
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "generated")

    # The student edits their project...
    config_path = project / "config.toml"
    config_path.write_text(config_path.read_text().replace("epochs = 5", "epochs = 12"))
    git(project, "commit", "-q", "-am", "more epochs")

    # ...and the template changes meanwhile.
    readme = repo / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\n## Changelog\n\nTemplate v2: a new section.\n")
    git(repo, "commit", "-q", "-am", "template v2")

    assert cruft.check(project) is False
    cruft.update(project, skip_apply_ask=True, allow_untracked_files=True)

    assert "Template v2: a new section." in (project / "README.md").read_text()
    config = read_config(project)
    assert config["hyperparameters"]["epochs"] == 12, "the local edit must survive"
    assert config["model"]["backbone"] == "resnet50", "the original answers must be kept"
    assert cruft.check(project) is True


def test_replay_file_recreates_the_same_project(cookies, tmp_path: Path) -> None:
    result = cookies.bake(
        extra_context={"backbone": "convnext_tiny", "rule_set": "minimal", "num_classes": "7"}
    )
    assert result.exception is None
    project = Path(result.project_path)
    replay = project / ".cookiecutter.json"
    again = tmp_path / "again"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--replay-file",
            str(replay),
            "-o",
            str(again),
            str(TEMPLATE_DIR),
        ],
        check=True,
        capture_output=True,
    )
    recreated = again / project.name
    assert (recreated / "config.toml").read_text() == (project / "config.toml").read_text()
    answers = json.loads(replay.read_text())["cookiecutter"]
    assert answers["backbone"] == "convnext_tiny"
