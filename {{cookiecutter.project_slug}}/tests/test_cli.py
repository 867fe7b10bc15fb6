"""The click CLI: fast help, one-line errors, dry runs end to end, and the small pure helpers."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import NO_ACCOUNT, PACKAGE, project_module, sdk_module
from launch_helpers import copy_project

cli = project_module("cli")
launcher = project_module("workflow.launcher")
payload = project_module("workflow.payload")
iam = project_module("checks.iam")
costs = project_module("workflow.costs")
ProjectConfig = project_module("config").ProjectConfig
ProjectState = project_module("aws.state").ProjectState


# Rich fits tables to the terminal: wide enough that names and sources stay whole on one line.
WIDE = {"COLUMNS": "250"}


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("cli") / "project")


def run(project, *args: str, env: dict | None = None):
    env = {**NO_ACCOUNT, **(env or {})}
    # rich reads $COLUMNS when the console is made (at import), not per command: set its width here.
    width = int(env["COLUMNS"]) if env.get("COLUMNS") else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.console, "width", width or cli.console.width)
        return CliRunner().invoke(cli.main, ["--project", str(project), *args], env=env)


def test_help_lists_every_command_without_importing_the_sdk(project_root):
    code = (
        f"import sys; from {PACKAGE}.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'sagemaker' not in sys.modules and 'moto' not in sys.modules, 'heavy import at start-up'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(project_root / "src")}
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    for command in (
        "data",
        "tune",
        "train",
        "deploy",
        "predict",
        "serve",
        "cost",
        "iam-policy",
        "status",
        "teardown",
    ):
        assert f"  {command} " in output


def test_subcommand_help_works_outside_a_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGE_CLASSIFIER_PROJECT_DIR", raising=False)
    result = CliRunner().invoke(cli.main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "--dry-run" in result.output


def test_missing_credentials_is_one_line_naming_what_to_set(project):
    result = run(project, "deploy", "--model-data", "s3://bucket/model.tar.gz")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no AWS credentials")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_role_names_the_setting(project, monkeypatch):
    sagemaker_api = sdk_module()
    context = project_module("aws.context")

    def outside_sagemaker(session):
        raise ValueError("The current AWS identity is not a role")

    # v2's module calls sagemaker.get_execution_role, v3's the function it imported.
    owner = getattr(sagemaker_api, "sagemaker", sagemaker_api)
    monkeypatch.setattr(owner, "get_execution_role", outside_sagemaker)
    with pytest.raises(context.AwsSetupError, match=r"role_arn in config.toml or \$SAGEMAKER_ROLE_ARN"):
        sagemaker_api._execution_role(boto_session=None)


def test_no_project_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGE_CLASSIFIER_PROJECT_DIR", raising=False)
    result = CliRunner().invoke(cli.main, ["cost"])
    assert result.exit_code == 1
    assert "no config.toml" in result.output


def test_train_dry_run_writes_requests_and_uploads(project, tmp_path):
    dry = str(tmp_path)
    result = run(project, "train", "--dry-run", "--dry-run-dir", dry, "--hp", "lr=0.02", "--no-tuned")
    assert result.exit_code == 0, result.output
    calls = json.loads((tmp_path / "aws" / "requests.json").read_text())
    (job,) = [call["params"] for call in calls if call["operation"] == "CreateTrainingJob"]
    assert json.loads(job["HyperParameters"]["lr"]) == 0.02
    # The code went up: v2's sourcedir.tar.gz, or v3's code channel (the staged folder's files).
    uploaded = (
        "sourcedir.tar.gz"
        if ProjectConfig.load(project).aws.get("sagemaker_sdk") != "v3"
        else "train_model.py"
    )
    assert list((tmp_path / "aws" / "s3").rglob(uploaded))
    assert "CreateTrainingJob" in result.output
    assert "captured, not run" in result.output
    assert "InProgress" not in result.output and "Completed" not in result.output


def test_dry_run_commands_chain_like_real_ones(project, tiny_dataset, tmp_path):
    """tune -> train -> deploy -> predict -> status -> teardown, each its own command, all --dry-run."""
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path)]
    image = next((tiny_dataset / "valid").rglob("*.jpg"))
    outputs = {}
    for command in (["tune"], ["train"], ["deploy"], ["predict", str(image)], ["status"], ["teardown"]):
        result = run(project, *command, *dry)
        assert result.exit_code == 0, f"{command}: {result.output}"
        outputs[command[0]] = result.output
    assert "captured, not run" in outputs["tune"] and "InProgress" not in outputs["tune"]
    assert "No finished training job" not in outputs["tune"] + outputs["train"]
    assert "captured, not run: no model answered" in outputs["predict"]
    assert "endpoint" in outputs["status"] and "captured, not run" in outputs["status"]
    assert "deleted" in outputs["teardown"]
    # The real project state is untouched.
    assert ProjectState(ProjectConfig.load(project).state_dir).resources() == []


def test_train_uses_the_recorded_best_hyperparameters(project, tmp_path):
    config = ProjectConfig.load(project)
    state = ProjectState(tmp_path / "state")
    state.set_value(launcher.BEST_HYPERPARAMETERS, {"hyperparameters": {"lr": 0.0042, "batch_size": 60}})
    assert launcher.best_hyperparameters(state) == {"lr": 0.0042, "batch_size": 60}
    merged = launcher.training_hyperparameters(config, state, {"lr": 0.1})
    assert (merged["lr"], merged["batch_size"]) == (0.1, 60)
    untuned = launcher.training_hyperparameters(config, state, use_tuned=False)
    assert untuned["batch_size"] == config.hyperparameters["batch_size"]


def test_predict_dry_run_without_an_endpoint_says_what_to_do(project, tiny_dataset, tmp_path):
    image = next((tiny_dataset / "valid").rglob("*.jpg"))
    result = run(project, "predict", str(image), "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no endpoint recorded for this project; run `deploy`" in result.output
    assert "Traceback" not in result.output


def test_predict_refuses_what_is_not_an_image(project, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run(project, "predict", str(text), "--dry-run", "--dry-run-dir", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "not an image file by its name" in result.output


def test_teardown_dry_run_with_nothing_recorded(project, tmp_path):
    result = run(project, "teardown", "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "nothing to tear down" in result.output


def test_hyperparameter_overrides_parse_json_values():
    parsed = project_module("cli.shared").parse_hyperparameters(
        ("lr=0.01", "backbone=resnet50", "pretrained=false", "epochs=3")
    )
    assert parsed == {"lr": 0.01, "backbone": "resnet50", "pretrained": False, "epochs": 3}


def test_tuned_hyperparameters_lose_sagemakers_json_quoting():
    raw = {
        "batch_size": '"40"',
        "lr": "0.0031",
        "backbone": '"resnet18"',
        "_tuning_objective_metric": '"x"',
        "sagemaker_program": '"hpo.py"',
        "note": "plain text",
    }
    assert launcher.clean_hyperparameters(raw) == {
        "batch_size": 40,
        "lr": 0.0031,
        "backbone": "resnet18",
        "note": "plain text",
    }


def test_cost_prints_the_estimate_its_sources_and_the_budget(project):
    result = run(project, "cost", "--offline", env=WIDE)
    assert result.exit_code == 0, result.output
    config = ProjectConfig.load(project)
    total = costs.total(costs.estimate(config))
    assert f"{total:.2f}" in result.output
    assert "config.toml [prices]" in result.output
    if config.settings.budget.usd:
        assert f"[budget] usd = {config.settings.budget.usd:g}" in result.output


def test_role_policy_is_json(project):
    result = run(project, "iam-policy", "--for", "role")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["Statement"]


def test_user_policy_covers_every_call_the_workflow_makes(project):
    config = ProjectConfig.load(project)
    operations = iam.captured_operations(config)
    policy = iam.user_policy(config, operations)
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {iam.iam_action(service, operation) for service, operation in operations} <= allowed
    for expected in (
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:CreateTrainingJob",
        "sagemaker:CreateEndpoint",
        "sagemaker:DeleteEndpoint",
        "sagemaker:InvokeEndpoint",
        "s3:PutObject",
        "iam:PassRole",
    ):
        assert expected in allowed
    assert not any(action.endswith(":*") for action in allowed)


# --- launches that check first: budget, preflight, the deploy that proves itself ----------------------

dryrun = project_module("aws.offline")


def with_budget(project, tmp_path, usd: float):
    """A copy of the project whose [budget] usd is `usd`."""
    import re
    import shutil

    copy = tmp_path / "budget-project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".state", "dry-run"))
    text = (copy / "config.toml").read_text()
    (copy / "config.toml").write_text(re.sub(r"(?m)^usd = .*$", f"usd = {usd}", text))
    return copy


def test_a_launch_over_the_budget_is_refused_without_yes(project, tmp_path):
    tight = with_budget(project, tmp_path, 0.01)
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    refused = run(tight, "train", "--skip-preflight", *dry)
    assert refused.exit_code == 1
    assert "over [budget] usd = 0.01" in refused.output and "--yes" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    calls = json.loads((tmp_path / "dry" / "aws" / "requests.json").read_text())
    assert not [call for call in calls if call["operation"] == "CreateTrainingJob"]
    allowed = run(tight, "train", "--skip-preflight", "--yes", *dry)
    assert allowed.exit_code == 0, allowed.output
    assert "CreateTrainingJob" in allowed.output


def test_a_launch_runs_preflight_first(project, tmp_path):
    result = run(project, "tune", "--dry-run", "--dry-run-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "preflight for tune" in result.output and "not checked offline" in result.output


def test_tune_attach_starts_nothing_so_checks_neither_preflight_nor_budget(project, tmp_path):
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    assert run(project, "tune", "--no-wait", *dry).exit_code == 0
    attached = run(with_budget(project, tmp_path, 0.01), "tune", "--attach", *dry)
    assert attached.exit_code == 0, attached.output
    assert "preflight" not in attached.output and "over [budget]" not in attached.output
    assert "tuning job" in attached.output


def test_a_deploy_whose_endpoint_does_not_answer_prints_the_log_tail(project, tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    def model_error(self, **_):
        # What the container logged before it failed, in the endpoint's log group of the offline AWS.
        logs = self.context.client("logs")
        for endpoint in self.context.client("sagemaker").list_endpoints()["Endpoints"]:
            group = f"/aws/sagemaker/Endpoints/{endpoint['EndpointName']}"
            logs.create_log_group(logGroupName=group)
            logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0")
            logs.put_log_events(
                logGroupName=group,
                logStreamName="AllTraffic/i-0",
                logEvents=[
                    {"timestamp": int(time.time() * 1000), "message": "ModuleNotFoundError: no classifier"}
                ],
            )
        raise ClientError(
            {"Error": {"Code": "ModelError", "Message": "Received server error (500)"}}, "InvokeEndpoint"
        )

    monkeypatch.setattr(dryrun.OfflineAws, "answer_invocation", model_error)
    from launch_helpers import model_archive

    archive = model_archive(tmp_path / "model.tar.gz")
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    result = run(
        project, "deploy", "--model-data", str(archive), "--skip-preflight", "--teardown-on-failure", *dry
    )
    assert result.exit_code == 1
    assert "did not answer" in result.output and "Received server error (500)" in result.output
    assert "ModuleNotFoundError: no classifier" in result.output
    assert "deleted" in result.output and "does not answer (deleted)" in result.output
    state = ProjectState(tmp_path / "dry" / "state")
    assert state.resources("endpoint") == []


def test_status_and_teardown_reach_another_owner_by_tag(project, tmp_path):
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path)]
    assert run(project, "train", "--skip-preflight", *dry).exit_code == 0
    mine = run(project, "status", *dry, env=WIDE)
    assert mine.exit_code == 0 and "training-job" in mine.output
    nobody = run(project, "status", "--owner", "someone-else", *dry, env=WIDE)
    assert nobody.exit_code == 0 and "nothing found for owner someone-else" in nobody.output
    refused = CliRunner().invoke(
        cli.main, ["--project", str(project), "teardown", "--all-owners", *dry], env=NO_ACCOUNT, input="n\n"
    )
    assert refused.exit_code == 1 and "every owner" in refused.output


def test_predict_shrinks_a_body_over_the_limit_and_says_so(tmp_path):
    import random

    from PIL import Image

    rng = random.Random(0)
    image = Image.frombytes("RGB", (300, 300), bytes(rng.randrange(256) for _ in range(300 * 300 * 3)))
    path = tmp_path / "noise.png"
    image.save(path)
    assert path.stat().st_size > 60_000
    body, content_type, note = payload.request_body(path, "image/png", 60_000, min_side=32)
    assert len(body) <= 60_000 and content_type == "image/jpeg"
    assert Image.open(io.BytesIO(body)).format == "JPEG"
    assert "over the endpoint's" in note and "shrunk on this machine" in note
    # A photo taken sideways (EXIF orientation 6: turn it a quarter to the right) is shrunk upright.
    sideways = tmp_path / "sideways.jpg"
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    image.resize((300, 200)).save(sideways, quality=100, exif=exif)
    body, _, _ = payload.request_body(sideways, "image/jpeg", 30_000, min_side=32)
    shrunk = Image.open(io.BytesIO(body))
    assert len(body) <= 30_000 and shrunk.height > shrunk.width
    small = tmp_path / "small.jpg"
    small.write_bytes(b"tiny")
    assert payload.request_body(small, "image/jpeg", 60_000) == (b"tiny", "image/jpeg", None)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds almost none of them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000)))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated.jpg", "cannot decode it to shrink it (image file is truncated"),
        ("bomb.png", "is over the 40 megapixels the endpoint decodes"),
        ("48-megapixels.png", "is 8000x6000 pixels, over the 40 megapixels the endpoint decodes"),
        ("noise.tiff", "not an image this machine can shrink to fit it (JPEG, PNG, WEBP, GIF, BMP)"),
    ],
)
def test_a_file_over_the_limit_that_cannot_be_shrunk_is_refused_in_one_line(tmp_path, kind, reason):
    from PIL import Image

    noise = Image.frombytes("RGB", (600, 400), random.Random(0).randbytes(600 * 400 * 3))
    buffer = io.BytesIO()
    if kind == "truncated.jpg":
        noise.save(buffer, format="JPEG", quality=100)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    elif kind == "noise.tiff":
        noise.save(buffer, format="TIFF")
        content = buffer.getvalue()
    else:
        content = _png_header(*((20_000, 20_000) if kind == "bomb.png" else (8000, 6000)))
    path = tmp_path / kind
    path.write_bytes(content + bytes(max(0, 150_000 - len(content))))  # over the limit below
    with pytest.raises(payload.ImageFileError) as refusal:
        payload.request_body(path, "image/jpeg", 100_000, min_side=32)
    assert str(refusal.value).startswith(str(path)) and reason in str(refusal.value)
    assert "\n" not in str(refusal.value)


def _special_file(kind: str, tmp_path):
    """A path predict must refuse without reading it, and what the refusal names it."""
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)
        return path, "is a named pipe (FIFO), not an image file"
    if kind == "device":
        return Path("/dev/zero"), "is a device, not an image file"
    if kind == "folder":
        return tmp_path, "is a folder, not an image file"
    if kind == "missing":
        return tmp_path / "missing.jpg", "No such file or directory"
    path = tmp_path / "sparse.jpg"
    with open(path, "wb") as sparse:
        sparse.truncate(200 * 2**20)  # 200 MB, none of it on disk
    return path, "is 200.0 MB: images go as they are up to the endpoint's"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("target", ["local", "endpoint"])
@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "missing", "sparse-200mb"])
def test_predict_refuses_what_it_cannot_send_in_one_line_without_reading_it(project, tmp_path, kind, target):
    """A FIFO would hang a read, /dev/zero never ends, 200 MB is past anything predict sends: each is
    refused at once, for both targets, before a server or an AWS session is asked anything."""
    path, reason = _special_file(kind, tmp_path)
    dry_run_dir = tmp_path / "dry"
    if target == "local":  # nothing listens there: a refusal that waited for a server would say so
        args = ["predict", str(path), "--local", "--url", "http://127.0.0.1:9"]
    else:
        args = ["predict", str(path), "--endpoint", "demo", "--dry-run", "--dry-run-dir", str(dry_run_dir)]
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run(project, *args)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive() and kind == "fifo":  # a reader blocked on the FIFO: give it an end of file
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
    assert not worker.is_alive(), f"predict {kind} still running after 60 s"
    result = outcome["result"]
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"Error: {path}") and reason in line
    assert "Traceback" not in result.output and "serve" not in result.output
    assert not dry_run_dir.exists()  # no session was opened
    assert time.monotonic() - started < 30


def test_files_are_checked_by_stat_and_read_no_further_than_the_limit(tmp_path):
    """What is refused is never read, and what is read stops at the limit + 1 byte."""
    import tracemalloc

    from PIL import Image

    Image.init()  # Pillow's format plugins, imported before the measurement
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as file:
        file.truncate(200 * 2**20)
    not_an_image = tmp_path / "noise.jpg"
    not_an_image.write_bytes(os.urandom(200_000))
    tracemalloc.start()
    try:
        with pytest.raises(payload.ImageFileError, match="is 200.0 MB"):
            payload.request_body(sparse, "image/jpeg", 100_000)
        with pytest.raises(payload.ImageFileError, match="not an image this machine can shrink"):
            payload.request_body(not_an_image, "image/jpeg", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # neither file was read whole: the image check reads its first bytes only


def test_a_large_file_that_is_not_an_image_is_one_line_for_the_endpoint(project, tmp_path):
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(os.urandom(7 * 1024 * 1024))
    dry = ["--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
    result = run(project, "predict", str(noise), "--endpoint", "demo", *dry)
    assert result.exit_code == 1, result.output
    limit = payload.body_limit(ProjectConfig.load(project)) / 2**20
    assert result.output.strip().splitlines() == [
        f"Error: {noise} is 7.0 MB, over the endpoint's {limit:.1f} MB request limit, and not an image this "
        "machine can shrink to fit it (JPEG, PNG, WEBP, GIF, BMP)"
    ]
    calls = json.loads((tmp_path / "dry" / "aws" / "requests.json").read_text())
    assert [call for call in calls if call["operation"] == "InvokeEndpoint"] == []


@pytest.mark.parametrize(("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_policies_use_the_regions_partition(project, region, partition):
    import dataclasses

    config = ProjectConfig.load(project)
    # An image both generations have in every partition (v3's default, 2.14, is not in these regions yet).
    images = {**config.data["images"], "training": {"framework_version": "2.8.0", "py_version": "py312"}}
    data = {**config.data, "aws": {**config.data["aws"], "region": region, "role_arn": ""}, "images": images}
    other = dataclasses.replace(config, data=data)
    operations = [("sagemaker", "CreateEndpoint"), ("s3", "PutObject"), ("logs", "GetLogEvents")]
    for policy in (iam.user_policy(other, operations), iam.execution_role_policy(other)):
        resources = [
            resource
            for statement in policy["Statement"]
            for resource in (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            if resource != "*"
        ]
        assert resources and all(resource.startswith(f"arn:{partition}:") for resource in resources), (
            resources
        )
    allowed = {
        action
        for statement in iam.user_policy(other, operations)["Statement"]
        for action in statement["Action"]
    }
    assert "sagemaker:AddTags" in allowed  # a Create request with Tags needs it
