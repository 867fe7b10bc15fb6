"""When AWS stops supporting what this project runs on, kept in one table that `preflight` reads.

Each entry is a date AWS has published, what it means, and what to do. Update the table when AWS
publishes new dates (the SageMaker Python SDK's support policy, the Deep Learning Containers'
"framework support policy" page, the Debugger and Profiler availability notices). `preflight`
warns when a date the configuration depends on is past or less than `WARN_DAYS` away.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ..config import ProjectConfig, aws_tables, schema

# How early a coming date becomes a warning.
WARN_DAYS = 90


@dataclass(frozen=True)
class SupportDate:
    subject: str
    date: datetime.date
    event: str
    # What to do once the date is near or past.
    advice: str


# PyTorch Deep Learning Container images, by (scope, major.minor): end of patching (EOP), for every image
# a render can pick (aws_tables.PYTORCH_IMAGES from aws_tables.MINIMUM_PYTORCH on). Source: the repository
# aws/deep-learning-containers, which generates its "Framework Support Policy" page from these files:
# - 2.6 to 2.10: docs/src/data/pytorch-training/<v>-{cpu,gpu}-sagemaker.yml and
#   docs/src/data/pytorch-inference/2.6-{cpu,gpu}-sagemaker.yml, `eop:`;
# - 2.11 to 2.14 (Amazon Linux 2023): docs/src/data/pytorch/<v>-{cpu,cuda}-sagemaker.yml, `eop:`;
# - 2.0 to 2.5: docs/src/legacy/legacy_support.yml, `pytorch:` (one date for training and inference).
# The same page says AWS cannot fully patch the Ubuntu-based 2.8 to 2.10 images and recommends the
# Amazon Linux 2023 images (2.11 and later); after EOP an image stays in ECR, unpatched.
IMAGE_PATCH_ENDS: dict[tuple[str, str], datetime.date] = {
    ("training", "2.3"): datetime.date(2025, 4, 24),
    ("training", "2.4"): datetime.date(2025, 7, 24),
    ("training", "2.5"): datetime.date(2025, 10, 29),
    ("training", "2.6"): datetime.date(2026, 1, 29),
    ("training", "2.7"): datetime.date(2026, 4, 23),
    ("training", "2.8"): datetime.date(2026, 8, 6),
    ("training", "2.9"): datetime.date(2026, 10, 15),
    ("training", "2.10"): datetime.date(2027, 1, 21),
    ("training", "2.11"): datetime.date(2027, 4, 30),
    ("training", "2.12"): datetime.date(2027, 7, 2),
    ("training", "2.13"): datetime.date(2027, 7, 20),
    ("training", "2.14"): datetime.date(2027, 9, 28),
    ("inference", "2.0"): datetime.date(2024, 3, 15),
    ("inference", "2.1"): datetime.date(2024, 10, 4),
    ("inference", "2.2"): datetime.date(2025, 1, 30),
    ("inference", "2.3"): datetime.date(2025, 4, 24),
    ("inference", "2.4"): datetime.date(2025, 7, 24),
    ("inference", "2.5"): datetime.date(2025, 10, 29),
    ("inference", "2.6"): datetime.date(2026, 6, 30),
}
# The SDK generations' end of support ([aws] sagemaker_sdk); v3 has none published.
SDK_END: dict[str, SupportDate] = {
    "v2": SupportDate(
        "sagemaker SDK v2",
        datetime.date(2027, 7, 6),
        "end of support (v2 is in maintenance)",
        'move to SDK v3: set [aws] sagemaker_sdk = "v3" (aws/sagemaker_api.py alone imports the SDK)',
    ),
}
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


def _image_entry(config: ProjectConfig, scope: str, today: datetime.date) -> SupportDate | None:
    images = config.section("images")[scope]
    if images.get("image_uri"):
        return None  # a custom image: its owner knows its support
    version = images["framework_version"]
    date = IMAGE_PATCH_ENDS.get((scope, _major_minor(version)))
    if date is None:
        return None
    generation = aws_tables.sdk_generation(config.section("aws"))
    advice = _move_to(scope, version, generation, today)
    if scope == "inference" and advice.startswith("no SageMaker SDK"):
        advice += ', or [endpoint] server = "ray_serve" (AWS\'s Ray Serve image)'
    return SupportDate(f"PyTorch {version} {scope} image", date, "end of patching", advice)


def _patched(scope: str, newer_than: str, generation: str, today: datetime.date) -> list[str]:
    """`generation`'s image versions newer than `newer_than` still patched on `today`, oldest first."""
    ends = {
        v: IMAGE_PATCH_ENDS.get((scope, _major_minor(v)))
        for v in aws_tables.PYTORCH_IMAGES[generation][scope]
    }
    newer = aws_tables.version_tuple(_major_minor(newer_than))
    patched = [
        v
        for v, end in ends.items()
        if end and end >= today and aws_tables.version_tuple(_major_minor(v)) > newer
    ]
    return sorted(patched, key=aws_tables.version_tuple)


def _move_to(scope: str, version: str, generation: str, today: datetime.date) -> str:
    """What to move to: the image patched longest that this SDK knows, else the SDK that knows one."""
    own = _patched(scope, version, generation, today)
    if own:
        return f"move [images.{scope}] to {_image_settings(scope, own[-1], generation)}"
    for other in aws_tables.SDK_GENERATIONS:
        patched = _patched(scope, version, other, today) if other != generation else []
        if patched:
            settings = _image_settings(scope, patched[-1], other)
            return (
                f"SageMaker SDK {generation} knows no patched PyTorch {scope} image: set [aws] "
                f'sagemaker_sdk = "{other}" and [images.{scope}] {settings}, or [images.{scope}] '
                "image_uri to a patched image of your own"
            )
    return (
        f"no SageMaker SDK knows a newer patched PyTorch {scope} image: it keeps working unpatched; "
        f"a custom image ([images.{scope}] image_uri) is the way to patched software"
    )


def _image_settings(scope: str, version: str, generation: str) -> str:
    py_version = aws_tables.PYTORCH_IMAGES[generation][scope][version][0]
    until = IMAGE_PATCH_ENDS[(scope, _major_minor(version))].isoformat()
    return f'framework_version = "{version}", py_version = "{py_version}" (patched until {until})'


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def relevant_dates(config: ProjectConfig, today: datetime.date) -> list[SupportDate]:
    """The dates this configuration depends on: its images, the SDK, Debugger and Profiler if used."""
    entries = [_image_entry(config, "training", today)]
    # The PyTorch inference image serves TorchServe only; AWS's Ray Serve images are "continuously
    # maintained with security patches" (its Deep Learning Containers docs), with no end date yet.
    if config.data.get("endpoint", {}).get("server", "torchserve") == "torchserve":
        entries.append(_image_entry(config, "inference", today))
    entries.append(SDK_END.get(aws_tables.sdk_generation(config.section("aws"))))
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
