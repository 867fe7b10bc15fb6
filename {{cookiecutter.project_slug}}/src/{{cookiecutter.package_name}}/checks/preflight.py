"""Before anything costs money: does the account let this configuration run, and is what it runs on supported?

`run(config, session, command)` checks, for `command` ("tune", "train", "deploy", or None for all three):

- credentials, region, role and bucket resolve (each failure names what to set);
- Service Quotas: every instance quota the command will draw on, against what it asks for
  (max_parallel_jobs x instances for tuning, the training count, the endpoint count, one processing
  instance per SageMaker rule job); when short: the quota, its value, the need, and the ways out,
  with the quota code for an increase request;
- the image URIs the SDK resolves for the configured versions;
- the support dates of `aws/image_support.py` (images, SDK, Debugger, Profiler).

Each check is pass, warn, fail or skip. A dry run runs the same calls against the offline AWS, which
has no account to speak of: what it cannot know (the caller's identity, SageMaker's quotas) is a skip
saying "not checked offline", never a pass.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from ..aws import image_support, sagemaker_jobs, sdk
from ..aws.context import AwsSetupError
from ..aws.session import Session
from ..config import ProjectConfig
from .findings import FAIL, PASS, SKIP, WARN, Finding

COMMANDS = ("tune", "train", "deploy")
OFFLINE = "not checked offline"
QUOTA_SERVICE = "sagemaker"
PROCESSING_QUOTA = "Number of instances across all processing jobs"
SERVERLESS_QUOTA = "Maximum total concurrency that can be allocated across all serverless endpoints"


@dataclass(frozen=True)
class Quota:
    name: str
    code: str
    value: float


@dataclass(frozen=True)
class Need:
    """How many of a quota's instances a command asks for at once, and how to ask for fewer."""

    command: str
    quota: str
    needed: int
    ways_out: str


def failed(checks: list[Finding]) -> list[Finding]:
    return [check for check in checks if check.status == FAIL]


# --- what the commands ask for --------------------------------------------------------------------


def needs(config: ProjectConfig, command: str | None = None) -> list[Need]:
    """The quota needs of `command` (all three when None), from config.toml alone."""
    instances = config.section("instances")
    tuning = config.section("tuning")
    spot = config.section("jobs")["use_spot"]
    usage = "spot training job usage" if spot else "training job usage"
    found: list[Need] = []
    if command in (None, "tune"):
        machines = instances["tuning"]
        found.append(
            Need(
                "tune",
                f"{machines['type']} for {usage}",
                tuning["max_parallel_jobs"] * machines["count"],
                "lower [tuning] max_parallel_jobs (jobs run one after another instead), "
                "or choose another [instances.tuning] type",
            )
        )
    if command in (None, "train"):
        machines = instances["training"]
        found.append(
            Need(
                "train",
                f"{machines['type']} for {usage}",
                machines["count"],
                "lower [instances.training] count, or choose another type",
            )
        )
        rules = sagemaker_jobs.rule_job_count(config)
        if rules:
            found.append(
                Need(
                    "train",
                    PROCESSING_QUOTA,
                    rules,
                    f"fewer rules in [debugger] rules ({rules} SageMaker rule jobs, one processing "
                    'instance each), or [debugger] evaluation = "in_job" (no rule jobs)',
                )
            )
    if command in (None, "deploy"):
        endpoint = config.settings.endpoint
        if endpoint.serverless:
            found.append(
                Need("deploy", SERVERLESS_QUOTA, endpoint.max_concurrency, "lower [endpoint] max_concurrency")
            )
        else:
            machines = instances["endpoint"]
            found.append(
                Need(
                    "deploy",
                    f"{machines['type']} for endpoint usage",
                    machines["count"],
                    "lower [instances.endpoint] count, choose another type, or [endpoint] serverless = true",
                )
            )
    return found


# --- Service Quotas -------------------------------------------------------------------------------


def quota_values(client: Any) -> dict[str, Quota]:
    """SageMaker's quotas by name: the account's applied values, then AWS's defaults for the rest
    (ListServiceQuotas leaves out quotas whose applied value is not available)."""
    quotas: dict[str, Quota] = {}
    for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
        for page in client.get_paginator(operation).paginate(ServiceCode=QUOTA_SERVICE):
            for item in page.get("Quotas", []):
                if item["QuotaName"] not in quotas and "Value" in item:
                    quotas[item["QuotaName"]] = Quota(
                        item["QuotaName"], item["QuotaCode"], float(item["Value"])
                    )
    return quotas


def quota_check(need: Need, quota: Quota | None, region: str) -> Finding:
    """One need against the account's quota: pass, or fail with the quota, the need and the ways out."""
    name = f"quota: {need.quota}"
    if quota is None:
        return Finding(
            name,
            WARN,
            f"no quota of that name in Service Quotas for {region}: is the instance type offered there?",
        )
    value = f"{quota.value:g}"
    if quota.value >= need.needed:
        return Finding(name, PASS, f"{value} available, {need.command} needs {need.needed} ({quota.code})")
    request = (
        f"aws service-quotas request-service-quota-increase --region {region} --service-code {QUOTA_SERVICE} "
        f"--quota-code {quota.code} --desired-value {need.needed}"
    )
    fewer = ""
    if need.quota.endswith("job usage") and need.command == "tune" and quota.value >= 1:
        fewer = f" (max_parallel_jobs = {max(int(quota.value), 1)} fits)"
    return Finding(
        name,
        FAIL,
        f"the account's quota is {value}, {need.command} needs {need.needed}: {need.ways_out}{fewer}; "
        f"or request an increase of quota {quota.code}: {request}",
    )


def quota_checks(config: ProjectConfig, session: Session, command: str | None) -> list[Finding]:
    wanted = needs(config, command)
    if not wanted:
        return []
    region = session.aws.region
    try:
        quotas = quota_values(session.aws.client("service-quotas"))
    except NotImplementedError:  # moto has no Service Quotas for SageMaker
        quotas = {}
    except botocore.exceptions.ClientError as error:
        if session.dry_run:
            quotas = {}
        else:
            code = error.response.get("Error", {}).get("Code", "")
            return [
                Finding(
                    "quotas",
                    WARN,
                    f"cannot read Service Quotas ({code}): allow servicequotas:ListServiceQuotas and "
                    "servicequotas:ListAWSDefaultServiceQuotas, or check the quotas in the console",
                )
            ]
    checks = []
    for need in wanted:
        quota = quotas.get(need.quota)
        if quota is None and session.dry_run:
            checks.append(
                Finding(
                    f"quota: {need.quota}",
                    SKIP,
                    f"{OFFLINE} (the offline AWS has no SageMaker quotas); "
                    f"{need.command} needs {need.needed}",
                )
            )
        else:
            checks.append(quota_check(need, quota, region))
    return checks


# --- account, images, support dates ---------------------------------------------------------------


def account_checks(session: Session) -> list[Finding]:
    """Credentials, region, role, bucket: each resolves, or one line naming what to set."""
    aws = session.aws
    checks = []
    try:
        identity = aws.client("sts").get_caller_identity()
        if session.dry_run:
            checks.append(
                Finding(
                    "credentials", SKIP, f"{OFFLINE} (dry run: the offline account {identity['Account']})"
                )
            )
        else:
            checks.append(Finding("credentials", PASS, f"account {identity['Account']} as {identity['Arn']}"))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        checks.append(
            Finding(
                "credentials", FAIL, f"{' '.join(str(error).split())}: run `aws configure` or `aws sso login`"
            )
        )
    checks.append(Finding("region", PASS, aws.region))
    try:
        role = aws.role_arn
        checks.append(
            Finding(
                "role", SKIP if session.dry_run else PASS, (f"{OFFLINE}: " if session.dry_run else "") + role
            )
        )
    except AwsSetupError as error:
        checks.append(Finding("role", FAIL, str(error)))
    checks.append(_bucket_check(session))
    return checks


def _bucket_check(session: Session) -> Finding:
    aws = session.aws
    try:
        aws.client("s3").head_bucket(Bucket=aws.bucket)
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return Finding(
                "bucket", FAIL, f"s3://{aws.bucket} does not exist: create it, or set [aws] bucket"
            )
        if code in ("403", "AccessDenied", "Forbidden"):
            return Finding(
                "bucket",
                FAIL,
                f"s3://{aws.bucket} is not yours to use (403): set [aws] bucket to one you own",
            )
        return Finding("bucket", FAIL, f"s3://{aws.bucket}: {code}")
    except botocore.exceptions.BotoCoreError as error:
        return Finding("bucket", FAIL, f"s3://{aws.bucket}: {error}")
    if session.dry_run:
        return Finding("bucket", SKIP, f"{OFFLINE}: s3://{aws.bucket} is the offline bucket")
    return Finding("bucket", PASS, f"s3://{aws.bucket}")


def image_checks(config: ProjectConfig, region: str, command: str | None) -> list[Finding]:
    """The image URIs the SDK resolves for the configured versions, on the configured instance types."""
    instances = config.section("instances")
    wanted = []
    if command in (None, "tune"):
        wanted.append(("training", instances["tuning"]["type"]))
    if command in (None, "train"):
        wanted.append(("training", instances["training"]["type"]))
    if command in (None, "deploy"):
        serverless = config.data.get("endpoint", {}).get("serverless", False)
        wanted.append(("inference", None if serverless else instances["endpoint"]["type"]))
    checks = []
    for scope, instance_type in dict.fromkeys(wanted):
        name = f"image: {scope} on {instance_type or 'serverless'}"
        try:
            checks.append(
                Finding(name, PASS, sdk.sagemaker_api(config).image_uri(config, scope, instance_type, region))
            )
        except ValueError as error:
            checks.append(
                Finding(
                    name,
                    FAIL,
                    f"{' '.join(str(error).split())}: change [images.{scope}] or set its image_uri",
                )
            )
    return checks


def support_checks(config: ProjectConfig, today: datetime.date) -> list[Finding]:
    checks = []
    for entry in image_support.relevant_dates(config, today):
        status, detail = image_support.standing(entry, today)
        checks.append(Finding(f"support: {entry.subject}", status, detail))
    return checks


def run(
    config: ProjectConfig,
    session: Session,
    command: str | None = None,
    *,
    today: datetime.date | None = None,
) -> list[Finding]:
    """Every check for `command` ("tune", "train", "deploy"; None: all three), in a stable order."""
    if command is not None and command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; choose {', '.join(COMMANDS)}")
    today = today or datetime.date.today()
    return [
        *account_checks(session),
        *quota_checks(config, session, command),
        *image_checks(config, session.aws.region, command),
        *support_checks(config, today),
    ]


def setup_failure(error: Exception) -> list[Finding]:
    """The table of a session that could not be opened (no credentials, region or bucket)."""
    return [Finding("account", FAIL, " ".join(str(error).split()))]


def exit_code(checks: list[Finding]) -> int:
    return 1 if failed(checks) else 0
