"""Render one project per student of a roster; keep them up to date; check them all.

    python scripts/cohort.py roster.csv --course "Dog Breed Classifier" --prefix dogs25 --out students/
    python scripts/cohort.py roster.csv ... --update          # bring existing projects to the template
    python scripts/cohort.py roster.csv ... --check --fast    # run every project's `check`, one table
    SDK_V3_PYTHON=.venv-sdk3/bin/python python scripts/cohort.py ... --check   # with SDK v3 projects too

Each project is checked with the Python of its SDK generation (`[aws] sagemaker_sdk`): v2 projects with
this script's, v3 projects with --v3-python / $SDK_V3_PYTHON (scripts/setup-sdk3-env.sh builds one; the
two generations cannot share an environment); without it a v3 project's check fails saying so.

The roster is a CSV file with a header: `student_id`, `name`, `email` and, optionally, columns named
after any template answer (`aws_region`, `s3_bucket`, `backbone`, `training_instance_type`, ...) whose
non-empty cells override that answer for that student. Each student gets

- project_slug `<prefix>-<student id>`: the folder, the package, and the start of every SageMaker
  job, model and endpoint name. SageMaker cuts tuning job names to 32 characters, which leaves
  `TUNING_SLUG_CHARS` of the slug (see `sagemaker_api.job_name` in the project): two students whose
  slugs agree that far are refused, so no two students' names can collide;
- s3_prefix `<prefix>/<student id>` (one folder per student in a shared bucket);
- owner `<student id>` (the tag value staff find resources by; passed as the `owner` answer, which
  cookiecutter ignores in a template without that answer).

A bad row (no id, a duplicate id or slug, an id a spreadsheet would run as a formula, an answer the
template refuses) is reported with its row number (the header is row 1, as a spreadsheet numbers
them) and the template's own message; the other rows are rendered. Projects that exist are left
alone, or updated with cruft (`--update`). The exit status is 1 when any row failed, conflicted on
update, or failed its check.

The summary and class tables are CSV for a spreadsheet: a cell that starts with '=', '+', '-', '@', a
tab or a carriage return is written with a leading apostrophe (OWASP's advice on CSV injection), so
the TA sees the text instead of running it. The roster is bounded: MAX_ROSTER_BYTES, MAX_ROSTER_ROWS
and MAX_CELL_CHARS, each refused in one line naming the row and column.

Speed: each render runs the template's hooks. cookiecutter runs each hook in a fresh Python process,
which costs more than the render itself (importing Jinja and the schema twice per project); by default
the same hook code runs inside the render worker instead (`--isolated-hooks` restores the processes),
and each worker compiles each template file once rather than once per student.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import tomllib
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from slugify import slugify

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
# SageMaker job names are <slug>-<kind>-<timestamp>; tuning job names are cut to 32 characters, of
# which "-yyMMdd-HHmm" (12) and "-hpo" (4) leave 16 for the slug (sagemaker_api.job_name).
TUNING_SLUG_CHARS = 32 - 12 - len("-hpo")
DEFAULT_PREFIX_CHARS = 8
ID_COLUMN, NAME_COLUMN, EMAIL_COLUMN = "student_id", "name", "email"
# Header spellings accepted for the three required columns (after lower-casing, '_' for ' ' and '-').
COLUMN_ALIASES = {
    "id": ID_COLUMN,
    "student": ID_COLUMN,
    "studentid": ID_COLUMN,
    "student_number": ID_COLUMN,
    "full_name": NAME_COLUMN,
    "student_name": NAME_COLUMN,
    "e_mail": EMAIL_COLUMN,
    "mail": EMAIL_COLUMN,
}
# What a roster may hold: a class list is kilobytes; far more is a wrong file, or one built to exhaust.
MAX_ROSTER_BYTES = 4 << 20
MAX_ROSTER_ROWS = 5000
MAX_CELL_CHARS = 1000
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP,
# "CSV Injection"): written CSV escapes them, and a student id may not start with one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The cohort sets these per student; a roster column of the same name overrides it.
OWNER = "owner"
SUMMARY_FIELDS = ("row", "student", "name", "folder", "status", "reason")
# The class table's columns, with one column per check between the two.
CLASS_FIELDS = ("row", "student", "name", "folder", "status", "reason", "check result")
CLASS_TAIL = ("failed checks", "handin", "handin missing")
COMPLETE, INCOMPLETE, NOT_CHECKED, NO_PROJECT = "complete", "incomplete", "not checked", "no project"
# `handin --offline` reads files only: seconds. A detail's first clause, cut to this, goes in the class table.
HANDIN_TIMEOUT_S = 120
HANDIN_DETAIL_CHARS = 120
CREATED, EXISTS, UPDATED, UP_TO_DATE, CONFLICT, FAILED = (
    "created",
    "exists",
    "updated",
    "up-to-date",
    "conflict",
    "failed",
)
BAD_STATUSES = {CONFLICT, FAILED}
CRUFT_FILE = ".cruft.json"
ANSWERS_FILE = ".cookiecutter.json"
STAGING = ".cohort-staging"
# Used only when git has no identity configured: a commit needs one.
FALLBACK_IDENTITY = {"user.name": "Course staff", "user.email": "staff@course.invalid"}

console = Console(stderr=True, soft_wrap=True)


class RosterError(click.ClickException):
    """The roster as a whole cannot be used (no such file, no id column, unknown columns)."""


@dataclass
class Student:
    row: int
    student_id: str
    name: str
    email: str
    overrides: dict[str, str] = field(default_factory=dict)
    slug: str = ""
    answers: dict[str, Any] = field(default_factory=dict)


@dataclass
class RowResult:
    row: int
    student: str
    folder: str
    status: str
    reason: str = ""
    checks: list[dict[str, Any]] | None = None
    name: str = ""
    # The project's `handin --json --offline` records, once --check ran it.
    handin: list[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SUMMARY_FIELDS}


# --- the roster -------------------------------------------------------------------------------------


def template_questions(template: Path) -> dict[str, Any]:
    """The template's answers and defaults (cookiecutter.json less its private `_` keys)."""
    context = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    return {key: value for key, value in context.items() if not key.startswith("_")}


def normalise_header(name: str) -> str:
    key = "_".join(name.strip().lower().replace("-", " ").split())
    return COLUMN_ALIASES.get(key, key)


def bounded_records(path: Path, text: str) -> list[list[str]]:
    """The roster's rows, each cell at most MAX_CELL_CHARS, at most MAX_ROSTER_ROWS rows after the
    header; RosterError naming the row and column otherwise.

    The csv module stops at cells over its own field limit (131,072 characters) with a bare
    `_csv.Error`; it is raised to the file's length here, so every cell is read and measured.
    """
    previous = csv.field_size_limit(max(len(text), 1))
    try:
        records = []
        for row, record in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if row > MAX_ROSTER_ROWS + 1:
                raise RosterError(
                    f"{path}: more than {MAX_ROSTER_ROWS:,} rows after the header; split the roster"
                )
            for column, cell in enumerate(record):
                if len(cell) > MAX_CELL_CHARS:
                    name = records[0][column] if records and column < len(records[0]) else f"#{column + 1}"
                    raise RosterError(
                        f"{path}: row {row}, column {name[:40]!r}: a cell of {len(cell):,} characters; "
                        f"at most {MAX_CELL_CHARS:,}"
                    )
            records.append(record)
    except csv.Error as error:
        raise RosterError(f"{path}: not a CSV file this script can read ({error})") from None
    finally:
        csv.field_size_limit(previous)
    return records


def read_roster(path: Path, questions: Iterable[str]) -> tuple[list[Student], list[RowResult]]:
    """The students of a roster CSV, and a failed result for each row without a usable id."""
    allowed = set(questions) | {OWNER}
    try:
        with path.open("rb") as file:  # at most one byte past the bound (a pipe or /dev/zero has no size)
            raw = file.read(MAX_ROSTER_BYTES + 1)
        if len(raw) > MAX_ROSTER_BYTES:
            raise RosterError(f"{path}: over {MAX_ROSTER_BYTES:,} bytes; a roster is a class list: split it")
        # utf-8-sig: spreadsheets save a byte-order mark that would otherwise stick to the first header.
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise RosterError(f"{path}: cannot read it as UTF-8 text ({error})") from None
    records = bounded_records(path, text)
    if not records or not any(cell.strip() for cell in records[0]):
        raise RosterError(f"{path}: no header row; expected {ID_COLUMN},{NAME_COLUMN},{EMAIL_COLUMN},...")
    header = [normalise_header(cell) for cell in records[0]]
    if ID_COLUMN not in header:
        raise RosterError(f"{path}: no {ID_COLUMN} column (the header is {','.join(records[0])})")
    unknown = [
        name for name in header if name and name not in allowed | {ID_COLUMN, NAME_COLUMN, EMAIL_COLUMN}
    ]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise RosterError(
            f"{path}: column(s) {shown} are not template answers; a column other than "
            f"{ID_COLUMN}, {NAME_COLUMN} and {EMAIL_COLUMN} must be named after one of: "
            + ", ".join(sorted(allowed))
        )
    repeated = [name for name, count in Counter(header).items() if name and count > 1]
    if repeated:
        raise RosterError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
    students: list[Student] = []
    failures: list[RowResult] = []
    # Row numbers as a spreadsheet shows them: the header is row 1, blank lines count.
    for row, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: value.strip() for name, value in zip(header, record, strict=False) if name}
        if len(record) > len(header):
            failures.append(
                RowResult(
                    row,
                    cells.get(ID_COLUMN, ""),
                    "",
                    FAILED,
                    "more cells than the header",
                    name=cells.get(NAME_COLUMN, ""),
                )
            )
            continue
        student_id = cells.pop(ID_COLUMN, "")
        name, email = cells.pop(NAME_COLUMN, ""), cells.pop(EMAIL_COLUMN, "")
        if not student_id:
            failures.append(RowResult(row, "", "", FAILED, f"missing {ID_COLUMN}", name=name))
            continue
        overrides = {key: value for key, value in cells.items() if value}
        students.append(Student(row, student_id, name, email, overrides))
    return students, failures


def default_prefix(course: str) -> str:
    """The first word of the course's slug, at most DEFAULT_PREFIX_CHARS; starts with a letter."""
    word = (slugify(course).split("-") or [""])[0][:DEFAULT_PREFIX_CHARS]
    return word if word[:1].isalpha() else ("c" + word)[:DEFAULT_PREFIX_CHARS]


def plan(students: list[Student], course: str, prefix: str, questions: dict[str, Any]) -> list[RowResult]:
    """Give each student their answers (slug, S3 prefix, owner, overrides); the students that cannot
    have a project (no usable id, a duplicate) leave `students` and come back as failed results."""
    failures: list[RowResult] = []
    by_id: dict[str, int] = {}
    by_slug: dict[str, int] = {}
    by_job_prefix: dict[str, int] = {}
    kept: list[Student] = []
    for student in students:
        part = slugify(student.student_id)
        slug = student.overrides.get("project_slug") or f"{prefix}-{part}"
        job_prefix = slug[:TUNING_SLUG_CHARS].rstrip("-")
        reason = ""
        if not part:
            reason = f"{ID_COLUMN} {student.student_id!r} has no letters or digits to name a project with"
        elif student.student_id.startswith(FORMULA_STARTS):
            # Not slugified into a project: `=1+2` would become dogs-1-2, a name its owner never typed,
            # and the roster cell is most likely a spreadsheet formula exported by mistake (or a trap).
            reason = (
                f"{ID_COLUMN} {student.student_id!r} starts with {student.student_id[0]!r}, which a "
                "spreadsheet runs as a formula; a student id starts with a letter or digit"
            )
        elif student.student_id.casefold() in by_id:
            reason = (
                f"duplicate {ID_COLUMN} {student.student_id!r} (row {by_id[student.student_id.casefold()]})"
            )
        elif slug in by_slug:
            reason = f"duplicate project_slug {slug!r} (row {by_slug[slug]})"
        elif job_prefix in by_job_prefix:
            reason = (
                f"project_slug {slug!r} starts like row {by_job_prefix[job_prefix]}'s for the first "
                f"{TUNING_SLUG_CHARS} characters ({job_prefix!r}), all that SageMaker's tuning job names "
                "keep: use a shorter --prefix or a project_slug column"
            )
        if reason:
            failures.append(RowResult(student.row, student.student_id, "", FAILED, reason, name=student.name))
            continue
        by_id[student.student_id.casefold()] = by_slug[slug] = by_job_prefix[job_prefix] = student.row
        student.slug = slug
        student.answers = {
            "project_name": f"{course} ({student.name or student.student_id})",
            "project_slug": slug,
            "s3_prefix": f"{prefix}/{part}",
            "author_name": student.name or student.student_id,
            OWNER: student.student_id,
            **({"author_email": student.email} if student.email else {}),
            **student.overrides,
        }
        if "package_name" not in student.overrides and "package_name" in questions:
            student.answers["package_name"] = slug.replace("-", "_")
        kept.append(student)
    students[:] = kept
    return failures


# --- rendering fast: the same hooks and templates, less work per project ---------------------------

_HOOK_OUTPUT: list[str] = []


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _HOOK_OUTPUT.append(f"{code}\n")  # sys.exit("message") prints the message and exits 1
    return 1


def _run_hook_here(original: Callable[..., None]) -> Callable[..., None]:
    """cookiecutter's `run_script`, run in this process for Python hooks: the hook file cookiecutter
    rendered, executed as __main__ in the project folder, its exit status kept, its output collected."""
    from cookiecutter.exceptions import FailedHookException

    def run_script(script_path: str, cwd: Path | str = ".") -> None:
        if not str(script_path).endswith(".py"):
            return original(script_path, cwd)
        script = Path(script_path)
        code = compile(script.read_text(encoding="utf-8"), str(script), "exec")
        if script.parent == Path(tempfile.gettempdir()) and script.name.startswith("tmp"):
            script.unlink()  # cookiecutter's rendered copy, which it never removes
        namespace = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
        output = io.StringIO()
        here, argv = os.getcwd(), sys.argv
        try:
            os.chdir(cwd)
            sys.argv = [str(script)]
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                exec(code, namespace)
            status = 0
        except SystemExit as stop:
            status = _exit_status(stop.code)
        except Exception:
            output.write(traceback.format_exc())
            status = 1
        finally:
            os.chdir(here)
            sys.argv = argv
            _HOOK_OUTPUT.append(output.getvalue())
        if status != 0:
            raise FailedHookException(f"Hook script failed (exit status: {status})")

    return run_script


def _compile_once(original: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's compile, remembered per worker: every student renders the same template files, and
    compiled code takes the answers only when it renders (tests/test_cohort.py compares the output)."""
    cache: dict[tuple, Any] = {}

    def compile(
        self: Any,
        source: str,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        key = (
            source,
            name,
            filename,
            raw,
            defer_init,
            tuple(sorted(self.extensions)),
            self.keep_trailing_newline,
        )
        if key not in cache:
            cache[key] = original(self, source, name, filename, raw, defer_init)
        return cache[key]

    return compile


def install_fast_rendering() -> None:
    """In a render worker: hooks in-process, template files compiled once."""
    from cookiecutter import hooks
    from cookiecutter.environment import StrictEnvironment

    # Leans on cookiecutter 2.x's hooks.run_script; a cookiecutter without it keeps its own hook processes.
    if hasattr(hooks, "run_script") and not getattr(hooks.run_script, "cohort_in_process", False):
        hooks.run_script = _run_hook_here(hooks.run_script)
        hooks.run_script.cohort_in_process = True  # type: ignore[attr-defined]
    if "compile" not in StrictEnvironment.__dict__:
        StrictEnvironment.compile = _compile_once(StrictEnvironment.compile)  # type: ignore[method-assign]


@contextlib.contextmanager
def captured_fds() -> Iterator[io.StringIO]:
    """What this process and its children (hook processes) write to stdout and stderr."""
    text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text.write(sink.read().decode("utf-8", "replace"))


def worker_setup(fast: bool) -> None:
    # cookiecutter logs a refused hook with a traceback: the row's reason says it in one line.
    logging.getLogger("cookiecutter").addHandler(logging.NullHandler())
    logging.getLogger("cookiecutter").propagate = False
    if fast:
        install_fast_rendering()


def refusal(output: str, error: BaseException) -> str:
    """The template's own words: its hook's `ERROR: ...` lines, else cookiecutter's message."""
    lines = [line.strip() for line in output.splitlines()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return "; ".join(errors)
    message = " ".join(str(error).split()) or type(error).__name__
    choice = re.match(r"^(.*) provided for choice variable (\w+), but the choices are (.*?)\.?$", message)
    if choice:  # cookiecutter refuses an unknown choice itself, before any hook runs
        value, answer, choices = choice.groups()
        return f"{answer}: {value!r} is not one of {choices}"
    shown = [line for line in lines if line][-2:]
    return f"{message}: {' | '.join(shown)}" if shown and "Hook script failed" in message else message


# --- one project ------------------------------------------------------------------------------------


def git(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=check)


def git_identity() -> list[str]:
    """`-c user.name=... -c user.email=...` when git has no identity of its own, else nothing."""
    configured = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True)
    if configured.returncode == 0 and configured.stdout.strip():
        return []
    return [part for key, value in FALLBACK_IDENTITY.items() for part in ("-c", f"{key}={value}")]


def template_commit(template: Path) -> tuple[str | None, bool]:
    """The template's git HEAD (None outside git) and whether its work tree has uncommitted changes."""
    head = git(template, "rev-parse", "HEAD", check=False)
    if head.returncode != 0:
        return None, False
    dirty = git(template, "status", "--porcelain", "--untracked-files=no", check=False).stdout.strip()
    return head.stdout.strip(), bool(dirty)


def write_cruft_file(project: Path, template: Path, commit: str) -> None:
    """What `cruft create` records, so `cruft update` (and --update) can bring the project forward."""
    answers = json.loads((project / ANSWERS_FILE).read_text(encoding="utf-8"))["cookiecutter"]
    context = {**answers, "_template": str(template), "_commit": commit}
    state = {
        "template": str(template),
        "commit": commit,
        "checkout": None,
        "context": {"cookiecutter": context},
    }
    (project / CRUFT_FILE).write_text(
        json.dumps({**state, "directory": None}, indent=2) + "\n", encoding="utf-8"
    )


@dataclass(frozen=True)
class RenderJob:
    student: Student
    template: Path
    out: Path
    commit: str | None
    git: bool
    identity: tuple[str, ...]
    in_process_hooks: bool


def render_student(job: RenderJob) -> RowResult:
    """Render one student's project into a staging folder and move it in place when it is complete,
    so an interrupted run never leaves a half project that the next run would take for done."""
    from cookiecutter.main import cookiecutter

    student, final = job.student, job.out / job.student.slug
    staging = Path(tempfile.mkdtemp(prefix=f"{student.slug}-", dir=job.out / STAGING))
    result = RowResult(student.row, student.student_id, str(final), CREATED, name=student.name)
    try:
        output = io.StringIO()
        try:
            with contextlib.ExitStack() as stack:
                if job.in_process_hooks:
                    del _HOOK_OUTPUT[:]
                else:
                    output = stack.enter_context(captured_fds())
                project = Path(
                    cookiecutter(
                        str(job.template),
                        no_input=True,
                        extra_context=student.answers,
                        output_dir=str(staging),
                    )
                )
        except Exception as error:
            text = "".join(_HOOK_OUTPUT) if job.in_process_hooks else output.getvalue()
            result.status, result.reason, result.folder = FAILED, refusal(text, error), ""
            return result
        if job.commit:
            write_cruft_file(project, job.template, job.commit)
        if job.git:
            git(project, "init", "-q", "-b", "main")
            git(project, "add", "-A")
            git(
                project,
                *job.identity,
                "commit",
                "-q",
                "-m",
                f"Project rendered from the course template ({job.commit or 'no git commit'})",
            )
        project.rename(final)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class UpdateJob:
    row: int
    student: str
    name: str
    folder: Path
    git: bool
    identity: tuple[str, ...]


def conflicts(project: Path, since: float) -> list[str]:
    """Files an update could not merge: unmerged paths in git, else the *.rej files it left."""
    found: list[str] = []
    if git(project, "rev-parse", "--is-inside-work-tree", check=False).returncode == 0:
        found += git(project, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
    found += [
        str(path.relative_to(project)) for path in project.rglob("*.rej") if path.stat().st_mtime >= since - 1
    ]
    return sorted(set(found))


def update_student(job: UpdateJob) -> RowResult:
    """`cruft update` of one existing project; its conflicts are this project's result, nothing more."""
    import cruft

    result = RowResult(job.row, job.student, str(job.folder), UP_TO_DATE, name=job.name)
    state_file = job.folder / CRUFT_FILE
    if not state_file.is_file():
        result.status, result.reason = (
            FAILED,
            f"no {CRUFT_FILE}: not rendered from a git checkout of the template",
        )
        return result
    before = json.loads(state_file.read_text(encoding="utf-8")).get("commit")
    del _HOOK_OUTPUT[:]
    started = time.time()
    try:
        # cruft says why it declines on stdout, and its renders run the template's hooks.
        with captured_fds() as said:
            done = cruft.update(job.folder, skip_apply_ask=True, allow_untracked_files=True)
    except Exception as error:
        result.status, result.reason = FAILED, f"cruft update: {' '.join(str(error).split())}"
        return result
    if not done:
        message = " ".join(said.getvalue().split())
        result.status, result.reason = FAILED, message or "cruft update declined"
        return result
    unmerged = conflicts(job.folder, started)
    after = json.loads(state_file.read_text(encoding="utf-8")).get("commit")
    if unmerged:
        result.status = CONFLICT
        result.reason = (
            f"conflicts in {', '.join(unmerged)}: resolve them (<<<<<<< markers, *.rej files), then commit"
        )
    elif after != before:
        result.status, result.reason = UPDATED, f"to template commit {str(after)[:12]}"
        if job.git:
            git(job.folder, "add", "-A")
            git(job.folder, *job.identity, "commit", "-q", "-m", f"Update to the course template ({after})")
    return result


# --- checking every project -------------------------------------------------------------------------


def package_of(project: Path) -> str:
    """The project's package: from its answers record (readable even when config.toml is broken)."""
    try:
        answers = json.loads((project / ANSWERS_FILE).read_text(encoding="utf-8"))["cookiecutter"]
        return str(answers["package_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return project.name.replace("-", "_")


# Where the Python of an SDK generation's environment comes from: the two generations cannot share one (v3's
# packages replace v2's `sagemaker`), so a v3 project is checked with the Python of a v3 environment.
V3_PYTHON_ENV = "SDK_V3_PYTHON"


def sdk_generation_of(project: Path) -> str:
    """The project's `[aws] sagemaker_sdk` ("v2" or "v3"), as its own aws/sdk.py reads it; its answers record
    when config.toml cannot be read (the check then reports the config), "v2" when neither says."""
    try:
        with (project / "config.toml").open("rb") as file:
            return str(tomllib.load(file)["aws"]["sagemaker_sdk"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        pass
    try:
        answers = json.loads((project / ANSWERS_FILE).read_text(encoding="utf-8"))["cookiecutter"]
        return str(answers.get("sagemaker_sdk") or "v2")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "v2"


@dataclass(frozen=True)
class CheckJob:
    result: RowResult
    fast: bool
    timeout_s: float
    # The Python that runs a project of each SDK generation; None: no environment was given for it.
    pythons: dict[str, str | None] = field(default_factory=lambda: {"v2": sys.executable})


def project_records(
    project: Path, arguments: list[str], timeout: float, name: str, python: str = sys.executable
) -> list[dict[str, Any]]:
    """`python -m <package> <arguments>` in the project, with its sources on the path: the JSON records it
    prints, one per line; a single failed record named `name` when it prints none or runs out of time."""
    env = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env.pop("IMAGE_CLASSIFIER_PROJECT_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(project / "src"), str(project), env.get("PYTHONPATH")])
    )
    command = [python, "-m", package_of(project), *arguments]
    try:
        ran = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"name": name, "status": "fail", "seconds": timeout, "detail": "timed out"}]
    records = []
    for line in ran.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    if not records:
        tail = " | ".join((ran.stderr or ran.stdout).strip().splitlines()[-2:])
        records = [{"name": name, "status": "fail", "seconds": 0, "detail": f"did not run: {tail}"}]
    return records


def check_student(job: CheckJob) -> RowResult:
    """The project's own `check --json`, then its `handin --json --offline` (what the student handed in;
    the cohort asks no AWS account about it), each in the project with its sources on the path."""
    result, project = job.result, Path(job.result.folder)
    generation = sdk_generation_of(project)
    python = job.pythons.get(generation)
    if python is None:
        detail = (
            f"a SDK {generation} project: give --{generation}-python (or ${V3_PYTHON_ENV}) the Python of an "
            f"environment with SDK {generation} (scripts/setup-sdk3-env.sh builds one)"
        )
        result.checks = [{"name": "check", "status": "fail", "seconds": 0, "detail": detail}]
        result.handin = [{"name": "handin", "status": "fail", "seconds": 0, "detail": detail}]
        return result
    result.checks = project_records(
        project, ["check", "--json", *(["--fast"] if job.fast else [])], job.timeout_s, "check", python
    )
    result.handin = project_records(
        project, ["handin", "--json", "--offline"], min(job.timeout_s, HANDIN_TIMEOUT_S), "handin", python
    )
    return result


def check_outcome(result: RowResult) -> tuple[str, str]:
    """pass/fail of a project's check, and its failed checks with their details."""
    failed = [record for record in result.checks or [] if record["status"] == "fail"]
    return ("fail" if failed else "pass"), "; ".join(f"{r['name']}: {r['detail']}" for r in failed)


def handin_outcome(result: RowResult) -> tuple[str, str]:
    """complete/incomplete of a project's hand-in, and its failed items, each with its detail's first clause
    (what is wrong; the rest tells the student what to do)."""
    failed = [record for record in result.handin or [] if record.get("status") == "fail"]
    problems = "; ".join(
        f"{r['name']}: {str(r.get('detail', '')).split('; ')[0][:HANDIN_DETAIL_CHARS]}" for r in failed
    )
    return (INCOMPLETE if failed else COMPLETE), problems


def spreadsheet_cell(value: object) -> object:
    """`value` as a CSV cell a spreadsheet shows as text: a leading formula character gets an apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_class_table(path: Path, results: list[RowResult]) -> None:
    """The class in one table: every roster row (those without a project too, with the reason), the
    student's name, the project's state, its check (one column per check, and what failed) and its
    hand-in (complete or not, and what is missing)."""
    names: list[str] = []
    for result in results:
        names += [record["name"] for record in result.checks or [] if record["name"] not in names]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        header = [*CLASS_FIELDS, *names, *CLASS_TAIL]
        writer.writerow([spreadsheet_cell(name) for name in header])
        for result in sorted(results, key=lambda r: r.row):
            statuses = {record["name"]: record["status"] for record in result.checks or []}
            outcome, failed = check_outcome(result) if result.checks is not None else (NOT_CHECKED, "")
            handed_in, missing = handin_outcome(result) if result.handin is not None else (NOT_CHECKED, "")
            if not result.folder:
                outcome = handed_in = NO_PROJECT
            cells = [
                result.row,
                result.student,
                result.name,
                result.folder,
                result.status,
                result.reason,
                outcome,
                *(statuses.get(n, "") for n in names),
                failed,
                handed_in,
                missing,
            ]
            writer.writerow([spreadsheet_cell(cell) for cell in cells])


# --- running it all ---------------------------------------------------------------------------------


def quiet() -> bool:
    return not console.is_terminal or bool(os.environ.get("CI"))


def run_pool(
    function: Callable[[Any], RowResult], jobs: list[Any], workers: int, label: str, fast_hooks: bool
) -> list[RowResult]:
    """`function` over `jobs` in worker processes, with a progress bar on a terminal (none in CI)."""
    if not jobs:
        return []
    results: list[RowResult] = []
    progress = Progress(
        TextColumn(f"{label:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet(),
        transient=False,
    )
    with (
        progress,
        ProcessPoolExecutor(
            min(workers, len(jobs)), initializer=worker_setup, initargs=(fast_hooks,)
        ) as pool,
    ):
        task = progress.add_task(label, total=len(jobs))
        futures: list[Future] = [pool.submit(function, job) for job in jobs]
        for future in as_completed(futures):
            results.append(future.result())
            progress.advance(task)
    return results


def write_summary(path: Path, results: list[RowResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for result in sorted(results, key=lambda r: r.row):
            writer.writerow({key: spreadsheet_cell(value) for key, value in result.summary().items()})


def print_report(results: list[RowResult], checked: bool) -> None:
    counts = Counter(result.status for result in results)
    console.print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no students")
    if not checked:
        for result in sorted(results, key=lambda r: r.row):
            if result.status in BAD_STATUSES:
                console.print(
                    f"row {result.row} ({result.student or 'no id'}): {result.status}: {result.reason}",
                    markup=False,
                )
        return
    table = Table(title="the class: project, check and hand-in, per roster row")
    for column in ("row", "student", "name", "project", "check", "hand-in", "what failed"):
        table.add_column(column)
    styles = {"pass": "green", "fail": "red", COMPLETE: "green", INCOMPLETE: "yellow"}
    for result in sorted(results, key=lambda r: r.row):
        outcome, failed = check_outcome(result) if result.checks is not None else ("", "")
        handed_in, missing = handin_outcome(result) if result.handin is not None else ("", "")
        if result.status in BAD_STATUSES:
            failed = result.reason
        elif missing:
            names = ", ".join(r["name"] for r in result.handin or [] if r.get("status") == "fail")
            failed = "; ".join(filter(None, [failed, f"hand-in: {names}"]))
        table.add_row(
            str(result.row),
            escape(result.student or "no id"),
            escape(result.name),
            escape(result.status),
            f"[{styles[outcome]}]{outcome}[/]" if outcome else "",
            f"[{styles[handed_in]}]{handed_in}[/]" if handed_in else "",
            escape(failed),
        )
    console.print(table)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("roster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("students"),
    show_default=True,
    help="Folder that receives one project per student.",
)
@click.option(
    "--course", help="Course project name (shown in each README); default: the template's project_name."
)
@click.option(
    "--prefix",
    help=f"Start of every slug and S3 prefix; default: the course's first word (<= {DEFAULT_PREFIX_CHARS}).",
)
@click.option(
    "--template",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=TEMPLATE_DIR,
    show_default=True,
    help="The template (a git checkout, for --update).",
)
@click.option(
    "--git", "use_git", is_flag=True, help="Initialise a git repository per new project (and commit updates)."
)
@click.option("--update", is_flag=True, help="Bring existing projects to the current template with cruft.")
@click.option(
    "--check", "run_check", is_flag=True, help="Run every project's `check` and write the class table."
)
@click.option("--fast", is_flag=True, help="With --check: skip the training and serving checks.")
@click.option(
    "--check-timeout",
    type=click.FloatRange(min=1),
    default=1800,
    show_default=True,
    help="With --check: seconds one project's check may take.",
)
@click.option(
    "--v3-python",
    envvar=V3_PYTHON_ENV,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --check: the Python of an SDK v3 environment, for the projects rendered with SDK v3 "
    "(scripts/setup-sdk3-env.sh builds one; v2 projects run with this script's Python).",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Summary CSV (row, student, folder, status, reason); default: OUT/cohort-summary.csv.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default="CPUs",
    help="Worker processes.",
)
@click.option(
    "--isolated-hooks",
    is_flag=True,
    help="Run the template's hooks in their own processes, as cookiecutter does (slower).",
)
def main(
    roster: Path,
    out: Path,
    course: str | None,
    prefix: str | None,
    template: Path,
    use_git: bool,
    update: bool,
    run_check: bool,
    fast: bool,
    check_timeout: float,
    v3_python: Path | None,
    summary: Path | None,
    jobs: int,
    isolated_hooks: bool,
) -> None:
    """Render one project per student of ROSTER (CSV: student_id,name,email[,<answer>...])."""
    started = time.monotonic()
    template = template.resolve()
    questions = template_questions(template)
    course = course or str(questions.get("project_name", "Course project"))
    prefix = prefix or default_prefix(course)
    if slugify(prefix) != prefix or not prefix[:1].isalpha():
        raise click.BadParameter(
            f"{prefix!r}: lowercase letters, digits and '-', starting with a letter", param_hint="--prefix"
        )
    students, results = read_roster(roster, questions)
    results += plan(students, course, prefix, questions)
    if OWNER not in questions:
        console.print(
            f"note: this template has no `{OWNER}` answer: the owner is not written into config.toml"
        )
    commit, dirty = template_commit(template)
    if commit is None:
        console.print(f"note: {template} is not a git checkout: projects cannot be updated later (--update)")
    elif dirty:
        console.print(f"note: the template has uncommitted changes; projects record commit {commit[:12]}")

    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()  # the summary names every folder the same way, whether new or existing
    (out / STAGING).mkdir(exist_ok=True)
    identity = tuple(git_identity()) if use_git or update else ()
    existing = [s for s in students if (out / s.slug).exists()]
    new = [s for s in students if not (out / s.slug).exists()]
    render_jobs = [RenderJob(s, template, out, commit, use_git, identity, not isolated_hooks) for s in new]
    render_started = time.monotonic()
    results += run_pool(render_student, render_jobs, jobs, "render", not isolated_hooks)
    render_seconds = time.monotonic() - render_started
    if update:
        update_jobs = [
            UpdateJob(s.row, s.student_id, s.name, out / s.slug, use_git, identity) for s in existing
        ]
        results += run_pool(update_student, update_jobs, jobs, "update", not isolated_hooks)
    else:
        results += [
            RowResult(s.row, s.student_id, str(out / s.slug), EXISTS, "left as it is", name=s.name)
            for s in existing
        ]
    shutil.rmtree(out / STAGING, ignore_errors=True)

    if run_check:
        pythons = {"v2": sys.executable, "v3": str(v3_python) if v3_python else None}
        checkable = [r for r in results if r.folder and Path(r.folder).is_dir()]
        checked = run_pool(
            check_student,
            [CheckJob(r, fast, check_timeout, pythons) for r in checkable],
            jobs,
            "check",
            False,
        )
        by_row = {r.row: r for r in checked}
        results = [by_row.get(r.row, r) for r in results]
        write_class_table(out / "class-checks.csv", results)

    summary = summary or out / "cohort-summary.csv"
    write_summary(summary, results)
    print_report(results, run_check)
    created = sum(result.status == CREATED for result in results)
    if created:
        console.print(
            f"rendered {created} projects in {render_seconds:.1f} s "
            f"({created / render_seconds:.1f} per second, {min(jobs, created)} processes); "
            f"total {time.monotonic() - started:.1f} s"
        )
    console.print(f"summary: {summary}" + (f"   checks: {out / 'class-checks.csv'}" if run_check else ""))
    failed = any(r.status in BAD_STATUSES for r in results) or any(
        check_outcome(r)[0] == "fail" for r in results if r.checks is not None
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
