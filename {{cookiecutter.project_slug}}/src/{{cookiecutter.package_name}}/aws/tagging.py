"""The tags on everything the project creates, and finding resources by them from any machine.

Every Create request (tuning and training jobs, models, endpoint configs, endpoints) carries:

- `template`: this template's name, so a search never touches what other tools created;
- `project`: the project's slug; `owner`: [project] owner (a student or team id; default: the slug);
- `created`: when the request was made (UTC, ISO 8601).

`status` and `teardown` look resources up through the Resource Groups Tagging API, so a fresh clone,
another machine, or staff with a student's id (`--owner`) find the same things the local record names.
A leaf like `aws/context.py`: it imports neither the SageMaker SDK nor moto.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from ..config import ProjectConfig
from .context import AwsContext
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB

TEMPLATE_TAG = "template"
PROJECT_TAG = "project"
OWNER_TAG = "owner"
CREATED_TAG = "created"
TEMPLATE_NAME = "sagemaker-image-classifier"

# The tagging API's resource types, by the state's kinds (in the ARNs: arn:...:sagemaker:...:<type>/<name>).
RESOURCE_TYPES = {
    TUNING_JOB: "hyper-parameter-tuning-job",
    TRAINING_JOB: "training-job",
    MODEL: "model",
    ENDPOINT_CONFIG: "endpoint-config",
    ENDPOINT: "endpoint",
}
_KINDS = {resource_type: kind for kind, resource_type in RESOURCE_TYPES.items()}


def owner_of(config: ProjectConfig) -> str:
    """[project] owner, or the slug when it is empty."""
    project = config.section("project")
    return project.get("owner") or project["slug"]


def project_tags(config: ProjectConfig, now: datetime.datetime | None = None) -> list[dict[str, str]]:
    """The tags of a Create request, in the SDK's `tags=` shape ([{"Key": ..., "Value": ...}])."""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        TEMPLATE_TAG: TEMPLATE_NAME,
        PROJECT_TAG: config.section("project")["slug"],
        OWNER_TAG: owner_of(config),
        CREATED_TAG: stamp,
    }
    return [{"Key": key, "Value": value} for key, value in values.items()]


@dataclass(frozen=True)
class TaggedResource:
    kind: str
    name: str
    arn: str
    tags: dict[str, str]

    @property
    def owner(self) -> str:
        return self.tags.get(OWNER_TAG, "")

    @property
    def created(self) -> str:
        return self.tags.get(CREATED_TAG, "")


def tag_filters(project: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
    """This template's resources; of one project (slug) and/or one owner when given."""
    filters: list[dict[str, Any]] = [{"Key": TEMPLATE_TAG, "Values": [TEMPLATE_NAME]}]
    if project:
        filters.append({"Key": PROJECT_TAG, "Values": [project]})
    if owner:
        filters.append({"Key": OWNER_TAG, "Values": [owner]})
    return filters


def resource_of(arn: str, tags: dict[str, str]) -> TaggedResource | None:
    """`arn:aws:sagemaker:us-east-1:1234:endpoint/name` as a resource of a kind the project creates."""
    # moto 5.2 reports an endpoint config's ARN as a tuple's repr, "('arn:aws:...',)": read through it.
    arn = arn.strip("()',\" ")
    resource = arn.split(":", 5)[-1]
    resource_type, _, name = resource.partition("/")
    kind = _KINDS.get(resource_type)
    return TaggedResource(kind, name, arn, tags) if kind and name else None


def find(aws: AwsContext, *, project: str | None = None, owner: str | None = None) -> list[TaggedResource]:
    """Every resource of this template in the session's region with these tags (the tagging API)."""
    paginator = aws.client("resourcegroupstaggingapi").get_paginator("get_resources")
    found = []
    pages = paginator.paginate(
        TagFilters=tag_filters(project, owner),
        ResourceTypeFilters=[f"sagemaker:{resource_type}" for resource_type in RESOURCE_TYPES.values()],
    )
    for page in pages:
        for mapping in page.get("ResourceTagMappingList", []):
            tags = {tag["Key"]: tag["Value"] for tag in mapping.get("Tags", [])}
            resource = resource_of(mapping["ResourceARN"], tags)
            if resource is not None:
                found.append(resource)
    return found
