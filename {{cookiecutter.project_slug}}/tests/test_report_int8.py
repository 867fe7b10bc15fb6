"""The report's int8 line: the int8 model's figures, and what the configured endpoint would serve."""

from __future__ import annotations

import copy
import html
import importlib
import io
import json
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import REQUIRED_SCRIPT_ARGS, project_module
from launch_helpers import copy_project
from report_outputs import (
    CLASSES,
    JOB,
    create_job,
    output_archive,
    put_output,
)

report = project_module("report")
cli = project_module("cli")
open_session = project_module("aws.session").open_session


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("report") / "project")


# --- the int8 endpoint ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training(training_source):
    """training/'s modules, imported as the job imports them (train_model, export, quantize)."""
    sys.path.insert(0, str(training_source))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(training_source))


@pytest.fixture()
def run(tmp_path) -> Path:
    """A local run folder with only history.json in its outputs: one picture to draw, not five."""
    folder = tmp_path / "runs" / "local"
    write_history(folder / "opt_ml" / "output" / "data")
    return folder


def write_history(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.json").write_text(json.dumps({"epochs": [{"loss": 1.2, "accuracy": 0.4}]}))
    return folder


def quiet(*args, **kwargs) -> None:
    """A `log` for the training functions that prints nothing."""


def measured(int8_correct: int, images: int = 200, float_correct: int = 170) -> dict:
    """`quantize_and_compare`'s figures for an int8 model that gets `int8_correct` of `images` right."""
    float_accuracy, int8_accuracy = float_correct / images, int8_correct / images
    return {
        "available": True,
        "format": "onnx-qdq",
        "calibration_images": 300,
        "validation_images": images,
        "agreement": 0.985,
        "float_accuracy": float_accuracy,
        "int8_accuracy": int8_accuracy,
        "accuracy_drop_points": round((float_accuracy - int8_accuracy) * 100, 4),
        "seconds": 12.5,
        "torch_version": "2.8.0",
    }


def save_model(training, model_dir: Path, quantize: str, figures: dict) -> Path:
    """SM_MODEL_DIR as export.save leaves it at the end of train_model.py, metadata.json and all
    (a stand-in network: the report reads only the metadata)."""
    import torch

    train_model = training("train_model")
    args = train_model.get_args_parser("test").parse_args(
        [*REQUIRED_SCRIPT_ARGS, "--quantize", quantize, "--model_dir", str(model_dir)]
        + ["--output_data_dir", str(model_dir.parent / "saved-output")]
    )
    state = SimpleNamespace(model=torch.nn.Linear(2, len(CLASSES)))
    data = SimpleNamespace(class_names=CLASSES)
    training("export").save(
        args, state, data, {"best_epoch": 1}, [], training("quantize").Quantized(None, figures)
    )
    return model_dir


def configured(config, endpoint_type: str = "ml.m5.large", quantize: str = "auto", serverless: bool = False):
    """`config` with the endpoint and quantize setting a test needs, whatever the render's answers were."""
    data = copy.deepcopy(config.data)
    data["instances"]["endpoint"]["type"] = endpoint_type
    data["endpoint"]["serverless"] = serverless
    data["hyperparameters"]["quantize"] = quantize
    return type(config)(root=config.root, data=data)


def int8_section(config, run_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The local report's int8 endpoint lines, after checking summary.md and index.html show the same."""
    result = report.build_local_report(config, run_dir, reports_dir=tmp_path / "reports")
    facts = dict(report.int8_facts(result.int8))
    page = result.index_html.read_text(encoding="utf-8")
    assert "### int8 endpoint" in result.summary_markdown and "<h2>int8 endpoint</h2>" in page
    for label, text in facts.items():
        assert f"- **{label}**: {text}" in result.summary_markdown
        assert f"<li><b>{label}</b>: {html.escape(text)}</li>" in page
    return facts


def test_int8_that_loses_little_is_what_a_cpu_endpoint_serves(project_config, run, training, tmp_path):
    save_model(training, run / "opt_ml" / "model", "auto", measured(int8_correct=169))
    facts = int8_section(configured(project_config), run, tmp_path)
    assert facts == {
        "int8 model": "98.50% top-1 agreement with float on 200 validation images; "
        "validation accuracy float 85.00%, int8 84.50% (0.50 points lost)",
        "ml.m5.large (CPU) serves": "int8: quantize=auto and int8 loses 0.50 points, at most 0.5 "
        "(validation accuracy float 0.8500, int8 0.8450, top-1 agreement 0.9850)",
        "Read from": "local/opt_ml/model/metadata.json",
    }


def test_auto_refuses_int8_that_loses_too_much(project_config, run, training, tmp_path):
    save_model(training, run / "opt_ml" / "model", "auto", measured(int8_correct=166))
    facts = int8_section(configured(project_config), run, tmp_path)
    assert facts["int8 model"].endswith("validation accuracy float 85.00%, int8 83.00% (2.00 points lost)")
    assert facts["ml.m5.large (CPU) serves"].startswith(
        "float: quantize=auto and int8 would lose 2.00 points, more than 0.5 (validation accuracy"
    )


def test_an_int8_model_that_could_not_be_made_says_why(project_config, run, training, tmp_path):
    """The figures of a real failed quantization: the reason is the one the job logged."""
    import torch

    class Branching(torch.nn.Module):
        def forward(self, images):  # control flow on a tensor: torch.export refuses it
            return images.flatten(1)[:, :3] if images.sum() > 0 else images.flatten(1)[:, 3:6]

    batches = [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))]
    quantized = training("quantize").quantize_and_compare(
        Branching(), "branching", lambda: batches, lambda: batches, torch.device("cpu"), quiet
    )
    reason = quantized.figures["reason"]
    assert reason.startswith("branching cannot be quantized: ")
    save_model(training, run / "opt_ml" / "model", "auto", quantized.figures)
    facts = int8_section(configured(project_config, "ml.c5.xlarge"), run, tmp_path)
    assert facts["int8 model"] == f"not made: {reason}"
    assert facts["ml.c5.xlarge (CPU) serves"] == (
        f"float: quantize=auto, but the artifact has no int8 model ({reason})"
    )


def test_quantize_float_in_the_config_serves_float(project_config, run, training, tmp_path):
    float_only = training("export").quantize_for_cpu(
        SimpleNamespace(quantize="float"), None, None, None, quiet
    )
    save_model(training, run / "opt_ml" / "model", "float", float_only.figures)
    facts = int8_section(configured(project_config, quantize="float"), run, tmp_path)
    assert facts["int8 model"] == "not made: quantize=float when it was trained"
    assert facts["ml.m5.large (CPU) serves"] == "float: quantize=float"
    assert "Note" not in facts


@pytest.mark.parametrize(
    ("serverless", "label", "serves"),
    [
        (False, "ml.g4dn.xlarge (GPU) serves", "float: quantize=auto, but int8 runs on CPUs only"),
        (True, "a serverless endpoint (CPU) serves", "int8: quantize=auto and int8 loses 0.00 points"),
    ],
    ids=["gpu-instance", "serverless"],
)
def test_the_configured_endpoint_decides_cpu_or_gpu(
    project_config, run, training, tmp_path, serverless, label, serves
):
    save_model(training, run / "opt_ml" / "model", "auto", measured(int8_correct=170))
    config = configured(project_config, "ml.g4dn.xlarge", serverless=serverless)
    facts = int8_section(config, run, tmp_path)
    assert facts[label].startswith(serves)


def test_a_config_changed_since_training_is_pointed_out(project_config, run, training, tmp_path):
    save_model(training, run / "opt_ml" / "model", "auto", measured(int8_correct=170))
    facts = int8_section(configured(project_config, quantize="float"), run, tmp_path)
    # model_fn reads the setting the model was trained with, not today's config.toml.
    assert facts["ml.m5.large (CPU) serves"].startswith("int8: quantize=auto")
    assert facts["Note"] == (
        "config.toml now says quantize = float, but this model was trained with quantize = auto "
        "and the endpoint follows the model: train again to change it"
    )


def test_a_run_without_its_model_says_where_the_figures_are(project_config, run, tmp_path):
    result = report.build_local_report(project_config, run, reports_dir=tmp_path / "reports")
    assert report.int8_facts(result.int8) == [
        (
            "int8 model",
            "no metadata.json in local (looked in opt_ml/model/, the folder itself and model.tar.gz): "
            "the figures are in the run's model artifact",
        )
    ]


def test_a_local_model_archive_is_read_when_the_tree_is_gone(project_config, run, training, tmp_path):
    model_dir = save_model(training, tmp_path / "model", "auto", measured(int8_correct=169))
    project_module("local.training_run").package_model(model_dir, run / "model.tar.gz")
    facts = int8_section(configured(project_config), run, tmp_path)
    assert facts["Read from"] == "metadata.json in local/model.tar.gz"
    assert facts["ml.m5.large (CPU) serves"].startswith("int8: quantize=auto and int8 loses 0.50 points")


def model_archive(model_dir: Path) -> bytes:
    """model.tar.gz with the weights before metadata.json: the report reads past them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("model.pth", "metadata.json"):
            tar.add(model_dir / name, arcname=name)
    return buffer.getvalue()


def test_job_report_reads_the_int8_figures_from_the_jobs_model_archive(project_config, training, tmp_path):
    config = configured(project_config)
    model_dir = save_model(training, tmp_path / "model", "auto", measured(int8_correct=166))
    with open_session(config, dry_run=True, folder=tmp_path / "dry") as session:
        output_path = create_job(session, JOB)
        put_output(session, output_path, JOB, output_archive(write_history(tmp_path / "data")))
        model_uri = f"{output_path}/{JOB}/output/model.tar.gz"
        bucket, _, key = model_uri.removeprefix("s3://").partition("/")
        s3 = session.aws.client("s3")

        def int8_of(reports: str, progress: bool = False):
            return report.build_job_report(
                config, session, JOB, reports_dir=tmp_path / reports, progress=progress
            )

        captured = int8_of("captured")  # the dry run's stand-in model.tar.gz
        s3.delete_object(Bucket=bucket, Key=key)
        running = int8_of("running")
        s3.put_object(Bucket=bucket, Key=key, Body=model_archive(model_dir))
        after = int8_of("after", progress=True)
    assert report.int8_facts(captured.int8) == [
        (
            "int8 model",
            f"{model_uri} is a dry run's stand-in: the figures appear here once a job has run and saved "
            "its model (they are in its metadata.json)",
        )
    ]
    assert report.int8_facts(running.int8) == [
        (
            "int8 model",
            f"no model.tar.gz at {model_uri} yet: the figures appear here once the job has saved its model "
            "(they are in its metadata.json)",
        )
    ]
    assert "### int8 endpoint" in running.summary_markdown
    facts = dict(report.int8_facts(after.int8))
    assert facts["Read from"] == f"metadata.json in {model_uri}"
    assert facts["int8 model"].endswith("int8 83.00% (2.00 points lost)")
    assert facts["ml.m5.large (CPU) serves"].startswith("float: quantize=auto and int8 would lose 2.00")
    assert "<h2>int8 endpoint</h2>" in after.index_html.read_text(encoding="utf-8")


def test_cli_report_local_prints_the_int8_endpoint(project, run, training, tmp_path):
    save_model(training, run / "opt_ml" / "model", "auto", {"available": False, "reason": "x [y] z"})
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project), "report", "--local", "--run-dir", str(run), "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    section = lines.index("int8 endpoint:")
    assert lines[section + 1] == "  int8 model: not made: x [y] z"  # brackets printed, not read as markup
    assert lines[section + 2].endswith(
        " serves: float: quantize=auto, but the artifact has no int8 model (x [y] z)"
    )
    assert "note: no rule_verdicts.json: the run judged no rules ([debugger] rules is empty" in result.output


def test_write_up_has_the_int8_endpoint(project_config, run, training, tmp_path):
    writeup = project_module("checks.writeup")
    save_model(training, run / "opt_ml" / "model", "auto", measured(int8_correct=169))
    project = copy_project(project_config.root, tmp_path / "project")
    config = configured(type(project_config).load(project))
    result = report.build_local_report(config, run, reports_dir=tmp_path / "reports")
    state = project_module("aws.state").ProjectState(tmp_path / "state")
    text = writeup.write_up(config, state, result).read_text(encoding="utf-8")
    assert "## int8 endpoint" in text
    for label, line in report.int8_facts(result.int8):
        assert f"- **{label}**: {line}" in text
