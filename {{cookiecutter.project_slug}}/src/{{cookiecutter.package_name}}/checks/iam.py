"""Least-privilege IAM policies, derived from the calls the code really makes.

`user_policy` runs every AWS-touching step offline (upload, tune, train,
deploy, predict, status, teardown in one dry-run session), collects the API
operations botocore saw, and turns them into IAM actions scoped to this
project's bucket/prefix and resource names. A new SDK call shows up here by
itself; nothing is listed by hand except the mapping from S3 operations to the
IAM action that governs them.

`execution_role_policy` is what the training and serving containers need (they
run under the execution role, not the user): read and write the project's S3
prefix, pull the Deep Learning Container images, write logs and metrics.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..aws.session import open_session
from ..config import ProjectConfig, aws_tables
from ..workflow import launcher, resources
from ..workflow.synthetic import make_dataset
from . import preflight

# S3 operations whose IAM action has another name; the rest are `s3:<Operation>`.
_S3_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListBuckets": "s3:ListAllMyBuckets",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
}
_S3_BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation", "s3:CreateBucket"}
# Actions that take no resource ARN (IAM allows them on "*" only).
_ACCOUNT_WIDE_ACTIONS = {"s3:ListAllMyBuckets", "sts:GetCallerIdentity"}
_ACCOUNT_WIDE_SERVICES = ("servicequotas:", "tag:", "pricing:")
# IAM's service prefix where it differs from botocore's service name.
_SERVICE_PREFIXES = {
    "sagemaker-runtime": "sagemaker",
    "service-quotas": "servicequotas",
    "resourcegroupstaggingapi": "tag",
}
# A SageMaker Create request with Tags also needs sagemaker:AddTags on the new resource.
_TAG_ON_CREATE = "sagemaker:AddTags"
SAGEMAKER_RESOURCE_TYPES = (
    "training-job",
    "hyper-parameter-tuning-job",
    "model",
    "endpoint-config",
    "endpoint",
)


def iam_action(service: str, operation: str) -> str:
    if service == "s3":
        return _S3_ACTIONS.get(operation, f"s3:{operation}")
    return f"{_SERVICE_PREFIXES.get(service, service)}:{operation}"


def _tiny_model_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name in ("model.pth", "metadata.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            archive.addfile(info, io.BytesIO(b"{}"))
    return path


def captured_operations(config: ProjectConfig) -> list[tuple[str, str]]:
    """(service, operation) of every call the workflow makes, from one offline run of all steps."""
    with tempfile.TemporaryDirectory(prefix="iam-") as scratch:
        folder = Path(scratch)
        dataset = make_dataset(folder / "data", num_classes=2, images_per_class={"train": 1}, size=(8, 8))
        image = next(dataset.rglob("*.jpg"))
        calls = []
        # The deployment follows the dry-run training, as on an account; a local archive also uploads.
        with open_session(config, dry_run=True, folder=folder / "dry-run") as session:
            preflight.run(config, session)
            launcher.upload_data(config, session, dataset)
            launcher.tune(config, session)
            launcher.train(config, session)
            launcher.deploy(config, session)
            launcher.deploy(config, session, _tiny_model_archive(folder / "model.tar.gz"))
            launcher.predict(config, session, [image])
            # What a deploy whose first invocation fails reads: the endpoint's CloudWatch log.
            endpoint = session.state.latest("endpoint")["name"]
            launcher.verify_endpoint(config, session, endpoint)
            launcher.endpoint_log_tail(session, endpoint)
            resources.status(config, session)
            resources.teardown(config, session, stop_jobs=True)
            calls = list(session.offline.calls)
    # The Price List API is never asked in a dry run (it is not in the offline AWS), but `cost` and the
    # budget checks ask it on an account.
    # Calls made on an account only: the Price List API (`cost`, the budget checks; not in the offline AWS)
    # and what `status` reads to work out costs (a dry run has none to work out).
    on_account = {
        ("pricing", "GetProducts"),
        ("sagemaker", "DescribeEndpointConfig"),
        ("sagemaker", "ListTrainingJobsForHyperParameterTuningJob"),
    }
    return sorted({(call["service"], call["operation"]) for call in calls} | on_account)


def _partition(config: ProjectConfig) -> str:
    """aws, aws-cn or aws-us-gov: every ARN of the policy starts `arn:<partition>:`."""
    return aws_tables.partition(config.aws["region"])


def _bucket_arn(config: ProjectConfig) -> str:
    aws = config.aws
    return f"arn:{_partition(config)}:s3:::{aws.get('bucket') or 'sagemaker-' + aws['region'] + '-*'}"


def _name_prefix(config: ProjectConfig) -> str:
    # Tuning job names are cut to 32 characters; 16 of the slug always survive (see sagemaker_api.job_name).
    return config.section("project")["slug"][:16]


def tracking_statements(config: ProjectConfig) -> list[dict[str, Any]]:
    """MLflow's API on the configured MLflow App or tracking server ([tracking] server_arn), if any: the jobs
    log to it and `runs --server` and `report` read it (the actions of the sagemaker-mlflow service, e.g.
    CreateRun, LogBatch, SearchRuns, resource-scoped to the server's ARN)."""
    arn = config.settings.tracking.server_arn
    if not arn:
        return []
    return [{"Sid": "MlflowTracking", "Effect": "Allow", "Action": ["sagemaker-mlflow:*"], "Resource": arn}]


def user_policy(config: ProjectConfig, operations: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The policy for the person (or CI) running the CLI."""
    operations = captured_operations(config) if operations is None else operations
    actions = {iam_action(service, operation) for service, operation in operations}
    if any(service == "sagemaker" and operation.startswith("Create") for service, operation in operations):
        actions.add(_TAG_ON_CREATE)
    actions = sorted(actions)
    bucket = _bucket_arn(config)
    prefix = config.aws.get("prefix", "").strip("/")
    region = config.aws["region"]
    arn = f"arn:{_partition(config)}"
    names = _name_prefix(config)
    sagemaker_resources = [f"{arn}:sagemaker:{region}:*:{kind}/{names}*" for kind in SAGEMAKER_RESOURCE_TYPES]
    statements = [
        {
            "Sid": "AccountWide",
            "Effect": "Allow",
            "Action": [
                a for a in actions if a in _ACCOUNT_WIDE_ACTIONS or a.startswith(_ACCOUNT_WIDE_SERVICES)
            ],
            "Resource": "*",
        },
        {
            "Sid": "EndpointLogs",
            "Effect": "Allow",
            "Action": [a for a in actions if a.startswith("logs:")],
            "Resource": f"{arn}:logs:{region}:*:log-group:/aws/sagemaker/Endpoints/{names}*",
        },
        {
            "Sid": "ProjectBucket",
            "Effect": "Allow",
            "Action": [a for a in actions if a in _S3_BUCKET_ACTIONS],
            "Resource": bucket,
        },
        {
            "Sid": "ProjectObjects",
            "Effect": "Allow",
            "Action": [
                a
                for a in actions
                if a.startswith("s3:") and a not in _S3_BUCKET_ACTIONS | _ACCOUNT_WIDE_ACTIONS
            ],
            "Resource": f"{bucket}/{prefix}/*" if prefix else f"{bucket}/*",
        },
        {
            "Sid": "ProjectSageMakerResources",
            "Effect": "Allow",
            "Action": [a for a in actions if a.startswith("sagemaker:")],
            "Resource": sagemaker_resources,
        },
        {
            "Sid": "PassExecutionRole",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": config.aws.get("role_arn") or f"{arn}:iam::*:role/*",
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        },
        {
            # SDK v3's ModelTrainer asks IAM what the execution role may do before each job (it picks
            # the staging bucket by the answer): allowed on that role alone.
            "Sid": "SdkRoleCheck",
            "Effect": "Allow",
            "Action": [a for a in actions if a == "iam:SimulatePrincipalPolicy"],
            "Resource": config.aws.get("role_arn") or f"{arn}:iam::*:role/*",
        },
        *tracking_statements(config),
    ]
    return {"Version": "2012-10-17", "Statement": [s for s in statements if s["Action"]]}


def execution_role_policy(config: ProjectConfig) -> dict[str, Any]:
    """The policy for the SageMaker execution role the jobs and the endpoint run as."""
    bucket = _bucket_arn(config)
    prefix = config.aws.get("prefix", "").strip("/")
    region = config.aws["region"]
    arn = f"arn:{_partition(config)}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ProjectBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": bucket,
            },
            {
                "Sid": "ProjectObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": f"{bucket}/{prefix}/*" if prefix else f"{bucket}/*",
            },
            {
                "Sid": "PullDeepLearningContainers",
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage",
                ],
                "Resource": "*",
            },
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                "Resource": f"{arn}:logs:{region}:*:log-group:/aws/sagemaker/*",
            },
            {"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"], "Resource": "*"},
            *tracking_statements(config),
        ],
    }
