"""The project's resources on AWS: their status, what they have cost so far, and tearing them down.

Found from the project's record (`.state/`) and, for `--owner`/`--all-owners`, by their tags from
any machine. Like workflow/launcher.py, every function takes the config and an open `session.Session`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from ..aws import pricing, tagging
from ..aws.context import CAPTURED
from ..aws.sagemaker_jobs import Deployment
from ..aws.session import Session
from ..aws.state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB
from ..config import ProjectConfig
from . import costs


def _is_missing(error: Exception) -> bool:
    """SageMaker answers ValidationException 'Could not find ...' for names that do not exist."""
    response = getattr(error, "response", {}) or {}
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message", "")
    return code in ("ValidationException", "ResourceNotFound") and "find" in message.lower()


_DESCRIBE = {
    TUNING_JOB: (
        "describe_hyper_parameter_tuning_job",
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus",
    ),
    TRAINING_JOB: ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    MODEL: ("describe_model", "ModelName", None),
    ENDPOINT_CONFIG: ("describe_endpoint_config", "EndpointConfigName", None),
    ENDPOINT: ("describe_endpoint", "EndpointName", "EndpointStatus"),
}
_DELETE = {
    ENDPOINT: ("delete_endpoint", "EndpointName"),
    ENDPOINT_CONFIG: ("delete_endpoint_config", "EndpointConfigName"),
    MODEL: ("delete_model", "ModelName"),
}
_STOP = {
    TUNING_JOB: ("stop_hyper_parameter_tuning_job", "HyperParameterTuningJobName"),
    TRAINING_JOB: ("stop_training_job", "TrainingJobName"),
}
RUNNING_STATUSES = ("InProgress", "Creating", "Updating", "Stopping")


def _describe(session: Session, kind: str, name: str) -> dict[str, Any] | None:
    """SageMaker's description of a resource; None when it no longer exists."""
    method, key, _ = _DESCRIBE[kind]
    try:
        return getattr(session.aws.client("sagemaker"), method)(**{key: name})
    except botocore.exceptions.ClientError as error:
        if _is_missing(error):
            return None
        raise


def _current_status(session: Session, kind: str, name: str) -> str:
    description = _describe(session, kind, name)
    if description is None:
        return "Deleted"
    if session.dry_run:
        return CAPTURED  # the offline AWS's own statuses were produced by nothing
    status_key = _DESCRIBE[kind][2]
    return description[status_key] if status_key else "Exists"


@dataclass(frozen=True)
class Scope:
    """Whose resources: this project's (default), one owner's (`--owner`), or every owner's."""

    project: str | None
    owner: str | None
    # The local record belongs to this clone: it is part of the default scope only.
    local: bool

    def describe(self) -> str:
        if self.local:
            return f"project {self.project}, owner {self.owner}"
        return f"owner {self.owner}" if self.owner else "every owner"


def scope_of(config: ProjectConfig, owner: str | None = None, all_owners: bool = False) -> Scope:
    if all_owners:
        return Scope(None, None, local=False)
    mine = tagging.owner_of(config)
    if owner and owner != mine:
        return Scope(None, owner, local=False)
    return Scope(config.section("project")["slug"], mine, local=True)


def _targets(config: ProjectConfig, session: Session, scope: Scope) -> list[dict[str, Any]]:
    """The local record (default scope) and every resource tagged for the scope, each once, oldest first."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if scope.local:
        for item in session.state.resources():
            found[(item["kind"], item["name"])] = {**item, "owner": scope.owner, "recorded": True}
    for resource in tagging.find(session.aws, project=scope.project, owner=scope.owner):
        key = (resource.kind, resource.name)
        entry = found.setdefault(
            key, {"kind": resource.kind, "name": resource.name, "created": resource.created}
        )
        entry["owner"] = resource.owner
        entry["tagged"] = True
    return list(found.values())


def _job_instances(description: dict[str, Any], kind: str) -> tuple[str, int]:
    if kind == TUNING_JOB:
        definition = description.get("TrainingJobDefinition", {})
        config = definition.get("HyperParameterTuningResourceConfig") or definition.get("ResourceConfig", {})
    else:
        config = description.get("ResourceConfig", {})
    return config.get("InstanceType", ""), int(config.get("InstanceCount", 1))


def _endpoint_instances(session: Session, description: dict[str, Any]) -> tuple[str, int]:
    """(instance type, count) behind an endpoint; ("serverless", 0) for a serverless one."""
    try:
        endpoint_config = session.aws.client("sagemaker").describe_endpoint_config(
            EndpointConfigName=description["EndpointConfigName"]
        )
    except botocore.exceptions.ClientError:
        return "", 0
    variant = endpoint_config["ProductionVariants"][0]
    if variant.get("ServerlessConfig"):
        return "serverless", 0
    live = sum(v.get("CurrentInstanceCount", 0) for v in description.get("ProductionVariants", []))
    return variant.get("InstanceType", ""), live or int(variant.get("InitialInstanceCount", 1))


def _cost_so_far(
    session: Session,
    kind: str,
    description: dict[str, Any],
    price_of: Any,
    now: datetime.datetime,
) -> tuple[float | None, str]:
    """(USD so far, where the price came from) of one resource; (None, why) when it has no figure."""
    if kind in (MODEL, ENDPOINT_CONFIG):
        return 0.0, "free"
    if kind == ENDPOINT:
        instance_type, count = _endpoint_instances(session, description)
        if instance_type == "serverless":
            return None, costs.SERVERLESS_SOURCE
        if description.get("EndpointStatus") == "Failed":
            return 0.0, "failed endpoints are not billed"
        price = price_of(instance_type, "hosting")
        if price is None:
            return None, f"no price for {instance_type}"
        return costs.usage_usd(description.get("CreationTime"), None, count, price, now), price.source
    instance_type, count = _job_instances(description, kind)
    price = price_of(instance_type, "training")
    if price is None:
        return None, f"no price for {instance_type}"
    if kind == TUNING_JOB:
        client = session.aws.client("sagemaker")
        paginator = client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
        total = 0.0
        for page in paginator.paginate(
            HyperParameterTuningJobName=description["HyperParameterTuningJobName"]
        ):
            for job in page.get("TrainingJobSummaries", []):
                total += costs.usage_usd(
                    job.get("TrainingStartTime"), job.get("TrainingEndTime"), count, price, now
                )
        return total, price.source
    return (
        costs.usage_usd(
            description.get("TrainingStartTime"),
            description.get("TrainingEndTime"),
            count,
            price,
            now,
            billable_seconds=description.get("BillableTimeInSeconds"),
        ),
        price.source,
    )


def status(
    config: ProjectConfig,
    session: Session,
    *,
    owner: str | None = None,
    all_owners: bool = False,
    now: datetime.datetime | None = None,
) -> list[dict[str, Any]]:
    """Every resource of the scope (this project by default), found in the local record and by its tags,
    with its status now (`Deleted` when gone) and what it has cost so far (`usd`, None when unknown).

    A tuning job's cost is the sum of its training jobs; those are not listed again."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    scope = scope_of(config, owner, all_owners)
    targets = _targets(config, session, scope)
    cache: dict[tuple[str, str], pricing.Price | None] = {}

    def price_of(instance_type: str, use: str) -> pricing.Price | None:
        if (instance_type, use) not in cache:
            found = pricing.hourly_prices(
                config,
                [(instance_type, use)],
                boto_session=None if session.dry_run else session.aws.boto_session,
            )
            cache[(instance_type, use)] = found.get((instance_type, use))
        return cache[(instance_type, use)]

    tuning_names = [item["name"] for item in targets if item["kind"] == TUNING_JOB]
    rows = []
    for item in targets:
        if item["kind"] == TRAINING_JOB and any(item["name"].startswith(f"{name}-") for name in tuning_names):
            continue  # counted in its tuning job
        description = _describe(session, item["kind"], item["name"])
        row = {**item, "usd": None, "price_source": ""}
        if description is None:
            row["status"] = "Deleted"
        elif session.dry_run:
            row.update(status=CAPTURED, price_source="nothing ran")
        else:
            status_key = _DESCRIBE[item["kind"]][2]
            row["status"] = description[status_key] if status_key else "Exists"
            row["usd"], row["price_source"] = _cost_so_far(session, item["kind"], description, price_of, now)
        rows.append(row)
    return rows


def spent_so_far(config: ProjectConfig, session: Session) -> float:
    """What this project's resources have cost so far, by `status` (0 in a dry run: nothing ran)."""
    if session.dry_run:
        return 0.0
    return sum(row["usd"] or 0.0 for row in status(config, session))


def budget_problem(config: ProjectConfig, session: Session, command: str) -> str | None:
    """Why launching `command` would go over [budget] usd (one line), or None; prices from the Price List
    API when reachable (never in a dry run), else config.toml."""
    if not config.settings.budget.usd:
        return None
    boto_session = None if session.dry_run else session.aws.boto_session
    prices = pricing.hourly_prices(config, costs.wanted_prices(config), boto_session=boto_session)
    lines = costs.estimate(config, prices=prices)
    return costs.over_budget(config, command, lines, spent_so_far(config, session))


def teardown_deployment(session: Session, deployment: Deployment) -> list[tuple[str, str, str]]:
    """Delete one deployment's endpoint, endpoint config and model (a deploy that did not prove itself)."""
    client = session.aws.client("sagemaker")
    actions = []
    for kind, name in (
        (ENDPOINT, deployment.endpoint_name),
        (ENDPOINT_CONFIG, deployment.endpoint_config_name),
        (MODEL, deployment.model_name),
    ):
        method, key = _DELETE[kind]
        try:
            getattr(client, method)(**{key: name})
            outcome = "deleted"
        except botocore.exceptions.ClientError as error:
            if not _is_missing(error):
                raise
            outcome = "already gone"
        actions.append((kind, name, outcome))
        session.state.forget(kind, name)
    return actions


def teardown(
    config: ProjectConfig,
    session: Session,
    *,
    stop_jobs: bool = False,
    owner: str | None = None,
    all_owners: bool = False,
) -> list[tuple[str, str, str]]:
    """Delete the endpoints, endpoint configs and models of the scope (this project by default: what the
    local record names and what is tagged with its slug and owner); optionally stop its jobs.

    `owner` / `all_owners` reach what other machines created (staff, a fresh clone), found by tags only.
    Returns (kind, name, what happened). Something already gone counts as deleted.
    """
    scope = scope_of(config, owner, all_owners)
    targets = _targets(config, session, scope)
    actions: list[tuple[str, str, str]] = []
    client = session.aws.client("sagemaker")
    for kind in (ENDPOINT, ENDPOINT_CONFIG, MODEL):
        method, key = _DELETE[kind]
        for item in (target for target in targets if target["kind"] == kind):
            try:
                getattr(client, method)(**{key: item["name"]})
                outcome = "deleted"
            except botocore.exceptions.ClientError as error:
                if not _is_missing(error):
                    raise
                outcome = "already gone"
            actions.append((kind, item["name"], outcome))
            session.state.forget(kind, item["name"])
    if stop_jobs:
        for kind in (TUNING_JOB, TRAINING_JOB):
            method, key = _STOP[kind]
            for item in (target for target in targets if target["kind"] == kind):
                if session.dry_run or _current_status(session, kind, item["name"]) == "InProgress":
                    getattr(client, method)(**{key: item["name"]})
                    actions.append((kind, item["name"], "stopping"))
    return actions
