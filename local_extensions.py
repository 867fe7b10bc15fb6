"""Jinja filters the template uses to write answers into TOML safely.

cookiecutter loads this module through ``_extensions`` in cookiecutter.json.
"""

import json

from jinja2.ext import Extension


def toml_string(value: object) -> str:
    """Quote a value as a TOML basic string.

    JSON string escapes are a subset of TOML's, except that ``ensure_ascii``
    would write characters outside the BMP as surrogate pairs, which TOML
    refuses; so keep them as UTF-8.
    """
    return json.dumps(str(value), ensure_ascii=False)


def toml_bool(value: object) -> str:
    """Write a cookiecutter yes/no answer as a TOML boolean."""
    if isinstance(value, str):
        value = value.strip().lower() in {"1", "true", "yes", "y", "on"}
    return "true" if value else "false"


class TomlExtension(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.filters["toml_string"] = toml_string
        environment.filters["toml_bool"] = toml_bool
