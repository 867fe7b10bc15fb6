"""Prune the optional parts the answers left out, then print the next steps.

Like the pre-generation hook, it reads the answers as data (tojson), never
as Jinja pasted into code. It runs inside the new project folder.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def remove_notebook(project: Path) -> None:
    (project / "train_and_deploy.ipynb").unlink(missing_ok=True)


def remove_github_actions(project: Path) -> None:
    shutil.rmtree(project / ".github", ignore_errors=True)


def next_steps(answers: dict) -> str:
    slug = answers["project_slug"]
    return "\n".join(
        [
            f"Created {slug}/. Next:",
            f"  cd {slug}",
            "  python -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'",
            f"  {slug} --help               # every step, from data to teardown",
            f"  {slug} cost                 # what tuning, training and an endpoint will cost",
            f"  {slug} train --dry-run      # every AWS request, offline, before spending anything",
            "Settings live in config.toml; README.md explains each step.",
        ]
    )


def chosen(value: object) -> bool:
    """A yes/no answer as a bool: a bool, or the word typed (which the pre-gen hook checked)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "y", "on"}


def main(answers: dict, project: Path) -> int:
    if not chosen(answers["include_notebook"]):
        remove_notebook(project)
    if not chosen(answers["include_github_actions"]):
        remove_github_actions(project)
    print(next_steps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(r"""{{ cookiecutter | tojson }}"""), Path.cwd()))
