"""What a newcomer meets first: errors that say what to do, progress inside an epoch, advice to follow."""

from __future__ import annotations

import errno
import urllib.error

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_TRAINING, project_module, sdk_module, tiny_args
from launch_helpers import copy_project

from classifier import backbones

local_training = project_module("local.training_run")
cli = project_module("cli")


@pytest.fixture
def no_internet(monkeypatch, tmp_path):
    """torch.hub as it fails without a network: the download raises URLError."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_unreachable_weights_are_one_line_with_both_ways_out(no_internet, tmp_path):
    with pytest.raises(backbones.WeightsUnavailable) as failure:
        backbones.build_model("resnet18", 3, pretrained=True)
    message = str(failure.value)
    assert "\n" not in message
    assert "pretrained=false" in message  # way out 1: train without them
    assert "resnet18-" in message and str(tmp_path / "torch-home" / "hub" / "checkpoints") in message  # way 2
    assert "TORCH_HOME" in message


def test_the_training_script_says_it_in_one_line_not_a_traceback(
    no_internet, training, tiny_dataset, tmp_path, capsys
):
    train_model = training("train_model")
    with pytest.raises(SystemExit) as stopped:
        train_model.main(
            tiny_args(train_model, tiny_dataset, tmp_path, "--pretrained", "true", "--checkpoint_dir", "")
        )
    assert str(stopped.value).startswith("cannot download the pretrained resnet18 weights")


def test_a_failed_local_run_is_one_line_on_the_command_line(project_root, tiny_dataset, tmp_path):
    result = CliRunner().invoke(
        cli.main,
        [
            "--project",
            str(project_root),
            "train",
            "--local",
            "--data",
            str(tiny_dataset),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-tuned",
            "--hp",
            "epochs=1",
            "--hp",
            "image_size=32",
            "--hp",
            "pretrained=false",
            "--hp",
            "num_workers=0",
            "--hp",
            "num_classes=5",  # valid as a value (the CLI refuses invalid ones); the data has 3 classes
        ],
    )
    assert result.exit_code == 1
    # The script's own output streamed as it ran; the error is one line naming what stopped it and the log.
    assert "num_classes is 5" in result.stdout
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith("Error: train_model.py stopped: data: num_classes is 5 but")
    assert str(tmp_path / "run" / "training.log") in error


def test_debugger_advice_names_the_real_setting_and_a_possible_value(training):
    debugger = training("debugger")
    advice = debugger.saving_advice("TRAIN", saved=1, needed=4, steps=40)
    assert (
        "[debugger] train_save_interval to 10 or less" in advice and "--hp train_save_interval=10" in advice
    )
    advice = debugger.saving_advice("EVAL", saved=1, needed=4, steps=3)
    assert "eval_save_interval" not in advice and "train longer" in advice  # no interval below 1 would do
    assert "eval_save_interval" in debugger.saving_advice("PREDICT", saved=0, needed=1, steps=5)


def test_data_prepare_reports_a_class_count_that_differs_from_the_config(project_root, tmp_path):
    """A 3-class folder in a project whose config says otherwise: said at once, with the key to set."""
    make_dataset = project_module("workflow.synthetic").make_dataset
    project = copy_project(project_root, tmp_path / "project")
    config_path = project / "config.toml"
    config_path.write_text(
        config_path.read_text().replace(
            f"num_classes = {project_module('config').ProjectConfig.load(project).model['num_classes']}",
            "num_classes = 10",
        )
    )
    source = make_dataset(tmp_path / "own-images", num_classes=3)
    result = CliRunner().invoke(
        cli.main, ["--project", str(project), "data", "prepare", str(source), "--dest", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"{source} has 3 classes, config.toml says 10" in text
    assert "[model] num_classes = 3" in text


def test_status_with_nothing_recorded_and_no_credentials_is_calm(project_root, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    project = copy_project(project_root, tmp_path / "project")
    result = CliRunner().invoke(cli.main, ["--project", str(project), "status"])
    assert result.exit_code == 0, result.output
    assert "nothing recorded in" in result.stdout and "no AWS credentials" in result.stdout


def test_a_local_run_never_silently_replaces_an_earlier_one(project_root, tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.tar.gz").write_bytes(b"an earlier run")
    arguments = ["--project", str(project_root), "train", "--local", "--data", str(tiny_dataset)]
    # epochs=1, the least the CLI accepts: the run folder is refused before anything trains.
    result = CliRunner().invoke(cli.main, [*arguments, "--run-dir", str(run_dir), "--hp", "epochs=1"])
    assert result.exit_code == 1
    assert "holds an earlier run: pass --run-dir <new folder> to keep it, or --overwrite" in result.stderr
    assert (run_dir / "model.tar.gz").read_bytes() == b"an earlier run"


def test_an_interrupted_local_run_is_resumed_and_overwrite_starts_it_over(
    project_root, tiny_dataset, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / local_training.CHECKPOINT  # what a run killed after an epoch leaves
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"epoch 2")
    resumed = []

    def run_local_training(config, data_dir, output_dir, hyperparameters, *, resume):
        resumed.append(resume)
        return output_dir / "model.tar.gz"

    monkeypatch.setattr(local_training, "run_local_training", run_local_training)
    arguments = ["--project", str(project_root), "train", "--local", "--data", str(tiny_dataset)]
    arguments += ["--run-dir", str(run_dir), "--no-tuned"]
    again = CliRunner().invoke(cli.main, arguments)
    assert again.exit_code == 0, again.output
    assert f"resuming the interrupted run in {run_dir} (--overwrite starts it over)" in again.stdout
    overwritten = CliRunner().invoke(cli.main, [*arguments, "--overwrite"])
    assert overwritten.exit_code == 0, overwritten.output
    assert "resuming" not in overwritten.stdout
    assert resumed == [True, False]


def test_a_full_disk_on_the_launchers_side_is_one_line(project_config, tiny_dataset, tmp_path, monkeypatch):
    def disk_full(config, archive):
        archive.write_bytes(b"half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sdk_module(), "training_source_archive", disk_full)
    with pytest.raises(local_training.LocalTrainingError) as failure:
        local_training.run_local_training(project_config, tiny_dataset, tmp_path / "run", {})
    run_dir = tmp_path / "run"
    message = f"No space left on device writing into {run_dir}: free space there, or pass another --run-dir"
    assert failure.value.summary == message


@pytest.mark.slow
def test_a_local_run_on_a_full_disk_is_one_line_and_leaves_no_partial_file(
    project_root, tiny_dataset, small_disk
):
    arguments = [
        "--project",
        str(project_root),
        "train",
        "--local",
        "--data",
        str(tiny_dataset),
        "--no-tuned",
    ]
    arguments += ["--run-dir", str(small_disk / "run")]
    for name, value in {**TINY_TRAINING, "epochs": 1, "backbone": "resnet18"}.items():
        arguments += ["--hp", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 1
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith("Error: train_model.py stopped: cannot save ")
    assert "No space left on device" in error
    assert not [path.name for path in small_disk.rglob("*.tmp")]
