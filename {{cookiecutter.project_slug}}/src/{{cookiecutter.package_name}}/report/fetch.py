"""Fetching a run's output: a training job's description and archives from S3, or a local run's folder.

The training job writes its own findings into its output data folder (`SM_OUTPUT_DATA_DIR`, which
SageMaker packs into `<output path>/<job>/output/output.tar.gz`; `<run dir>/opt_ml/output/data/` for
`train --local`): `rule_verdicts.json` (training/rules.py), `recording.json` (training/recorder.py),
`profiler.json` and `profiler-report.html`, `history.json`. The model artifact's `metadata.json` holds the
int8 model's figures: it is read from a local run's `opt_ml/model/` or streamed from the job's
model.tar.gz only as far as that file.

Everything read is bounded: an archive's size is checked before it is downloaded, only the files above are
extracted (tarfile's "data" filter, each under a size limit), and every JSON file is size-checked before it
is parsed.
"""

from __future__ import annotations

import json
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..aws.session import Session
from ..aws.state import TRAINING_JOB, ProjectState
from ..workflow.launcher import LaunchError

if TYPE_CHECKING:
    pass

NOT_EVALUATED_OFFLINE = "not evaluated offline"
NOT_EVALUATED_YET = "not evaluated yet"
PROFILER_REPORT_RULE = "ProfilerReport"
# How the pages mark NotEnoughData, a verdict SageMaker's rules never give.
PROJECT_VERDICT_MARK = "(this project's verdict)"
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

    `path` may be the run folder (`train --local --run-dir`, holding `opt_ml/`) or the output data folder
    itself (e.g. an extracted output.tar.gz).
    """
    path = Path(path)
    for candidate in (path, path / "opt_ml" / "output" / "data"):
        if any((candidate / name).is_file() for name in OUTPUT_FILES):
            return candidate
    raise ReportError(
        f"no training outputs in {path} (looked for {', '.join(OUTPUT_FILES)} there and in "
        "opt_ml/output/data/); run `train --local` first"
    )


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
