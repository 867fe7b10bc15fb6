"""Shared fixtures: the project itself, tiny generated datasets, staged source directories.

Everything runs on the CPU with small images, one epoch, no downloads.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The package's name is data (config.toml), so no test file hard-codes it.
PACKAGE = tomllib.loads((PROJECT_ROOT / "config.toml").read_text(encoding="utf-8"))["project"]["package"]

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# Local runs record into MLflow only in tests/test_tracking.py (set but empty: experiments.local_store_uri),
# never into the project's mlflow.db nor a server this machine's environment names.
os.environ["MLFLOW_TRACKING_URI"] = ""


def project_module(name: str) -> ModuleType:
    """`project_module("cli")` imports `<package>.cli`."""
    return importlib.import_module(f"{PACKAGE}.{name}")


def sdk_module() -> ModuleType:
    """The render's SDK module (`sagemaker_api` or `sagemaker_api_v3`), as `sdk.sagemaker_api` picks it."""
    config = project_module("config").ProjectConfig.load(PROJECT_ROOT)
    return project_module("aws.sdk").sagemaker_api(config)


# Hyperparameters of the tiny CPU training runs: one size fits the tests' 32 px images and seconds.
def offline_notebook_environment(patch: pytest.MonkeyPatch, dry_run_dir: Path) -> None:
    """What the notebook's kernel inherits for an offline run: the dry-run switch, where the dry run
    records, and the project importable the way an installed project would be."""
    patch.setenv("NOTEBOOK_DRY_RUN", "1")
    patch.setenv("NOTEBOOK_DRY_RUN_DIR", str(dry_run_dir))
    patch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    patch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    patch.delenv("IMAGE_CLASSIFIER_PROJECT_DIR", raising=False)


# An environment with no AWS account anywhere (no keys, profile, role, files or instance metadata): what a
# student's laptop has before `aws configure`.
NO_ACCOUNT = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "SAGEMAKER_ROLE_ARN": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}

TINY_TRAINING = {
    "epochs": 2,
    "batch_size": 6,
    "test_batch_size": 6,
    "image_size": 32,
    "pretrained": False,
    "finetune": "full",
    "num_workers": 0,
    "lr": 0.0003,
    "num_classes": 3,
}

# What train_model.py / hpo.py require (config.toml's values, which SageMaker always passes), as
# `--name value`: tests that call the scripts' parser put these first and override what they change.
# Head-only finetuning of resnet18 without pretrained weights: fast, and batch-size-1 safe (BatchNorm frozen).
REQUIRED_SCRIPT_ARGS = [
    *("--epochs", "1", "--batch_size", "6", "--test_batch_size", "6", "--lr", "0.005"),
    *("--backbone", "resnet18", "--image_size", "32", "--finetune", "head", "--pretrained", "false"),
]


def tiny_args(train_model: ModuleType, data_dir: Path, run_dir: Path, *extra: str) -> argparse.Namespace:
    """train_model.py's parsed arguments for a tiny CPU run on `data_dir`, writing model/, output/ and
    checkpoints/ under `run_dir`: REQUIRED_SCRIPT_ARGS, no loader workers, then `extra`, which wins."""
    return train_model.get_args_parser("test").parse_args(
        [
            *REQUIRED_SCRIPT_ARGS,
            *("--data_dir", str(data_dir), "--model_dir", str(run_dir / "model")),
            *("--output_data_dir", str(run_dir / "output"), "--checkpoint_dir", str(run_dir / "checkpoints")),
            *("--num_workers", "0"),
            *extra,
        ]
    )


ProjectConfig = project_module("config").ProjectConfig
make_dataset = project_module("workflow.synthetic").make_dataset


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def project_config() -> ProjectConfig:
    return ProjectConfig.load(PROJECT_ROOT)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes of 48x40 JPEGs: 6 train, 2 valid, 2 test each."""
    return make_dataset(tmp_path_factory.mktemp("data") / "dogImages", num_classes=3)


# The session's one tiny `train --local` of train_model.py (shared_local_run): two epochs, a debugger rule
# of each kind and the profiler's report, every step saved, int8 as config.toml says. test_tracking.py
# reads what it recorded into MLflow, test_report.py the report of its folder.
SHARED_RUN_TRAINING = {
    **TINY_TRAINING,
    "rules": "loss_not_decreasing,overfit,LowGPUUtilization,ProfilerReport",
    "train_save_interval": 1,
    "eval_save_interval": 1,
}


@dataclass(frozen=True)
class LocalRun:
    """A finished `train --local`: where it recorded (an MLflow URI; empty without mlflow), its run folder
    and its data."""

    store: str
    run_dir: Path
    data_dir: Path


def shared_tmp_path(tmp_path_factory) -> Path:
    """The session's temporary folder that every xdist worker sees (each has its own beneath it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def shared_local_run(project_config, tmp_path_factory) -> LocalRun:
    """SHARED_RUN_TRAINING run once for the session: the first worker that asks trains under a file lock,
    the other waits and reads the same folder (one run of some 30 s, not one per module)."""
    from filelock import FileLock

    shared = shared_tmp_path(tmp_path_factory)
    folder = shared / "shared-local-run"
    mlflow_db = (folder / "mlflow.db").as_posix()
    run = LocalRun(
        store=f"sqlite:///{mlflow_db}" if importlib.util.find_spec("mlflow") else "",
        run_dir=folder / "run",
        data_dir=folder / "dogImages",
    )
    with FileLock(shared / "shared-local-run.lock"):
        finished = folder / "finished"
        if not finished.is_file():  # a worker whose run failed leaves no mark: the next one tries again
            shutil.rmtree(folder, ignore_errors=True)
            make_dataset(run.data_dir, num_classes=3)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_URI", run.store)
                project_module("local.training_run").run_local_training(
                    project_config, run.data_dir, run.run_dir, SHARED_RUN_TRAINING, quiet=True
                )
            finished.touch()
    return run


@pytest.fixture(scope="session")
def training_source(tmp_path_factory, project_config) -> Path:
    """sourcedir.tar.gz as the estimator uploads it (training/ + classifier/), extracted like the toolkit."""
    import tarfile

    folder = tmp_path_factory.mktemp("staged")
    archive = sdk_module().training_source_archive(project_config, folder / "sourcedir.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "training", filter="data")
    return folder / "training"


@pytest.fixture(scope="module")
def training(training_source) -> Iterator[Callable[[str], ModuleType]]:
    """Import a module of the staged training sources, what SageMaker runs: `training("train_model")`."""
    sys.path.insert(0, str(training_source))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(training_source))


@pytest.fixture(scope="session")
def inference_source(repacked_model_dir) -> Path:
    """code/ of the repacked model.tar.gz: inference/ and, in code/lib/, classifier/ (the SDK's layout)."""
    return repacked_model_dir / "code"


# Classes of the tiny served model: index order, as training writes them into metadata.json.
SERVED_CLASS_NAMES = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]


@pytest.fixture(scope="session")
def make_model_artifact(tmp_path_factory) -> Callable[[int], Path]:
    """`make_model_artifact(image_size)`: what training leaves in SM_MODEL_DIR, model.pth + metadata.json
    (random resnet18, SERVED_CLASS_NAMES, `image_size` px), built once a size."""
    built: dict[int, Path] = {}

    def make(image_size: int) -> Path:
        if image_size not in built:
            import torch

            from classifier.artifact import ModelMetadata, save_artifact
            from classifier.backbones import build_model

            torch.manual_seed(0)
            model = build_model("resnet18", len(SERVED_CLASS_NAMES), pretrained=False, finetune="full")
            metadata = ModelMetadata(
                backbone="resnet18",
                num_classes=len(SERVED_CLASS_NAMES),
                class_names=SERVED_CLASS_NAMES,
                image_size=image_size,
            )
            built[image_size] = tmp_path_factory.mktemp(f"artifact-{image_size}") / "model"
            save_artifact(built[image_size], model, metadata)
        return built[image_size]

    return make


@pytest.fixture(scope="session")
def model_artifact_dir(make_model_artifact) -> Path:
    """The served model of most tests: 32 px."""
    return make_model_artifact(32)


@pytest.fixture(scope="session")
def model_archive(tmp_path_factory, model_artifact_dir, project_config) -> Path:
    """model.tar.gz as PyTorchModel repacks it (the SDK's own repack_model): the artifact at the root,
    inference/ under code/ and the shared classifier/ under code/lib/."""
    import tarfile

    folder = tmp_path_factory.mktemp("repacked")
    trained = folder / "trained.tar.gz"
    with tarfile.open(trained, "w:gz", compresslevel=1) as tar:
        for path in sorted(model_artifact_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return sdk_module().repack_model_locally(project_config, trained, folder / "model.tar.gz")


@pytest.fixture(scope="session")
def repacked_model_dir(tmp_path_factory, model_archive) -> Path:
    import tarfile

    folder = tmp_path_factory.mktemp("repacked-model")
    with tarfile.open(model_archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB file system, to fill: a tmpfs (skipped where mounting one needs a root this user is not)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
