"""The report from a job's archives in S3, through the CLI, and from one tiny real `train --local` run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_TRAINING, project_module
from launch_helpers import copy_project
from report_outputs import (
    JOB,
    assert_png,
    assert_self_contained,
    create_job,
    output_archive,
    put_output,
    write_outputs,
)

report = project_module("report")
# Where the report's size limits are read (a test lowers them there).
report_fetch = project_module("report.fetch")
cli = project_module("cli")
launcher = project_module("workflow.launcher")
open_session = project_module("aws.session").open_session


@pytest.fixture()
def local_run(tmp_path) -> Path:
    """A run folder as `train --local` leaves it (only the part the report reads)."""
    run = tmp_path / "runs" / "local"
    write_outputs(run / "opt_ml" / "output" / "data")
    return run


# --- a job's output.tar.gz ------------------------------------------------------------------------


def test_extraction_takes_only_the_expected_files(tmp_path):
    archive = tmp_path / "output.tar.gz"
    archive.write_bytes(
        output_archive(write_outputs(tmp_path / "data"), {"../escape.json": b"{}", "trace/big.json": b"{}"})
    )
    report.extract_outputs(archive, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(report.OUTPUT_FILES)
    assert not (tmp_path / "escape.json").exists()


def test_job_report_reads_the_archive_from_the_offline_s3(project_config, tmp_path):
    archive = output_archive(write_outputs(tmp_path / "data"))
    with open_session(project_config, dry_run=True, folder=tmp_path / "dry") as session:
        put_output(session, create_job(session, JOB), JOB, archive)
        result = report.build_job_report(
            project_config, session, JOB, reports_dir=tmp_path / "reports", progress=True
        )
    assert result.folder == tmp_path / "reports" / JOB and not result.captured
    assert (result.folder / "job-output" / "recording.json").is_file()
    links = assert_self_contained(result.index_html)
    assert "job-output/profiler-report.html" in links
    for path in result.pictures.values():
        assert_png(path)
    assert sum(map(sum, result.confusion)) == 6
    # Honest about where the outputs came from.
    assert any("dry run" in note for note in result.notes)
    assert [v.rule for v in result.verdicts][0] == "loss_not_decreasing"


def test_job_report_refuses_an_archive_over_the_limit(project_config, tmp_path, monkeypatch):
    monkeypatch.setattr(report_fetch, "MAX_ARCHIVE_BYTES", 100)
    with open_session(project_config, dry_run=True, folder=tmp_path / "dry") as session:
        put_output(session, create_job(session, JOB), JOB, b"x" * 101)
        with pytest.raises(report.ReportError, match="more than the report downloads"):
            report.build_job_report(project_config, session, JOB, reports_dir=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_a_captured_job_writes_nothing(project_config, tmp_path):
    with open_session(project_config, dry_run=True, folder=tmp_path / "dry") as session:
        create_job(session, JOB)
        result = report.build_job_report(project_config, session, JOB, reports_dir=tmp_path / "reports")
    assert result.captured and result.index_html is None
    assert not (tmp_path / "reports").exists()


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("report") / "project")


def test_cli_report_without_a_job_names_what_to_do(project):
    result = CliRunner().invoke(cli.main, ["--project", str(project), "report"])
    assert result.exit_code == 1
    assert "no training job recorded" in result.output
    assert "Traceback" not in result.output


def test_cli_report_local_prints_the_verdicts_and_the_page(project, local_run, tmp_path):
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project), "report", "--local", "--run-dir", str(local_run), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "loss_not_decreasing" in result.output and "IssuesFound" in result.output
    assert f"report: {out / 'local' / 'index.html'}" in result.output
    assert (out / "local" / "loss.png").is_file()


def test_cli_report_dry_run_chains_from_the_recorded_job(project, tmp_path):
    config = project_module("config").ProjectConfig.load(project)
    dry = tmp_path / "dry"
    with open_session(config, dry_run=True, folder=dry) as session:
        create_job(session, JOB)
    arguments = [
        "--project",
        str(project),
        "report",
        "--dry-run",
        "--dry-run-dir",
        str(dry),
        "--out",
        str(tmp_path / "r"),
    ]
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 0, result.output
    assert f"training job {JOB} was captured, not run (dry run)" in result.output
    assert not (tmp_path / "r").exists()
    # With outputs in the offline S3, the same command writes the report.
    with open_session(config, dry_run=True, folder=dry) as session:
        put_output(
            session, session.aws.s3_uri("output"), JOB, output_archive(write_outputs(tmp_path / "data"))
        )
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 0, result.output
    assert "SageMaker's built-in rules" not in result.output  # the job configured none
    assert f"report: {tmp_path / 'r' / JOB / 'index.html'}" in result.output


# --- one tiny real run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_local_run_reports_its_confusion_matrix(project_config, shared_local_run, tmp_path):
    """train_model.py under the training toolkit (the session's shared tiny run: conftest's
    SHARED_RUN_TRAINING, four rules, every step saved): the recorder's test-pass counts reach the report."""
    run_dir, tiny_dataset = shared_local_run.run_dir, shared_local_run.data_dir
    result = report.build_local_report(project_config, run_dir, reports_dir=tmp_path / "reports")
    # The int8 section reads what the job saved, and decides as model_fn does for a CPU endpoint.
    from classifier.artifact import choose_precision, load_metadata

    metadata = load_metadata(run_dir / "opt_ml" / "model")
    assert result.int8.quantization == metadata.quantization
    assert metadata.quantization["setting"] == project_config.settings.hyperparameters.quantize
    assert result.int8.source == f"{result.run.removeprefix('local run ')}/opt_ml/model/metadata.json"
    if result.int8.endpoint.endswith("(CPU)"):
        assert (result.int8.serves, result.int8.why) == choose_precision(metadata, "cpu")
    assert "### int8 endpoint" in result.summary_markdown
    classes = TINY_TRAINING["num_classes"]
    test_images = sum(1 for _ in (tiny_dataset / "test").rglob("*.jpg"))
    assert len(result.confusion) == classes and all(len(row) == classes for row in result.confusion)
    assert sum(map(sum, result.confusion)) == test_images == result.test_images
    assert sum(c.images for c in result.classes) == test_images
    assert [p.epoch for p in result.epochs] == list(range(1, TINY_TRAINING["epochs"] + 1))
    assert all(p.training_loss is not None and p.validation_loss is not None for p in result.epochs)
    assert {v.rule for v in result.verdicts} >= {"loss_not_decreasing", "overfit", "LowGPUUtilization"}
    for path in result.pictures.values():
        assert_png(path)
    assert {"loss", "confusion", "utilisation"} <= set(result.pictures)
    assert_self_contained(result.index_html)
    for verdict in result.verdicts:
        assert verdict.rule in result.summary_markdown


def test_write_up_fills_in_what_a_reviewer_asks_for(project_config, local_run, tmp_path):
    """WRITEUP.md: tuning (search and best values), verdicts with steps, pictures, endpoint query,
    screenshots; a WRITEUP.md the student edited is never overwritten."""
    writeup = project_module("checks.writeup")
    launcher = project_module("workflow.launcher")
    ProjectState = project_module("aws.state").ProjectState
    project = copy_project(project_config.root, tmp_path / "project")
    config = type(project_config).load(project)
    state = ProjectState(tmp_path / "state")
    state.set_value(
        launcher.BEST_HYPERPARAMETERS,
        {
            "tuning_job": "hpo-1",
            "training_job": "hpo-1-003",
            "hyperparameters": {"lr": 0.0042, "batch_size": 60},
        },
    )
    state.record("endpoint", "my-endpoint")
    result = report.build_local_report(config, local_run, reports_dir=tmp_path / "reports")
    path = writeup.write_up(config, state, result)
    text = path.read_text()
    assert path == project / "WRITEUP.md"
    assert "`lr` = 0.0042" in text and "`batch_size` = 60" in text and "hpo-1-003" in text
    for verdict in result.verdicts:
        assert f"| {verdict.rule} | {verdict.verdict_text} | {verdict.step_text} |" in text
    assert "| overtraining | NotEnoughData (this project's verdict) | - |" in text
    assert "- `loss_not_decreasing` (num_steps=10, diff_percent=0.1): TRAIN losses checked" in text
    assert result.pictures
    for key, picture in result.pictures.items():
        assert f"![{report.FIGURE_TITLES[key]}]({picture})" in text  # outside the project: the path as it is
    assert "Try: " in text and "worst: Afghan hound (50.0% of 2)" in text
    # Inside the project, each picture's path is relative to WRITEUP.md, so the Markdown shows it.
    inside = report.build_local_report(config, local_run, reports_dir=project / "reports")
    text = writeup.render(config, state, inside)
    assert "![Loss and accuracy](reports/local/loss.png)" in text
    assert 'EndpointName="my-endpoint", ContentType="image/jpeg", Body=image.read()' in text
    assert "Hyperparameter tuning jobs" in text and "InService" in text
    # Regenerated in place while it is still the generated one; the student's own edits are kept.
    assert writeup.write_up(config, state, result) == project / "WRITEUP.md"
    (project / "WRITEUP.md").write_text("# My write-up\n")
    assert writeup.write_up(config, state, result) == project / "WRITEUP.generated.md"
    assert (project / "WRITEUP.md").read_text() == "# My write-up\n"
