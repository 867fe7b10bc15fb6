"""How a key of config.toml is declared and checked: `setting(...)`, its `Spec`, and the one-line `Problem`.

The machinery under schema.py's tables: a table is a dataclass whose fields are declared with
`setting`; `build` turns a parsed TOML table into it, recording one `Problem` per key that does not
fit (its path, its value, what is allowed). Standard library only: the render hook loads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

# --- problems ----------------------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()  # the value of a Problem about a missing key
# Placeholders for the keys a message names (Problem.refs). Not written as doubled braces in
# f-strings: cookiecutter renders this file with Jinja, which would read those as its own.
REF0, REF1 = "{0}", "{1}"


def key_name(path: tuple[str, ...]) -> str:
    """How a key is written in messages: `[hyperparameters] lr`, `[tuning.ranges.lr] min`, `[model]`."""
    if len(path) == 1:
        return f"[{path[0]}]"
    parts = [p if re.match(r"^[A-Za-z0-9_-]+$", p) else f'"{p}"' for p in path]
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


# How much of a list a message shows: its first items, two levels deep (a value nested a thousand
# deep, or a list of a million items, is still one short line).
SHOWN_ITEMS, SHOWN_DEPTH = 8, 2


def show(value: Any, depth: int = 0) -> str:
    """A value as TOML writes it (strings quoted, true/false lowercase), cut to one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # json's escapes keep a newline or a quote in the value from breaking the one-line message.
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, list):
        if depth >= SHOWN_DEPTH and value:
            return "[...]"
        items = [show(item, depth + 1) for item in value[:SHOWN_ITEMS]]
        return "[" + ", ".join(items + (["..."] if len(value) > SHOWN_ITEMS else [])) + "]"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, int) and abs(value) >= 10**30:  # a 4,000-digit integer would take the whole line
        return f"<a whole number of about {round(abs(value).bit_length() * math.log10(2))} digits>"
    return str(value)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where, the value found, and what is allowed.

    `message` may name other keys as `{0}`, `{1}`, ... (paths in `refs`), so that the render hook
    can call them by the answers the user typed instead of by their config keys.
    """

    path: tuple[str, ...]
    value: Any
    message: str
    refs: tuple[tuple[str, ...], ...] = ()

    def explain(self, name: Callable[[tuple[str, ...]], str] = key_name) -> str:
        return self.message.format(*(name(ref) for ref in self.refs))

    def text(self) -> str:
        """`[hyperparameters] lr = "fast": must be a number greater than 0`."""
        found = "" if self.value is ABSENT else f" = {show(self.value)}"
        return f"{key_name(self.path)}{found}: {self.explain()}"


class SchemaError(ValueError):
    """The document does not fit the schema; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(problem.text() for problem in problems))


# --- declaring keys ------------------------------------------------------------------------------------

_REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What one key allows beyond its type. Built by `setting()`."""

    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than
    pattern: re.Pattern[str] | None = None
    describe: str = ""  # what `pattern` (or `check`) allows, in words
    max_length: int | None = None
    empty_ok: bool = False  # "" passes `pattern` (e.g. "leave empty to resolve it when run")
    check: Callable[[Any], str | None] | None = None  # more rules: a message, or None when fine


def setting(default: Any = _REQUIRED, *, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field with its rules: `num_classes: int = setting(minimum=2, maximum=100_000)`."""
    metadata = {"spec": Spec(**spec)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def single_line(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if any(ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return "holds a control character (newline, tab, ...); use one plain line"
    return None


def regex_with_one_group(value: str) -> str | None:
    try:
        groups = re.compile(value).groups
    except re.error as error:
        return f"is not a regular expression ({error})"
    if groups != 1:
        return "must have exactly one group (the number)"
    return None


def _range_of(spec: Spec, whole: bool) -> str:
    noun = "a whole number" if whole else "a number"
    if spec.minimum is not None and spec.maximum is not None:
        return f"{noun} from {spec.minimum:g} to {spec.maximum:g}"
    if spec.above is not None and spec.maximum is not None:
        return f"{noun} greater than {spec.above:g} and at most {spec.maximum:g}"
    if spec.above is not None:
        return f"{noun} greater than {spec.above:g}"
    if spec.minimum is not None:
        return f"{noun} of at least {spec.minimum:g}"
    return noun


def allowed(hint: Any, spec: Spec) -> str:
    """What a key allows, in words: 'a whole number from 2 to 100000', 'one of head, full', ..."""
    if spec.choices:
        return "one of " + ", ".join(show(c) if isinstance(c, bool) else str(c) for c in spec.choices)
    if dataclasses.is_dataclass(hint):
        return "a table"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a table"
    if hint is bool:
        return "true or false"
    if hint is int:
        return _range_of(spec, whole=True)
    if hint is float:
        return _range_of(spec, whole=False)
    if spec.describe:
        return spec.describe
    return "text"


# --- reading a document against the schema -----------------------------------------------------------------


def without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        arms = [arm for arm in typing.get_args(hint) if arm is not type(None)]
        return arms[0] if len(arms) == 1 else Union[tuple(arms)]  # noqa: UP007
    return hint


def value_problem(value: Any, hint: Any, spec: Spec) -> str | None:
    """What is wrong with a scalar (or list of scalars) for this hint and spec; None when fine."""
    hint = without_none(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(hint)
        if not isinstance(value, arms) or (isinstance(value, bool) and bool not in arms):
            return "must be text, a number or true/false" if str in arms else "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number (not inf or nan)"
    elif origin is tuple:
        if not isinstance(value, list):
            return f"must be {allowed(hint, spec)}"
        item = typing.get_args(hint)[0]
        for element in value:
            message = value_problem(element, item, Spec())
            if message:
                return f"holds {show(element)}, which {message}"
        value = tuple(value)
    elif hint is bool:
        if not isinstance(value, bool):
            return "must be true or false"
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {allowed(hint, spec)}"
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {allowed(hint, spec)}"
    elif hint is str and not isinstance(value, str):
        return f"must be {allowed(hint, spec)}" if spec.choices else "must be text (in quotes)"
    if spec.choices and value not in spec.choices:
        return f"must be {allowed(hint, spec)}"
    if hint in (int, float):
        low = spec.minimum if spec.minimum is not None else -math.inf
        high = spec.maximum if spec.maximum is not None else math.inf
        if not low <= value <= high or (spec.above is not None and value <= spec.above):
            return f"must be {allowed(hint, spec)}"
    if isinstance(value, str):
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"is {len(value)} characters long; at most {spec.max_length} are allowed"
        if spec.pattern is not None and not (spec.empty_ok and value == "") and not spec.pattern.match(value):
            return f"must be {spec.describe}"
    if spec.check is not None:
        return spec.check(value)
    return None


def convert(value: Any, hint: Any, spec: Spec, path: tuple[str, ...], problems: list[Problem]) -> Any:
    """`value` as `hint` (a table becomes its dataclass); records problems and returns ABSENT on any."""
    hint = without_none(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path, problems)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            problems.append(Problem(path, ABSENT, "must be a table"))
            return ABSENT
        item = typing.get_args(hint)[1]
        converted = {key: convert(v, item, spec, path + (key,), problems) for key, v in value.items()}
        return ABSENT if ABSENT in converted.values() else converted
    message = value_problem(value, hint, spec)
    if message:
        problems.append(Problem(path, value, message))
        return ABSENT
    if hint is float:
        return float(value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    return value


def build(cls: type, value: Any, path: tuple[str, ...], problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(path, value, "must be a table"))
        return ABSENT
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in known:
            problems.append(Problem(path + (key,), ABSENT, "is not a known key; known: " + ", ".join(known)))
    complete = not any(key not in known for key in value)
    arguments = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("spec", Spec())
        if f.name in value:
            arguments[f.name] = convert(value[f.name], hints[f.name], spec, path + (f.name,), problems)
            complete = complete and arguments[f.name] is not ABSENT
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            expected = allowed(hints[f.name], spec)
            problems.append(Problem(path + (f.name,), ABSENT, f"is missing; expected {expected}"))
            complete = False
    # A table whose every key has a usable value is built, and its cross-key rules run, even
    # when a table inside it broke such a rule: one pass reports as much as it can.
    if not complete:
        return ABSENT
    instance = cls(**arguments)
    check = getattr(instance, "problems", None)
    if check is not None:
        problems.extend(check(path))
    return instance
