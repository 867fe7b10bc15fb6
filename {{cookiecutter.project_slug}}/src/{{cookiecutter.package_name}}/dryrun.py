"""Run the AWS-touching code offline and record what it would do.

`offline_aws(out_dir, region, bucket)` starts moto's in-process AWS, hands
out a boto3 session wired to it, and records:

- `out_dir/requests.json`: every API call in order, as `{"service", "operation", "params"}`,
  with the parameters exactly as botocore validates and serialises them
  (streams and bytes replaced by `"<N bytes>"`);
- `out_dir/s3/<bucket>/<key>`: every object in the mock S3 when the block ends.

The calls are captured on `before-parameter-build`, registered last: that is
after botocore's own handlers have filled in what they add (idempotency tokens,
checksums), and the dict is what botocore then validates and sends.

sagemaker-runtime's InvokeEndpoint answers from a queue of canned responses
(moto's own mock cannot take binary request bodies such as JPEG bytes).
"""

from __future__ import annotations

import datetime
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

# moto's default account; the role and default bucket of a dry run live in it.
DRY_RUN_ACCOUNT = "123456789012"
DRY_RUN_ROLE_ARN = f"arn:aws:iam::{DRY_RUN_ACCOUNT}:role/SageMakerExecutionRole-dry-run"
REQUESTS_FILENAME = "requests.json"
S3_FOLDER = "s3"

_FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
# A profile or endpoint override from the user's shell must not leak into the mock.
_CLEARED_ENVIRONMENT = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN")


def dry_run_bucket(region: str) -> str:
    """The bucket a dry run uses when config.toml leaves [aws] bucket empty (the SDK's default name)."""
    return f"sagemaker-{region}-{DRY_RUN_ACCOUNT}"


def _stream_size(stream: Any) -> int | None:
    try:
        return len(stream)
    except TypeError:
        pass
    try:
        position = stream.tell()
        stream.seek(0, io.SEEK_END)
        size = stream.tell() - position
        stream.seek(position)
        return size
    except (AttributeError, OSError, ValueError):
        return None


def plain_params(value: Any) -> Any:
    """A JSON-ready copy of API parameters: bytes and streams become `"<N bytes>"`."""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if hasattr(value, "read"):
        size = _stream_size(value)
        return "<stream>" if size is None else f"<{size} bytes>"
    if isinstance(value, dict):
        return {key: plain_params(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_params(item) for item in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


@dataclass
class CallRecorder:
    """A botocore event handler that appends each API call to `calls`."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append(
            {
                "service": model.service_model.service_name,
                "operation": model.name,
                "params": plain_params(params),
            }
        )


@dataclass
class OfflineAws:
    """What a block inside `offline_aws` works with."""

    boto_session: Any
    region: str
    bucket: str
    role_arn: str
    out_dir: Path
    recorder: CallRecorder
    # Canned InvokeEndpoint answers: (body, content type), used in order, the last one repeated.
    endpoint_responses: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.recorder.calls

    def answer_invocations_with(self, body: bytes, content_type: str = "application/json") -> None:
        self.endpoint_responses.append((body, content_type))

    def _invoke_endpoint(self, **_: Any) -> tuple[Any, dict[str, Any]]:
        from botocore.awsrequest import AWSResponse
        from botocore.response import StreamingBody

        if len(self.endpoint_responses) > 1:
            body, content_type = self.endpoint_responses.pop(0)
        elif self.endpoint_responses:
            body, content_type = self.endpoint_responses[0]
        else:
            body, content_type = b"[]", "application/json"
        http_response = AWSResponse(None, 200, {"content-type": content_type}, None)
        parsed = {
            "Body": StreamingBody(io.BytesIO(body), len(body)),
            "ContentType": content_type,
            "InvokedProductionVariant": "AllTraffic",
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}},
        }
        return http_response, parsed


def _create_bucket(client: Any, bucket: str, region: str) -> None:
    if region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def _dump_s3(boto_session: Any, destination: Path) -> None:
    s3 = boto_session.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                target = destination / bucket["Name"] / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket["Name"], item["Key"], str(target))


@contextmanager
def offline_aws(out_dir: Path, region: str, bucket: str | None = None) -> Iterator[OfflineAws]:
    """Everything inside the block talks to moto's in-process AWS; the record lands in `out_dir`.

    No network and no credentials are used. The bucket (default: the SDK's
    default bucket name for the dry-run account) exists before the block starts.
    The record is written even when the block raises, to show how far it got.
    """
    import boto3
    from moto import mock_aws

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bucket = bucket or dry_run_bucket(region)
    environment = {**_FAKE_ENVIRONMENT, "AWS_DEFAULT_REGION": region}
    with mock.patch.dict(os.environ, environment), mock_aws():
        for name in _CLEARED_ENVIRONMENT:
            os.environ.pop(name, None)
        boto_session = boto3.Session(region_name=region)
        _create_bucket(boto_session.client("s3"), bucket, region)
        recorder = CallRecorder()
        # Registered on the session before any client exists: every client made from it copies them.
        boto_session.events.register_last("before-parameter-build.*.*", recorder)
        offline = OfflineAws(boto_session, region, bucket, DRY_RUN_ROLE_ARN, out_dir, recorder)
        boto_session.events.register("before-call.sagemaker-runtime.InvokeEndpoint", offline._invoke_endpoint)
        try:
            yield offline
        finally:
            boto_session.events.unregister("before-parameter-build.*.*", recorder)
            (out_dir / REQUESTS_FILENAME).write_text(json.dumps(recorder.calls, indent=2) + "\n")
            _dump_s3(boto_session, out_dir / S3_FOLDER)


def load_requests(out_dir: Path) -> list[dict[str, Any]]:
    return json.loads((Path(out_dir) / REQUESTS_FILENAME).read_text())
