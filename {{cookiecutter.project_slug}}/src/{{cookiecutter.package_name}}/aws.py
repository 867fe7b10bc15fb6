"""Where the AWS calls go: a real account, or the offline mock of a dry run.

`AwsContext` carries the boto3 session, the bucket and prefix, and the
execution role; every AWS-touching function takes one. `connect(config)`
builds it for the real account and turns each missing setting into an
`AwsSetupError` with one line naming what to set. `offline(config, out_dir)`
builds it inside `dryrun.offline_aws`, so the same code runs with no network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ProjectConfig
from .dryrun import OfflineAws, offline_aws

ROLE_ENV = "SAGEMAKER_ROLE_ARN"


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
    offline: OfflineAws | None = None
    _role_arn: str | None = field(default=None, repr=False)

    @property
    def dry_run(self) -> bool:
        return self.offline is not None

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


def _config_region(config: ProjectConfig) -> str:
    return (
        config.aws.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    )


def _resolve_real_role(config: ProjectConfig, boto_session: Any) -> str:
    role = config.aws.get("role_arn") or os.environ.get(ROLE_ENV)
    if role:
        return role
    from . import sagemaker_api

    role = sagemaker_api.execution_role(boto_session)
    if not role:
        raise AwsSetupError(
            f"no SageMaker execution role: set [aws] role_arn in config.toml or ${ROLE_ENV} "
            "(outside SageMaker Studio it cannot be found automatically)"
        )
    return role


def connect(config: ProjectConfig) -> AwsContext:
    """The real account, with each missing piece reported as one line naming what to set."""
    import boto3
    import botocore.exceptions

    region = _config_region(config)
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
        from . import sagemaker_api

        try:
            bucket = sagemaker_api.default_bucket(boto_session)
        except botocore.exceptions.BotoCoreError as error:
            raise AwsSetupError(
                f"cannot find the default SageMaker bucket ({error}): set [aws] bucket"
            ) from None
    return AwsContext(
        boto_session=boto_session,
        region=region,
        bucket=bucket,
        prefix=config.aws.get("prefix", ""),
        role_resolver=lambda: _resolve_real_role(config, boto_session),
    )


@contextmanager
def offline(config: ProjectConfig, out_dir: Path) -> Iterator[AwsContext]:
    """An `AwsContext` on moto's offline AWS; requests and uploads are written to `out_dir`."""
    region = _config_region(config) or "us-east-1"
    with offline_aws(out_dir, region, config.aws.get("bucket") or None) as mock:
        yield AwsContext(
            boto_session=mock.boto_session,
            region=region,
            bucket=mock.bucket,
            prefix=config.aws.get("prefix", ""),
            role_resolver=lambda: config.aws.get("role_arn") or mock.role_arn,
            offline=mock,
        )


@contextmanager
def aws_context(config: ProjectConfig, dry_run_dir: Path | None = None) -> Iterator[AwsContext]:
    """`connect(config)`, or `offline(config, dry_run_dir)` when a dry-run folder is given."""
    if dry_run_dir is None:
        yield connect(config)
    else:
        with offline(config, dry_run_dir) as context:
            yield context
