"""What a training job says about itself: rule verdicts, loss curves, where the profiler report is.

- Verdicts: DescribeTrainingJob's DebugRuleEvaluationStatuses and ProfilerRuleEvaluationStatuses
  (what the SDK's `rule_job_summary()` returns), one row per configured rule. A dry run has no
  rule evaluations, so every rule reads "not evaluated offline".
- Loss curves: the `losses` collection the debugger hook saved, per step, for TRAIN and EVAL,
  read with smdebug from the job's S3 output or from a local run (`train --local --debugger`).
- Locations: the debugger, profiler and rule output folders and the ProfilerReport's HTML page,
  `<output_path>/<job>/rule-output/<rule name>/profiler-output/profiler-report.html` (SageMaker's
  layout; the SDK's `latest_job_profiler_artifacts_path()` gives `<profiler path>/<job>/profiler-output`).

smdebug and matplotlib are optional (`pip install '<project>[debug]'`); they are imported only when
curves are read or drawn, with an error saying what to install.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .launcher import LaunchError
from .session import Session
from .state import TRAINING_JOB, ProjectState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODES = ("TRAIN", "EVAL")
# train_model.py evaluates the validation set each epoch and the test set at the end, both in EVAL mode.
MODE_TITLES = {"TRAIN": "training loss", "EVAL": "evaluation loss"}
NOT_EVALUATED_OFFLINE = "not evaluated offline"
NOT_EVALUATED_YET = "not evaluated yet"
PROFILER_REPORT_RULE = "ProfilerReport"
# What the [debug] extra brings; named in the error when it is missing.
DEBUG_EXTRA = "pip install -e '.[debug]'"


class ReportError(LaunchError):
    """Something the report needs is missing (a job, smdebug, saved tensors); the message is one line."""


@dataclass(frozen=True)
class RuleVerdict:
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


@dataclass(frozen=True)
class LossCurve:
    mode: str  # "TRAIN" or "EVAL"
    tensor: str
    steps: list[int]
    values: list[float]


@dataclass
class TrainingReport:
    training_job_name: str
    status: str
    verdicts: list[RuleVerdict]
    artifacts: JobArtifacts
    curves: list[LossCurve] = field(default_factory=list)
    # Where the curves were read from (an s3:// URI or a local folder), or None when not read.
    tensors: str | None = None

    def loss_figure(self) -> Figure:
        source = self.training_job_name if (self.tensors or "").startswith("s3://") else "local run"
        return plot_loss_curves(self.curves, title=f"loss per saved step ({source})")


# --- the job's description ------------------------------------------------------------------------


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


def console_url(s3_uri: str, region: str) -> str:
    """The S3 console page of an object or folder, to open the profiler report from a browser."""
    bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
    query = urllib.parse.urlencode({"region": region, "prefix": key})
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?{query}"


# --- loss curves ----------------------------------------------------------------------------------


def loss_curves(tensors: str | Path) -> list[LossCurve]:
    """The saved loss values per step, per mode, from debugger output (a folder or an s3:// URI).

    Empty when the hook saved no losses there (e.g. rule_set = "none").
    """
    try:
        from smdebug.core.modes import ModeKeys
        from smdebug.trials import create_trial
    except ImportError:
        raise ReportError(f"reading debugger output needs smdebug: {DEBUG_EXTRA}") from None
    location = str(tensors)
    if not location.startswith("s3://") and not Path(location).is_dir():
        raise ReportError(f"no debugger output at {location} (train with the debugger on first)")
    # smdebug logs every file it reads at INFO level.
    logging.getLogger("smdebug").setLevel(logging.WARNING)
    trial = create_trial(location)
    curves = []
    for name in trial.tensor_names(collection="losses"):
        tensor = trial.tensor(name)
        for mode in MODES:
            steps = list(tensor.steps(mode=ModeKeys[mode]))
            if steps:
                values = [float(tensor.value(step, mode=ModeKeys[mode])) for step in steps]
                curves.append(LossCurve(mode, name, steps, values))
    return curves


def plot_loss_curves(curves: list[LossCurve], title: str = "loss per step") -> Figure:
    """One panel per mode (training steps and validation steps are counted separately)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ReportError(f"plotting needs matplotlib: {DEBUG_EXTRA}") from None
    modes = [mode for mode in MODES if any(curve.mode == mode for curve in curves)]
    figure = Figure(figsize=(5 * max(len(modes), 1), 3.5), layout="constrained")
    if not modes:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no loss values were saved", ha="center", va="center")
        return figure
    figure.suptitle(title)
    for position, mode in enumerate(modes, 1):
        axes = figure.add_subplot(1, len(modes), position)
        for curve in curves:
            if curve.mode == mode:
                axes.plot(curve.steps, curve.values, marker="o", markersize=3, label=curve.tensor)
        axes.set_title(MODE_TITLES[mode])
        axes.set_xlabel(f"{mode.lower()} step")
        axes.set_ylabel("loss")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    return figure


# --- the whole report -----------------------------------------------------------------------------


def local_tensors_dir(run_dir: Path) -> Path:
    """Where `run_local_training(..., debugger=True)` (`train --local --debugger`) has smdebug write."""
    return Path(run_dir) / "opt_ml" / "output" / "tensors"


def latest_training_job(state: ProjectState) -> str:
    latest = state.latest(TRAINING_JOB)
    if latest is None:
        raise ReportError("no training job recorded for this project; run `train` or pass --job")
    return latest["name"]


def training_report(
    session: Session, training_job_name: str, *, tensors: str | Path | None = None, curves: bool = True
) -> TrainingReport:
    """Verdicts and locations of `training_job_name`; loss curves from `tensors` (default: the job's
    debugger output in S3), unless `curves` is False or a dry run has nothing there to read."""
    description = describe_training_job(session, training_job_name)
    artifacts = job_artifacts(description)
    source = str(tensors) if tensors is not None else artifacts.debugger_output
    if session.dry_run and tensors is None:
        source = None  # the job never ran: no tensors in S3
    return TrainingReport(
        training_job_name=training_job_name,
        status=description.get("TrainingJobStatus", ""),
        verdicts=rule_verdicts(description, dry_run=session.dry_run),
        artifacts=artifacts,
        curves=loss_curves(source) if curves and source else [],
        tensors=source if curves else None,
    )
