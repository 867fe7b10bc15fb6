"""Where AWS calls go, as one small value: the boto3 session, region, bucket, prefix and role.

This module is a leaf: it imports neither the SageMaker SDK nor moto. A real account's context
is built by `sagemaker_api.connect`, an offline one by `dryrun.offline_aws`; everything that
talks to AWS receives an `AwsContext` (inside a `session.Session`) and does not care which.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import ProjectConfig

ROLE_ENV = "SAGEMAKER_ROLE_ARN"
# What a dry run reports instead of a status nothing produced: the request was captured, nothing ran.
CAPTURED = "captured, not run"


class AwsSetupError(Exception):
    """A setting the command needs is missing; the message says what to set."""


@dataclass
class AwsContext:
    boto_session: Any
    region: str
    bucket: str
    prefix: str
    # Resolved on first use: uploads, predictions and teardown need no role.
    role_resolver: Callable[[], str]
    # True when the calls go to the offline AWS of a dry run: nothing is sent, nothing runs.
    dry_run: bool = False
    _role_arn: str | None = field(default=None, repr=False)

    @property
    def role_arn(self) -> str:
        if self._role_arn is None:
            self._role_arn = self.role_resolver()
        return self._role_arn

    def s3_key(self, *parts: str) -> str:
        """`<prefix>/<parts...>`: the object key inside the bucket."""
        return "/".join(part.strip("/") for part in (self.prefix, *parts) if part and part.strip("/"))

    def s3_uri(self, *parts: str) -> str:
        """`s3://<bucket>/<prefix>/<parts...>`."""
        return f"s3://{self.bucket}/{self.s3_key(*parts)}"

    def client(self, service: str) -> Any:
        return self.boto_session.client(service)


def configured_region(config: ProjectConfig) -> str:
    """[aws] region, else $AWS_REGION / $AWS_DEFAULT_REGION, else ''."""
    return (
        config.aws.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    )


def configured_role(config: ProjectConfig) -> str:
    """[aws] role_arn, else $SAGEMAKER_ROLE_ARN, else ''."""
    return config.aws.get("role_arn") or os.environ.get(ROLE_ENV) or ""
