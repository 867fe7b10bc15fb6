"""Writing the report's pages: `index.html` and `summary.md`.

`index.html` holds tables, with the PNG figures as files beside it (nothing is fetched from the
network); `summary.md` is a few lines to paste into a write-up."""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import experiments
from .fetch import PROFILER_REPORT_FILE, JobOutput, RuleVerdict, Verdict
from .figures import (
    class_accuracy_figure,
    confusion_figure,
    gradient_figure,
    loss_figure,
    saving_note,
    utilisation_figure,
)
from .int8 import Int8Endpoint, int8_facts
from .series import (
    NOT_ENOUGH_DATA_NOTE,
    ClassAccuracy,
    EpochPoint,
    _class_list,
    _percent,
    accuracy_on_test,
    best_and_worst,
    class_accuracies,
    class_names,
    confusion_matrix,
    epoch_points,
    profiler_finding,
    reading_lines,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# Per-class rows in index.html beyond which only the best and worst are listed.
MAX_CLASS_ROWS = 200
INDEX_FILE = "index.html"
SUMMARY_FILE = "summary.md"
FIGURE_DPI = 100


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    """What `build_report` wrote (nothing when `captured`: a dry run's job never ran)."""

    run: str  # the job name, or "local run <folder>"
    folder: Path  # reports/<run>/
    source: str  # where the outputs came from, in words
    captured: bool = False
    status: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    sagemaker_verdicts: list[RuleVerdict] = field(default_factory=list)
    epochs: list[EpochPoint] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    classes: list[ClassAccuracy] = field(default_factory=list)
    test_accuracy: float | None = None
    test_images: int | None = None
    best_hyperparameters: dict[str, Any] | None = None
    profiler_finding: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    # Per picture of saved steps, how many were saved and the setting that gives more (`saving_note`).
    picture_notes: dict[str, str] = field(default_factory=dict)
    profiler_report: Path | None = None
    index_html: Path | None = None
    summary_path: Path | None = None
    summary_markdown: str = ""
    notes: list[str] = field(default_factory=list)
    # The int8 model and what the endpoint would serve; None where the caller did not look.
    int8: Int8Endpoint | None = None
    # Where the run's MLflow record is (experiments.RunLink.describe); empty: not recorded.
    tracking: str = ""

    @property
    def best_classes(self) -> list[ClassAccuracy]:
        return best_and_worst(self.classes)[0]

    @property
    def worst_classes(self) -> list[ClassAccuracy]:
        return best_and_worst(self.classes)[1]


def verdict_rows(report: Report) -> list[dict[str, Any]]:
    """The in-job verdicts as table rows (rule, verdict, step, reason), for `tables.rich_table` / `frame`."""
    return [
        {"rule": v.rule, "verdict": v.verdict_text, "step": v.step_text, "reason": v.reason}
        for v in report.verdicts
    ]


def sagemaker_rows(report: Report) -> list[dict[str, Any]]:
    return [asdict(v) for v in report.sagemaker_verdicts]


def class_rows(report: Report) -> list[dict[str, Any]]:
    ordered = sorted(report.classes, key=lambda c: (-(c.accuracy or 0.0), c.name))
    return [
        {"class": c.name, "test images": c.images, "correct": c.correct, "accuracy": _percent(c.accuracy)}
        for c in ordered
    ]


def epoch_rows(report: Report) -> list[dict[str, Any]]:
    def fmt(value: float | None, percent: bool = False) -> str:
        return "" if value is None else (_percent(value) if percent else f"{value:.4f}")

    return [
        {
            "epoch": p.epoch,
            "training loss": fmt(p.training_loss),
            "validation loss": fmt(p.validation_loss),
            "training accuracy": fmt(p.training_accuracy, True),
            "validation accuracy": fmt(p.validation_accuracy, True),
        }
        for p in report.epochs
    ]


_OWN_FILES = (INDEX_FILE, SUMMARY_FILE, PROFILER_REPORT_FILE)
_FIGURES: tuple[tuple[str, str], ...] = (
    ("loss", "Loss and accuracy"),
    ("gradients", "Gradient statistics"),
    ("confusion", "Confusion matrix (test set)"),
    ("class_accuracy", "Accuracy per class (test set)"),
    ("utilisation", "Utilisation"),
)
FIGURE_TITLES = dict(_FIGURES)


def _clear(folder: Path) -> None:
    """Remove what an earlier report wrote here (a picture this run cannot draw must not linger)."""
    for name in (*_OWN_FILES, *(f"{key}.png" for key, _ in _FIGURES)):
        (folder / name).unlink(missing_ok=True)


def write_report(
    output: JobOutput,
    folder: Path,
    *,
    run: str,
    source: str,
    status: str = "",
    sagemaker_verdicts: Sequence[RuleVerdict] = (),
    best_hyperparameters: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    int8: Int8Endpoint | None = None,
    tracking: experiments.RunLink | None = None,
) -> Report:
    """Draw the pictures and write index.html, summary.md and the profiler report into `folder`;
    with `tracking` (the run's MLflow record), add the pictures to that run and link it."""
    folder.mkdir(parents=True, exist_ok=True)
    _clear(folder)
    recording = output.recording
    report = Report(
        run=run,
        folder=folder,
        source=source,
        status=status,
        verdicts=list(output.verdicts),
        sagemaker_verdicts=list(sagemaker_verdicts),
        epochs=epoch_points(recording, output.history),
        confusion=confusion_matrix(recording),
        classes=class_accuracies(recording),
        best_hyperparameters=best_hyperparameters,
        profiler_finding=profiler_finding(output),
        notes=[*notes, *output.notes],
        int8=int8,
        tracking=tracking.describe() if tracking else "",
    )
    report.test_accuracy, report.test_images = accuracy_on_test(output)
    figures: dict[str, Figure | None] = {
        "loss": loss_figure(report.epochs, recording),
        "gradients": gradient_figure(recording),
        "confusion": (
            confusion_figure(report.confusion, class_names(recording, len(report.confusion)))
            if report.confusion
            else None
        ),
        "class_accuracy": class_accuracy_figure(report.classes) if report.classes else None,
        "utilisation": utilisation_figure(output.profile),
    }
    for key, figure in figures.items():
        if figure is None:
            continue
        path = folder / f"{key}.png"
        figure.savefig(path, dpi=FIGURE_DPI)
        report.figures[key], report.pictures[key] = figure, path
    if tracking is not None and report.pictures:
        problem = experiments.attach_pictures(tracking, report.pictures)
        report.notes += [problem] if problem else []
    notes_by_picture = {"loss": saving_note(recording), "gradients": saving_note(recording, ("TRAIN",))}
    report.picture_notes = {
        key: note for key, note in notes_by_picture.items() if note and key in report.pictures
    }
    if output.profiler_report is not None:
        report.profiler_report = output.profiler_report
        if not output.profiler_report.resolve().is_relative_to(folder.resolve()):
            report.profiler_report = folder / PROFILER_REPORT_FILE
            shutil.copyfile(output.profiler_report, report.profiler_report)
    report.summary_markdown = summary_markdown(report)
    report.summary_path = folder / SUMMARY_FILE
    report.summary_path.write_text(report.summary_markdown, encoding="utf-8")
    report.index_html = folder / INDEX_FILE
    report.index_html.write_text(index_html(report), encoding="utf-8")
    return report


def _hyperparameter_text(best: dict[str, Any] | None) -> str | None:
    if not best or not best.get("hyperparameters"):
        return None
    values = ", ".join(f"{name}={value}" for name, value in sorted(best["hyperparameters"].items()))
    origin = f" (tuning job {best['tuning_job']})" if best.get("tuning_job") else ""
    return f"{values}{origin}"


def _facts(report: Report) -> list[tuple[str, str]]:
    """(label, text) of the report's headline facts, shared by summary.md and index.html."""
    facts = []
    if report.test_accuracy is not None:
        images = f" on {report.test_images} test images" if report.test_images else ""
        facts.append(("Test accuracy", f"{_percent(report.test_accuracy)}{images}"))
    tuned = _hyperparameter_text(report.best_hyperparameters)
    facts.append(("Best tuned hyperparameters", tuned or "none recorded (no tuning job finished)"))
    best, worst = best_and_worst(report.classes)
    if best and best[0].accuracy == worst[0].accuracy:
        # A "worst class" at 100% would mislead: say that they are all alike.
        facts.append(("Per-class accuracy", f"{_percent(best[0].accuracy)} for every class"))
    elif best:
        facts.append(("Best classes", _class_list(best)))
        facts.append(("Worst classes", _class_list(worst)))
    facts.append(("Profiler", report.profiler_finding))
    if report.tracking:
        facts.append(("MLflow run", report.tracking))
    return facts


def _cell(value: Any) -> str:
    return " ".join(str("-" if value is None else value).split()).replace("|", "\\|")


def summary_markdown(report: Report) -> str:
    """A few lines for a project write-up: headline facts, then every verdict with its step."""
    lines = [f"## Training report: {report.run}", ""]
    lines += [f"- **{label}**: {text}" for label, text in _facts(report)]
    if report.int8 is not None:
        lines += ["", "### int8 endpoint", ""]
        lines += [f"- **{label}**: {text}" for label, text in int8_facts(report.int8)]
    lines += ["", "| Rule | Verdict | Step | Reason |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {_cell(v.rule)} | {_cell(v.verdict_text)} | {_cell(v.step_text)} | {_cell(v.reason)} |"
        for v in report.verdicts
    ]
    if not report.verdicts:
        lines.append("| (none) | | | the run judged no rules |")
    if any(v.verdict == "NotEnoughData" for v in report.verdicts):
        lines += ["", NOT_ENOUGH_DATA_NOTE]
    readings = reading_lines(report.verdicts)
    if readings:
        lines += ["", "What each rule judged (parameters; the reading of AWS's rule page):", ""]
        lines += [f"- {line}" for line in readings]
    if report.sagemaker_verdicts:
        lines += ["", "SageMaker's built-in rules:", "", "| Rule | Status |", "| --- | --- |"]
        lines += [f"| {_cell(v.rule)} | {_cell(v.status)} |" for v in report.sagemaker_verdicts]
    return "\n".join(lines) + "\n"


# A plain string with single braces (this folder is rendered by Jinja, which reads double ones).
_STYLE = (
    "body { font-family: sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; color: #222 }"
    " table { border-collapse: collapse; margin: .5em 0 1.5em }"
    " td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top }"
    " th { background: #f4f4f4 }"
    " .IssuesFound { background: #fde2e1 } .NoIssuesFound { background: #e3f6e3 }"
    " .NotEnoughData { background: #fff4d6 }"
    " img { max-width: 100%; border: 1px solid #eee }"
    " iframe { width: 100%; height: 40em; border: 1px solid #ccc }"
    " .note { color: #666 }"
)


def _table(rows: Sequence[dict[str, Any]], status_column: str | None = None) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        # The status's first word is its class: "NotEnoughData (this project's verdict)" -> NotEnoughData.
        status = (str(row.get(status_column, "")).split() or [""])[0] if status_column else ""
        css = f' class="{html.escape(status)}"' if status_column else ""
        cells = "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns)
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _facts_list(facts: Sequence[tuple[str, str]]) -> str:
    escape = html.escape
    return "<ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in facts) + "</ul>"


def index_html(report: Report) -> str:
    """The page: every link is a file in the report folder; nothing comes from the network."""
    escape = html.escape
    parts = [
        f"<h1>Training report: {escape(report.run)}</h1>",
        f"<p>{escape(report.source)}{escape(f'; status {report.status}' if report.status else '')}."
        f' <a href="{SUMMARY_FILE}">summary.md</a> holds the lines for a write-up.</p>',
        _facts_list(_facts(report)),
        *(["<h2>int8 endpoint</h2>", _facts_list(int8_facts(report.int8))] if report.int8 else []),
        "<h2>Rule verdicts (judged in the training job)</h2>",
        _table(verdict_rows(report), "verdict") or "<p>The run judged no rules.</p>",
        *(
            [f"<p>{escape(NOT_ENOUGH_DATA_NOTE)}</p>"]
            if any(v.verdict == "NotEnoughData" for v in report.verdicts)
            else []
        ),
        *(
            ["<ul>", *(f"<li>{escape(line)}</li>" for line in reading_lines(report.verdicts)), "</ul>"]
            if reading_lines(report.verdicts)
            else []
        ),
    ]
    if report.sagemaker_verdicts:
        parts += [
            "<h2>SageMaker's built-in rules</h2>",
            _table(
                [
                    {"rule": v.rule, "kind": v.kind, "status": v.status, "details": v.details}
                    for v in report.sagemaker_verdicts
                ],
                "status",
            ),
        ]
    sections = {
        "loss": _table(epoch_rows(report)),
        "class_accuracy": _class_section(report),
    }
    for key, title in _FIGURES:
        if key not in report.pictures and not sections.get(key):
            continue
        parts.append(f"<h2>{escape(title)}</h2>")
        if key in report.pictures:
            parts.append(f'<img src="{escape(report.pictures[key].name)}" alt="{escape(title)}">')
        parts.append(sections.get(key, ""))
    if report.confusion is None and report.classes == []:
        parts.append(
            '<p class="note">No test-set predictions were recorded (no test pass, or no debugger rule).</p>'
        )
    parts.append("<h2>Profiler report</h2>")
    if report.profiler_report is not None:
        link = escape(os.path.relpath(report.profiler_report, report.folder).replace(os.sep, "/"))
        parts += [
            f'<p>The training job\'s own profiler report: <a href="{link}">{PROFILER_REPORT_FILE}</a>.</p>',
            f'<iframe src="{link}" title="profiler report" loading="lazy"></iframe>',
        ]
    else:
        parts.append('<p class="note">The run wrote no profiler report (no profiler rule ran).</p>')
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>"]
    body = "\n".join(part for part in parts if part)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>Training report: {escape(report.run)}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _class_section(report: Report) -> str:
    rows = class_rows(report)
    if len(rows) > MAX_CLASS_ROWS:
        half = MAX_CLASS_ROWS // 2
        return (
            _table(rows[:half])
            + f"<p>... {len(rows) - MAX_CLASS_ROWS} classes left out ...</p>"
            + _table(rows[-half:])
        )
    return _table(rows)
