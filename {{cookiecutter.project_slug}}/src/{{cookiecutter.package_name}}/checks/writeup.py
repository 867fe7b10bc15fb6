"""The project write-up a reviewer reads, filled in from what the project recorded and its report.

`write_up(config, state, report)` writes `WRITEUP.md` in the project: the best tuned hyperparameters and
the search, the final job and its test accuracy, each rule's verdict with its step, what each finding
means and what to change, the profiler's main finding, the pictures (embedded, with paths relative to
the write-up), the int8 model's figures and what the endpoint serves (int8 or float, and why), the
endpoint and how to query it, and where in the AWS console to take each screenshot (those cannot be
made offline). A WRITEUP.md the student has edited is never overwritten: the new one goes to
WRITEUP.generated.md and the caller is told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..aws.state import ENDPOINT, TRAINING_JOB, TUNING_JOB, ProjectState
from ..config import ProjectConfig
from ..report import (
    FIGURE_TITLES,
    Report,
    class_insight,
    int8_facts,
    reading_lines,
    rule_insights,
    sagemaker_rows,
    verdict_rows,
)
from ..report.tables import ranges_rows
from ..workflow.launcher import BEST_HYPERPARAMETERS
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
    readings = reading_lines(report.verdicts)
    if readings:
        lines += ["What each rule judged (parameters; the reading of AWS's rule page):", ""]
        lines += [f"- {line}" for line in readings] + [""]
    if report.sagemaker_verdicts:
        lines += ["SageMaker's built-in rule jobs:", "", *_table(sagemaker_rows(report)), ""]
    lines += ["Insights (what each finding means, and what to change):", ""]
    lines += [f"- {line}" for line in rule_insights(report.verdicts)] or ["- The run judged no rules."]
    if report.profiler_finding:
        lines.append(f"- Profiler: {report.profiler_finding}.")
    classes = class_insight(report.classes)
    if classes:
        lines.append(f"- Test set: {classes}.")
    lines.append("")
    return lines


def _pictures(report: Report, root: Path) -> list[str]:
    """Each picture embedded (a path relative to WRITEUP.md, so the Markdown shows it where it lies),
    in the report page's order, with the sentence that says how to get more points where it has one."""
    lines = ["## Pictures", ""]
    for key, title in FIGURE_TITLES.items():
        if key not in report.pictures:
            continue
        lines += [f"![{title}]({_relative(report.pictures[key], root)})", ""]
        if key in report.picture_notes:
            lines += [f"*{report.picture_notes[key]}*", ""]
    if report.profiler_report:
        lines.append(
            f"- The profiler report: [{report.profiler_report.name}]"
            f"({_relative(report.profiler_report, root)}) (open it in a browser)"
        )
    if report.index_html:
        lines.append(
            f"- Everything on one page: [{report.index_html.name}]({_relative(report.index_html, root)})"
        )
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
    """`path` from WRITEUP.md's folder, with forward slashes (Markdown links); as it is when outside it."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
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
