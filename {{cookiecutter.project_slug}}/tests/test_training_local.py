"""`run_local_training` and SageMaker's training toolkit: one contract, checked against the real toolkit.

One local run of hpo.py (module fixture) feeds several checks; a second run goes
through `sagemaker_training.trainer.train()` itself, with the debugger hook on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import TINY_TRAINING, make_dataset, project_module, sdk_module
from PIL import Image

from classifier.artifact import load_artifact

local_training = project_module("local.training_run")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_BASE_DIR", "PYTHONPATH"))
    }
    return {**env, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", **extra}


# Batches of 2 and a progress line every 3 steps: 18 training images make 9 steps an epoch, lines at 3, 6, 9.
HPO_RUN_TRAINING = {**TINY_TRAINING, "batch_size": 2, "log_every": 3}


@pytest.fixture(scope="module")
def hpo_run(project_config, tiny_dataset, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("local-hpo")
    archive = local_training.run_local_training(
        project_config, tiny_dataset, output_dir, HPO_RUN_TRAINING, entry_point="hpo.py"
    )
    return archive, output_dir


@pytest.mark.slow
def test_model_tar_gz_is_laid_out_as_sagemaker_makes_it(hpo_run):
    archive, _ = hpo_run
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "model.pth"]


@pytest.mark.slow
def test_objective_is_printed_each_epoch_and_the_saved_epoch_last(hpo_run, project_config):
    _, output_dir = hpo_run
    regex = project_config.section("tuning")["objective_metric_regex"]
    log = (output_dir / "training.log").read_text()
    values = [float(v) for v in re.findall(regex, log)]
    assert len(values) == TINY_TRAINING["epochs"] + 1
    assert values[-1] == min(values[:-1])
    metadata = json.loads((output_dir / "opt_ml" / "model" / "metadata.json").read_text())
    assert metadata["training"]["validation_loss"] == pytest.approx(values[-1], abs=1e-6)


@pytest.mark.slow
def test_progress_lines_inside_an_epoch(hpo_run):
    """A job's log shows step, loss, rate and ETA every N steps, as torchvision's MetricLogger does."""
    _, output_dir = hpo_run
    log = (output_dir / "training.log").read_text()
    for epoch in range(1, HPO_RUN_TRAINING["epochs"] + 1):
        lines = [line for line in log.splitlines() if line.startswith(f"train epoch {epoch} [")]
        assert [line.split("]")[0] for line in lines] == [
            f"train epoch {epoch} [3/9",
            f"train epoch {epoch} [6/9",
            f"train epoch {epoch} [9/9",
        ]
        assert all("images/s" in line and "loss " in line and "eta " in line for line in lines)


@pytest.mark.slow
def test_artifact_loads_with_weights_only_and_predicts(hpo_run, tiny_dataset, tmp_path, project_config):
    archive, _ = hpo_run
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    model, metadata = load_artifact(tmp_path)
    assert metadata.class_names == ["001.Class_001", "002.Class_002", "003.Class_003"]
    assert (metadata.backbone, metadata.num_classes, metadata.image_size, metadata.finetune) == (
        project_config.model["backbone"],
        3,
        32,
        "full",
    )
    assert metadata.torch_version == torch.__version__
    image = next((tiny_dataset / "test" / "002.Class_002").iterdir())
    with torch.no_grad():
        logits = model(metadata.eval_preset()(Image.open(image)).unsqueeze(0))
    assert logits.shape == (1, 3)


@pytest.mark.slow
def test_the_training_toolkit_itself_ran_the_script(hpo_run):
    """Not a copy of the toolkit's mapping: its own runner logged the command and SM_* variables it used."""
    _, output_dir = hpo_run
    log = (output_dir / "training.log").read_text()
    assert "Invoking script with the following command" in log
    command = log[log.index("Invoking script with the following command") :].split("\n\n")[1]
    assert " hpo.py " in command and "--pretrained False" in command
    assert f"SM_CHANNEL_TRAINING={output_dir / 'opt_ml' / 'input' / 'data' / 'training'}" in log
    # The code directory is what the estimator uploads, extracted by the toolkit.
    code = output_dir / "opt_ml" / "code"
    with tarfile.open(output_dir / "sourcedir.tar.gz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
    assert {"hpo.py", "train_model.py", "classifier/__init__.py"} <= names
    assert all((code / name).exists() for name in names if name)


@pytest.fixture(scope="module")
def toolkit_run(project_config, tmp_path_factory):
    """train_model.py run by sagemaker_training's own trainer, with a hook config as SageMaker writes it."""
    root = tmp_path_factory.mktemp("toolkit")
    # Hue-separable classes: a correct loop reaches high accuracy in a few epochs.
    data_dir = make_dataset(
        root / "data", num_classes=4, images_per_class={"train": 10, "valid": 3, "test": 3}, size=(40, 32)
    )
    base_dir = root / "opt_ml"
    archive = sdk_module().training_source_archive(project_config, root / "sourcedir.tar.gz")
    hyperparameters = project_config.script_hyperparameters(
        # resnet18 whatever the render's backbone: this proves the loop, labels and evaluation, and
        # resnet18 reliably learns these tiny images from scratch in 4 epochs (mobilenet_v3 does not).
        {
            **TINY_TRAINING,
            "backbone": "resnet18",
            "epochs": 4,
            "batch_size": 8,
            "augment": False,
            "num_classes": 4,
        }
    )
    local_training.prepare_training_tree(
        base_dir,
        data_dir,
        archive,
        hyperparameters,
        "train_model.py",
        # debughookconfig.json as SageMaker writes it from the DebuggerHookConfig at [debugger]'s
        # intervals: on an image with smdebug (a custom one) the hook saves the losses; without it the
        # script says so and trains the same.
        hook_config={
            "LocalPath": str(base_dir / "output" / "tensors"),
            "HookParameters": {
                "train.save_interval": str(project_config.section("debugger")["train_save_interval"]),
                "eval.save_interval": str(project_config.section("debugger")["eval_save_interval"]),
            },
            "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {}}],
        },
    )
    env = subprocess_env(
        SAGEMAKER_BASE_DIR=str(base_dir),
        SMDEBUG_CONFIG_FILE_PATH=str(base_dir / "input" / "config" / "debughookconfig.json"),
        SM_STUDIO_LOCAL_MODE="true",  # skip the toolkit's wait for algo-N hostnames to resolve
    )
    result = subprocess.run(
        [sys.executable, "-c", "from sagemaker_training import trainer; trainer.train()"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base_dir, result.stdout + result.stderr


@pytest.mark.slow
def test_toolkit_runs_train_model_and_it_learns(toolkit_run):
    base_dir, log = toolkit_run
    assert (base_dir / "output" / "success").is_file()
    # train_model.py also writes the int8 copy a CPU endpoint may serve (quantize = auto).
    saved = {p.name for p in (base_dir / "model").iterdir()}
    assert saved == {"model.pth", "metadata.json", "model_int8.onnx"}
    test_accuracy = float(
        re.search(r"^test:loss=[0-9.]+ test:accuracy=([0-9.]+)$", log, re.MULTILINE).group(1)
    )
    assert test_accuracy >= 0.9


@pytest.mark.slow
def test_debugger_hook_saves_train_and_eval_losses(toolkit_run):
    # smdebug (numpy<2, protobuf<=3.20.3) is no dependency of the project: this runs where it is installed.
    modes = pytest.importorskip("smdebug").modes
    create_trial = pytest.importorskip("smdebug.trials").create_trial

    base_dir, log = toolkit_run
    assert "debugger: hook created from" in log
    trial = create_trial(str(base_dir / "output" / "tensors"))
    losses = trial.tensor_names(collection="losses")
    assert losses
    assert trial.steps(mode=modes.TRAIN) and trial.steps(mode=modes.EVAL)
    first_eval = trial.steps(mode=modes.EVAL)[0]
    assert trial.tensor(losses[0]).value(first_eval, mode=modes.EVAL) > 0
    # The test pass is PREDICT, apart from validation: the validation curve holds validation only.
    assert trial.steps(mode=modes.PREDICT) == [0]
    # Few steps in this tiny run: the script must say the rules cannot judge them.
    # 40 images / batch 8 x 4 epochs; (12 / 6) x 4 validation; 12 / 6 test.
    assert "debugger (saved): TRAIN 20 steps, 1 saved, EVAL 8 steps, 1 saved, PREDICT 2 steps, 1 saved" in log
    assert "WARNING debugger: only" in log


def test_failed_entry_point_raises_with_the_last_lines(project_config, tiny_dataset, tmp_path):
    with pytest.raises(local_training.LocalTrainingError) as failure:
        local_training.run_local_training(
            project_config,
            tiny_dataset,
            tmp_path,
            {**TINY_TRAINING, "optimizer": "adm"},
            entry_point="hpo.py",
        )
    message = str(failure.value)
    assert message.startswith("hpo.py exited with status 1; last lines of")
    assert message.splitlines()[-1] == "unknown optimizer 'adm'; choose adamw, sgd"
    # The script's own lines, not the toolkit's environment dump or traceback.
    assert "SM_TRAINING_ENV" not in message and "Traceback" not in message
