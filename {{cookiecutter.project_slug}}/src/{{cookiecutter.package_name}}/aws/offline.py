"""The offline AWS of a dry run: moto in-process, with a memory that lasts from one command to the next.

`offline_aws(folder, config)` starts moto, hands out an `AwsContext` wired to it and keeps, in `folder`:

- `requests.json`: the API calls of this session, in order, as `{"service", "operation", "params"}`, with
  the parameters exactly as botocore validates and serialises them (streams and bytes as `"<N bytes>"`);
- `journal.json`: every call that changed SageMaker, from every session so far. The next session replays
  it into a fresh moto before it starts, so `train --dry-run` then `deploy --dry-run` then
  `teardown --dry-run` see what the earlier commands created, as they would on an account;
- `s3/<bucket>/<key>`: every object of the offline S3 when the session ends, restored when the next starts.

Nothing runs in a dry run. A captured training job leaves a clearly labelled stand-in `model.tar.gz` at
its output URI so that `deploy --dry-run` can repack it like a real model, and InvokeEndpoint answers
`{"dry_run": "captured, not run"}` (moto cannot take binary request bodies, and no model is behind it).

The calls are captured on `before-parameter-build`, registered last: after botocore's own handlers have
filled in what they add (idempotency tokens, checksums), so the dict is what botocore then sends.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore
import botocore.exceptions
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from moto import mock_aws

from ..config import ProjectConfig
from .context import CAPTURED, AwsContext, configured_region, configured_role

# moto's default account; the role and default bucket of a dry run live in it.
DRY_RUN_ACCOUNT = "123456789012"
DRY_RUN_ROLE_ARN = f"arn:aws:iam::{DRY_RUN_ACCOUNT}:role/SageMakerExecutionRole-dry-run"
REQUESTS_FILENAME = "requests.json"
JOURNAL_FILENAME = "journal.json"
S3_FOLDER = "s3"
STAND_IN_MODEL_NOTE = "DRY_RUN_STAND_IN.txt"
INVOCATION_ANSWER = json.dumps({"dry_run": CAPTURED}).encode()
# Calls moto does not implement: answered with an empty success, as the service's own answer is empty.
_ANSWERED_EMPTY = ("sagemaker.StopHyperParameterTuningJob", "sagemaker.StopTrainingJob")
# SageMaker calls that change what exists: replayed by the next session.
_CHANGING_PREFIXES = ("Create", "Delete", "Stop", "Update", "AddTags", "DeleteTags")

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


def _is_changing(call: dict[str, Any]) -> bool:
    return call["service"] == "sagemaker" and call["operation"].startswith(_CHANGING_PREFIXES)


@dataclass
class OfflineAws:
    """What a dry-run session works with: the context, this session's calls, and the earlier ones."""

    context: AwsContext
    folder: Path
    calls: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    _paused: bool = field(default=False, repr=False)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of every `operation` call, earlier sessions' first (SageMaker calls only
        are kept across sessions)."""
        seen = [*self.journal, *(call for call in self.calls if not _is_changing(call))]
        return [call["params"] for call in seen if call["operation"] == operation]

    # --- botocore event handlers ------------------------------------------------------------------

    def record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self._paused:
            return
        call = {
            "service": model.service_model.service_name,
            "operation": model.name,
            "params": plain_params(params),
        }
        self.calls.append(call)
        if _is_changing(call):
            self.journal.append(call)
        if call["operation"] == "CreateTrainingJob":
            self._place_stand_in_model(params)

    def answer_invocation(self, **_: Any) -> tuple[Any, dict[str, Any]]:
        http_response = AWSResponse(None, 200, {"content-type": "application/json"}, None)
        parsed = {
            "Body": StreamingBody(io.BytesIO(INVOCATION_ANSWER), len(INVOCATION_ANSWER)),
            "ContentType": "application/json",
            "InvokedProductionVariant": "AllTraffic",
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}},
        }
        return http_response, parsed

    @staticmethod
    def answer_no_verdict(**_: Any) -> tuple[Any, dict[str, Any]]:
        """SimulatePrincipalPolicy (SDK v3 asks it before staging code in the default bucket), which moto
        does not implement: no evaluation results, which the SDK reads as "use the default bucket"."""
        return AWSResponse(None, 200, {}, None), {
            "EvaluationResults": [],
            "IsTruncated": False,
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}},
        }

    @staticmethod
    def drop_empty_structures(parsed: dict[str, Any], **_: Any) -> None:
        """moto answers e.g. `VpcConfig: {}` or `DataCaptureConfig: {}` where SageMaker leaves the key out;
        SDK v3's models refuse such empty structures."""
        for key in [key for key, value in parsed.items() if value == {}]:
            del parsed[key]

    @staticmethod
    def answer_empty(**_: Any) -> tuple[Any, dict[str, Any]]:
        return AWSResponse(None, 200, {}, None), {
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}}
        }

    def _place_stand_in_model(self, request: dict[str, Any]) -> None:
        """Where SageMaker would write the job's model.tar.gz, a labelled stand-in (not recorded)."""
        output = request["OutputDataConfig"]["S3OutputPath"].removeprefix("s3://").rstrip("/")
        bucket, _, prefix = output.partition("/")
        key = "/".join(
            part for part in (prefix, request["TrainingJobName"], "output", "model.tar.gz") if part
        )
        note = f"Stand-in written by a dry run: training job {request['TrainingJobName']} was {CAPTURED}.\n"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            info = tarfile.TarInfo(STAND_IN_MODEL_NOTE)
            info.size = len(note.encode())
            archive.addfile(info, io.BytesIO(note.encode()))
        self._paused = True
        try:
            self.context.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        finally:
            self._paused = False


def _create_bucket(client: Any, bucket: str, region: str) -> None:
    if region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def _restore_s3(boto_session: Any, source: Path, region: str) -> None:
    if not source.is_dir():
        return
    s3 = boto_session.client("s3")
    existing = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    for bucket_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        if bucket_dir.name not in existing:
            _create_bucket(s3, bucket_dir.name, region)
        for path in sorted(item for item in bucket_dir.rglob("*") if item.is_file()):
            s3.upload_file(str(path), bucket_dir.name, path.relative_to(bucket_dir).as_posix())


def _dump_s3(boto_session: Any, destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)  # the dump is the end state: deleted objects go
    s3 = boto_session.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                target = destination / bucket["Name"] / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket["Name"], item["Key"], str(target))


def _replay(boto_session: Any, journal: list[dict[str, Any]]) -> None:
    """Re-create in moto what earlier sessions changed; a call moto refuses now is skipped."""
    client = boto_session.client("sagemaker")
    for call in journal:
        method = getattr(client, botocore.xform_name(call["operation"]))
        try:
            method(**call["params"])
        except (botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError):
            continue


def load_requests(folder: Path) -> list[dict[str, Any]]:
    """This session's calls, as written to `folder/requests.json`."""
    return json.loads((Path(folder) / REQUESTS_FILENAME).read_text())


def _load_journal(folder: Path) -> list[dict[str, Any]]:
    path = folder / JOURNAL_FILENAME
    return json.loads(path.read_text()) if path.is_file() else []


@contextmanager
def offline_aws(folder: Path, config: ProjectConfig) -> Iterator[OfflineAws]:
    """Everything inside the block talks to moto's in-process AWS; the record lands in `folder`.

    No network and no credentials are used. The bucket (default: the SDK's default bucket name for the
    dry-run account) exists before the block starts. The record is written even when the block
    raises, to show how far it got.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    region = configured_region(config) or "us-east-1"
    bucket = config.aws.get("bucket") or dry_run_bucket(region)
    environment = {**_FAKE_ENVIRONMENT, "AWS_DEFAULT_REGION": region}
    with mock.patch.dict(os.environ, environment), mock_aws():
        for name in _CLEARED_ENVIRONMENT:
            os.environ.pop(name, None)
        boto_session = boto3.Session(region_name=region)
        _create_bucket(boto_session.client("s3"), bucket, region)
        _restore_s3(boto_session, folder / S3_FOLDER, region)
        journal = _load_journal(folder)
        _replay(boto_session, journal)
        context = AwsContext(
            boto_session=boto_session,
            region=region,
            bucket=bucket,
            prefix=config.aws.get("prefix", ""),
            role_resolver=lambda: configured_role(config) or DRY_RUN_ROLE_ARN,
            dry_run=True,
        )
        offline = OfflineAws(context, folder, journal=list(journal))
        # Registered on the session before any client exists: every client made from it copies them.
        boto_session.events.register_last("before-parameter-build.*.*", offline.record)
        boto_session.events.register(
            "before-call.sagemaker-runtime.InvokeEndpoint", offline.answer_invocation
        )
        boto_session.events.register("after-call.sagemaker.*", offline.drop_empty_structures)
        boto_session.events.register("before-call.iam.SimulatePrincipalPolicy", offline.answer_no_verdict)
        for operation in _ANSWERED_EMPTY:
            boto_session.events.register(f"before-call.{operation}", offline.answer_empty)
        try:
            yield offline
        finally:
            boto_session.events.unregister("before-parameter-build.*.*", offline.record)
            (folder / REQUESTS_FILENAME).write_text(json.dumps(offline.calls, indent=2) + "\n")
            (folder / JOURNAL_FILENAME).write_text(json.dumps(offline.journal, indent=2) + "\n")
            _dump_s3(boto_session, folder / S3_FOLDER)
