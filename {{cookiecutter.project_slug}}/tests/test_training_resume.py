"""Spot interruption and distributed training, with the scripts run as SageMaker runs them
(arguments mapped by the training toolkit's own `to_cmd_args`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PACKAGE, TINY_TRAINING, project_module
from sagemaker_training.mapping import to_cmd_args

from classifier.artifact import load_artifact
from classifier.backbones import head

# mobilenet_v3_small: the smallest torchvision classifier (fast checkpoints), with dropout, so a
# resume must restore the random state too.
ARGS = {**TINY_TRAINING, "backbone": "mobilenet_v3_small", "patience": 0}


def command(entry_point: str, data_dir: Path, out: Path, **extra) -> tuple[list[str], dict[str, str]]:
    hyperparameters = {
        **ARGS,
        **extra,
        "data_dir": str(data_dir),
        "model_dir": str(out / "model"),
        "output_data_dir": str(out / "output"),
        "checkpoint_dir": str(out / "checkpoints"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "PYTHONPATH"))}
    env.update(SAGEMAKER_SUPPRESS_V2_WARNING="1", PYTHONUNBUFFERED="1")
    return [sys.executable, entry_point, *to_cmd_args(hyperparameters)], env


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model" / "model.pth", weights_only=True)


@pytest.mark.slow
def test_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(training_source, tiny_dataset, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args, env = command("hpo.py", tiny_dataset, whole)
    subprocess.run(args, cwd=training_source, env=env, check=True, capture_output=True)

    # A spot interruption: the job is killed as soon as the first epoch's checkpoint is written.
    args, env = command("hpo.py", tiny_dataset, cut)
    with subprocess.Popen(args, cwd=training_source, env=env, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.startswith("checkpoints: epoch 1 saved"):
                process.kill()
                break
    assert not (cut / "model").exists()
    resumed = subprocess.run(args, cwd=training_source, env=env, check=True, capture_output=True, text=True)
    assert "checkpoints: resuming at epoch 2 of 2" in resumed.stdout
    assert "epoch 1/2" not in resumed.stdout

    for name, tensor in weights(whole).items():
        torch.testing.assert_close(weights(cut)[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert (whole / "output" / "history.json").read_text() == (cut / "output" / "history.json").read_text()
    # The resumed log repeats the epochs before the restart, so the tuner still sees one line per epoch.
    assert len(re.findall(r"^validation:loss=", resumed.stdout, re.MULTILINE)) == ARGS["epochs"] + 1


@pytest.mark.slow
def test_two_process_ddp_on_cpu_saves_an_unwrapped_model(training_source, tiny_dataset, tmp_path):
    args, env = command("hpo.py", tiny_dataset, tmp_path, epochs=1)
    env.pop("WORLD_SIZE", None)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args[1:],
    ]
    result = subprocess.run(torchrun, cwd=training_source, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0 alone prints the objective: once for the epoch, once for the saved epoch.
    assert len(re.findall(r"^validation:loss=", result.stdout, re.MULTILINE)) == 2
    state = weights(tmp_path)
    assert not any(name.startswith("module.") for name in state)
    model, _ = load_artifact(tmp_path / "model")
    assert head(model).out_features == 3


@pytest.mark.slow
def test_a_killed_local_run_resumes_when_the_same_command_runs_again(project_root, tiny_dataset, tmp_path):
    """`kill -9` after the epoch-2 checkpoint, then the same `train --local`: it continues from there."""
    run_dir, epochs = tmp_path / "run", 4
    # `train --hp` takes the backbones the project offers (mobilenet_v3_small is not one); no int8 copy:
    # seconds saved.
    hyperparameters = {**ARGS, "backbone": "mobilenet_v3_large", "epochs": epochs, "quantize": "float"}
    command = [
        *(sys.executable, "-m", PACKAGE, "--project", str(project_root), "train", "--local", "--no-tuned"),
        *("--data", str(tiny_dataset), "--run-dir", str(run_dir)),
        *(f"--hp={name}={json.dumps(value)}" for name, value in hyperparameters.items()),
    ]
    log = run_dir / "training.log"
    # Its own process group: the kill takes the command, the toolkit and the script at once.
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    ) as process:
        deadline = time.monotonic() + 300
        while "checkpoints: epoch 2 saved" not in (log.read_text() if log.is_file() else ""):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before epoch 2"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    checkpoint = run_dir / project_module("local.training_run").CHECKPOINT
    saved_epoch = torch.load(checkpoint, weights_only=True)["epoch"] + 1  # counted from 1, as the log does
    assert 2 <= saved_epoch < epochs and not (run_dir / "model.tar.gz").exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming the interrupted run in {run_dir}" in " ".join(again.stdout.split())
    resumed = log.read_text().rsplit("checkpoints: resuming at epoch", 1)
    assert len(resumed) == 2 and resumed[1].startswith(f" {saved_epoch + 1} of {epochs} from ")
    assert f"epoch {saved_epoch}/{epochs}:" not in resumed[1]  # no epoch trained twice
    history = json.loads((run_dir / "opt_ml" / "output" / "data" / "history.json").read_text())
    assert len(history["epochs"]) == history["epochs_run"] == epochs
    assert (run_dir / "model.tar.gz").is_file()
