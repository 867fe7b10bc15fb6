"""A render speaks of its own task: another name, class count and data source leave no dog words behind,
and the default render is still the dog-breed reference."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from conftest import bake_ok, read_config, run_in_project

DOG_WORDS = re.compile(r"dog|breed|affenpinscher", re.IGNORECASE)
PARTS = {
    "project_name": "Parts Sorter",
    "description": "Sort machine parts into ten bins.",
    "num_classes": "10",
    "backbone": "efficientnet_b0",
    "dataset_url": "",
}


def user_facing_text(project: Path) -> dict[str, str]:
    """What a user reads: the README, config.toml, the notebook's cells and every command's --help."""
    notebook = nbformat.read(project / "train_and_deploy.ipynb", as_version=4)
    texts = {
        "README.md": (project / "README.md").read_text(encoding="utf-8"),
        "config.toml": (project / "config.toml").read_text(encoding="utf-8"),
        "train_and_deploy.ipynb": "\n".join(cell.source for cell in notebook.cells),
    }
    package = read_config(project)["project"]["package"]
    for command in ("", "data prepare", "tune", "train", "deploy", "predict", "report", "serve", "teardown"):
        result = run_in_project(project, "-m", package, *command.split(), "--help")
        assert result.returncode == 0, result.stderr
        texts[f"{command or 'main'} --help"] = result.stdout
    return texts


def test_a_render_for_another_task_has_no_dog_words(cookies) -> None:
    project = bake_ok(cookies, **PARTS)
    leftovers = {
        name: sorted(set(match.group(0).lower() for match in DOG_WORDS.finditer(text)))
        for name, text in user_facing_text(project).items()
        if DOG_WORDS.search(text)
    }
    assert leftovers == {}
    config = read_config(project)
    assert config["data"]["url"] == ""  # bring your own folder
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert "data prepare path/to/your/images" in readme and "10 classes" in readme


def test_the_default_render_is_still_the_dog_reference(default_project: Path) -> None:
    readme = (default_project / "README.md").read_text(encoding="utf-8")
    assert "dogImages has 6680 training, 835 validation and 836 test images" in readme
    assert "predict dog.jpg" in readme and "top-5 breeds" in readme
    assert read_config(default_project)["data"]["url"].endswith("dogImages.zip")
