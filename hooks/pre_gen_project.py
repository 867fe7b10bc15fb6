"""Validate every answer before anything is rendered.

cookiecutter runs this after creating the project folder and removes that
folder when the hook exits non-zero, so a refused answer leaves nothing on disk.
The answers arrive as data: the whole context, JSON-encoded by Jinja's tojson
(which escapes quotes, so the raw string below cannot be broken out of).
Each problem is one line: which answer, the value given, what is allowed.

The config the answers would produce is checked by rendering the template's own
config.toml with them and validating it with the project's schema
(`src/<package>/config/schema.py`, the one the rendered package checks config.toml with), so
the hook and the package cannot disagree about what a valid config is. Messages
name the answer the user typed, found from the answer each line of config.toml
inserts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import keyword
import re
import sys
from pathlib import Path
from types import ModuleType

try:
    import tomllib
except ImportError:  # Python 3.10: cookiecutter's own interpreter may not have tomllib
    tomllib = None

# Spelt in pieces: cookiecutter renders this file with Jinja before running it.
OPEN, CLOSE = "{" * 2, "}" * 2
PROJECT = OPEN + "cookiecutter.project_slug" + CLOSE
CONFIG_PACKAGE = Path(PROJECT, "src", OPEN + "cookiecutter.package_name" + CLOSE, "config")
SCHEMA = CONFIG_PACKAGE / "schema.py"
# The package name config/'s modules are loaded under: a stand-in whose __init__ (the package's
# config.toml loader) is not run, so schema.py finds its siblings (aws_tables.py, validation.py).
CONFIG_MODULES = "_template_config"
CONFIG = Path(PROJECT, "config.toml")
PYPROJECT = Path(PROJECT, "pyproject.toml")

PYTHON_VERSIONS = ("3.10", "3.11", "3.12")
BOOLEANS = ("pretrained", "use_spot", "include_notebook", "include_github_actions")
# Answers that reach no config key, checked here only.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# A number as TOML reads it and as the README shows it: no sign, no leading zero, no '_'.
NUMBER_RE = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$")
JINJA_MARKERS = (OPEN, "{" + "%", "{" + "#")
# The project's own top-level modules and folders, and modules its dependencies bring under
# another name than their distribution's or without naming them (numpy comes with pandas and torch, and
# the scripts import it): a package or command of that name would shadow them.
# `test` is the standard library's own test package, left out of sys.stdlib_module_names.
PROJECT_MODULES = ("classifier", "training", "inference", "ray_serve", "tests", "benchmarks", "src", "test")
IMPORT_NAMES = (
    "PIL",
    "botocore",
    "s3transfer",
    "jinja2",
    "yaml",
    "sagemaker_core",
    "smdebug_rulesconfig",
    "numpy",
)


# A raw answer is a number: 32 characters hold any the schema allows (a 5,000-digit one would stop
# Python's TOML reader with a ValueError, past what the check of config.toml can report).
MAX_NUMBER_CHARS = 32


def shown(value: object) -> str:
    """An answer as a message quotes it: repr, cut to one short line (an answer may be megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...' ({len(str(value)):,} characters)"


def load_module(path: Path, name: str) -> ModuleType:
    """A module from a file of the template (the hook runs as a copy outside it)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def load_config_module(template: Path, name: str) -> ModuleType:
    """`config/<name>.py` of the template's project ("schema", "validation", "aws_tables")."""
    folder = str(template / CONFIG_PACKAGE)
    package = sys.modules.get(CONFIG_MODULES)
    if package is None or list(package.__path__) != [folder]:  # first use, or another template's
        for loaded in [key for key in sys.modules if key.startswith(CONFIG_MODULES + ".")]:
            del sys.modules[loaded]
        package = ModuleType(CONFIG_MODULES)
        package.__path__ = [folder]
        sys.modules[CONFIG_MODULES] = package
    return importlib.import_module(f"{CONFIG_MODULES}.{name}")


def find_template(answers: dict, rendered_in: str | None = None) -> Path:
    """The template folder: cookiecutter's `_repo_dir` (2.2+; a clone for git URLs), else the
    folder the hook was rendered in (cruft create/update set no `_repo_dir`; cookiecutter renders
    hooks inside the template folder), else this file's (unit tests import the hook in place)."""
    for candidate in (answers.get("_repo_dir"), rendered_in, Path(__file__).resolve().parents[1]):
        if candidate and (Path(candidate) / SCHEMA).is_file():
            return Path(candidate)
    raise SystemExit(f"ERROR: the template's {SCHEMA} was not found; is this a complete checkout?")


def answer_lines(config_source: str) -> tuple[dict[tuple[str, ...], str], dict[int, str], set[str]]:
    """From config.toml's template: the answer behind each key, behind each line, and the raw ones.

    A raw answer is pasted without a filter (`num_classes = ` and the answer): a TOML literal,
    so it must be written as one.
    """
    keys: dict[tuple[str, ...], str] = {}
    lines: dict[int, str] = {}
    raw: set[str] = set()
    table: tuple[str, ...] = ()
    for number, line in enumerate(config_source.splitlines(), start=1):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            table = tuple(header.group(1).split("."))
            continue
        found = re.match(r'^"?([\w.-]+)"?\s*=.*\{\{\s*cookiecutter\.(\w+)\s*(\|)?', line)
        if found:
            keys[table + (found.group(1),)] = lines[number] = found.group(2)
            if not found.group(3):
                raw.add(found.group(2))
    return keys, lines, raw


def reserved_names(template: Path) -> set[str]:
    """Names a project slug or package may not take: Python's, the dependencies', the project's own."""
    text = (template / PYPROJECT).read_text(encoding="utf-8")
    # Every quoted requirement ("torch>=2.3", "moto[s3]>=5", ...) in any dependency list.
    requirements = re.findall(r'"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]"]*\])?\s*(?:[<>=!~;@"])', text)
    names = {r.lower() for r in requirements if "{" not in r}
    names |= {n.replace("-", "_") for n in names} | {n.replace("_", "-") for n in names}
    names |= {n.lower() for n in (*IMPORT_NAMES, *PROJECT_MODULES)}
    names |= {n.lower() for n in sys.stdlib_module_names} | set(keyword.kwlist) | set(keyword.softkwlist)
    return names


# --- answers that reach no config key, or that must be checked before config.toml is rendered ---------


def check_text(answers: dict, problems: list[str]) -> None:
    for key, value in answers.items():
        if not key.startswith("_") and isinstance(value, str) and any(m in value for m in JINJA_MARKERS):
            problems.append(
                f"{key}: {shown(value)} holds Jinja syntax ({', '.join(JINJA_MARKERS)}); "
                "answers are plain text"
            )
    name = str(answers["author_name"])
    if not name.strip() or len(name) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problems.append(f"author_name: {shown(name)} must be one line of 1 to 200 characters")
    email = str(answers["author_email"])
    if email and not EMAIL_RE.match(email):
        problems.append(f"author_email: {shown(email)} is not an e-mail address (or leave it empty)")
    if answers["python_version"] not in PYTHON_VERSIONS:
        problems.append(
            f"python_version: {shown(answers['python_version'])} is not one of {', '.join(PYTHON_VERSIONS)}"
        )
    for key in BOOLEANS:
        if yes_no(answers[key]) is None:
            problems.append(f"{key}: {shown(answers[key])} is not yes or no")


def yes_no(value: object) -> bool | None:
    """True/False for yes/no answers (bools, or words such as yes, no, true, n); None for others."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return (
        True
        if text in {"1", "true", "yes", "y", "on"}
        else False
        if text in {"0", "false", "no", "n", "off"}
        else None
    )


def check_identifiers(answers: dict, template: Path, problems: list[str]) -> None:
    from slugify import slugify  # cookiecutter's own dependency, as its `slugify` filter uses

    name, slug, package = (
        str(answers["project_name"]),
        str(answers["project_slug"]),
        str(answers["package_name"]),
    )
    # Blame the answer the user typed: a slug derived from the name is the name's problem.
    slug_from_name = slug == slugify(name)
    if len(slug) > 64 and slug_from_name:
        problems.append(
            f"project_name: {name[:40] + '...' if len(name) > 40 else name!r} ({len(name)} characters) "
            "makes a "
            f"folder name of {len(slug)} characters; at most 64: shorten it, or answer project_slug"
        )
        return
    if not re.match(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", slug) or len(slug) > 64:
        who = "project_name" if slug_from_name else "project_slug"
        problems.append(
            f"{who}: {shown(answers[who])} gives project_slug {shown(slug)}, which must start with a "
            "letter and hold only lowercase letters, digits and single '-' (at most 64 characters)"
            if who == "project_name"
            else f"project_slug: {shown(slug)} must start with a letter and hold only lowercase letters, "
            "digits and single '-' (at most 64 characters)"
        )
        return
    reserved = reserved_names(template)
    if slug in reserved:
        problems.append(
            f"project_slug: {shown(slug)} is the name of a dependency, a standard-library module or a part "
            "of the project; the command and distribution would shadow it: pick another"
        )
        return
    if not re.match(r"^[a-z][a-z0-9_]*$", package) or len(package) > 64:
        problems.append(
            f"package_name: {shown(package)} must start with a lowercase letter and hold only lowercase "
            "letters, digits and '_' (at most 64 characters)"
        )
    elif (
        keyword.iskeyword(package)
        or keyword.issoftkeyword(package)
        or package in (*sys.stdlib_module_names, "test")
    ):
        problems.append(
            f"package_name: {shown(package)} is a Python keyword or standard-library module; pick another"
        )
    elif package in reserved:
        problems.append(
            f"package_name: {shown(package)} would shadow a module the project uses; pick another"
        )


def check_numbers(answers: dict, raw: set[str], problems: list[str]) -> None:
    """Answers pasted into config.toml as TOML literals: plain numbers, or comma-separated ones."""
    for key in sorted(raw, key=list(answers).index):
        text = str(answers[key])
        parts = [part.strip() for part in text.split(",")] if key == "batch_size_choices" else [text]
        too_long = next((part for part in parts if len(part) > MAX_NUMBER_CHARS), None)
        if too_long is not None:
            problems.append(
                f"{key}: {shown(text)} holds a number of {len(too_long):,} characters; at most 32"
            )
            continue
        bad = next((part for part in parts if not NUMBER_RE.match(part)), None)
        if bad is None:
            continue
        hint = ""
        try:
            number = float(bad.strip())
            if number >= 0 and number == number and number != float("inf"):
                plain = str(int(number)) if re.match(r"^\s*\+?[0-9]+\s*$", bad) else repr(number)
                hint = f"; write {plain}" if plain != bad else ""
        except ValueError:
            pass
        what = (
            "positive whole numbers separated by commas"
            if len(parts) > 1 or key == "batch_size_choices"
            else ("a plain number (no sign, leading zero, spaces or '_')")
        )
        problems.append(f"{key}: {shown(text)} must be {what}{hint}")


# --- the config the answers produce, checked with the project's schema ----------------------------------


def render_config(template: Path, answers: dict) -> str:
    """config.toml as cookiecutter will write it, from the template's file and filters."""
    import jinja2  # cookiecutter's own dependency

    extensions = load_module(template / "local_extensions.py", "local_extensions")
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, extensions=[extensions.TomlExtension]
    )
    source = (template / CONFIG).read_text(encoding="utf-8")
    return environment.from_string(source).render(cookiecutter=answers)


def check_config(answers: dict, template: Path, problems: list[str]) -> None:
    source = (template / CONFIG).read_text(encoding="utf-8")
    keys, lines, _ = answer_lines(source)
    if tomllib is None:
        problems.append(
            "the render hook needs Python 3.11+ (tomllib) to check config.toml; run cookiecutter on 3.11+"
        )
        return
    try:
        document = tomllib.loads(render_config(template, answers))
    except tomllib.TOMLDecodeError as error:
        line = re.search(r"line (\d+)", str(error))
        key = lines.get(int(line.group(1))) if line else None
        who = f"{key}: {shown(answers[key])}" if key else "config.toml"
        problems.append(f"{who} does not make valid TOML in config.toml ({error})")
        return
    schema = load_config_module(template, "schema")
    validation = load_config_module(template, "validation")
    # One line per answer (the first thing wrong with it); the names are check_identifiers' to judge.
    named = {problem.split(":")[0] for problem in problems} | {"project_slug", "package_name"}

    def name(path: tuple[str, ...]) -> str:
        return keys.get(path) or validation.key_name(path)

    for problem in schema.validate(document):
        answer = keys.get(problem.path)
        if answer is None:
            problems.append(f"config.toml {problem.text()} (the template's own value; please report it)")
        elif answer not in named:
            named.add(answer)
            problems.append(f"{answer}: {shown(answers[answer])} {problem.explain(name)}")
    check_prices(answers, document, named, problems)


def check_prices(answers: dict, document: dict, named: set[str], problems: list[str]) -> None:
    """Every instance type has a price in the rendered [prices], so `cost` works from the start."""
    prices = document.get("prices", {})
    for role in ("tuning", "training", "endpoint"):
        key = f"{role}_instance_type"
        if key not in named and answers[key] not in prices:
            problems.append(
                f"{key}: {shown(answers[key])} has no price in config.toml's [prices] table, which `cost` "
                "needs; "
                f"choose one of {', '.join(prices)}, or render with one and then set the type and its "
                "price in config.toml"
            )


def validate(answers: dict, template: Path | None = None) -> list[str]:
    """One line per problem; empty when every answer is usable."""
    template = template or find_template(answers)
    problems: list[str] = []
    _, _, raw = answer_lines((template / CONFIG).read_text(encoding="utf-8"))
    check_numbers(answers, raw, problems)
    check_text(answers, problems)
    # A bad literal or Jinja in an answer would only come back as broken TOML: check the config
    # the answers make once they can make one.
    unrenderable = bool(problems) and any(p.split(":")[0] in raw or "Jinja" in p for p in problems)
    check_identifiers(answers, template, problems)
    if not unrenderable:
        check_config(answers, template, problems)
    return problems


def main(context_json: str, rendered_in: str | None = None) -> int:
    answers = json.loads(context_json)
    problems = validate(answers, find_template(answers, rendered_in))
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print(
            f"Nothing was generated: fix the {len(problems)} answer(s) above and run again.", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    # In a list, so the JSON text starts with "[" rather than a quote next to the raw string's own.
    sys.exit(main(r"""{{ cookiecutter | tojson }}""", json.loads(r"""{{ [render_dir()] | tojson }}""")[0]))
