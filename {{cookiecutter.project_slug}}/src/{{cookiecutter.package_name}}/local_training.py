"""Run a training entry point on this machine under SageMaker's training contract.

What SageMaker's training toolkit does in the container, done here in a temporary
/opt/ml-like tree: the configuration files under input/config, the data channel
under input/data/training, the staged source directory under code/, SM_*
variables, hyperparameters as `--name value` arguments, the entry point in a
subprocess. The model directory ends up as `model.tar.gz`, files at its root,
exactly as SageMaker uploads it.

Layout of `output_dir`:
    opt_ml/                 the tree (SAGEMAKER_BASE_DIR), kept for inspection
    training.log            everything the entry point printed
    model.tar.gz            the artifact
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from .config import ProjectConfig
from .sources import stage_sources

CHANNEL = "training"
HOST = "algo-1"
LOG_TAIL_LINES = 40


class LocalTrainingError(RuntimeError):
    """The entry point exited with an error; the message ends with the last lines it printed."""


def sagemaker_hyperparameters(
    hyperparameters: dict[str, Any], entry_point: str, code_dir: Path, region: str, job_name: str
) -> dict[str, str]:
    """hyperparameters.json as the SageMaker Python SDK writes it: every value JSON-encoded,
    plus the `sagemaker_*` entries the toolkit uses to find and run the code."""
    encoded = {name: json.dumps(value) for name, value in hyperparameters.items()}
    encoded.update(
        sagemaker_program=json.dumps(entry_point),
        sagemaker_submit_directory=json.dumps(str(code_dir)),
        sagemaker_container_log_level=json.dumps(20),
        sagemaker_job_name=json.dumps(job_name),
        sagemaker_region=json.dumps(region),
    )
    return encoded


def _decoded(encoded: dict[str, str]) -> dict[str, Any]:
    """What the toolkit reads back: each value JSON-decoded; `sagemaker_*` entries are not for the script."""
    return {name: json.loads(value) for name, value in encoded.items() if not name.startswith("sagemaker_")}


def _arg_value(value: Any) -> str:
    # str() of the decoded value, as sagemaker_training.mapping.to_cmd_args does: True -> "True".
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return "" if value is None else str(value)


def to_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    """`--name value` for every hyperparameter, sorted by name, as the toolkit passes them."""
    args: list[str] = []
    for name in sorted(hyperparameters):
        args += [f"--{name}" if len(name) > 1 else f"-{name}", _arg_value(hyperparameters[name])]
    return args


def _env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def debug_hook_config(config: ProjectConfig, tensors_dir: Path) -> dict[str, Any]:
    """debughookconfig.json as SageMaker writes it from the estimator's DebuggerHookConfig."""
    debugger = config.section("debugger")
    return {
        "LocalPath": str(tensors_dir),
        "HookParameters": {
            "train.save_interval": str(debugger["train_save_interval"]),
            "eval.save_interval": str(debugger["eval_save_interval"]),
        },
        "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {}}],
    }


def prepare_training_tree(
    base_dir: Path,
    data_dir: Path,
    code_dir: Path,
    hyperparameters: dict[str, Any],
    entry_point: str,
    *,
    region: str = "",
    hook_config: dict[str, Any] | None = None,
) -> None:
    """Write the /opt/ml tree the toolkit expects; `code_dir` must already hold the staged sources."""
    config_dir = base_dir / "input" / "config"
    for folder in (
        config_dir,
        base_dir / "input" / "data",
        base_dir / "model",
        base_dir / "output" / "data",
        base_dir / "checkpoints",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    channel = base_dir / "input" / "data" / CHANNEL
    if not channel.exists():
        try:
            channel.symlink_to(Path(data_dir).resolve(), target_is_directory=True)
        except OSError:  # no symlinks (some Windows setups): copy instead
            shutil.copytree(data_dir, channel)
    job_name = f"local-{time.strftime('%Y%m%d-%H%M%S')}"
    files = {
        "hyperparameters.json": sagemaker_hyperparameters(
            hyperparameters, entry_point, code_dir, region, job_name
        ),
        "resourceconfig.json": {
            "current_host": HOST,
            "hosts": [HOST],
            "current_group_name": "homogeneousCluster",
            "current_instance_type": "local",
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": "local", "hosts": [HOST]}
            ],
            "network_interface_name": "eth0",
        },
        "inputdataconfig.json": {
            CHANNEL: {
                "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            }
        },
    }
    if hook_config is not None:
        files["debughookconfig.json"] = hook_config
    for name, content in files.items():
        (config_dir / name).write_text(json.dumps(content, indent=2))


def _num_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def training_environment(base_dir: Path, entry_point: str, code_dir: Path) -> dict[str, str]:
    """The SM_* variables the toolkit sets (a subset: the ones scripts read), from the tree's files."""
    config_dir = base_dir / "input" / "config"
    encoded = json.loads((config_dir / "hyperparameters.json").read_text())
    resource = json.loads((config_dir / "resourceconfig.json").read_text())
    channels = json.loads((config_dir / "inputdataconfig.json").read_text())
    hps = _decoded(encoded)
    env: dict[str, Any] = {
        "hosts": resource["hosts"],
        "current_host": resource["current_host"],
        "network_interface_name": resource.get("network_interface_name", "eth0"),
        "hps": hps,
        "user_entry_point": entry_point,
        "module_name": entry_point.removesuffix(".py"),
        "module_dir": str(code_dir),
        "resource_config": resource,
        "input_data_config": channels,
        "channels": sorted(channels),
        "input_dir": str(base_dir / "input"),
        "input_config_dir": str(config_dir),
        "output_dir": str(base_dir / "output"),
        "output_data_dir": str(base_dir / "output" / "data"),
        "output_intermediate_dir": str(base_dir / "output" / "intermediate"),
        "model_dir": str(base_dir / "model"),
        "num_cpus": multiprocessing.cpu_count(),
        "num_gpus": _num_gpus(),
        "user_args": to_cmd_args(hps),
    }
    env.update({f"channel_{name}": str(base_dir / "input" / "data" / name) for name in channels})
    env.update({f"hp_{name}": value for name, value in hps.items()})
    variables = {f"SM_{key.upper()}": _env_value(value) for key, value in env.items()}
    variables["SAGEMAKER_BASE_DIR"] = str(base_dir)
    return variables


def package_model(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz with the model directory's files at the archive root, as SageMaker makes it."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


def run_local_training(
    config: ProjectConfig,
    data_dir: Path,
    output_dir: Path,
    hyperparameters: dict | None = None,
    entry_point: str = "train_model.py",
    debugger: bool = False,
) -> Path:
    """Train with `entry_point` from the staged training sources; return the path of model.tar.gz.

    `hyperparameters` override config.toml's (see `ProjectConfig.script_hyperparameters`).
    `debugger` writes a hook configuration like SageMaker's, so smdebug saves tensors
    under `output_dir/opt_ml/output/tensors`.
    """
    output_dir = Path(output_dir).resolve()
    base_dir = output_dir / "opt_ml"
    if base_dir.exists():
        shutil.rmtree(base_dir)
    code_dir = stage_sources(config.root, "training", base_dir / "code")
    if not (code_dir / entry_point).is_file():
        raise FileNotFoundError(f"no entry point {entry_point} in {config.training_dir}")
    hook_config = debug_hook_config(config, base_dir / "output" / "tensors") if debugger else None
    prepare_training_tree(
        base_dir,
        Path(data_dir),
        code_dir,
        config.script_hyperparameters(hyperparameters),
        entry_point,
        region=config.aws.get("region", ""),
        hook_config=hook_config,
    )
    env = {**os.environ, **training_environment(base_dir, entry_point, code_dir)}
    env.pop("PYTHONPATH", None)  # as in the container: the code directory and the image's packages only
    env["PYTHONUNBUFFERED"] = "1"
    env["SMDEBUG_CONFIG_FILE_PATH"] = str(base_dir / "input" / "config" / "debughookconfig.json")
    command = [sys.executable, entry_point, *json.loads(env["SM_USER_ARGS"])]
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    log_path = output_dir / "training.log"
    with (
        subprocess.Popen(
            command,
            cwd=code_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
        log_path.open("w") as log,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            tail.append(line.rstrip("\n"))
    if process.returncode != 0:
        raise LocalTrainingError(
            f"{entry_point} exited with status {process.returncode}; last lines of {log_path}:\n"
            + "\n".join(tail)
        )
    return package_model(base_dir / "model", output_dir / "model.tar.gz")
