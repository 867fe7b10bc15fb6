"""What a training run says about itself, as a folder a person opens: `reports/<run>/index.html`.

The training job judges its rules itself (training/rules.py) and writes, into its output data folder
(`SM_OUTPUT_DATA_DIR`, which SageMaker packs into `<output path>/<job>/output/output.tar.gz`;
`<run dir>/opt_ml/output/data/` for `train --local`):

- `rule_verdicts.json`: the in-job verdict of each rule (NoIssuesFound, IssuesFound, NotEnoughData);
- `recording.json`: losses per saved step and per epoch, gradient statistics, label counts, the test
  pass's confusion matrix (training/recorder.py);
- `profiler.json` and `profiler-report.html`: system samples and step timings, and their report;
- `history.json`: validation loss and accuracy per epoch, test accuracy.

The int8 model's figures are in the model artifact's `metadata.json` (training/quantize.py measures
them, classifier/artifact.py saves them under `quantization`): a local run's `opt_ml/model/`, or the
job's model.tar.gz, read from S3 as a stream only as far as that file. With the configured endpoint they
say what `deploy` would serve, int8 or float, and why (model_fn's own rule: classifier/schema.py,
`serving_precision`).

`build_report` reads them (a job's archive from S3 with a progress bar, or a local run's folder) and
writes `index.html` (tables, and PNG pictures as files beside it: nothing is fetched from the
network), `summary.md` (a few lines to paste into a write-up) and the profiler report next to them.
SageMaker's own rule statuses (DescribeTrainingJob's Debug/ProfilerRuleEvaluationStatuses, for
accounts that still have SageMaker Debugger) are shown beside the in-job verdicts.

Everything read is bounded: the archive's size is checked before it is downloaded, only the files
above are extracted (tarfile's "data" filter, each under a size limit), every JSON file is
size-checked before it is parsed, and long series are thinned before they are drawn.

smdebug is not read any more: training images no longer install it (it breaks numpy-2 images), and
recording.json holds the same losses at the same save intervals.
matplotlib (the `debug` extra) draws the pictures, with its object API (no pyplot state).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import statistics
import tarfile
import tempfile
import textwrap
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import experiments
from .config import schema
from .context import CAPTURED
from .launcher import BEST_HYPERPARAMETERS, LaunchError
from .session import Session, session_state
from .state import TRAINING_JOB, ProjectState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .config import ProjectConfig

MODES = ("TRAIN", "EVAL")
MODE_TITLES = {"TRAIN": "training", "EVAL": "validation"}
# config.toml's [debugger] key that sets how often each mode's losses (and gradients) are saved.
SAVE_INTERVAL_KEYS = {"TRAIN": "train_save_interval", "EVAL": "eval_save_interval"}
NOT_EVALUATED_OFFLINE = "not evaluated offline"
NOT_EVALUATED_YET = "not evaluated yet"
PROFILER_REPORT_RULE = "ProfilerReport"
# What the [debug] extra brings; named in the error when it is missing.
DEBUG_EXTRA = "pip install -e '.[debug]'"

REPORTS_FOLDER = "reports"
LOCAL_RUN = Path("runs") / "local"
OUTPUT_ARCHIVE = "output.tar.gz"
# What the report reads from a job's output data; nothing else is extracted from the archive.
VERDICTS_FILE = "rule_verdicts.json"
RECORDING_FILE = "recording.json"
PROFILE_FILE = "profiler.json"
PROFILER_REPORT_FILE = "profiler-report.html"
HISTORY_FILE = "history.json"
OUTPUT_FILES = (VERDICTS_FILE, RECORDING_FILE, PROFILE_FILE, PROFILER_REPORT_FILE, HISTORY_FILE)
# The model artifact: its metadata.json holds the int8 model's figures (classifier/artifact.py).
MODEL_ARCHIVE = "model.tar.gz"
METADATA_FILE = "metadata.json"
# Limits. A dogImages run's output.tar.gz is well under 10 MB (recording.json: a few MB at the
# default save intervals; profiler.json: ~1 MB an hour); a torch.profiler trace can add tens of MB.
MAX_ARCHIVE_BYTES = 512 * 2**20
MAX_FILE_BYTES = 64 * 2**20
MAX_ARCHIVE_MEMBERS = 10_000
# model.tar.gz is streamed, never stored, and only up to its metadata.json; the float and int8 weights
# of the largest backbone come to a few hundred MB.
MAX_MODEL_ARCHIVE_BYTES = 2 * 2**30
# Points per drawn series: enough for the shape of a curve; every point stays in the JSON files.
MAX_PLOT_POINTS = 400
# Per-class rows in index.html beyond which only the best and worst are listed.
MAX_CLASS_ROWS = 200
# Classes the confusion matrix labels on its axes (133 labels would be unreadable).
MAX_LABELLED_CLASSES = 30
# Where a job's extracted output goes, inside its report folder.
JOB_OUTPUT_FOLDER = "job-output"
INDEX_FILE = "index.html"
SUMMARY_FILE = "summary.md"
FIGURE_DPI = 100


class ReportError(LaunchError):
    """Something the report needs is missing or too large; the message is one line."""


# --- SageMaker's view of the job: its description and built-in rule statuses ---------------------


@dataclass(frozen=True)
class RuleVerdict:
    """A SageMaker built-in rule's status, from DescribeTrainingJob."""

    rule: str
    kind: str  # "debugger" or "profiler"
    status: str  # InProgress | NoIssuesFound | IssuesFound | Error | Stopping | Stopped, or not evaluated
    details: str = ""


@dataclass(frozen=True)
class JobArtifacts:
    """S3 locations of what the job and its rules wrote (None: that part was off)."""

    model_data: str | None
    debugger_output: str | None
    profiler_output: str | None
    rule_output: str
    profiler_report: str | None


def describe_training_job(session: Session, training_job_name: str) -> dict[str, Any]:
    """DescribeTrainingJob; in a dry run, completed with the request that created the job.

    moto keeps only part of a CreateTrainingJob request (it drops the profiler configuration and
    rules), so a dry run fills in the missing keys from the recorded request.
    """
    client = session.aws.client("sagemaker")
    description = dict(client.describe_training_job(TrainingJobName=training_job_name))
    description.pop("ResponseMetadata", None)
    if session.offline is not None:
        for params in session.offline.requests("CreateTrainingJob"):
            if params.get("TrainingJobName") == training_job_name:
                description = {**params, **description}
    return description


def rule_verdicts(description: dict[str, Any], *, dry_run: bool = False) -> list[RuleVerdict]:
    """One verdict per configured rule, in the order configured; rules with no evaluation yet say so."""
    verdicts = []
    for kind, prefix in (("debugger", "Debug"), ("profiler", "Profiler")):
        statuses = {
            item["RuleConfigurationName"]: item
            for item in description.get(f"{prefix}RuleEvaluationStatuses") or []
        }
        configured = [
            item["RuleConfigurationName"] for item in description.get(f"{prefix}RuleConfigurations") or []
        ]
        for name in dict.fromkeys([*configured, *statuses]):
            evaluation = statuses.get(name)
            if evaluation is None:
                status = NOT_EVALUATED_OFFLINE if dry_run else NOT_EVALUATED_YET
                verdicts.append(RuleVerdict(name, kind, status))
            else:
                verdicts.append(
                    RuleVerdict(
                        name,
                        kind,
                        evaluation.get("RuleEvaluationStatus", NOT_EVALUATED_YET),
                        " ".join(str(evaluation.get("StatusDetails", "")).split()),
                    )
                )
    return verdicts


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def job_artifacts(description: dict[str, Any]) -> JobArtifacts:
    """Where the job's outputs are, from its description (SageMaker's folder layout)."""
    job = description["TrainingJobName"]
    output_path = description["OutputDataConfig"]["S3OutputPath"]
    hook = description.get("DebugHookConfig") or {}
    profiler = description.get("ProfilerConfig") or {}
    rule_output = _join(output_path, job, "rule-output")
    report_rules = [
        item["RuleConfigurationName"]
        for item in description.get("ProfilerRuleConfigurations") or []
        # The SDK names the report rule ProfilerReport, or ProfilerReport-<timestamp> when it adds it itself.
        if item["RuleConfigurationName"].startswith(PROFILER_REPORT_RULE)
    ]
    profiling_on = bool(profiler.get("S3OutputPath")) and not profiler.get("DisableProfiler", False)
    return JobArtifacts(
        model_data=(description.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        debugger_output=_join(hook["S3OutputPath"], job, "debug-output")
        if hook.get("S3OutputPath")
        else None,
        profiler_output=_join(profiler["S3OutputPath"], job, "profiler-output") if profiling_on else None,
        rule_output=rule_output,
        profiler_report=(
            _join(rule_output, report_rules[0], "profiler-output", "profiler-report.html")
            if report_rules
            else None
        ),
    )


def output_archive_uri(description: dict[str, Any]) -> str:
    """`<output path>/<job>/output/output.tar.gz`: where SageMaker packs SM_OUTPUT_DATA_DIR."""
    return _join(
        description["OutputDataConfig"]["S3OutputPath"],
        description["TrainingJobName"],
        "output",
        OUTPUT_ARCHIVE,
    )


def console_url(s3_uri: str, region: str) -> str:
    """The S3 console page of an object or folder, to open the profiler report from a browser."""
    bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
    query = urllib.parse.urlencode({"region": region, "prefix": key})
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?{query}"


def latest_training_job(state: ProjectState) -> str:
    latest = state.latest(TRAINING_JOB)
    if latest is None:
        raise ReportError("no training job recorded for this project; run `train` or pass --job")
    return latest["name"]


# --- what the job wrote about itself --------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """An in-job rule verdict, as training/rules.py wrote it to rule_verdicts.json."""

    rule: str
    verdict: str  # NoIssuesFound | IssuesFound | NotEnoughData
    reason: str
    kind: str = "debugger"
    step: int | None = None
    mode: str | None = None
    # What the rule judged and the reading of AWS's page it took; why its verdict may mean nothing here.
    reading: str = ""
    caveat: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def step_text(self) -> str:
        """The step as the plots number it: per mode, e.g. `7 (TRAIN)`; `-` where the rule names none."""
        if self.step is None:
            return "-"
        return f"{self.step} ({self.mode})" if self.mode else str(self.step)

    @property
    def verdict_text(self) -> str:
        """The verdict, NotEnoughData marked as this project's own (SageMaker's rules never say it)."""
        return f"{self.verdict} {PROJECT_VERDICT_MARK}" if self.verdict == "NotEnoughData" else self.verdict


@dataclass
class JobOutput:
    """The files of one run's output data folder, parsed; None where the run wrote none."""

    folder: Path
    verdicts: list[Verdict] = field(default_factory=list)
    recording: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    profiler_report: Path | None = None
    # What could not be read, and why (one line each): shown in the report.
    notes: list[str] = field(default_factory=list)


def read_json(path: Path, limit: int | None = None) -> Any:
    """`path` parsed, after checking it is no larger than `limit` bytes (default `MAX_FILE_BYTES`)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    size = path.stat().st_size
    if size > limit:
        raise ReportError(
            f"{path.name} is {size / 2**20:.0f} MB, over the report's limit of {limit // 2**20} MB"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def local_output_dir(path: Path) -> Path:
    """The output data folder of a local run.

    `path` may be the run folder (`train --local --run-dir`, holding `opt_ml/`), the output data folder
    itself (e.g. an extracted output.tar.gz), or the old debugger tensors folder beside it.
    """
    path = Path(path)
    candidates = [path, path / "opt_ml" / "output" / "data"]
    if path.name == "tensors":
        candidates.append(path.parent / "data")
    for candidate in candidates:
        if any((candidate / name).is_file() for name in OUTPUT_FILES):
            return candidate
    raise ReportError(
        f"no training outputs in {path} (looked for {', '.join(OUTPUT_FILES)} there and in "
        "opt_ml/output/data/); run `train --local` first"
    )


def local_tensors_dir(run_dir: Path) -> Path:
    """Where `train --local --debugger` has smdebug write its tensors (kept for older callers:
    `local_output_dir` and `training_report` accept it and read the outputs beside it)."""
    return Path(run_dir) / "opt_ml" / "output" / "tensors"


def read_output(folder: Path) -> JobOutput:
    """Parse the output data folder; a missing or oversized file becomes a note, not a failure."""
    output = JobOutput(Path(folder))

    def load(name: str) -> Any:
        path = output.folder / name
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (ReportError, ValueError, OSError) as error:
            output.notes.append(f"{name} not read: {' '.join(str(error).split())}")
            return None

    verdicts = load(VERDICTS_FILE)
    if verdicts is not None:
        output.verdicts = [
            Verdict(
                rule=str(item.get("rule", "?")),
                verdict=str(item.get("verdict", "?")),
                reason=" ".join(str(item.get("reason", "")).split()),
                kind=str(item.get("kind", "debugger")),
                step=item.get("step"),
                mode=item.get("mode"),
                reading=" ".join(str(item.get("reading") or "").split()),
                caveat=" ".join(str(item.get("caveat") or "").split()),
                parameters=dict(item.get("parameters") or {}),
            )
            for item in verdicts.get("rules", [])
        ]
    else:
        output.notes.append(
            f"no {VERDICTS_FILE}: the run judged no rules "
            "([debugger] rules is empty, or evaluation is sagemaker)"
        )
    output.recording = load(RECORDING_FILE)
    output.profile = load(PROFILE_FILE)
    output.history = load(HISTORY_FILE)
    report = output.folder / PROFILER_REPORT_FILE
    if report.is_file():
        if report.stat().st_size <= MAX_FILE_BYTES:
            output.profiler_report = report
        else:
            output.notes.append(f"{PROFILER_REPORT_FILE} is over {MAX_FILE_BYTES // 2**20} MB: not copied")
    return output


def _s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def archive_size(session: Session, uri: str) -> int | None:
    """Bytes of the object at `uri`, or None when there is none."""
    import botocore.exceptions

    bucket, key = _s3_location(uri)
    try:
        head = session.aws.client("s3").head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return int(head["ContentLength"])


def download_archive(
    session: Session, uri: str, destination: Path, size: int, *, progress: bool = True
) -> Path:
    """Download `uri` to `destination`, with a progress bar when `progress`; refuses one over the limit."""
    if size > MAX_ARCHIVE_BYTES:
        raise ReportError(
            f"{uri} is {size / 2**20:.0f} MB, more than the report downloads "
            f"({MAX_ARCHIVE_BYTES // 2**20} MB); download and extract it yourself, "
            "then run `report --local --run-dir <that folder>`"
        )
    bucket, key = _s3_location(uri)
    client = session.aws.client("s3")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not progress:
        client.download_file(bucket, key, str(destination))
        return destination
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
    ) as bar:
        task = bar.add_task(f"downloading {OUTPUT_ARCHIVE}", total=size)
        client.download_file(
            bucket, key, str(destination), Callback=lambda chunk: bar.update(task, advance=chunk)
        )
    return destination


def extract_outputs(archive: Path, destination: Path) -> list[str]:
    """Extract the files the report reads (`OUTPUT_FILES`, at the archive's root) and nothing else.

    tarfile's "data" filter refuses links, absolute paths and `..`; on top of that only regular files
    with the expected names and under `MAX_FILE_BYTES` are taken, from at most `MAX_ARCHIVE_MEMBERS`
    entries. Returns one note per file left out.
    """
    notes = []
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        chosen = []
        for count, member in enumerate(tar, 1):
            if count > MAX_ARCHIVE_MEMBERS:
                notes.append(
                    f"{OUTPUT_ARCHIVE} has over {MAX_ARCHIVE_MEMBERS} entries: the rest were not read"
                )
                break
            name = member.name.removeprefix("./")
            if name not in OUTPUT_FILES or not member.isfile():
                continue
            if member.size > MAX_FILE_BYTES:
                notes.append(f"{name} is {member.size / 2**20:.0f} MB in {OUTPUT_ARCHIVE}: not extracted")
                continue
            member.name = name
            chosen.append(member)
        tar.extractall(destination, members=chosen, filter="data")
    return notes


# --- the numbers behind the pictures --------------------------------------------------------------


@dataclass(frozen=True)
class EpochPoint:
    """One epoch's mean losses and accuracies (None where not recorded). `epoch` counts from 1."""

    epoch: int
    training_loss: float | None = None
    validation_loss: float | None = None
    training_accuracy: float | None = None
    validation_accuracy: float | None = None


@dataclass(frozen=True)
class ClassAccuracy:
    name: str
    images: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_points(recording: dict[str, Any] | None, history: dict[str, Any] | None) -> list[EpochPoint]:
    """Per-epoch training and validation loss (and accuracy), from recording.json and history.json.

    The recorder keeps every step's mean per pass; an older recording has only the saved steps, whose
    mean stands in for the training loss. history.json has the validation loss of every epoch even
    when no rule recorded anything.
    """
    history_epochs = (history or {}).get("epochs") or []
    recorded = (recording or {}).get("epochs") or []
    saved_train = [(int(s), float(v)) for s, v in ((recording or {}).get("losses") or {}).get("TRAIN", [])]
    points = []
    for index in range(max(len(recorded), len(history_epochs))):
        entry = recorded[index] if index < len(recorded) else {}
        past = history_epochs[index] if index < len(history_epochs) else {}
        training_loss = _number(entry.get("train_loss"))
        if training_loss is None and entry.get("train_steps"):
            first, end = entry["train_steps"]
            saved = [value for step, value in saved_train if first <= step < end]
            training_loss = statistics.fmean(saved) if saved else None
        validation_loss = _number(entry.get("eval_loss"))
        validation_accuracy = _number(entry.get("eval_accuracy"))
        if validation_loss is None:
            validation_loss = _number(past.get("loss"))
            validation_accuracy = _number(past.get("accuracy"))
        points.append(
            EpochPoint(
                epoch=int(entry.get("epoch", index)) + 1,
                training_loss=training_loss,
                validation_loss=validation_loss,
                training_accuracy=_number(entry.get("train_accuracy")),
                validation_accuracy=validation_accuracy,
            )
        )
    return points


def step_series(recording: dict[str, Any] | None) -> dict[str, tuple[list[float], list[float], bool]]:
    """Per mode, (x, loss, x_in_epochs) of every saved step.

    Training and validation steps are counted separately, so each step is placed on a common epoch
    axis where the recording says which steps each epoch had: the steps of epoch n (counted from 1)
    spread over (n-1, n], so x = n is the end of epoch n, where the per-epoch panel puts its point.
    """
    recording = recording or {}
    epochs = recording.get("epochs") or []
    ranges = {
        "TRAIN": [
            (e.get("epoch", i), *e["train_steps"]) for i, e in enumerate(epochs) if e.get("train_steps")
        ],
        "EVAL": [(e.get("epoch", i), *e["eval_steps"]) for i, e in enumerate(epochs) if e.get("eval_steps")],
    }
    series = {}
    for mode in MODES:
        saved = [(int(s), float(v)) for s, v in (recording.get("losses") or {}).get(mode, [])]
        if not saved:
            continue
        xs: list[float] = []
        for step, _ in saved:
            place = next(
                (
                    epoch + (step - first + 1) / max(end - first, 1)
                    for epoch, first, end in ranges[mode]
                    if first <= step < end
                ),
                None,
            )
            xs.append(place if place is not None else math.nan)
        in_epochs = bool(ranges[mode]) and not any(math.isnan(x) for x in xs)
        if not in_epochs:
            xs = [float(step) for step, _ in saved]
        series[mode] = (xs, [value for _, value in saved], in_epochs)
    return series


def confusion_matrix(recording: dict[str, Any] | None) -> list[list[int]] | None:
    """The test pass's (true, predicted) counts (row: true class, column: predicted); None: not recorded."""
    matrix = ((recording or {}).get("labels") or {}).get("PREDICT", {}).get("confusion")
    if not matrix:
        return None
    size = len(matrix)
    if any(len(row) != size for row in matrix):
        return None
    return [[int(cell) for cell in row] for row in matrix]


def class_names(recording: dict[str, Any] | None, count: int) -> list[str]:
    """The classes as people read them (`001.Affenpinscher` -> `Affenpinscher`), as the endpoint does."""
    names = list((recording or {}).get("class_names") or [])
    if len(names) != count:
        return [str(index) for index in range(count)]
    return [schema.readable_class_name(str(name)) for name in names]


def class_accuracies(recording: dict[str, Any] | None) -> list[ClassAccuracy]:
    """Per class, the test images and how many were right (the recorder's PREDICT label counts)."""
    labels = ((recording or {}).get("labels") or {}).get("PREDICT") or {}
    counts, correct = labels.get("counts") or [], labels.get("correct") or []
    if not counts or not any(counts) or len(correct) != len(counts):
        return []
    names = class_names(recording, len(counts))
    return [ClassAccuracy(name, int(n), int(c)) for name, n, c in zip(names, counts, correct, strict=True)]


def best_and_worst(
    classes: Sequence[ClassAccuracy], count: int = 3
) -> tuple[list[ClassAccuracy], list[ClassAccuracy]]:
    """The `count` most and least accurate classes with test images (fewer when there are few classes)."""
    judged = sorted((c for c in classes if c.images), key=lambda c: (-(c.accuracy or 0.0), -c.images, c.name))
    count = max(1, min(count, len(judged) // 2)) if judged else 0
    return judged[:count], judged[::-1][:count]


def accuracy_on_test(output: JobOutput) -> tuple[float | None, int | None]:
    """(accuracy, images) of the test pass: history.json's (every process's share), else the recorder's."""
    history = output.history or {}
    test = (output.recording or {}).get("test") or {}
    images = test.get("images")
    if images is None:
        counts = (((output.recording or {}).get("labels") or {}).get("PREDICT") or {}).get("counts")
        images = int(sum(counts)) if counts and sum(counts) else None
    accuracy = _number(history.get("test_accuracy"))
    if accuracy is None:
        accuracy = _number(test.get("accuracy"))
    return accuracy, images


def downsample(values: Sequence[Any], limit: int = MAX_PLOT_POINTS) -> list[Any]:
    """At most `limit` evenly spaced items of `values`, the first and last kept."""
    if len(values) <= limit:
        return list(values)
    last = len(values) - 1
    return [values[round(i * last / (limit - 1))] for i in range(limit)]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def profiler_finding(output: JobOutput) -> str:
    """One sentence: the first profiler rule that found an issue, else what the samples show."""
    judged = [v for v in output.verdicts if v.kind == "profiler" and v.rule != PROFILER_REPORT_RULE]
    issues = [v for v in judged if v.verdict == "IssuesFound"]
    if issues:
        also = f" (also: {', '.join(v.rule for v in issues[1:])})" if len(issues) > 1 else ""
        return f"{issues[0].rule}: {issues[0].reason}{also}"
    profile = output.profile
    if not profile:
        return "no profiler data (the run had no profiler rule)"
    samples = profile.get("samples") or []
    parts = []
    cpu = [s["cpu_percent"] for s in samples if "cpu_percent" in s]
    memory = [s["memory_percent"] for s in samples if "memory_percent" in s]
    gpu = [g["utilization_percent"] for s in samples for g in s.get("gpus", [])]
    if cpu:
        parts.append(f"median CPU {statistics.median(cpu):.0f}%")
    if memory:
        parts.append(f"memory {statistics.median(memory):.0f}%")
    parts.append(f"GPU {statistics.median(gpu):.0f}%" if gpu else "no GPU")
    steps = [
        s for s in profile.get("steps") or [] if s.get("mode") == "TRAIN" and not s.get("first_of_epoch")
    ]
    data = sum(s.get("data_seconds", 0.0) for s in steps)
    compute = sum(s.get("compute_seconds", 0.0) for s in steps)
    if data + compute > 0:
        parts.append(f"{100 * data / (data + compute):.0f}% of training step time waiting for data")
    if any(v.verdict != "NotEnoughData" for v in judged):
        lead = "no profiler rule found an issue"
    else:
        lead = "too little data for the profiler rules" if judged else "profiled"
    return f"{lead}: {', '.join(parts)}"


# --- what a verdict means and what to try ---------------------------------------------------------

# Per rule: what an issue means, and what to change (config.toml's key or the script's hyperparameter;
# a key added under [hyperparameters] reaches train_model.py as `--key value`).
RULE_ADVICE: dict[str, tuple[str, str]] = {
    "vanishing_gradient": (
        "some layer's gradients shrank towards zero, so that layer stops learning",
        "raise `lr` in [hyperparameters] (or the range [tuning.ranges.lr]), or start from ImageNet weights "
        "(`pretrained = true` in [model])",
    ),
    "exploding_tensor": (
        "a tensor became NaN or infinite: the training diverged",
        "lower `lr` in [hyperparameters] (and the top of [tuning.ranges.lr])",
    ),
    "overfit": (
        "the validation loss rose while the training loss fell: the network learns the training images "
        "by heart instead of what tells the classes apart",
        'train fewer `epochs` ([hyperparameters]), train only the head (`finetune = "head"` in [model]), or '
        "add `weight_decay = 0.001` under [hyperparameters]",
    ),
    "overtraining": (
        "the loss stopped improving (the reason says which, training or validation): the last epochs add "
        "nothing",
        "lower `epochs` in [hyperparameters] to where the validation loss stopped falling",
    ),
    "poor_weight_initialization": (
        "the layers' activations start with very different spreads: the network starts badly",
        "start from ImageNet weights (`pretrained = true` in [model])",
    ),
    "loss_not_decreasing": (
        "the loss stayed flat or rose between checks: the network is not learning",
        "change `lr` in [hyperparameters] (too low learns slowly, too high bounces), and check that each "
        "class folder holds that class's images",
    ),
    "dead_relu": (
        "many ReLU units output zero for every image: they no longer learn",
        "lower `lr` in [hyperparameters]",
    ),
    "class_imbalance": (
        "some classes have far more training images than others, or are mispredicted far more often",
        "add `class_weights = true` under [hyperparameters] (the loss weighs classes by inverse frequency), "
        "or add images of the small classes",
    ),
    "LowGPUUtilization": (
        "the GPU sat idle for much of the run: you pay for a GPU that waits",
        "raise `batch_size` in [hyperparameters], or choose a smaller instance in [instances.training] "
        "`type`",
    ),
    "CPUBottleneck": (
        "the CPU was busy while the GPU waited for it",
        'add `feature_cache = true` under [hyperparameters] (with `finetune = "head"`), or choose an '
        "instance with more vCPUs in [instances.training] `type`",
    ),
    "DataLoadingBottleneck": (
        "the steps waited for images longer than they computed",
        "raise `num_workers` under [hyperparameters], or add `pixel_cache_gb = 4` there (decoded images "
        "kept in memory after the first epoch)",
    ),
    PROFILER_REPORT_RULE: (
        "one of the profiler rules found an issue",
        "see that rule's line and the profiler report's recommendations",
    ),
}
NO_ISSUES_MEANING = "judged the run and found nothing to change"
# `NotEnoughData` is this project's own verdict: SageMaker's built-in rules end with NoIssuesFound when
# they cannot judge, which reads as a pass. What gives a rule enough data depends on what it reads.
NOT_ENOUGH_DATA_MEANING = {
    "debugger": (
        "could not judge: the run saved too few steps (its reason says how many it needs); save more "
        "with a smaller [debugger] `train_save_interval` / `eval_save_interval`, or train more `epochs`"
    ),
    "profiler": (
        "could not judge: the run had no GPU or too few timed steps (its reason says which); run on a GPU "
        "instance ([instances.training] `type`) for long enough"
    ),
}
NOT_ENOUGH_DATA_NOTE = (
    "`NotEnoughData` is this project's own verdict: SageMaker's built-in rules end with NoIssuesFound "
    "when they cannot judge."
)
# How the verdict tables mark NotEnoughData (NOT_ENOUGH_DATA_NOTE says why, under each table).
PROJECT_VERDICT_MARK = "(this project's verdict)"


def reading_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """Per rule, one line: the parameters it ran with and the reading of AWS's page it took."""
    lines = []
    for v in verdicts:
        if not v.reading:
            continue
        parameters = ", ".join(f"{name}={value}" for name, value in v.parameters.items())
        lines.append(f"`{v.rule}` ({parameters}): {v.reading}")
    return lines


def rule_insights(verdicts: Sequence[Verdict]) -> list[str]:
    """Markdown sentences: per issue, what it means and what to try; then one per other verdict kind."""
    lines = []
    for v in verdicts:
        if v.verdict != "IssuesFound":
            continue
        at = f" at step {v.step_text}" if v.step is not None else ""
        meaning, remedy = RULE_ADVICE.get(v.rule, ("the rule's condition held", "see the rule's reason"))
        reason = " ".join(v.reason.split()).rstrip(".")
        if v.caveat:
            # The documented test held, but on this network it cannot tell a healthy run from a sick one.
            lines.append(
                f"**{v.rule}** found an issue{at} ({reason}), but it {v.caveat.rstrip('.')}: "
                "nothing to change for it."
            )
            continue
        lines.append(f"**{v.rule}** found an issue{at} ({reason}): {meaning}. Try: {remedy}.")
    fine = [v.rule for v in verdicts if v.verdict == "NoIssuesFound"]
    if fine:
        lines.append(
            f"**{', '.join(fine)}**: NoIssuesFound, {'it' if len(fine) == 1 else 'each'} {NO_ISSUES_MEANING}."
        )
    for kind, meaning in NOT_ENOUGH_DATA_MEANING.items():
        unjudged = [v.rule for v in verdicts if v.verdict == "NotEnoughData" and v.kind == kind]
        if unjudged:
            lines.append(f"**{', '.join(unjudged)}**: NotEnoughData, {meaning}.")
    if any(v.verdict == "NotEnoughData" for v in verdicts):
        lines.append(NOT_ENOUGH_DATA_NOTE)
    return lines


def class_insight(classes: Sequence[ClassAccuracy]) -> str | None:
    """The best and worst classes on the test set, or that every class scored the same; None: not recorded."""
    best, worst = best_and_worst(classes)
    if not best:
        return None
    if best[0].accuracy == worst[0].accuracy:
        images = sum(c.images for c in classes)
        return f"every class scored {_percent(best[0].accuracy)} on the {images} test images: none stands out"
    return f"best recognised classes: {_class_list(best)}; worst: {_class_list(worst)}"


# --- pictures -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(f"the report's pictures need matplotlib: {DEBUG_EXTRA}") from None
    return Figure(figsize=(width, height), layout="constrained")


def _empty(axes: Axes, text: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True)


def _epoch_ticks(axes: Axes, epochs: Sequence[float]) -> None:
    """Whole epochs on the x axis; one epoch gets one tick with room either side, not 0.96 .. 1.04."""
    from matplotlib.ticker import MaxNLocator

    if not epochs:
        return
    low, high = min(epochs), max(epochs)
    if high - low < 1:
        axes.set_xlim(low - 0.5, high + 0.5)
        axes.set_xticks(sorted({round(low), round(high)}))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot(
    axes: Axes, xs: Sequence[float], ys: Sequence[float | None], *, join: bool = True, **style: Any
) -> None:
    """A line with markers where points are few (a single point still shows); `join=False`: markers only."""
    points = downsample([(x, y) for x, y in zip(xs, ys, strict=True) if y is not None])
    if not points:
        return
    few = len(points) <= 30
    if not join:
        style["linestyle"] = "none"
    axes.plot(
        [x for x, _ in points], [y for _, y in points], marker="o" if few or not join else None,
        markersize=4, **style,
    )  # fmt: skip


def loss_figure(points: Sequence[EpochPoint], recording: dict[str, Any] | None = None) -> Figure:
    """Left: per-epoch training and validation loss (and accuracy, right-hand axis) on one epoch axis,
    so over-fitting shows as the curves parting. Right: the loss of every saved step, both modes."""
    figure = _figure(11, 3.8)
    left, right = figure.subplots(1, 2)
    epochs = [p.epoch for p in points]
    if any(p.training_loss is not None or p.validation_loss is not None for p in points):
        _plot(left, epochs, [p.training_loss for p in points], label="training loss", color="C0")
        _plot(left, epochs, [p.validation_loss for p in points], label="validation loss", color="C1")
        left.set_xlabel("epoch")
        left.set_ylabel("cross-entropy loss")
        left.grid(alpha=0.3)
        lines, labels = left.get_legend_handles_labels()
        if any(p.training_accuracy is not None or p.validation_accuracy is not None for p in points):
            accuracy = left.twinx()
            _plot(
                accuracy,
                epochs,
                [p.training_accuracy for p in points],
                label="training accuracy",
                color="C0",
                linestyle="--",
            )
            _plot(
                accuracy,
                epochs,
                [p.validation_accuracy for p in points],
                label="validation accuracy",
                color="C1",
                linestyle="--",
            )
            accuracy.set_ylabel("accuracy (fraction right)")
            accuracy.set_ylim(0, 1.02)
            more_lines, more_labels = accuracy.get_legend_handles_labels()
            lines, labels = lines + more_lines, labels + more_labels
        # Below the axes: four entries inside would sit on the curves.
        left.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
        _epoch_ticks(left, epochs)
        left.set_title("Loss and accuracy per epoch")
    else:
        _empty(left, "no per-epoch losses were recorded")
    series = step_series(recording)
    if series:
        in_epochs = all(flag for _, _, flag in series.values())
        for mode, (xs, ys, _) in series.items():
            # Fewer saved points than epochs: a line between them would draw a curve nobody measured.
            join = len(xs) >= max(len(epochs), 2)
            _plot(right, xs, ys, join=join, label=f"{MODE_TITLES[mode]} ({_interval(recording, mode)})")
        if in_epochs:
            from matplotlib.ticker import MaxNLocator

            right.set_xlabel("epoch (each epoch's steps spread over it)")
            right.set_xlim(0, max([*epochs, *(max(xs) for xs, _, _ in series.values())]) + 0.1)
            right.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            right.set_xlabel("step (counted per mode)")
        right.set_ylabel("cross-entropy loss")
        right.grid(alpha=0.3)
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
        right.set_title("Loss at the saved steps")
        _caption(figure, saving_note(recording, tuple(m for m in MODES if m in series)))
    else:
        _empty(right, "no step losses were recorded (no debugger rule ran)")
    return figure


def _interval(recording: dict[str, Any] | None, mode: str) -> str:
    every = ((recording or {}).get("save_intervals") or {}).get(mode)
    return "every step" if every == 1 else f"every {every} steps" if every else "saved steps"


def saving_note(recording: dict[str, Any] | None, modes: Sequence[str] = MODES) -> str:
    """One sentence under a picture of saved steps: how many were saved of how many, and the
    config.toml setting that gives more points (`[debugger] train_save_interval = 100`)."""
    recording = recording or {}
    parts, sparse = [], []
    for mode in modes:
        every = (recording.get("save_intervals") or {}).get(mode)
        seen = (recording.get("steps_seen") or {}).get(mode)
        saved = len((recording.get("losses") or {}).get(mode) or [])
        if not every:
            continue
        of = f" of {seen}" if seen else ""
        parts.append(
            f"{saved}{of} {MODE_TITLES[mode]} steps saved ([debugger] {SAVE_INTERVAL_KEYS[mode]} = {every})"
        )
        if every > 1:
            sparse.append(SAVE_INTERVAL_KEYS[mode])
    if not parts:
        return ""
    if not sparse:
        return f"{'; '.join(parts)}: every step is drawn."
    return f"{'; '.join(parts)}. A smaller {' / '.join(sparse)} in config.toml gives more points."


def _caption(figure: Figure, text: str) -> None:
    """A sentence under the whole figure, wrapped to its width (about 15 characters per inch at 8 pt)."""
    if text:
        width = int(figure.get_figwidth() * 15)
        figure.supxlabel(textwrap.fill(text, width), fontsize=8, color="#444")


def _step_axis(axes: Axes, steps: Sequence[float], seen: int | None) -> None:
    """Training steps from 0 to the last one the run took, whole numbers: one saved step sits at its place
    in the run rather than in the middle of an axis from -0.04 to 0.04."""
    from matplotlib.ticker import MaxNLocator

    if not steps:
        return
    high = max(max(steps), (seen or 0) - 1)
    pad = max(0.5, 0.03 * high)
    axes.set_xlim(min(0.0, min(steps)) - pad, high + pad)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def gradient_figure(recording: dict[str, Any] | None) -> Figure | None:
    """Mean |gradient| per layer over the saved training steps (median, range, the last layer), and
    the spread of all gradient values (5th and 95th percentiles); None when no gradient was recorded."""
    entries = downsample((recording or {}).get("gradients") or [])
    if not entries:
        return None
    figure = _figure(11, 3.5)
    left, right = figure.subplots(1, 2)
    steps = [float(e["step"]) for e in entries]
    per_step = [[_number(s.get("mean_abs")) for s in e.get("layers", {}).values()] for e in entries]
    per_step = [[v for v in values if v is not None and v > 0] for values in per_step]
    kept = [(x, values) for x, values in zip(steps, per_step, strict=True) if values]
    if kept:
        xs = [x for x, _ in kept]
        low, high = [min(v) for _, v in kept], [max(v) for _, v in kept]
        if len(kept) > 1:
            left.fill_between(xs, low, high, alpha=0.2, label="range over layers")
        else:  # one step: a band of no width would not show
            left.vlines(xs, low, high, linewidth=8, alpha=0.2, label="range over layers")
        _plot(left, xs, [statistics.median(v) for _, v in kept], label="median layer")
        last = list(entries[-1].get("layers", {}))[-1:] or []
        if last:
            values = [_number(e.get("layers", {}).get(last[0], {}).get("mean_abs")) for e in entries]
            _plot(left, steps, [v if v and v > 0 else None for v in values], label=f"{last[0]} (last layer)")
        left.set_yscale("log")
        left.set_ylabel("mean |gradient| (log scale)")
        left.legend(loc="best", fontsize=8)
    else:
        _empty(left, "every recorded gradient was zero or not finite")
    seen = ((recording or {}).get("steps_seen") or {}).get("TRAIN")
    left.set_title("Mean |gradient| per layer")
    left.set_xlabel("training step")
    left.grid(alpha=0.3)
    _step_axis(left, steps, seen)
    _plot(right, steps, [_number((e.get("all") or {}).get("p95")) for e in entries], label="95th percentile")
    _plot(right, steps, [_number((e.get("all") or {}).get("p5")) for e in entries], label="5th percentile")
    right.set_title("Spread of gradient values")
    right.set_xlabel("training step")
    right.set_ylabel("gradient value")
    right.grid(alpha=0.3)
    right.legend(loc="best", fontsize=8)
    _step_axis(right, steps, seen)
    _caption(figure, saving_note(recording, ("TRAIN",)))
    return figure


def utilisation_figure(profile: dict[str, Any] | None) -> Figure | None:
    """CPU and memory (and each GPU where one was present) over the run; None without samples."""
    samples = downsample((profile or {}).get("samples") or [])
    if not samples:
        return None
    figure = _figure(11, 3.2)
    axes = figure.subplots()
    times = [float(s.get("t", 0.0)) for s in samples]
    _plot(axes, times, [_number(s.get("cpu_percent")) for s in samples], label="CPU (all cores)")
    _plot(axes, times, [_number(s.get("memory_percent")) for s in samples], label="memory")
    # GPU lines only where the sampler saw a GPU: a line at zero would read as "idle GPU".
    for index in range(int((profile or {}).get("gpu_count") or 0)):
        values = [
            next(
                (_number(g.get("utilization_percent")) for g in s.get("gpus", []) if g.get("index") == index),
                None,
            )
            for s in samples
        ]
        _plot(axes, times, values, label=f"GPU {index}")
    axes.set_ylim(0, 105)
    axes.set_xlabel("seconds since the start of training")
    axes.set_ylabel("% in use")
    axes.set_title("Utilisation over time")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return figure


def confusion_figure(matrix: list[list[int]], names: Sequence[str]) -> Figure:
    """Test images per (true, predicted) class; counts written in the cells when the classes are few."""
    size = len(matrix)
    side = min(max(4.0, 0.25 * size + 2), 14)
    figure = _figure(side + 1, side)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    from matplotlib.ticker import MaxNLocator

    colorbar = figure.colorbar(image, ax=axes, shrink=0.8, label="test images")
    colorbar.locator = MaxNLocator(integer=True)  # counts: no 0.5 images
    colorbar.update_ticks()
    if size <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(size), [str(n)[:20] for n in names], rotation=90, fontsize=7)
        axes.set_yticks(range(size), [str(n)[:20] for n in names], fontsize=7)
    peak = max((max(row) for row in matrix), default=0)
    if size <= 15:
        for row in range(size):
            for column in range(size):
                value = matrix[row][column]
                axes.text(
                    column, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black",
                )  # fmt: skip
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix of the test set ({sum(map(sum, matrix))} images)")
    return figure


def class_accuracy_figure(classes: Sequence[ClassAccuracy], shown: int = 15) -> Figure:
    """Accuracy per class on the test set: every class when they are few, else the best and worst `shown`."""
    judged = sorted((c for c in classes if c.images), key=lambda c: (c.accuracy or 0.0, c.name))
    if len(judged) > 2 * shown:
        judged = judged[:shown] + judged[-shown:]
        title = f"Test accuracy of the {shown} worst and {shown} best classes"
    else:
        title = "Test accuracy per class"
    figure = _figure(7, max(2.5, 0.22 * len(judged) + 1))
    axes = figure.subplots()
    axes.barh(range(len(judged)), [c.accuracy or 0.0 for c in judged], color="C2")
    axes.set_yticks(range(len(judged)), [f"{c.name[:28]} ({c.images})" for c in judged], fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy (test images in brackets)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return figure


# --- the int8 model and what an endpoint serves ---------------------------------------------------


@dataclass(frozen=True)
class Int8Endpoint:
    """The int8 model's figures and what the endpoint `deploy` makes would serve, in words.

    Without a readable metadata.json only `figures` (why not, or where they will appear) is set.
    """

    figures: str  # agreement and accuracies, why there is no int8 model, or why they were not read
    source: str = ""  # where metadata.json was read
    endpoint: str = ""  # the configured endpoint: "ml.m5.large (CPU)", "a serverless endpoint (CPU)"
    serves: str = ""  # "int8" or "float"
    why: str = ""  # model_fn's own reason
    note: str = ""  # config.toml's quantize no longer matches the model's
    quantization: dict[str, Any] | None = None  # metadata.json's `quantization`, as read


def endpoint_device(config: ProjectConfig) -> tuple[str, str]:
    """(the endpoint `deploy` makes, in words; the device model_fn finds on it, as torch names it)."""
    if config.settings.endpoint.serverless:
        return "a serverless endpoint (CPU)", "cpu"
    instance_type = config.settings.instances.endpoint.type
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    # NVIDIA GPU families (ml.g4dn, ml.g5, ml.p3, ...) get the GPU image, where torch finds CUDA.
    device = "cuda" if re.match(r"^[gp][0-9]", family) else "cpu"
    return f"{instance_type} ({'GPU' if device == 'cuda' else 'CPU'})", device


def int8_figures(quantization: dict[str, Any]) -> str:
    """metadata.json's `quantization` in words (training/quantize.py: `quantize_and_compare`)."""
    if not quantization:
        return f"none in {METADATA_FILE} (a tuning job's model, or one trained before int8)"
    if not quantization.get("available"):
        return f"not made: {quantization.get('reason') or 'no reason recorded'}"
    drop = quantization["accuracy_drop_points"]
    change = f"{drop:.2f} points lost" if drop >= 0 else f"{-drop:.2f} points gained"
    figures = (
        f"{quantization['agreement']:.2%} top-1 agreement with float on "
        f"{quantization['validation_images']} validation images; validation accuracy "
        f"float {quantization['float_accuracy']:.2%}, int8 {quantization['int8_accuracy']:.2%} ({change})"
    )
    if "int8_bytes" in quantization:  # measured since the int8 model is ONNX
        megabytes = {precision: quantization[f"{precision}_bytes"] / 1e6 for precision in ("int8", "float")}
        figures += (
            f"; {megabytes['int8']:.1f} MB (float {megabytes['float']:.1f} MB), "
            f"{quantization['int8_cpu_ms']:.1f} ms per image on the training job's CPU "
            f"(float {quantization['float_cpu_ms']:.1f} ms)"
        )
    return figures


def _setting_note(config: ProjectConfig, quantization: dict[str, Any]) -> str:
    """A word when config.toml's quantize changed since training: the endpoint follows the model."""
    now, trained = config.settings.hyperparameters.quantize, quantization.get("setting")
    if now is None or trained is None or now == trained:
        return ""
    return (
        f"config.toml now says quantize = {now}, but this model was trained with quantize = {trained} "
        "and the endpoint follows the model: train again to change it"
    )


def int8_endpoint(config: ProjectConfig, metadata: dict[str, Any] | None, source: str) -> Int8Endpoint:
    """The int8 figures of `metadata` (metadata.json, read from `source`; None: `source` says why not)
    and what the configured endpoint would serve: model_fn's own decision, without its override."""
    if metadata is None:
        return Int8Endpoint(source)
    endpoint, device = endpoint_device(config)
    try:
        quantization = metadata.get("quantization") or {}
        figures = int8_figures(quantization)
        serves, why = schema.serving_precision(quantization, device)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # model_fn would fail on it too
        return Int8Endpoint(f"{METADATA_FILE} is not as training writes it: {error!r}", source)
    note = _setting_note(config, quantization)
    return Int8Endpoint(figures, source, endpoint, serves, why, note, quantization)


def int8_facts(int8: Int8Endpoint) -> list[tuple[str, str]]:
    """(label, text) lines of the report's int8 endpoint section."""
    if not int8.serves:
        return [("int8 model", int8.figures)]
    facts = [
        ("int8 model", int8.figures),
        (f"{int8.endpoint} serves", f"{int8.serves}: {int8.why}"),
        ("Read from", int8.source),
    ]
    return facts + ([("Note", int8.note)] if int8.note else [])


def metadata_in_archive(stream: IO[bytes]) -> dict[str, Any] | None:
    """metadata.json of a model.tar.gz read from `stream` as far as that file and no further; None if absent.

    A stream, not a download: the weights before it are read past, never stored.
    """
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for count, member in enumerate(tar, 1):
            if count > MAX_ARCHIVE_MEMBERS:
                return None
            if member.name.removeprefix("./") != METADATA_FILE or not member.isfile():
                continue
            if member.size > MAX_FILE_BYTES:
                raise ReportError(f"{METADATA_FILE} is {member.size / 2**20:.0f} MB in {MODEL_ARCHIVE}")
            extracted = tar.extractfile(member)
            return json.loads(extracted.read()) if extracted is not None else None
    return None


def local_model_metadata(run_dir: Path, shown: str) -> tuple[dict[str, Any] | None, str]:
    """(metadata.json of a local run, where it was read) or (None, why not); `shown` names `run_dir`.

    `train --local` keeps the tree (`opt_ml/model/`) and packs `model.tar.gz` beside it.
    """
    try:
        for folder, name in ((run_dir / "opt_ml" / "model", "opt_ml/model/"), (run_dir, "")):
            if (folder / METADATA_FILE).is_file():
                return read_json(folder / METADATA_FILE), f"{shown}/{name}{METADATA_FILE}"
        if (run_dir / MODEL_ARCHIVE).is_file():
            with (run_dir / MODEL_ARCHIVE).open("rb") as stream:
                metadata = metadata_in_archive(stream)
            if metadata is not None:
                return metadata, f"{METADATA_FILE} in {shown}/{MODEL_ARCHIVE}"
    except (ReportError, ValueError, OSError, EOFError, tarfile.TarError) as error:
        return None, f"{METADATA_FILE} of {shown} not read: {' '.join(str(error).split())}"
    return None, (
        f"no {METADATA_FILE} in {shown} (looked in opt_ml/model/, the folder itself and {MODEL_ARCHIVE}): "
        "the figures are in the run's model artifact"
    )


def model_archive_uri(description: dict[str, Any]) -> str:
    """The job's model.tar.gz: as DescribeTrainingJob gives it, else where SageMaker puts it."""
    described = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    output_path, job = description["OutputDataConfig"]["S3OutputPath"], description["TrainingJobName"]
    return described or _join(output_path, job, "output", MODEL_ARCHIVE)


def job_model_metadata(
    session: Session, description: dict[str, Any], *, progress: bool = True
) -> tuple[dict[str, Any] | None, str]:
    """(metadata.json of the job's model.tar.gz, where it was read), or (None, why not: where it will be)."""
    uri = model_archive_uri(description)
    size = archive_size(session, uri)
    if size is None:
        return None, (
            f"no {MODEL_ARCHIVE} at {uri} yet: the figures appear here once the job has saved its model "
            f"(they are in its {METADATA_FILE})"
        )
    if size > MAX_MODEL_ARCHIVE_BYTES:
        return None, (
            f"{uri} is {size / 2**20:.0f} MB, more than the report reads "
            f"({MAX_MODEL_ARCHIVE_BYTES // 2**20} MB); the figures are in its {METADATA_FILE}"
        )
    bucket, key = _s3_location(uri)
    body = session.aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    try:
        if progress:
            from rich.progress import wrap_file

            with wrap_file(body, size, description=f"reading {MODEL_ARCHIVE}", transient=True) as stream:
                metadata = metadata_in_archive(stream)
        else:
            metadata = metadata_in_archive(body)
    except (ReportError, ValueError, OSError, EOFError, tarfile.TarError) as error:
        return None, f"{uri} not read: {' '.join(str(error).split())}"
    finally:
        body.close()
    if metadata is None and session.dry_run:
        return None, (
            f"{uri} is a dry run's stand-in: the figures appear here once a job has run and saved its "
            f"model (they are in its {METADATA_FILE})"
        )
    if metadata is None:
        return None, f"{uri} holds no {METADATA_FILE}"
    return metadata, f"{METADATA_FILE} in {uri}"


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


def _class_list(classes: Sequence[ClassAccuracy]) -> str:
    return ", ".join(f"{c.name} ({_percent(c.accuracy)} of {c.images})" for c in classes)


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


# --- the entry points -----------------------------------------------------------------------------


def _best(state: ProjectState) -> dict[str, Any] | None:
    return state.value(BEST_HYPERPARAMETERS)


def build_local_report(
    config: ProjectConfig, run_dir: Path | None = None, *, reports_dir: Path | None = None
) -> Report:
    """The report of a local run (`train --local`, default runs/local) into `reports/<run folder name>/`."""
    run_dir = Path(run_dir) if run_dir is not None else config.root / LOCAL_RUN
    output = read_output(local_output_dir(run_dir))
    name = run_dir.resolve().name
    try:
        shown = run_dir.resolve().relative_to(config.root.resolve()).as_posix()
    except ValueError:
        shown = name
    folder = Path(reports_dir or config.root / REPORTS_FOLDER) / name
    job_name = local_job_name(run_dir)
    return write_report(
        output,
        folder,
        run=f"local run {shown}",
        source=f"train --local, run folder {shown}",
        best_hyperparameters=_best(session_state(config)),
        int8=int8_endpoint(config, *local_model_metadata(run_dir, shown)),
        tracking=experiments.find_run(config, job_name, server=False) if job_name else None,
    )


def local_job_name(run_dir: Path) -> str | None:
    """The job name `train --local` gave the run (hyperparameters.json, as SageMaker's), if readable."""
    path = Path(run_dir) / "opt_ml" / "input" / "config" / "hyperparameters.json"
    try:
        name = json.loads(read_json(path).get("sagemaker_job_name", "null"))
    except (OSError, ReportError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def build_job_report(
    config: ProjectConfig,
    session: Session,
    training_job_name: str | None = None,
    *,
    reports_dir: Path | None = None,
    progress: bool = True,
) -> Report:
    """The report of a training job (default: the last one `train` started) into `reports/<job>/`.

    Its output.tar.gz is downloaded from S3 and the files the report reads are extracted into
    `reports/<job>/job-output/`; its model.tar.gz is read as far as metadata.json (the int8 figures).
    In a dry run the job was captured, not run: unless an archive was put in the offline S3 at the
    job's output path, nothing is written (`Report.captured`).
    """
    name = training_job_name or latest_training_job(session.state)
    folder = Path(reports_dir or config.root / REPORTS_FOLDER) / name
    description = describe_training_job(session, name)
    status = description.get("TrainingJobStatus", "")
    uri = output_archive_uri(description)
    size = archive_size(session, uri)
    if size is None:
        if session.dry_run:
            return Report(
                run=name, folder=folder, source=f"training job {name}", captured=True, status=CAPTURED
            )
        raise ReportError(f"no {OUTPUT_ARCHIVE} at {uri} yet (training job {name} is {status or 'unknown'})")
    with tempfile.TemporaryDirectory(prefix="report-") as scratch:
        archive = download_archive(session, uri, Path(scratch) / OUTPUT_ARCHIVE, size, progress=progress)
        extracted = folder / JOB_OUTPUT_FOLDER
        shutil.rmtree(extracted, ignore_errors=True)
        notes = extract_outputs(archive, extracted)
    int8 = int8_endpoint(config, *job_model_metadata(session, description, progress=progress))
    source = f"training job {name}, outputs from {uri}"
    if session.dry_run:
        notes.insert(
            0,
            f"dry run: the job was {CAPTURED}; these outputs were put in the offline S3, not made by a job",
        )
    return write_report(
        read_output(extracted),
        folder,
        run=name,
        source=source,
        status=status if not session.dry_run else CAPTURED,
        sagemaker_verdicts=rule_verdicts(description, dry_run=session.dry_run),
        best_hyperparameters=_best(session.state),
        notes=notes,
        int8=int8,
        tracking=None if session.dry_run else experiments.find_run(config, name, server=True),
    )


def build_report(
    config: ProjectConfig,
    session: Session | None = None,
    *,
    training_job_name: str | None = None,
    run_dir: Path | None = None,
    reports_dir: Path | None = None,
    progress: bool = True,
) -> Report:
    """A job's report when given a session (`build_job_report`), else a local run's (`build_local_report`)."""
    if session is None:
        return build_local_report(config, run_dir, reports_dir=reports_dir)
    return build_job_report(config, session, training_job_name, reports_dir=reports_dir, progress=progress)


# --- the earlier interface (the notebook's cells call it) -----------------------------------------


@dataclass
class TrainingReport:
    """SageMaker's view of a job, and (when read) its in-job outputs for `loss_figure`."""

    training_job_name: str
    status: str
    verdicts: list[RuleVerdict]
    artifacts: JobArtifacts
    output: JobOutput | None = None

    def loss_figure(self) -> Figure:
        recording = self.output.recording if self.output else None
        return loss_figure(epoch_points(recording, self.output.history if self.output else None), recording)


def training_report(
    session: Session, training_job_name: str, *, tensors: str | Path | None = None, curves: bool = True
) -> TrainingReport:
    """SageMaker's verdicts and locations of `training_job_name`; with `curves`, its outputs from a
    local folder `tensors` (a run folder, or `local_tensors_dir(...)`) or, for a job that ran, S3."""
    description = describe_training_job(session, training_job_name)
    output = None
    if curves and tensors is not None:
        output = read_output(local_output_dir(Path(tensors)))
    elif curves and not session.dry_run:
        uri = output_archive_uri(description)
        size = archive_size(session, uri)
        if size is not None:
            with tempfile.TemporaryDirectory(prefix="report-") as scratch:
                archive = download_archive(session, uri, Path(scratch) / OUTPUT_ARCHIVE, size, progress=False)
                extract_outputs(archive, Path(scratch) / "output")
                output = read_output(Path(scratch) / "output")
                output.profiler_report = None  # gone with the scratch folder
    return TrainingReport(
        training_job_name=training_job_name,
        status=description.get("TrainingJobStatus", ""),
        verdicts=rule_verdicts(description, dry_run=session.dry_run),
        artifacts=job_artifacts(description),
        output=output,
    )
