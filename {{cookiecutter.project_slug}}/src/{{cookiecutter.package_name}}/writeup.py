"""The project write-up a reviewer reads, filled in from what the project recorded and its report.

`write_up(config, state, report)` writes `WRITEUP.md` in the project: the best tuned hyperparameters and
the search, the final job and its test accuracy, each rule's verdict with its step, the profiler's main
finding, the pictures to attach (paths), the int8 model's figures and what the endpoint serves (int8 or
float, and why), the endpoint and how to query it, and where in the AWS console to
take each screenshot (those cannot be made offline). A WRITEUP.md the student has edited is never
overwritten: the new one goes to WRITEUP.generated.md and the caller is told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ProjectConfig
from .handin import (  # the words `handin` looks for, defined where importing them is cheap
    CONSOLE_SCREENSHOTS,
    MARKER,
    NO_ENDPOINT,
    NO_REGION,
    NO_TEST_ACCURACY,
    NO_TUNING_JOB,
    NO_TUNING_RESULT,
    SCREENSHOTS_FOLDER,
    WRITEUP_FILENAME,
)
from .launcher import BEST_HYPERPARAMETERS
from .report import Report, int8_facts, sagemaker_rows, verdict_rows
from .state import ENDPOINT, TRAINING_JOB, TUNING_JOB, ProjectState
from .tables import ranges_rows

GENERATED_FILENAME = "WRITEUP.generated.md"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = (str(row.get(column, "")).replace("|", "\\|").replace("\n", " ") for column in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _tuning(config: ProjectConfig, state: ProjectState) -> list[str]:
    tuning = config.section("tuning")
    best = state.value(BEST_HYPERPARAMETERS) or {}
    job = best.get("tuning_job") or (state.latest(TUNING_JOB) or {}).get("name")
    lines = [
        "## Hyperparameter tuning",
        "",
        (f"Tuning job: `{job}`" if job else NO_TUNING_JOB) + f", {tuning['max_jobs']} jobs, "
        f"{tuning['max_parallel_jobs']} at a time, "
        f"{tuning['objective_type'].lower()} `{tuning['objective_metric_name']}`. The search:",
        "",
        *_table(ranges_rows(config)),
        "",
    ]
    if best.get("hyperparameters"):
        values = ", ".join(f"`{name}` = {value}" for name, value in best["hyperparameters"].items())
        lines += [f"Best training job `{best.get('training_job')}`: {values}.", ""]
    else:
        lines += [
            f"{NO_TUNING_RESULT} (run `tune`; a dry run captures the request, runs nothing).",
            "",
        ]
    return lines


def _training(report: Report, state: ProjectState) -> list[str]:
    job = (state.latest(TRAINING_JOB) or {}).get("name")
    accuracy = None if report.test_accuracy is None else f"test accuracy {report.test_accuracy:.1%}"
    lines = [
        "## Training, debugging and profiling",
        "",
        f"Final training job: `{job or report.run}`; {accuracy or NO_TEST_ACCURACY}"
        + (f" on {report.test_images} images." if report.test_images else "."),
        "",
        "Rules judged in the job (`rule_verdicts.json`):",
        "",
        *_table(verdict_rows(report)),
        "",
    ]
    if report.sagemaker_verdicts:
        lines += ["SageMaker's built-in rule jobs:", "", *_table(sagemaker_rows(report)), ""]
    issues = [verdict for verdict in report.verdicts if verdict.verdict == "IssuesFound"]
    lines += ["Insights:", ""]
    lines += [f"- **{v.rule}** found an issue at step {v.step}: {v.reason}" for v in issues] or [
        "- No rule found an issue; each `NotEnoughData` above says what it would need to judge."
    ]
    if report.profiler_finding:
        lines.append(f"- Profiler: {report.profiler_finding}")
    if report.best_classes and report.worst_classes:
        best = ", ".join(c.name for c in report.best_classes)
        worst = ", ".join(c.name for c in report.worst_classes)
        lines.append(f"- Best recognised classes: {best}; worst: {worst}.")
    lines.append("")
    return lines


def _pictures(report: Report, root: Path) -> list[str]:
    lines = ["## Pictures to attach", ""]
    for name, path in sorted(report.pictures.items()):
        lines.append(f"- {name}: `{_relative(path, root)}`")
    if report.profiler_report:
        lines.append(
            f"- the profiler report: `{_relative(report.profiler_report, root)}` (open it in a browser)"
        )
    if report.index_html:
        lines.append(f"- everything on one page: `{_relative(report.index_html, root)}`")
    return [*lines, ""]


def _int8(report: Report) -> list[str]:
    if report.int8 is None:
        return []
    lines = ["## int8 endpoint", ""]
    lines += [f"- **{label}**: {text}" for label, text in int8_facts(report.int8)]
    return [*lines, ""]


def _endpoint(config: ProjectConfig, state: ProjectState) -> list[str]:
    endpoint = (state.latest(ENDPOINT) or {}).get("name") or NO_ENDPOINT
    region = config.aws.get("region") or NO_REGION
    slug = config.section("project")["slug"]
    return [
        "## Querying the endpoint",
        "",
        f"Endpoint `{endpoint}` takes the raw bytes of a JPEG (`image/jpeg`) and answers the top classes "
        "as JSON:",
        "",
        "```python",
        "import boto3",
        "",
        f'runtime = boto3.client("sagemaker-runtime", region_name="{region}")',
        'with open("image.jpg", "rb") as image:',
        "    answer = runtime.invoke_endpoint(",
        f'        EndpointName="{endpoint}", ContentType="image/jpeg", Body=image.read()',
        "    )",
        'print(answer["Body"].read().decode())',
        "```",
        "",
        f"or `{slug} predict image.jpg`. Delete it when done: `{slug} teardown`.",
        "",
    ]


SCREENSHOTS = [
    "## Screenshots to take (in the AWS console; they cannot be made offline)",
    "",
    f"Save each in `{SCREENSHOTS_FOLDER}/` under the name given (PNG or JPEG): `handin` checks for them.",
    "",
    *(f"- {where} `{SCREENSHOTS_FOLDER}/{name}.png`" for name, where in CONSOLE_SCREENSHOTS),
    "",
]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def render(config: ProjectConfig, state: ProjectState, report: Report) -> str:
    """The write-up's Markdown."""
    lines = [
        MARKER,
        f"# {config.section('project')['name']}: write-up",
        "",
        *_tuning(config, state),
        *_training(report, state),
        *_pictures(report, config.root),
        *_int8(report),
        *_endpoint(config, state),
        *SCREENSHOTS,
    ]
    return "\n".join(lines)


def write_up(config: ProjectConfig, state: ProjectState, report: Report) -> Path:
    """WRITEUP.md in the project (or WRITEUP.generated.md beside a WRITEUP.md the student edited)."""
    target = config.root / WRITEUP_FILENAME
    if target.is_file() and not target.read_text(encoding="utf-8").startswith(MARKER):
        target = config.root / GENERATED_FILENAME
    target.write_text(render(config, state, report) + "\n", encoding="utf-8")
    return target
