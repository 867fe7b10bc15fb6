"""The training report: rule verdicts from a job's description, loss curves from smdebug output, the CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import project_module
from launch_helpers import copy_project

report = project_module("report")
cli = project_module("cli")

JOB = "dog-train-2026-01-01-00-00-00-000"
OUTPUT = "s3://bucket/prefix/output"


def description(**extra) -> dict:
    """DescribeTrainingJob after the rules ran (the SDK added and named the report rule itself)."""
    return {
        "TrainingJobName": JOB,
        "TrainingJobStatus": "Completed",
        "OutputDataConfig": {"S3OutputPath": OUTPUT},
        "ModelArtifacts": {"S3ModelArtifacts": f"{OUTPUT}/{JOB}/output/model.tar.gz"},
        "DebugHookConfig": {"S3OutputPath": "s3://bucket/prefix/debug-output"},
        "ProfilerConfig": {"S3OutputPath": "s3://bucket/prefix/profiler-output"},
        "DebugRuleConfigurations": [
            {"RuleConfigurationName": "LossNotDecreasing"},
            {"RuleConfigurationName": "Overfit"},
        ],
        "DebugRuleEvaluationStatuses": [
            {
                "RuleConfigurationName": "LossNotDecreasing",
                "RuleEvaluationStatus": "IssuesFound",
                "StatusDetails": "RuleEvaluationConditionMet:\n Evaluation of the rule   LossNotDecreasing",
            },
        ],
        "ProfilerRuleConfigurations": [{"RuleConfigurationName": "ProfilerReport-1645031653"}],
        "ProfilerRuleEvaluationStatuses": [
            {"RuleConfigurationName": "ProfilerReport-1645031653", "RuleEvaluationStatus": "NoIssuesFound"}
        ],
        **extra,
    }


def test_verdicts_list_every_configured_rule_with_its_status():
    verdicts = report.rule_verdicts(description())
    assert [(v.rule, v.kind, v.status) for v in verdicts] == [
        ("LossNotDecreasing", "debugger", "IssuesFound"),
        ("Overfit", "debugger", report.NOT_EVALUATED_YET),
        ("ProfilerReport-1645031653", "profiler", "NoIssuesFound"),
    ]
    # Details arrive with line breaks and runs of spaces; a table cell wants one line.
    assert verdicts[0].details == ("RuleEvaluationConditionMet: Evaluation of the rule LossNotDecreasing")


def test_a_dry_run_says_its_rules_were_not_evaluated():
    plain = description(DebugRuleEvaluationStatuses=[], ProfilerRuleEvaluationStatuses=None)
    verdicts = report.rule_verdicts(plain, dry_run=True)
    assert {v.status for v in verdicts} == {report.NOT_EVALUATED_OFFLINE}
    assert len(verdicts) == 3


def test_artifact_locations_follow_sagemakers_layout():
    artifacts = report.job_artifacts(description())
    assert artifacts.debugger_output == f"s3://bucket/prefix/debug-output/{JOB}/debug-output"
    assert artifacts.profiler_output == f"s3://bucket/prefix/profiler-output/{JOB}/profiler-output"
    assert artifacts.rule_output == f"{OUTPUT}/{JOB}/rule-output"
    assert artifacts.profiler_report == (
        f"{OUTPUT}/{JOB}/rule-output/ProfilerReport-1645031653/profiler-output/profiler-report.html"
    )


def test_no_debugger_or_profiler_means_no_such_locations():
    artifacts = report.job_artifacts(
        description(
            DebugHookConfig=None,
            ProfilerConfig={"S3OutputPath": "s3://bucket/p", "DisableProfiler": True},
            ProfilerRuleConfigurations=[],
        )
    )
    assert artifacts.debugger_output is None
    assert artifacts.profiler_output is None
    assert artifacts.profiler_report is None


def test_console_url_points_at_the_object():
    url = report.console_url("s3://my-bucket/a/b/profiler-report.html", "eu-west-1")
    assert url == (
        "https://s3.console.aws.amazon.com/s3/object/my-bucket?region=eu-west-1&prefix=a%2Fb%2Fprofiler-report.html"
    )


@pytest.fixture(scope="module")
def saved_losses(tmp_path_factory):
    """smdebug output of a tiny model: 4 TRAIN steps and 2 EVAL steps, loss saved every step."""
    import smdebug.pytorch as smd
    import torch

    out_dir = tmp_path_factory.mktemp("tensors") / "tensors"
    hook = smd.Hook(
        out_dir=str(out_dir), save_config=smd.SaveConfig(save_interval=1), include_collections=["losses"]
    )
    torch.manual_seed(0)
    model, loss_fn = torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss()
    hook.register_module(model)
    hook.register_loss(loss_fn)
    inputs, targets = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    expected = {"TRAIN": [], "EVAL": []}
    for mode, steps in (("TRAIN", 4), ("EVAL", 2)):
        hook.set_mode(smd.modes[mode])
        for _ in range(steps):
            loss = loss_fn(model(inputs), targets)
            expected[mode].append(loss.item())
            if mode == "TRAIN":
                loss.backward()
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter -= 0.5 * parameter.grad
                        parameter.grad = None
    hook.close()
    return out_dir, expected


def test_loss_curves_hold_every_saved_step_per_mode(saved_losses):
    out_dir, expected = saved_losses
    curves = {curve.mode: curve for curve in report.loss_curves(out_dir)}
    assert sorted(curves) == ["EVAL", "TRAIN"]
    assert curves["TRAIN"].steps == [0, 1, 2, 3]
    assert curves["EVAL"].steps == [0, 1]
    for mode in curves:
        assert curves[mode].values == pytest.approx(expected[mode], rel=1e-5)
    assert curves["TRAIN"].values[-1] < curves["TRAIN"].values[0]


def test_plot_draws_one_panel_per_mode_with_the_values(saved_losses):
    curves = report.loss_curves(saved_losses[0])
    figure = report.plot_loss_curves(curves)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == [report.MODE_TITLES["TRAIN"], report.MODE_TITLES["EVAL"]]
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([c for c in curves if c.mode == "TRAIN"][0].values)


def test_plot_without_curves_says_so():
    figure = report.plot_loss_curves([])
    assert "no loss values" in figure.axes[0].texts[0].get_text()


def test_missing_tensor_folder_is_a_clear_error(tmp_path):
    with pytest.raises(report.ReportError, match="no debugger output"):
        report.loss_curves(tmp_path / "nothing-here")


@pytest.fixture(scope="module")
def project(project_root, tmp_path_factory):
    return copy_project(project_root, tmp_path_factory.mktemp("report") / "project")


def test_cli_report_without_a_job_names_what_to_do(project):
    result = CliRunner().invoke(cli.main, ["--project", str(project), "report"])
    assert result.exit_code == 1
    assert "no training job recorded" in result.output
    assert "Traceback" not in result.output


def test_cli_report_local_prints_and_plots_the_curves(project, saved_losses, tmp_path):
    out_dir, _ = saved_losses
    png = tmp_path / "plots" / "loss.png"
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project), "report", "--local", "--tensors", str(out_dir), "--plot", str(png)],
    )
    assert result.exit_code == 0, result.output
    assert "train loss" in result.output and "4 steps saved" in result.output
    assert "eval loss" in result.output and "2 steps saved" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_dry_run_job_reports_its_configured_rules_as_not_evaluated(project_config, tmp_path):
    """moto drops the profiler rules from DescribeTrainingJob; the report takes them from the request."""
    launcher = project_module("launcher")
    sagemaker_api = project_module("sagemaker_api")
    open_session = project_module("session").open_session
    with open_session(project_config, dry_run=True, folder=tmp_path) as session:
        job = launcher.train(project_config, session).training_job_name
    # The next session (e.g. `report --dry-run` after `train --dry-run`) still knows the job.
    with open_session(project_config, dry_run=True, folder=tmp_path) as session:
        result = report.training_report(session, job)
        context = session.aws
    rules = sagemaker_api.rule_set(project_config)
    assert len(result.verdicts) == len(rules.debugger) + len(rules.profiler)
    assert {v.status for v in result.verdicts} <= {report.NOT_EVALUATED_OFFLINE}
    assert [v.kind for v in result.verdicts].count("profiler") == len(rules.profiler)
    assert result.curves == [] and result.tensors is None
    if "ProfilerReport" in rules.profiler:
        assert result.artifacts.profiler_report.startswith(f"s3://{context.bucket}/")
        assert result.artifacts.profiler_report.endswith(
            f"/{job}/rule-output/ProfilerReport/profiler-output/profiler-report.html"
        )
