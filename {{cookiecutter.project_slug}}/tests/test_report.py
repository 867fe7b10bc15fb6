"""The report: reports/<run>/index.html, its pictures and summary.md, from a local run or a job's S3 output.

Most tests use small synthetic output folders shaped like what training/train_model.py writes (fast); one
tiny real `train --local` run checks the recorder's confusion matrix end to end.
"""

from __future__ import annotations

import copy
import html
import importlib
import io
import json
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import REQUIRED_SCRIPT_ARGS, TINY_TRAINING, project_module
from launch_helpers import copy_project
from PIL import Image

report = project_module("report")
# Where the report's size limits are read (a test lowers them there).
report_fetch = project_module("report.fetch")
cli = project_module("cli")
launcher = project_module("workflow.launcher")
open_session = project_module("aws.session").open_session

JOB = "dog-train-2026-01-01-00-00-00-000"
OUTPUT = "s3://bucket/prefix/output"
CLASSES = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]


# --- synthetic outputs, as the training job writes them ------------------------------------------


def verdicts_document() -> dict:
    return {
        "version": 1,
        "rules": [
            {"rule": "loss_not_decreasing", "verdict": "IssuesFound", "reason": "loss rose\nby 3%",
             "kind": "debugger", "step": 40, "mode": "TRAIN", "steps_had": {}, "steps_needed": {},
             "parameters": {"num_steps": 10, "diff_percent": 0.1},
             "reading": "TRAIN losses checked every 10 steps", "caveat": ""},
            {"rule": "overfit", "verdict": "NoIssuesFound", "reason": "within 10%", "kind": "debugger",
             "step": None, "mode": None, "steps_had": {}, "steps_needed": {}, "parameters": {}},
            {"rule": "overtraining", "verdict": "NotEnoughData", "reason": "3 saved EVAL steps; needs 11",
             "kind": "debugger", "step": None, "mode": "EVAL", "steps_had": {"EVAL": 3},
             "steps_needed": {"EVAL": 11}, "parameters": {}},
            {"rule": "DataLoadingBottleneck", "verdict": "IssuesFound",
             "reason": "72% of training step time waiting for data", "kind": "profiler", "step": None,
             "mode": None, "steps_had": {}, "steps_needed": {}, "parameters": {}},
        ],
    }  # fmt: skip


def recording_document(epochs: int = 3, steps_per_epoch: int = 10, confusion=None) -> dict:
    confusion = confusion or [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    train_losses = [[s, 2.0 - 0.04 * s] for s in range(0, epochs * steps_per_epoch, 2)]
    eval_losses = [[s, 1.5 - 0.1 * s] for s in range(epochs * 2)]
    return {
        "version": 1,
        "save_intervals": {"TRAIN": 2, "EVAL": 1, "PREDICT": 1},
        "steps_seen": {"TRAIN": epochs * steps_per_epoch, "EVAL": epochs * 2, "PREDICT": 1},
        "class_names": CLASSES,
        "losses": {"TRAIN": train_losses, "EVAL": eval_losses, "PREDICT": [[0, 0.9]]},
        "epochs": [
            {
                "epoch": e,
                "train_steps": [e * steps_per_epoch, (e + 1) * steps_per_epoch],
                "eval_steps": [2 * e, 2 * e + 2],
                "train_loss": 1.8 - 0.3 * e,
                "train_accuracy": 0.4 + 0.2 * e,
                "eval_loss": 1.4 - 0.1 * e,
                "eval_accuracy": 0.5 + 0.1 * e,
            }
            for e in range(epochs)
        ],
        "gradients": [
            {
                "step": s,
                "layers": {
                    "conv.weight": {"mean_abs": 1e-3 / (1 + s), "variance": 1e-6, "nonfinite": 0, "nan": 0},
                    "fc.weight": {"mean_abs": 1e-2 / (1 + s), "variance": 1e-5, "nonfinite": 0, "nan": 0},
                },
                "all": {"p5": -0.01, "p95": 0.01},
            }
            for s in range(0, epochs * steps_per_epoch, 2)
        ],
        "weights": [],
        "activations": [],
        "labels": {
            "TRAIN": {"counts": [10, 10, 10], "correct": [5, 6, 7]},
            "PREDICT": {
                "counts": [sum(row) for row in confusion],
                "correct": [confusion[i][i] for i in range(len(confusion))],
                "confusion": confusion,
            },
        },
        "test": {"loss": 0.9, "accuracy": 5 / 6, "images": 6},
    }


def profile_document(samples: int = 20, gpu: bool = False) -> dict:
    return {
        "version": 1,
        "interval_millis": 500,
        "gpu_count": 1 if gpu else 0,
        "gpu_note": None if gpu else "no GPU on this machine",
        "samples": [
            {
                "t": 0.5 * i,
                "cpu_percent": 50.0 + i % 7,
                "memory_percent": 30.0,
                **({"gpus": [{"index": 0, "utilization_percent": 20.0}]} if gpu else {}),
            }
            for i in range(samples)
        ],
        "steps": [
            {"mode": "TRAIN", "epoch": 0, "step": i, "data_seconds": 0.03, "compute_seconds": 0.01,
             "first_of_epoch": i == 0}
            for i in range(12)
        ],
    }  # fmt: skip


def write_outputs(folder: Path, **recording_options) -> Path:
    """An output data folder (SM_OUTPUT_DATA_DIR) with every file the report reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rule_verdicts.json").write_text(json.dumps(verdicts_document()))
    (folder / "recording.json").write_text(json.dumps(recording_document(**recording_options)))
    (folder / "profiler.json").write_text(json.dumps(profile_document()))
    (folder / "profiler-report.html").write_text(
        "<!DOCTYPE html><html><body><h1>Profiler report</h1></body></html>"
    )
    (folder / "history.json").write_text(
        json.dumps({"epochs": [{"loss": 1.4, "accuracy": 0.5}], "test_accuracy": 5 / 6, "test_loss": 0.9})
    )
    return folder


@pytest.fixture()
def local_run(tmp_path) -> Path:
    """A run folder as `train --local` leaves it (only the part the report reads)."""
    run = tmp_path / "runs" / "local"
    write_outputs(run / "opt_ml" / "output" / "data")
    return run


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


def assert_self_contained(index: Path) -> list[str]:
    """Every href/src of index.html is a file in the report folder: it reads offline."""
    parser = Links()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.links
    for link in parser.links:
        assert "://" not in link and not link.startswith(("/", "//", "data:")), link
        assert (index.parent / link).is_file(), link
    return parser.links


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


# --- SageMaker's rule statuses (DescribeTrainingJob) ---------------------------------------------


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


# --- a job's output.tar.gz ------------------------------------------------------------------------


def output_archive(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """output.tar.gz as SageMaker packs SM_OUTPUT_DATA_DIR (members relative to it), plus `extra`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_extraction_takes_only_the_expected_files(tmp_path):
    archive = tmp_path / "output.tar.gz"
    archive.write_bytes(
        output_archive(write_outputs(tmp_path / "data"), {"../escape.json": b"{}", "trace/big.json": b"{}"})
    )
    report.extract_outputs(archive, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(report.OUTPUT_FILES)
    assert not (tmp_path / "escape.json").exists()


def create_job(session, name: str) -> str:
    """A training job in the offline AWS (moto), as `train --dry-run` would leave it; its output path."""
    output_path = session.aws.s3_uri("output")
    session.aws.client("sagemaker").create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.8",
            "TrainingInputMode": "File",
        },
        RoleArn=session.aws.role_arn,
        OutputDataConfig={"S3OutputPath": output_path},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    session.state.record("training-job", name, model_data=f"{output_path}/{name}/output/model.tar.gz")
    return output_path


def put_output(session, output_path: str, name: str, archive: bytes) -> None:
    bucket, _, prefix = output_path.removeprefix("s3://").partition("/")
    session.aws.client("s3").put_object(
        Bucket=bucket, Key=f"{prefix}/{name}/output/output.tar.gz", Body=archive
    )


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
