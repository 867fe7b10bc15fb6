"""Validate every answer before anything is rendered.

cookiecutter runs this after creating the project folder and removes that
folder when the hook exits non-zero, so a refused answer leaves nothing on disk.
The answers arrive as data: the whole context, JSON-encoded by Jinja's tojson
(which escapes quotes, so the raw string below cannot be broken out of).
Each problem is one line: which answer, the value given, what is allowed.
"""

from __future__ import annotations

import json
import keyword
import math
import re
import sys
import unicodedata

BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny")
CHOICES = {
    "backbone": BACKBONES,
    "finetune": ("head", "full"),
    "rule_set": ("standard", "minimal", "extended", "none"),
    "lr_scaling": ("Logarithmic", "Linear", "ReverseLogarithmic", "Auto"),
    "objective_type": ("Minimize", "Maximize"),
    "early_stopping_type": ("Off", "Auto"),
    "python_version": ("3.10", "3.11", "3.12"),
}
BOOLEANS = ("pretrained", "use_spot", "include_notebook", "include_github_actions")
FREE_TEXT = ("project_name", "description", "author_name")
PROFILER_INTERVALS = (100, 200, 500, 1000, 5000, 60000)

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.[0-9]*(x?large|medium|small|micro|nano|metal)$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}$")
FLOAT_RE = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")
INT_RE = re.compile(r"^[0-9]+$")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$")
PY_VERSION_RE = re.compile(r"^py3[0-9]{1,2}$")
IMAGE_URI_RE = re.compile(
    r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$"
)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def as_int(answers: dict, key: str, problems: list[str], minimum: int, maximum: int) -> int | None:
    """The answer as an int in [minimum, maximum], or None after recording why not."""
    value = str(answers[key]).strip()
    if not INT_RE.match(value) or not minimum <= int(value) <= maximum:
        problems.append(f"{key}: {answers[key]!r} is not a whole number from {minimum} to {maximum}")
        return None
    return int(value)


def as_float(answers: dict, key: str, problems: list[str]) -> float | None:
    value = str(answers[key]).strip()
    if not FLOAT_RE.match(value) or not math.isfinite(float(value)) or float(value) <= 0:
        problems.append(f"{key}: {answers[key]!r} is not a positive decimal number (e.g. 0.001 or 1e-3)")
        return None
    return float(value)


def check_identifiers(answers: dict, problems: list[str]) -> None:
    slug, package = str(answers["project_slug"]), str(answers["package_name"])
    if not SLUG_RE.match(slug) or len(slug) > 64:
        problems.append(
            f"project_slug: {slug!r} must start with a letter and hold only lowercase letters, digits "
            "and single '-' (at most 64 characters)"
        )
    if not PACKAGE_RE.match(package) or len(package) > 64:
        problems.append(
            f"package_name: {package!r} must start with a lowercase letter and hold only lowercase "
            "letters, digits and '_' (at most 64 characters)"
        )
    elif keyword.iskeyword(package) or keyword.issoftkeyword(package) or package in sys.stdlib_module_names:
        problems.append(
            f"package_name: {package!r} is a Python keyword or standard-library module; pick another"
        )
    elif package in {"classifier", "training", "inference", "tests", "sagemaker", "torch", "torchvision"}:
        problems.append(f"package_name: {package!r} would shadow a module the project uses; pick another")


def check_free_text(answers: dict, problems: list[str]) -> None:
    for key in FREE_TEXT:
        value = str(answers[key])
        if not value.strip():
            problems.append(f"{key}: must not be empty")
        elif any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in value):
            problems.append(
                f"{key}: {value!r} holds a control character (newline, tab, ...); use one plain line"
            )
        elif len(value) > 200:
            problems.append(f"{key}: {len(value)} characters; at most 200 are allowed")
    email = str(answers["author_email"])
    if email and not EMAIL_RE.match(email):
        problems.append(f"author_email: {email!r} is not an e-mail address (or leave it empty)")


def check_choices(answers: dict, problems: list[str]) -> None:
    for key, allowed in CHOICES.items():
        if answers[key] not in allowed:
            problems.append(f"{key}: {answers[key]!r} is not one of {', '.join(allowed)}")
    for key in BOOLEANS:
        if not isinstance(answers[key], bool):
            problems.append(f"{key}: {answers[key]!r} is not yes or no")


def check_model_and_hyperparameters(answers: dict, problems: list[str]) -> None:
    as_int(answers, "num_classes", problems, 2, 100_000)
    as_int(answers, "image_size", problems, 32, 1024)
    as_int(answers, "epochs", problems, 1, 1000)
    as_int(answers, "batch_size", problems, 1, 4096)
    as_int(answers, "test_batch_size", problems, 1, 4096)
    as_float(answers, "lr", problems)
    url = str(answers["dataset_url"])
    if not re.match(r"^(https?|s3)://\S+$", url):
        problems.append(f"dataset_url: {url!r} is not an http(s):// or s3:// URL")


def check_tuning(answers: dict, problems: list[str]) -> None:
    lr_min, lr_max = as_float(answers, "lr_min", problems), as_float(answers, "lr_max", problems)
    if lr_min is not None and lr_max is not None and lr_min >= lr_max:
        problems.append(f"lr_min: {lr_min} must be smaller than lr_max ({lr_max})")
    choices = str(answers["batch_size_choices"])
    values = [part.strip() for part in choices.split(",")]
    if not all(INT_RE.match(v) and int(v) > 0 for v in values):
        problems.append(f"batch_size_choices: {choices!r} must be positive whole numbers separated by commas")
    elif len(set(values)) != len(values):
        problems.append(f"batch_size_choices: {choices!r} lists a batch size twice")
    max_jobs = as_int(answers, "max_jobs", problems, 1, 500)
    max_parallel = as_int(answers, "max_parallel_jobs", problems, 1, 100)
    if max_jobs is not None and max_parallel is not None and max_parallel > max_jobs:
        problems.append(f"max_parallel_jobs: {max_parallel} must not exceed max_jobs ({max_jobs})")
    name = str(answers["objective_metric_name"])
    if not re.match(r"^[\w:./=+-]{1,255}$", name):
        problems.append(f"objective_metric_name: {name!r} may hold only letters, digits and _:./=+- (1-255)")
    regex = str(answers["objective_metric_regex"])
    try:
        groups = re.compile(regex).groups
    except re.error as error:
        problems.append(f"objective_metric_regex: {regex!r} is not a regular expression ({error})")
    else:
        if groups != 1 or len(regex) > 500:
            problems.append(
                f"objective_metric_regex: {regex!r} must have exactly one group (the number), 500 chars max"
            )


def check_instances(answers: dict, problems: list[str]) -> None:
    for role in ("tuning", "training", "endpoint"):
        key = f"{role}_instance_type"
        if not INSTANCE_TYPE_RE.match(str(answers[key])):
            problems.append(
                f"{key}: {answers[key]!r} is not an instance type like ml.g4dn.xlarge (ml.<family>.<size>)"
            )
        as_int(answers, f"{role}_instance_count", problems, 1, 100)
    max_run = as_int(answers, "max_run_seconds", problems, 60, 28 * 24 * 3600)
    max_wait = as_int(answers, "max_wait_seconds", problems, 60, 28 * 24 * 3600)
    if answers["use_spot"] is True and max_run and max_wait and max_wait < max_run:
        problems.append(
            f"max_wait_seconds: {max_wait} must be at least max_run_seconds ({max_run}) with use_spot"
        )


def check_debugger(answers: dict, problems: list[str]) -> None:
    as_int(answers, "train_save_interval", problems, 1, 1_000_000)
    as_int(answers, "eval_save_interval", problems, 1, 1_000_000)
    interval = as_int(answers, "profiler_interval_millis", problems, 100, 60000)
    if interval is not None and interval not in PROFILER_INTERVALS:
        allowed = ", ".join(map(str, PROFILER_INTERVALS))
        problems.append(f"profiler_interval_millis: {interval} is not one of {allowed}")


def check_aws(answers: dict, problems: list[str]) -> None:
    region = str(answers["aws_region"])
    if not REGION_RE.match(region):
        problems.append(f"aws_region: {region!r} is not a region like us-east-1")
    role = str(answers["role_arn"])
    if role and not ROLE_ARN_RE.match(role):
        problems.append(f"role_arn: {role!r} is not an IAM role ARN like arn:aws:iam::123456789012:role/Name")
    bucket = str(answers["s3_bucket"])
    if bucket and (
        not BUCKET_RE.match(bucket)
        or ".." in bucket
        or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket)
        or bucket.startswith("xn--")
        or bucket.endswith("-s3alias")
    ):
        problems.append(
            f"s3_bucket: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-'; "
            "starting and ending with a letter or digit), or leave it empty"
        )
    prefix = str(answers["s3_prefix"])
    if not PREFIX_RE.match(prefix) or prefix.startswith("/") or prefix.endswith("/"):
        problems.append(f"s3_prefix: {prefix!r} must be a key prefix without leading or trailing '/'")
    for scope in ("training", "inference"):
        version = str(answers[f"{scope}_framework_version"])
        if not VERSION_RE.match(version):
            problems.append(f"{scope}_framework_version: {version!r} is not a version like 2.6.0")
        py = str(answers[f"{scope}_py_version"])
        if not PY_VERSION_RE.match(py):
            problems.append(f"{scope}_py_version: {py!r} is not like py312")
        uri = str(answers[f"{scope}_image_uri"])
        if uri and not IMAGE_URI_RE.match(uri):
            problems.append(
                f"{scope}_image_uri: {uri!r} is not an ECR image URI "
                "(<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>), or leave it empty"
            )


CHECKS = (
    check_identifiers,
    check_free_text,
    check_choices,
    check_model_and_hyperparameters,
    check_tuning,
    check_instances,
    check_debugger,
    check_aws,
)


def validate(answers: dict) -> list[str]:
    """One line per problem; empty when every answer is usable."""
    problems: list[str] = []
    for check in CHECKS:
        check(answers, problems)
    return problems


def main(context_json: str) -> int:
    problems = validate(json.loads(context_json))
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print(
            f"Nothing was generated: fix the {len(problems)} answer(s) above and run again.", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(r"""{{ cookiecutter | tojson }}"""))
