"""The report: reports/<run>/index.html, its pictures and summary.md, from a local run's folder.

Small synthetic output folders shaped like what training/train_model.py writes (report_outputs.py), and
SageMaker's own rule statuses; the job's archives, the CLI and a real run are test_report_jobs.py, the
int8 line test_report_int8.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import project_module
from report_outputs import (
    CLASSES,
    JOB,
    OUTPUT,
    assert_png,
    assert_self_contained,
    description,
    profile_document,
    recording_document,
    verdicts_document,
    write_outputs,
)

report = project_module("report")
# Where the report's size limits are read (a test lowers them there).
report_fetch = project_module("report.fetch")
launcher = project_module("workflow.launcher")


@pytest.fixture()
def local_run(tmp_path) -> Path:
    """A run folder as `train --local` leaves it (only the part the report reads)."""
    run = tmp_path / "runs" / "local"
    write_outputs(run / "opt_ml" / "output" / "data")
    return run


# --- SageMaker's rule statuses (DescribeTrainingJob) ---------------------------------------------


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
    assert report.output_archive_uri(description()) == f"{OUTPUT}/{JOB}/output/output.tar.gz"


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


# --- a local run ----------------------------------------------------------------------------------


def test_local_report_writes_pictures_and_an_index_whose_links_resolve(project_config, local_run, tmp_path):
    result = report.build_local_report(project_config, local_run, reports_dir=tmp_path / "reports")
    assert result.folder == tmp_path / "reports" / "local"
    assert set(result.pictures) == {"loss", "gradients", "confusion", "class_accuracy", "utilisation"}
    for path in result.pictures.values():
        assert path.parent == result.folder
        assert_png(path)
    links = assert_self_contained(result.index_html)
    assert {p.name for p in result.pictures.values()} <= set(links)
    assert "profiler-report.html" in links and "summary.md" in links
    text = result.index_html.read_text(encoding="utf-8")
    # Small: the pictures are files beside it, not inline.
    assert len(text) < 50_000
    for rule in ("loss_not_decreasing", "overfit", "overtraining", "DataLoadingBottleneck"):
        assert rule in text
    assert "Afghan hound" in text and "002." not in text  # the worst class, named as the endpoint names it
    # Titles a person reads: no absolute path in the page.
    assert str(tmp_path) not in text


def test_summary_names_each_verdict_with_its_step_and_the_headline_facts(project_config, local_run, tmp_path):
    result = report.build_local_report(project_config, local_run, reports_dir=tmp_path)
    summary = result.summary_path.read_text(encoding="utf-8")
    assert summary == result.summary_markdown
    for verdict in verdicts_document()["rules"]:
        step = "-" if verdict["step"] is None else f"{verdict['step']} ({verdict['mode']})"
        label = verdict["verdict"] + (
            " (this project's verdict)" if verdict["verdict"] == "NotEnoughData" else ""
        )
        assert f"| {verdict['rule']} | {label} | {step} |" in summary
    assert "SageMaker's built-in rules end with NoIssuesFound when they cannot judge" in summary
    # One line per rule: the parameters it ran with and the reading it took.
    assert (
        "- `loss_not_decreasing` (num_steps=10, diff_percent=0.1): TRAIN losses checked every 10" in summary
    )
    assert "loss rose by 3%" in summary  # one line per verdict, whatever the reason's line breaks
    assert "Test accuracy**: 83.3% on 6 test images" in summary
    # The profiler's main finding is the rule that found an issue.
    assert "Profiler**: DataLoadingBottleneck: 72% of training step time waiting for data" in summary
    assert "Best tuned hyperparameters**: none recorded" in summary
    assert "Worst classes**: Afghan hound (50.0% of 2)" in summary


def test_summary_has_the_best_tuned_hyperparameters_of_the_session(project_config, tmp_path):
    state = project_module("aws.state").ProjectState(tmp_path / "state")
    state.set_value(
        launcher.BEST_HYPERPARAMETERS,
        {
            "tuning_job": "hpo-1",
            "training_job": "hpo-1-003",
            "hyperparameters": {"lr": 0.003, "batch_size": 40},
        },
    )
    output = report.read_output(write_outputs(tmp_path / "data"))
    result = report.write_report(
        output,
        tmp_path / "out",
        run="job",
        source="test",
        best_hyperparameters=state.value(launcher.BEST_HYPERPARAMETERS),
    )
    assert (
        "Best tuned hyperparameters**: batch_size=40, lr=0.003 (tuning job hpo-1)" in result.summary_markdown
    )


def test_per_epoch_losses_share_one_axis_and_steps_sit_beside_them(tmp_path):
    output = report.read_output(write_outputs(tmp_path / "data"))
    points = report.epoch_points(output.recording, output.history)
    assert [p.epoch for p in points] == [1, 2, 3]
    assert points[0].training_loss == pytest.approx(1.8) and points[2].validation_accuracy == pytest.approx(
        0.7
    )
    figure = report.loss_figure(points, output.recording)
    per_epoch, steps = figure.axes[0], figure.axes[1]
    assert per_epoch.get_title() == "Loss and accuracy per epoch"
    assert [line.get_label() for line in per_epoch.get_lines()] == ["training loss", "validation loss"]
    assert per_epoch.get_xlabel() == "epoch"
    # Training and validation steps are placed on the same epoch axis.
    assert steps.get_xlabel().startswith("epoch")
    train, evaluation = steps.get_lines()
    # Epoch n's steps lie in (n-1, n]: the last of the third epoch at 3, where its per-epoch point is.
    assert max(evaluation.get_xdata()) == pytest.approx(3) and min(evaluation.get_xdata()) > 0
    assert 2 < max(train.get_xdata()) <= 3
    accuracy = figure.axes[2]  # the right-hand axis of the first panel
    assert [line.get_label() for line in accuracy.get_lines()] == ["training accuracy", "validation accuracy"]


def test_a_one_epoch_run_gets_one_tick_and_a_marker(tmp_path):
    recording = recording_document(epochs=1)
    figure = report.loss_figure(report.epoch_points(recording, None), recording)
    axes = figure.axes[0]
    assert list(axes.get_xticks()) == [1]
    assert axes.get_xlim() == (0.5, 1.5)
    assert all(line.get_marker() == "o" for line in axes.get_lines())


def test_long_series_are_thinned_before_they_are_drawn(tmp_path):
    steps = 20_000
    recording = recording_document(epochs=2, steps_per_epoch=steps // 2)
    figure = report.loss_figure(report.epoch_points(recording, None), recording)
    for line in figure.axes[1].get_lines():
        assert len(line.get_xdata()) <= report.MAX_PLOT_POINTS
    profile = profile_document(samples=50_000)
    (line, *_) = report.utilisation_figure(profile).axes[0].get_lines()
    assert len(line.get_xdata()) == report.MAX_PLOT_POINTS
    assert report.downsample(list(range(1000)), 10)[::9] == [0, 999]


def test_gpu_lines_only_when_a_gpu_was_sampled():
    labels = [line.get_label() for line in report.utilisation_figure(profile_document()).axes[0].get_lines()]
    assert labels == ["CPU (all cores)", "memory"]
    labels = [
        line.get_label() for line in report.utilisation_figure(profile_document(gpu=True)).axes[0].get_lines()
    ]
    assert labels == ["CPU (all cores)", "memory", "GPU 0"]


def test_confusion_matrix_and_class_accuracy_come_from_the_test_pass():
    recording = recording_document(confusion=[[3, 1, 0], [0, 2, 2], [0, 0, 4]])
    matrix = report.confusion_matrix(recording)
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert sum(map(sum, matrix)) == 12
    classes = report.class_accuracies(recording)
    best, worst = report.best_and_worst(classes)
    assert [c.name for c in best] == ["Airedale terrier"]
    assert [c.name for c in worst] == ["Afghan hound"]
    figure = report.confusion_figure(matrix, report.class_names(recording, 3))
    assert figure.axes[0].get_xlabel() == "predicted class"
    assert "12 images" in figure.axes[0].get_title()


def test_classes_all_alike_are_not_called_best_and_worst(tmp_path):
    output = report.read_output(write_outputs(tmp_path / "data", confusion=[[2, 0, 0], [0, 2, 0], [0, 0, 2]]))
    summary = report.write_report(output, tmp_path / "out", run="run", source="test").summary_markdown
    assert "Per-class accuracy**: 100.0% for every class" in summary
    assert "Worst classes" not in summary
    assert report.class_insight(report.class_accuracies(output.recording)) == (
        "every class scored 100.0% on the 6 test images: none stands out"
    )


def test_a_short_run_draws_its_saved_steps_where_they_lie_and_names_the_setting_for_more(project_config):
    """One saved training step of 15: the gradient axes span the run's steps (not -0.04 .. 0.04) with
    labelled y axes, few points are markers not a line, and the caption names config.toml's key."""
    recording = recording_document(epochs=5, steps_per_epoch=3)
    recording["save_intervals"] = {"TRAIN": 100, "EVAL": 10}
    recording["losses"] = {"TRAIN": [[0, 1.9]], "EVAL": [[0, 1.0], [4, 0.6]]}
    recording["gradients"] = recording["gradients"][:1]
    figure = report.gradient_figure(recording)
    magnitude, spread = figure.axes
    for axes in (magnitude, spread):
        low, high = axes.get_xlim()
        assert low < 0 < 14 < high < 16  # the 15 steps the run took, whole numbers
        assert axes.get_ylabel() and axes.get_xlabel() == "training step"
    caption = figure.get_supxlabel()
    assert "1 of 15 training steps saved ([debugger] train_save_interval = 100)" in caption.replace("\n", " ")
    # The key named is config.toml's own: setting it there is what changes the interval.
    for key in report.SAVE_INTERVAL_KEYS.values():
        assert key in vars(project_config.settings.debugger)
    figure = report.loss_figure(report.epoch_points(recording, None), recording)
    steps = figure.axes[1]
    assert steps.get_ylabel() == "cross-entropy loss"
    assert steps.get_xlim()[1] >= 5  # the whole run, not the two points' span
    # Two validation points across five epochs are not joined into a curve nobody measured.
    assert all(line.get_linestyle() == "None" for line in steps.get_lines())
    assert "eval_save_interval = 10" in figure.get_supxlabel().replace("\n", " ")
    # Where every step is saved, no smaller setting is offered.
    recording["save_intervals"] = {"TRAIN": 1, "EVAL": 1}
    assert report.saving_note(recording).endswith(": every step is drawn.")


def test_insights_say_what_each_finding_means_and_what_to_change():
    verdicts = [report.Verdict(**{k: r[k] for k in ("rule", "verdict", "reason", "kind", "step", "mode")})
                for r in verdicts_document()["rules"]]  # fmt: skip
    lines = report.rule_insights(verdicts)
    issue = next(line for line in lines if line.startswith("**loss_not_decreasing**"))
    assert "at step 40 (TRAIN) (loss rose by 3%)" in issue and "`lr` in [hyperparameters]" in issue
    # A verdict whose documented test cannot tell a healthy run here says so, and advises nothing.
    cannot = report.Verdict("vanishing_gradient", "IssuesFound", "bn1.bias 1e-9", step=4, mode="TRAIN",
                            caveat="fired only on bn1.bias: a bias followed by a BatchNorm")  # fmt: skip
    (line,) = [line for line in report.rule_insights([cannot]) if "vanishing_gradient" in line]
    assert "but it fired only on bn1.bias: a bias followed by a BatchNorm: nothing to change" in line
    assert "Try:" not in line
    assert any(line.startswith("**DataLoadingBottleneck**") and "`num_workers`" in line for line in lines)
    assert any(line.startswith("**overfit**: NoIssuesFound") for line in lines)
    unjudged = next(line for line in lines if line.startswith("**overtraining**: NotEnoughData"))
    assert "`eval_save_interval`" in unjudged
    assert "SageMaker's built-in rules end with NoIssuesFound when they cannot judge" in lines[-1]
    # Every rule the project offers has its own advice.
    assert set(report.RULE_ADVICE) == set(report.schema.KNOWN_RULES)


def test_an_oversized_file_is_left_out_with_a_note(tmp_path, monkeypatch):
    folder = write_outputs(tmp_path / "data")
    monkeypatch.setattr(report_fetch, "MAX_FILE_BYTES", 4096)
    (folder / "recording.json").write_text(json.dumps(recording_document(epochs=1, steps_per_epoch=2000)))
    output = report.read_output(folder)
    assert output.recording is None
    assert any("recording.json not read" in note and "limit" in note for note in output.notes)
    # The rest still makes a report.
    result = report.write_report(output, tmp_path / "out", run="run", source="test")
    assert "recording.json not read" in result.index_html.read_text(encoding="utf-8")
    assert_self_contained(result.index_html)


def test_a_run_without_rules_still_reports_its_validation_losses(project_config, tmp_path):
    folder = tmp_path / "run" / "opt_ml" / "output" / "data"
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(
        json.dumps({"epochs": [{"loss": 1.2, "accuracy": 0.4}], "test_accuracy": 0.5})
    )
    result = report.build_local_report(project_config, tmp_path / "run", reports_dir=tmp_path / "reports")
    assert result.verdicts == [] and set(result.pictures) == {"loss"}
    assert result.epochs == [report.EpochPoint(1, validation_loss=1.2, validation_accuracy=0.4)]
    assert_png(result.pictures["loss"])
    assert_self_contained(result.index_html)
    assert "the run judged no rules" in result.summary_markdown


def test_a_missing_run_folder_names_what_to_do(project_config, tmp_path):
    with pytest.raises(report.ReportError, match="run `train --local` first"):
        report.build_local_report(project_config, tmp_path / "nothing")


def test_a_second_report_removes_pictures_the_run_no_longer_has(project_config, local_run, tmp_path):
    first = report.build_local_report(project_config, local_run, reports_dir=tmp_path)
    assert first.pictures["confusion"].is_file()
    (local_run / "opt_ml" / "output" / "data" / "recording.json").unlink()
    second = report.build_local_report(project_config, local_run, reports_dir=tmp_path)
    assert "confusion" not in second.pictures and not (tmp_path / "local" / "confusion.png").exists()


def test_the_recorder_keeps_per_pass_means_and_the_test_confusion_matrix(training_source, monkeypatch):
    """Recorder's bookkeeping driven by hand: every step counts, not only the saved ones."""
    import torch

    monkeypatch.syspath_prepend(str(training_source))
    from recorder import Recorder

    recorder = Recorder(
        torch.nn.Linear(2, 3),
        intervals={"TRAIN": 100, "EVAL": 100, "PREDICT": 100},
        num_classes=3,
        class_names=CLASSES,
        activations=False,
    )
    one_hot = torch.eye(3) * 5

    def run_pass(mode, batches, epoch=0):
        recorder.begin_pass(mode, epoch, 0)
        for step, (labels, predicted, loss) in enumerate(batches):
            recorder.begin_step(mode, step)
            labels = torch.tensor(labels)
            recorder.end_step(mode, step, loss, one_hot[predicted], labels, 0.0, 0.0)
        recorder.end_pass(mode, epoch, len(batches))

    run_pass("TRAIN", [([0, 1], [0, 1], 1.0), ([2, 2], [2, 0], 2.0)])  # 3 of 4 right, mean loss 1.5
    run_pass("EVAL", [([0, 1, 2], [0, 0, 2], 0.5)])
    run_pass("PREDICT", [([0, 1], [0, 2], 0.2), ([2, 2, 1], [2, 2, 1], 0.7)])
    recording = recorder.recording()
    (epoch,) = recording["epochs"]
    assert epoch["train_loss"] == pytest.approx(1.5) and epoch["train_accuracy"] == pytest.approx(0.75)
    assert epoch["eval_loss"] == pytest.approx(0.5) and epoch["eval_accuracy"] == pytest.approx(2 / 3)
    assert recording["test"] == {"loss": pytest.approx(0.5), "accuracy": pytest.approx(0.8), "images": 5}
    assert report.confusion_matrix(recording) == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    json.dumps(recording)  # plain JSON, as recording.json and the checkpoint need
