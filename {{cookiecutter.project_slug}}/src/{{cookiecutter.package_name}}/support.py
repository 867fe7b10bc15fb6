"""When AWS stops supporting what this project runs on, kept in one table that `preflight` reads.

Each entry is a date AWS has published, what it means, and what to do. Update the table when AWS
publishes new dates (the SageMaker Python SDK's support policy, the Deep Learning Containers'
"framework support policy" page, the Debugger and Profiler availability notices). `preflight`
warns when a date the configuration depends on is past or less than `WARN_DAYS` away.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .config import ProjectConfig, schema

# How early a coming date becomes a warning.
WARN_DAYS = 90


@dataclass(frozen=True)
class SupportDate:
    subject: str
    date: datetime.date
    event: str
    # What to do once the date is near or past.
    advice: str


# PyTorch Deep Learning Container images, by (scope, major.minor): end of patching.
IMAGE_PATCH_ENDS: dict[tuple[str, str], datetime.date] = {
    ("training", "2.8"): datetime.date(2026, 8, 6),
    ("inference", "2.6"): datetime.date(2026, 6, 30),
}
SDK_V2_END = SupportDate(
    "sagemaker SDK v2",
    datetime.date(2027, 7, 6),
    "end of support (v2 is in maintenance)",
    "plan the move to SDK v3, which rewrites sagemaker_api.py (the only module importing the SDK)",
)
DEBUGGER_CLOSED = SupportDate(
    "SageMaker Debugger",
    datetime.date(2026, 7, 30),
    "closed to new customers",
    'accounts new to Debugger are refused its rules: set [debugger] evaluation = "in_job" '
    "(train relaunches without them once by itself)",
)
PROFILER_END = SupportDate(
    "SageMaker Profiler",
    datetime.date(2027, 6, 30),
    "end of support",
    "drop the profiler rules from [debugger] rules (the in-job profiler keeps working)",
)


def _image_entry(config: ProjectConfig, scope: str) -> SupportDate | None:
    images = config.section("images")[scope]
    if images.get("image_uri"):
        return None  # a custom image: its owner knows its support
    version = images["framework_version"]
    major_minor = ".".join(version.split(".")[:2])
    date = IMAGE_PATCH_ENDS.get((scope, major_minor))
    if date is None:
        return None
    newer = sorted((v for v in schema.PYTORCH_IMAGES[scope] if _version(v) > _version(version)), key=_version)
    advice = (
        f"move [images.{scope}] framework_version to {newer[-1]}"
        if newer
        else f"it is the newest PyTorch {scope} image this project knows: it keeps working unpatched; "
        "a custom image ([images." + scope + "] image_uri) is the way to patched software"
    )
    if not newer and scope == "inference":
        advice += ', or [endpoint] server = "ray_serve" (AWS\'s Ray Serve image)'

    return SupportDate(f"PyTorch {version} {scope} image", date, "end of patching", advice)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def relevant_dates(config: ProjectConfig) -> list[SupportDate]:
    """The dates this configuration depends on: its images, the SDK, Debugger and Profiler if used."""
    entries = [_image_entry(config, "training"), SDK_V2_END]
    # The PyTorch inference image serves TorchServe only; AWS's Ray Serve images are "continuously
    # maintained with security patches" (its Deep Learning Containers docs), with no end date yet.
    if config.data.get("endpoint", {}).get("server", "torchserve") == "torchserve":
        entries.insert(1, _image_entry(config, "inference"))
    debugger = config.section("debugger")
    if debugger["evaluation"] != "in_job":
        rules = debugger["rules"]
        if any(name in schema.SAGEMAKER_DEBUGGER_RULES for name in rules):
            entries.append(DEBUGGER_CLOSED)
        if any(name in schema.SAGEMAKER_PROFILER_RULES for name in rules):
            entries.append(PROFILER_END)
    return [entry for entry in entries if entry is not None]


def standing(entry: SupportDate, today: datetime.date) -> tuple[str, str]:
    """("pass" | "warn", one line): past, near (within WARN_DAYS) or far."""
    days = (entry.date - today).days
    when = entry.date.isoformat()
    if days < 0:
        return "warn", f"{entry.event} on {when} ({-days} days ago): {entry.advice}"
    if days <= WARN_DAYS:
        return "warn", f"{entry.event} on {when} (in {days} days): {entry.advice}"
    return "pass", f"{entry.event} on {when} (in {days} days)"
