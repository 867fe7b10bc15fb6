"""Run a training entry point on this machine with SageMaker's own training toolkit.

The container's steps, with the container's code: the SDK builds `sourcedir.tar.gz` (the same
function and file list the estimator uploads, `sagemaker_api.training_source_archive`); this module
writes the /opt/ml tree's configuration files (what SageMaker writes from CreateTrainingJob) into a
temporary folder; then, in a subprocess with `SAGEMAKER_BASE_DIR` pointing there, the
`sagemaker-training` toolkit reads that tree (`environment.Environment`), extracts the archive into
`code/`, sets the `SM_*` variables and runs the entry point with `--name value` arguments
(`runner.ProcessRunner`), exactly as `trainer.train()` does in the container.

Two steps differ from the container, on purpose: `requirements.txt` is not pip-installed (this
environment already has the project's `local` extra, and installing into it would change it), and the
job's hosts are not resolved by DNS (there is one, this machine).

Layout of `output_dir`:
    sourcedir.tar.gz        the archive the estimator would upload
    opt_ml/                 the tree (SAGEMAKER_BASE_DIR), kept for inspection
    training.log            everything the entry point printed
    model.tar.gz            the artifact, files at its root, as SageMaker packs it

A run stopped before its end (killed, the machine off) leaves `opt_ml/checkpoints/`: run with
`resume=True`, the tree is made anew around that folder, as SageMaker restarts an interrupted spot job
with its checkpoints put back, and the entry point continues from the last epoch saved.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from .. import experiments, extras
from ..aws import sagemaker_jobs, sdk
from ..config import ProjectConfig

CHANNEL = sagemaker_jobs.DATA_CHANNEL
HOST = "algo-1"
LOG_TAIL_LINES = 40
QUIET_TAIL_LINES = 6
# The training toolkit's line just before the entry point's own output starts.
TOOLKIT_INVOKES_SCRIPT = "Invoking script with the following command"
# Where the entry point keeps its checkpoint under output_dir: train_model.py's default
# (SAGEMAKER_BASE_DIR/checkpoints) and its CHECKPOINT_FILENAME.
CHECKPOINT = Path("opt_ml") / "checkpoints" / "checkpoint.pth"
# What a full disk or an exhausted quota raises while writing.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class LocalTrainingError(RuntimeError):
    """The entry point exited with an error; the message ends with the last lines it printed.

    `summary` is the one line a command line shows: the output itself was already on the screen.
    """

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def interrupted_run(output_dir: Path) -> Path | None:
    """The checkpoint of a run in `output_dir` that stopped before its end (no model.tar.gz), if any."""
    checkpoint = Path(output_dir) / CHECKPOINT
    if checkpoint.is_file() and not (Path(output_dir) / "model.tar.gz").exists():
        return checkpoint
    return None


def sagemaker_hyperparameters(
    hyperparameters: dict[str, Any], entry_point: str, source_archive: Path, region: str, job_name: str
) -> dict[str, str]:
    """hyperparameters.json as CreateTrainingJob receives it from the SDK: every value JSON-encoded,
    plus the `sagemaker_*` entries the toolkit uses to find and run the code."""
    encoded = {name: json.dumps(value) for name, value in hyperparameters.items()}
    encoded.update(
        sagemaker_program=json.dumps(entry_point),
        sagemaker_submit_directory=json.dumps(str(source_archive)),
        sagemaker_container_log_level=json.dumps(20),
        sagemaker_job_name=json.dumps(job_name),
        sagemaker_region=json.dumps(region),
    )
    return encoded


def prepare_training_tree(
    base_dir: Path,
    data_dir: Path,
    source_archive: Path,
    hyperparameters: dict[str, Any],
    entry_point: str,
    *,
    region: str = "",
    hook_config: dict[str, Any] | None = None,
) -> str:
    """Write the /opt/ml tree's configuration and data channel, as SageMaker does before the toolkit runs.

    Returns the job's name (SageMaker sets it in the container as TRAINING_JOB_NAME)."""
    config_dir = base_dir / "input" / "config"
    for folder in (config_dir, base_dir / "input" / "data", base_dir / "model", base_dir / "output" / "data"):
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
            hyperparameters, entry_point, source_archive, region, job_name
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
    return job_name


def package_model(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz with the model directory's files at the archive root, as SageMaker makes it.

    Written beside and renamed at the end: a half-written model.tar.gz would look like a finished run."""
    partial = archive.with_name(archive.name + ".tmp")
    try:
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
        partial.replace(archive)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return archive


def run_local_training(
    config: ProjectConfig,
    data_dir: Path,
    output_dir: Path,
    hyperparameters: dict | None = None,
    entry_point: str = sagemaker_jobs.TRAINING_ENTRY_POINT,
    quiet: bool = False,
    resume: bool = False,
) -> Path:
    """Train with `entry_point` from the project's training sources; return the path of model.tar.gz.

    `hyperparameters` override config.toml's (see `ProjectConfig.script_hyperparameters`).
    `quiet` prints only the last lines of the log (all of it is in `training.log`).
    `resume` keeps the checkpoints of an interrupted run in `output_dir` (see `interrupted_run`).
    A full disk is one line (LocalTrainingError), with no half-written model.tar.gz.
    """
    extras.require("local", "train --local")
    output_dir = Path(output_dir).resolve()
    if not (config.training_dir / entry_point).is_file():
        raise LocalTrainingError(f"no entry point {entry_point} in {config.training_dir}")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        archive = sdk.sagemaker_api(config).training_source_archive(config, output_dir / "sourcedir.tar.gz")
        return run_toolkit(
            archive,
            entry_point,
            config.script_hyperparameters(hyperparameters),
            data_dir,
            output_dir,
            region=config.aws.get("region", ""),
            quiet=quiet,
            resume=resume,
            # Where training/tracking.py records the run: the project's MLflow store.
            environment=experiments.job_environment(config, local=True),
        )
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        message = f"{error.strerror} writing into {output_dir}: free space there, or pass another --run-dir"
        raise LocalTrainingError(message, summary=message) from None


def run_toolkit(
    source_archive: Path,
    entry_point: str,
    hyperparameters: dict[str, Any],
    data_dir: Path,
    output_dir: Path,
    *,
    region: str = "",
    quiet: bool = False,
    resume: bool = False,
    environment: dict[str, str] | None = None,
) -> Path:
    """Run `entry_point` of a sourcedir.tar.gz under the training toolkit, with `hyperparameters` as
    SageMaker passes them and `data_dir` as the training channel; return the path of model.tar.gz.

    The tree is made anew; `resume` keeps its `checkpoints/` (and appends to the log). `environment`
    is added to the script's, as the estimator's `environment` is in a job."""
    output_dir = Path(output_dir).resolve()
    base_dir = output_dir / "opt_ml"
    kept = base_dir / CHECKPOINT.parent.name if resume else None
    if base_dir.exists():
        for path in base_dir.iterdir():
            if path == kept:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    job_name = prepare_training_tree(
        base_dir,
        Path(data_dir),
        Path(source_archive).resolve(),
        hyperparameters,
        entry_point,
        region=region,
    )
    env = {
        **os.environ,
        **(environment or {}),
        "TRAINING_JOB_NAME": job_name,
        "SAGEMAKER_BASE_DIR": str(base_dir),
        "PYTHONUNBUFFERED": "1",
        "SMDEBUG_CONFIG_FILE_PATH": str(base_dir / "input" / "config" / "debughookconfig.json"),
    }
    command = [sys.executable, "-m", __name__]
    # The entry point's own last lines: what the toolkit printed before it (its environment) is reset.
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    log_path = output_dir / "training.log"
    with (
        log_path.open("a" if resume else "w", buffering=1) as log,  # by line: a killed run keeps its log
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as process,
    ):
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if not quiet:
                    sys.stdout.write(line)
                log.write(line)
                if line.startswith(TOOLKIT_INVOKES_SCRIPT):
                    tail.clear()
                tail.append(line.rstrip("\n"))
        except BaseException:
            process.kill()  # the log cannot be written (a full disk) or the user stopped it: so does the job
            raise
    if quiet:
        print(*list(tail)[-QUIET_TAIL_LINES:], f"log: {log_path}", sep="\n")
    if process.returncode != 0:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        raise LocalTrainingError(
            f"{entry_point} exited with status {process.returncode}; last lines of {log_path}:\n"
            + "\n".join(tail),
            summary=f"{entry_point} stopped: {last} (the whole log: {log_path})",
        )
    return package_model(base_dir / "model", output_dir / "model.tar.gz")


def _run_under_toolkit() -> None:
    """In the subprocess: what `sagemaker_training.trainer.train()` does, less pip and DNS (see above)."""
    from sagemaker_training import environment, errors, files, logging_config, runner

    env = environment.Environment()
    logging_config.configure_logger(env.log_level)
    files.download_and_extract(uri=env.module_dir, path=environment.code_dir)
    # The script sees the container's import path: its code directory and the installed packages only.
    os.environ.pop("PYTHONPATH", None)
    env_vars = env.to_env_vars()
    environment.write_env_vars(env_vars)
    try:
        runner.get(runner.ProcessRunnerType, env.user_entry_point, env.to_cmd_args(), env_vars).run(wait=True)
    except errors.ExecuteUserScriptError as error:
        # The script's own error is already in the log above; the toolkit's traceback would bury it.
        sys.exit(int(error.return_code) if str(error.return_code).isdigit() else 1)


if __name__ == "__main__":
    _run_under_toolkit()
