"""Assembling a report: a run's outputs fetched, read, drawn and written to `reports/<run>/`.

The run is a training job (its archives in S3) or a local run (its folder)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import experiments
from ..aws.context import CAPTURED
from ..aws.session import Session, session_state
from ..aws.state import ProjectState
from ..workflow.launcher import BEST_HYPERPARAMETERS
from .fetch import (
    OUTPUT_ARCHIVE,
    JobArtifacts,
    JobOutput,
    ReportError,
    RuleVerdict,
    archive_size,
    describe_training_job,
    download_archive,
    extract_outputs,
    job_artifacts,
    job_model_metadata,
    latest_training_job,
    local_model_metadata,
    local_output_dir,
    output_archive_uri,
    read_json,
    read_output,
    rule_verdicts,
)
from .figures import loss_figure
from .int8 import int8_endpoint
from .pages import Report, write_report
from .series import epoch_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..config import ProjectConfig

REPORTS_FOLDER = "reports"
LOCAL_RUN = Path("runs") / "local"
# Where a job's extracted output goes, inside its report folder.
JOB_OUTPUT_FOLDER = "job-output"


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


def training_report(session: Session, training_job_name: str, *, curves: bool = True) -> TrainingReport:
    """SageMaker's verdicts and locations of `training_job_name`; with `curves`, for a job that ran, its
    outputs from S3."""
    description = describe_training_job(session, training_job_name)
    output = None
    if curves and not session.dry_run:
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
