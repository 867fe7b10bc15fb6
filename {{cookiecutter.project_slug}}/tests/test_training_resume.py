"""Spot interruption and distributed training, with the scripts run as SageMaker runs them
(arguments mapped by the training toolkit's own `to_cmd_args`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAINING
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
