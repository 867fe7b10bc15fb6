"""Jinja filters the template uses to write answers into TOML safely, and the guards on answers
that cookiecutter evaluates before any hook can see them.

cookiecutter loads this module through ``_extensions`` in cookiecutter.json.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from cookiecutter.exceptions import FailedHookException
from jinja2.ext import Extension
from slugify import slugify

# Jinja's three delimiters: an answer holding one is Jinja source, not text.
JINJA_MARKERS = ("{{", "{%", "{#")


class AnswerRefused(FailedHookException):
    """An answer refused before the pre-generation hook runs.

    A FailedHookException, because that is what the cookiecutter command prints as one line
    (and exits 1) instead of a traceback.
    """


def toml_string(value: object) -> str:
    """Quote a value as a TOML basic string.

    JSON string escapes are a subset of TOML's, except that ``ensure_ascii``
    would write characters outside the BMP as surrogate pairs, which TOML
    refuses; so keep them as UTF-8.
    """
    return json.dumps(str(value), ensure_ascii=False)


YES = ("1", "true", "yes", "y", "on")
NO = ("0", "false", "no", "n", "off")


def yes_no(value: object) -> bool | None:
    """A yes/no answer (True, "yes", "Y", "false", ...) as a bool; None when it is neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in YES else False if text in NO else None


def rule_list(rule_set: object) -> str:
    """The `rule_set` answer as config.toml's [debugger] rules: a TOML array, one rule a line."""
    rules = _config_module("schema").RULE_SETS.get(str(rule_set), ())
    if not rules:
        return "[]"
    return "[\n" + "".join(f"    {json.dumps(name)},\n" for name in rules) + "]"


def newest_pytorch(generation: object, scope: str, region: object = "") -> str:
    """The default [images.<scope>] framework_version: the newest PyTorch image the render's SDK
    generation (the `sagemaker_sdk` answer; "v2" before it exists) knows in its region."""
    return _config_module("aws_tables").newest_image(str(generation or "v2"), scope, str(region))[0]


def pytorch_python(version: object, scope: str, generation: object = "v2") -> str:
    """The default [images.<scope>] py_version: the Python of the chosen PyTorch image. A version the
    SDK does not know gets the newest image's, and the pre-generation hook refuses the version."""
    tables = _config_module("aws_tables")
    generation = str(generation or "v2")
    known = tables.PYTORCH_IMAGES.get(generation, tables.PYTORCH_IMAGES["v2"])[scope]
    full = tables.pytorch_version(scope, str(version), generation) or max(known, key=tables.version_tuple)
    return known[full][0]


def _config_module(name: str) -> Any:
    """The project's config/<name>.py (one definition of the rule sets and image tables), loaded by
    path as a submodule of a stand-in package (config/__init__.py, the package's loader, is not run)."""
    import importlib
    import types
    from pathlib import Path

    package_name = "_template_config_extensions"
    if package_name not in sys.modules:
        project = Path(__file__).resolve().parent / "{{cookiecutter.project_slug}}"
        package = types.ModuleType(package_name)
        package.__path__ = [str(project / "src" / "{{cookiecutter.package_name}}" / "config")]
        sys.modules[package_name] = package
    return importlib.import_module(f"{package_name}.{name}")


def toml_bool(value: object) -> str:
    """Write a yes/no answer as a TOML boolean (the hook has refused every other word)."""
    return "true" if yes_no(value) else "false"


def project_slug(name: object) -> str:
    """The default project_slug: the name slugified (as cookiecutter's `slugify` filter does).

    cookiecutter creates the project folder from this before the pre-generation hook runs, so a
    name that gives no folder name would fail as "directory already exists"; refuse it here,
    naming the answer the user typed.
    """
    slug = slugify(str(name))
    if not str(name).strip():
        raise AnswerRefused("ERROR: project_name: must not be empty (it names the project and its folder)")
    if not slug:
        raise AnswerRefused(
            f"ERROR: project_name: {name!r} holds no letter or digit to make a folder name from; "
            "add some, or answer project_slug too"
        )
    return slug


def _answer_being_rendered() -> str | None:
    """The cookiecutter.json key whose value cookiecutter is rendering now; None outside prompting.

    cookiecutter renders every answer given with --no-input or extra_context as a Jinja template
    (`cookiecutter.prompt.render_variable`, called from `prompt_for_config`) before any hook
    runs, so only a Jinja extension sees such an answer first. Typed answers are not rendered.
    """
    frame = sys._getframe(1)
    rendering = False
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if frame.f_code.co_name == "render_variable" and module == "cookiecutter.prompt":
            rendering = True
        elif rendering and frame.f_code.co_name == "prompt_for_config":
            return str(frame.f_locals.get("key", "an answer"))
        frame = frame.f_back
    return "an answer" if rendering else None


class TomlExtension(Extension):
    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        environment.filters["toml_string"] = toml_string
        environment.filters["toml_bool"] = toml_bool
        environment.filters["rule_list"] = rule_list
        environment.filters["newest_pytorch"] = newest_pytorch
        environment.filters["pytorch_python"] = pytorch_python
        environment.filters["project_slug"] = project_slug
        # The folder a template is rendered in. cookiecutter renders the hooks inside the template
        # folder (also under cruft, which gives the hooks no `_repo_dir`), so the pre-generation
        # hook learns from this where the project's schema is.
        environment.globals["render_dir"] = os.getcwd


class AnswersAreData(Extension):
    """Refuse an answer that holds Jinja syntax, in one line, instead of rendering it.

    The template's own defaults (the derived project_slug, package_name, s3_prefix) are Jinja
    and are rendered as usual; any other answer with `{{`, `{%` or `{#` is refused.
    """

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if name is None and any(marker in source for marker in JINJA_MARKERS) and source not in _DEFAULTS:
            key = _answer_being_rendered()
            if key is not None:
                raise AnswerRefused(
                    f"ERROR: {key}: {source!r} holds Jinja syntax ({', '.join(JINJA_MARKERS)}); "
                    "answers are plain text"
                )
        return source


class _HookFailureWithoutTraceback(logging.Filter):
    """Drop the traceback cookiecutter logs when a hook exits non-zero.

    The pre-generation hook has already printed one line per refused answer; cookiecutter then
    logs "Stopping generation because pre_gen_project hook script didn't exit successfully" with
    the traceback of its own subprocess call (about 15 lines that say nothing about the answers).
    The message itself stays.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], FailedHookException):
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("cookiecutter.hooks").addFilter(_HookFailureWithoutTraceback())


def _template_defaults() -> frozenset[str]:
    """Every Jinja-valued default of cookiecutter.json (the answers derived from others)."""
    from pathlib import Path

    context = json.loads((Path(__file__).with_name("cookiecutter.json")).read_text(encoding="utf-8"))
    return frozenset(
        value
        for key, value in context.items()
        if not key.startswith("_") and isinstance(value, str) and any(m in value for m in JINJA_MARKERS)
    )


_DEFAULTS = _template_defaults()
