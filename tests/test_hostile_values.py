"""Free-text answers that break naive templates either round-trip exactly or are refused cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
from conftest import bake_ok, read_config

MARKER = "/tmp/cookiecutter-injection-marker"
ROUND_TRIP = {
    "double quotes": 'The "Best" Dogs',
    "apostrophe": "Dog's Breed Classifier",
    "trailing backslash": "Dogs \\",
    "backslash escapes": r"C:\new\table \u0041",
    "toml breakout": 'Dogs" # bucket = "evil',
    "python breakout": "'''\"\"\"); import os; os.system('touch " + MARKER + "') #",
    "unicode": "Hundeklassifikator für Rassen – 犬 🐶",
    "html": "<b>dogs</b> & cats",
    "long": "D" * 200,
}
REFUSED = {
    "newline": "Dogs\nCats",
    "tab": "Dogs\tCats",
    "too long": "D" * 201,
    "jinja expression": "{{ }}",
    "jinja statement": "{% if %}",
    "jinja raw block": "{% raw %}",
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_value_round_trips(cookies, name: str) -> None:
    value = ROUND_TRIP[name]
    # project_slug is derived from the name; give one when the name slugifies to nothing usable.
    project = bake_ok(
        cookies, project_name=value, description=value, author_name=value, project_slug="hostile"
    )
    config = read_config(project)
    assert config["project"]["name"] == value
    assert config["project"]["description"] == value
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == value
    assert pyproject["project"]["authors"][0]["name"] == value
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(f"# {value}\n")
    answers = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]
    assert answers["project_name"] == value
    assert not Path(MARKER).exists()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_value_refused(cookies, name: str) -> None:
    result = cookies.bake(extra_context={"project_name": REFUSED[name], "project_slug": "hostile"})
    assert result.exit_code != 0
    assert result.exception is not None
    assert result.project_path is None or not Path(result.project_path).exists()
    # One line naming the answer typed, whether the hook or the Jinja guard refused it.
    message = str(result.exception)
    if "Jinja" in message:
        assert message.startswith("ERROR: project_name: ") and "\n" not in message


@pytest.mark.parametrize("value", ["{{ 7 * 7 }}", "{{ cookiecutter.author_email }}", "a {# note #}"])
def test_jinja_in_an_answer_is_not_evaluated(cookies, value: str) -> None:
    """cookiecutter renders --no-input answers as templates; the guard refuses them instead."""
    result = cookies.bake(extra_context={"description": value})
    assert result.exit_code != 0
    assert str(result.exception).startswith("ERROR: description: ")


@pytest.mark.parametrize("answer", ["project_name", "description", "author_name"])
def test_only_spaces_is_refused_naming_the_answer(cookies, answer: str) -> None:
    result = cookies.bake(extra_context={answer: "   "})
    assert result.exit_code != 0
    assert result.project_path is None or not Path(result.project_path).exists()


def test_unicode_name_gives_an_ascii_slug(cookies) -> None:
    project = bake_ok(cookies, project_name="Hundeklassifikator für Rassen 🐶")
    config = read_config(project)
    assert config["project"]["slug"] == "hundeklassifikator-fur-rassen"
    assert config["project"]["package"] == "hundeklassifikator_fur_rassen"
    assert (project / "src" / "hundeklassifikator_fur_rassen").is_dir()
