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


def connect_account(
    config: ProjectConfig,
    default_bucket: Callable[[Any], str],
    execution_role: Callable[[Any], str],
) -> AwsContext:
    """The real account, with each missing piece reported as one line naming what to set.

    `default_bucket(boto_session)` and `execution_role(boto_session)` are the SDK generation's own calls
    (`sagemaker_api.connect`, `sagemaker_api_v3.connect`), asked only when config.toml leaves them out
    (the role on first use: uploads, predictions and teardown need none)."""
    # Here, not at the top: every command (`--help` too) imports this module for its types.
    import boto3
    import botocore.exceptions

    region = configured_region(config)
    if not region:
        raise AwsSetupError("no AWS region: set [aws] region in config.toml or $AWS_DEFAULT_REGION")
    try:
        boto_session = boto3.Session(region_name=region)
        credentials = boto_session.get_credentials()
    except botocore.exceptions.BotoCoreError as error:
        raise AwsSetupError(f"cannot load AWS credentials: {error}") from None
    if credentials is None:
        raise AwsSetupError(
            "no AWS credentials: run `aws configure` or `aws sso login`, or set $AWS_PROFILE "
            "(try `--dry-run` to preview without an account)"
        )
    bucket = config.aws.get("bucket")
    if not bucket:
        try:
            # The SDK's default bucket, `sagemaker-<region>-<account>` (created when missing).
            bucket = default_bucket(boto_session)
        except botocore.exceptions.BotoCoreError as error:
            raise AwsSetupError(
                f"cannot find the default SageMaker bucket ({error}): set [aws] bucket"
            ) from None
    role = configured_role(config)
    return AwsContext(
        boto_session=boto_session,
        region=region,
        bucket=bucket,
        prefix=config.aws.get("prefix", ""),
        role_resolver=lambda: role or execution_role(boto_session),
    )


def execution_role_or_setup_error(find_role: Callable[[], str]) -> str:
    """[aws] role_arn / $SAGEMAKER_ROLE_ARN were empty: the notebook's or Studio's execution role, as the
    SDK's `find_role` finds it; outside SageMaker, one line naming the setting."""
    try:
        return find_role()
    except Exception:  # ValueError, or a botocore error, outside SageMaker
        raise AwsSetupError(
            f"no SageMaker execution role: set [aws] role_arn in config.toml or ${ROLE_ENV} "
            "(outside SageMaker Studio it cannot be found automatically)"
        ) from None
