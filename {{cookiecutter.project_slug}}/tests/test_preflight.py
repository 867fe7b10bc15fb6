"""`preflight`: quotas against what a command asks for, images, support dates, offline honesty, the CLI.

Service Quotas are stubbed with botocore's Stubber (moto has no SageMaker quotas); the rest runs on the
offline AWS of a dry run.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json

import pytest
from botocore.stub import Stubber
from click.testing import CliRunner
from conftest import project_module
from launch_helpers import copy_project

preflight = project_module("checks.preflight")
aws_tables = project_module("config.aws_tables")
support = project_module("aws.image_support")
cli = project_module("cli")
open_session = project_module("aws.session").open_session
ProjectConfig = project_module("config").ProjectConfig

STANDARD_RULES = [
    "vanishing_gradient",
    "overfit",
    "overtraining",
    "poor_weight_initialization",
    "loss_not_decreasing",
    "LowGPUUtilization",
    "ProfilerReport",
]


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("preflight") / "project")


@pytest.fixture(scope="module")
def config(project) -> ProjectConfig:
    return ProjectConfig.load(project)


def with_data(config: ProjectConfig, **tables) -> ProjectConfig:
    """The config with some tables' keys replaced (validated again, as a loaded file would be)."""
    data = copy.deepcopy(config.data)
    for table, values in tables.items():
        data.setdefault(table, {}).update(values)
    changed = dataclasses.replace(config, data=data)
    changed.settings  # noqa: B018 - refuse a test config that config.toml could not hold
    return changed


def quota(name: str, code: str, value: float) -> dict:
    return {"ServiceCode": "sagemaker", "QuotaName": name, "QuotaCode": code, "Value": value}


def stubbed_quotas(session, applied: list[dict], defaults: list[dict] | None = None):
    """A service-quotas client answering these quotas (each list once), and the session handing it out."""
    client = session.aws.boto_session.client("service-quotas")
    stubber = Stubber(client)
    stubber.add_response("list_service_quotas", {"Quotas": applied}, {"ServiceCode": "sagemaker"})
    stubber.add_response(
        "list_aws_default_service_quotas", {"Quotas": defaults or []}, {"ServiceCode": "sagemaker"}
    )
    stubber.activate()
    original = session.aws.client

    def client_for(service: str):
        return client if service == "service-quotas" else original(service)

    session.aws.client = client_for
    return stubber


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def test_a_quota_at_zero_fails_naming_the_quota_its_code_and_the_ways_out(config, tmp_path):
    training_type = config.section("instances")["training"]["type"]
    usage = "spot training job usage" if config.section("jobs")["use_spot"] else "training job usage"
    name = f"{training_type} for {usage}"
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        stubber = stubbed_quotas(session, [quota(name, "L-TEST0001", 0.0)])
        checks = by_name(preflight.quota_checks(config, session, "train"))
        stubber.assert_no_pending_responses()
    check = checks[f"quota: {name}"]
    assert check.status == "fail"
    assert "quota is 0, train needs" in check.detail
    assert "L-TEST0001" in check.detail and "request-service-quota-increase" in check.detail
    assert "[instances.training] count" in check.detail


def test_seven_rule_jobs_against_a_processing_quota_of_four_are_flagged(config, tmp_path):
    # SageMaker's debugger rules run on images with smdebug (a custom one: AWS's PyTorch 2.0 image, the
    # last with it, is older than the training code allows): all 7 rules start a job.
    custom = "123456789012.dkr.ecr.us-east-1.amazonaws.com/training-with-smdebug:1"
    seven = with_data(
        config,
        debugger={"rules": STANDARD_RULES, "evaluation": "both"},
        images={"training": {"framework_version": "2.8.0", "py_version": "py312", "image_uri": custom}},
        aws={"sagemaker_sdk": "v2"},  # SageMaker's own rule jobs are asked for by SDK v2 only
    )
    with open_session(seven, dry_run=True, folder=tmp_path) as session:
        applied = [quota(preflight.PROCESSING_QUOTA, "L-TEST0004", 4.0)]
        stubbed_quotas(session, applied)
        checks = by_name(preflight.quota_checks(seven, session, "train"))
    check = checks[f"quota: {preflight.PROCESSING_QUOTA}"]
    assert check.status == "fail"
    assert "quota is 4, train needs 7" in check.detail
    assert "fewer rules" in check.detail and 'evaluation = "in_job"' in check.detail
    assert "L-TEST0004" in check.detail


def test_tuning_needs_parallel_jobs_times_instances_and_says_what_fits(config, tmp_path):
    tuning = with_data(config, tuning={"max_jobs": 6, "max_parallel_jobs": 3})
    machines = tuning.section("instances")["tuning"]
    usage = "spot training job usage" if config.section("jobs")["use_spot"] else "training job usage"
    name = f"{machines['type']} for {usage}"
    with open_session(tuning, dry_run=True, folder=tmp_path) as session:
        # The applied list lacks it: the AWS default is what counts.
        stubbed_quotas(session, [], defaults=[quota(name, "L-TEST0002", 2.0)])
        check = by_name(preflight.quota_checks(tuning, session, "tune"))[f"quota: {name}"]
    needed = 3 * machines["count"]
    assert check.status == ("pass" if needed <= 2 else "fail")
    if needed > 2:
        assert f"tune needs {needed}" in check.detail and "max_parallel_jobs = 2 fits" in check.detail


def test_enough_quota_passes(config, tmp_path):
    endpoint = config.section("instances")["endpoint"]
    name = f"{endpoint['type']} for endpoint usage"
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        stubbed_quotas(session, [quota(name, "L-TEST0003", 10.0)])
        check = by_name(preflight.quota_checks(config, session, "deploy"))[f"quota: {name}"]
    assert check.status == "pass" and "L-TEST0003" in check.detail


def test_a_dry_run_never_passes_what_it_cannot_know(config, tmp_path):
    with open_session(config, dry_run=True, folder=tmp_path) as session:
        checks = preflight.run(config, session, today=datetime.date(2026, 1, 1))
    named = by_name(checks)
    for name in ("credentials", "role", "bucket"):
        assert named[name].status == "skip" and "not checked offline" in named[name].detail
    quotas = [check for check in checks if check.name.startswith("quota: ")]
    assert quotas and all(check.status == "skip" for check in quotas)
    assert all("not checked offline" in check.detail for check in quotas)
    images = [check for check in checks if check.name.startswith("image: ")]
    assert images and all(check.status == "pass" for check in images)
    assert all(".dkr.ecr." in check.detail for check in images)
    assert not preflight.failed(checks)


def test_an_image_version_the_sdk_lacks_fails(config, tmp_path):
    # A custom URI is taken as it is; a version the SDK has no image for is a fail naming the setting.
    broken = copy.deepcopy(config.data)
    broken["images"]["inference"] = {"framework_version": "1.99.0", "py_version": "py312", "image_uri": ""}
    unchecked = dataclasses.replace(config, data=broken)  # the schema would refuse it: preflight must too
    (check,) = preflight.image_checks(unchecked, "us-east-1", "deploy")
    assert check.status == "fail" and "[images.inference]" in check.detail


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (datetime.date(2026, 1, 1), "pass"),  # 2.8 training image: patched until 2026-08-06
        (datetime.date(2026, 6, 1), "warn"),  # within 90 days
        (datetime.date(2026, 9, 1), "warn"),  # past
    ],
)
def test_support_dates_warn_when_near_or_past(config, today, expected):
    # SDK v2's advice (a v3 render's config switched back to v2 and its newest image).
    training = with_data(
        config,
        images={"training": {"framework_version": "2.8.0", "py_version": "py312", "image_uri": ""}},
        aws={"sagemaker_sdk": "v2"},
    )
    checks = by_name(preflight.support_checks(training, today))
    check = checks["support: PyTorch 2.8.0 training image"]
    assert check.status == expected
    assert "2026-08-06" in check.detail
    if expected == "warn":  # SDK v2 knows nothing newer than 2.8.0: the move is to v3 and its newest
        assert 'sagemaker_sdk = "v3" and [images.training] framework_version = "2.14"' in check.detail


def test_support_advice_names_the_newest_patched_image_of_the_same_sdk_first(config):
    older = with_data(
        config,
        images={"training": {"framework_version": "2.6.0", "py_version": "py312", "image_uri": ""}},
        aws={"sagemaker_sdk": "v2"},
    )
    check = by_name(preflight.support_checks(older, datetime.date(2026, 3, 1)))[
        "support: PyTorch 2.6.0 training image"
    ]
    assert check.status == "warn"
    assert check.detail.endswith(
        'move [images.training] to framework_version = "2.8.0", py_version = "py312" '
        "(patched until 2026-08-06)"
    )
    # The inference line ended at 2.6: nothing to move to, and the image keeps working.
    check = by_name(preflight.support_checks(config, datetime.date(2026, 12, 6)))[
        "support: PyTorch 2.6.0 inference image"
    ]
    assert check.status == "warn" and "2026-06-30" in check.detail
    assert "no SageMaker SDK knows a newer patched PyTorch inference image" in check.detail


def test_the_support_table_covers_every_image_a_render_can_pick_and_newer_is_patched_longer():
    for generation, scopes in aws_tables.PYTORCH_IMAGES.items():
        for scope, versions in scopes.items():
            minimum = aws_tables.version_tuple(aws_tables.MINIMUM_PYTORCH[scope])
            pickable = sorted(
                (v for v in versions if aws_tables.version_tuple(v) >= minimum), key=aws_tables.version_tuple
            )
            ends = [support.IMAGE_PATCH_ENDS[(scope, ".".join(v.split(".")[:2]))] for v in pickable]
            assert ends == sorted(ends), (generation, scope)  # so the newest known is patched longest
            assert aws_tables.newest_image(generation, scope)[0] == pickable[-1]


def test_debugger_date_only_when_sagemaker_judges_debugger_rules(config):
    in_job = with_data(config, debugger={"evaluation": "in_job"})
    assert support.DEBUGGER_CLOSED not in support.relevant_dates(in_job, datetime.date(2026, 12, 1))
    sagemaker = with_data(
        config,
        debugger={"evaluation": "both", "rules": STANDARD_RULES},
        aws={"sagemaker_sdk": "v2"},
        images={"training": {"framework_version": "2.8.0", "py_version": "py312", "image_uri": ""}},
    )
    assert support.DEBUGGER_CLOSED in support.relevant_dates(sagemaker, datetime.date(2026, 12, 1))
    status, detail = support.standing(support.DEBUGGER_CLOSED, datetime.date(2026, 12, 1))
    assert status == "warn" and 'evaluation = "in_job"' in detail


def test_preflight_command_json_in_a_dry_run(project, tmp_path):
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project), "preflight", "--json", "--dry-run", "--dry-run-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert {"credentials", "region", "role", "bucket"} <= {record["name"] for record in records}
    assert {record["status"] for record in records} <= {"pass", "warn", "skip"}


def test_a_failed_preflight_stops_the_launch_in_one_line(project, tmp_path, monkeypatch):
    def failing(config, session, command=None, **_):
        return [preflight.Finding("quota: ml.x for training job usage", "fail", "the account's quota is 0")]

    monkeypatch.setattr(preflight, "run", failing)
    result = CliRunner().invoke(
        cli.main, ["--project", str(project), "train", "--dry-run", "--dry-run-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "preflight failed (quota: ml.x for training job usage)" in result.output
    assert "--skip-preflight" in result.output
    calls = json.loads((tmp_path / "aws" / "requests.json").read_text())
    assert not [call for call in calls if call["operation"] == "CreateTrainingJob"]
    skipped = CliRunner().invoke(
        cli.main,
        ["--project", str(project), "train", "--skip-preflight", "--dry-run", "--dry-run-dir", str(tmp_path)],
    )
    assert skipped.exit_code == 0, skipped.output
