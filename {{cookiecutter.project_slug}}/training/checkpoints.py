"""Checkpoints and resume: a spot interruption (or any restart) continues at the next epoch.

Each epoch rank 0 writes /opt/ml/checkpoints/checkpoint.pth (model, optimizer, lr_scheduler, scaler,
epoch, the best so far, early-stopping count, history, the in-job recording) and, when the epoch is the
best, best.pth; SageMaker syncs the folder to S3 and back. A checkpoint of other settings is not resumed.
Every file is written whole or not at all (atomic_save); a full disk stops the job with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from epoch import objective_line
from optimisation import Training
from recorder import Recorder

from classifier.artifact import atomic_save

CHECKPOINT_FILENAME = "checkpoint.pth"
BEST_FILENAME = "best.pth"
# What a full disk or an exhausted quota raises while a file is written.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# Arguments that do not change the result: a checkpoint written under other values still resumes.
NOT_RESULT_AFFECTING = {
    "model_dir",
    "data_dir",
    "output_data_dir",
    "checkpoint_dir",
    "num_workers",
    "log_every",
    "num_gpus",
    "hosts",
    "current_host",
    # What is recorded and judged, not what is learnt.
    "rules",
    "train_save_interval",
    "eval_save_interval",
    "profiler_interval_millis",
    "torch_profiler_steps",
    # Whether an int8 copy is made after training: the float weights are the same either way.
    "quantize",
}


@dataclass
class Progress:
    """Where the run stands; a checkpoint holds it."""

    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"loss": math.inf, "accuracy": 0.0, "epoch": -1})
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False


@contextlib.contextmanager
def saving(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing `path` stops the job with one line, not a traceback; the
    partial file is gone already (atomic_save removes it)."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise SystemExit(
            f"cannot save {error.filename or path}: {error.strerror}; free space in {path.parent} and "
            "run again (a run resumes from its last checkpoint)"
        ) from None


def run_signature(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_RESULT_AFFECTING}


def usable_checkpoint_dir(path: str | None) -> Path | None:
    if not path:
        return None
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"checkpoints: cannot use {directory} ({error}); a restart will begin again", flush=True)
        return None
    return directory


def resume(
    args: argparse.Namespace,
    training: Training,
    recorder: Recorder | None,
    path: Path | None,
    log: Callable[..., None],
) -> Progress:
    """Continue after a spot interruption from `path`, if it holds a run with these settings."""
    progress = Progress()
    if not (path and path.is_file()):
        return progress
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["signature"] != run_signature(args):
        log(f"checkpoints: {path} is from a run with other settings; starting over", flush=True)
        return progress
    training.trained.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["lr_scheduler"])
    training.scaler.load_state_dict(state["scaler"])
    progress = Progress(state["epoch"] + 1, state["best"], state["stale_epochs"], state["history"])
    if recorder is not None and state.get("recording"):
        recorder.load_state_dict(state["recording"])
    log(f"checkpoints: resuming at epoch {progress.start_epoch + 1} of {args.epochs} from {path}", flush=True)
    for entry in progress.history:
        log(objective_line(entry["loss"], entry["accuracy"]), flush=True)
    if state.get("stopped_early"):
        progress.start_epoch = args.epochs
    return progress


def save_checkpoint(
    args: argparse.Namespace,
    training: Training,
    recorder: Recorder | None,
    progress: Progress,
    epoch: int,
    checkpoint_dir: Path,
    improved: bool,
) -> None:
    """best.pth when this epoch is the best so far, then checkpoint.pth (rank 0 only)."""
    if improved:
        with saving(checkpoint_dir / BEST_FILENAME):
            atomic_save(training.trained.state_dict(), checkpoint_dir / BEST_FILENAME)
    path = checkpoint_dir / CHECKPOINT_FILENAME
    with saving(path):
        atomic_save(
            {
                "model": training.trained.state_dict(),
                "optimizer": training.optimizer.state_dict(),
                "lr_scheduler": training.scheduler.state_dict(),
                "scaler": training.scaler.state_dict(),
                "epoch": epoch,
                "best": progress.best,
                "stale_epochs": progress.stale_epochs,
                "history": progress.history,
                "stopped_early": progress.stopped_early,
                "signature": run_signature(args),
                "recording": recorder.state_dict() if recorder is not None else None,
            },
            path,
        )


def restore_best(
    training: Training, progress: Progress, checkpoint_dir: Path | None, log: Callable[..., None]
) -> dict:
    """Load the best epoch's weights into the model; the tuner's last objective line is its loss."""
    if progress.best_state is not None:
        training.trained.load_state_dict(progress.best_state)
    elif checkpoint_dir and (checkpoint_dir / BEST_FILENAME).is_file():
        best = torch.load(checkpoint_dir / BEST_FILENAME, map_location="cpu", weights_only=True)
        training.trained.load_state_dict(best)
    best = progress.best
    log(f"best epoch: {best['epoch'] + 1}", flush=True)
    log(objective_line(best["loss"], best["accuracy"]), flush=True)
    return {
        "best_epoch": best["epoch"] + 1,
        "validation_loss": best["loss"],
        "validation_accuracy": best["accuracy"],
        "epochs_run": len(progress.history),
    }
