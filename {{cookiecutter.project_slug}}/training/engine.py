"""The training loop hpo.py and train_model.py share: one parser, one loop.

Written against SageMaker's training contract: every hyperparameter arrives as
`--name value` (booleans as "True"/"False"), paths default to the SM_*
variables, checkpoints go to /opt/ml/checkpoints, and the model is saved to
SM_MODEL_DIR as a state_dict plus metadata.json. Run by hand, every path is a flag.

Imports only what the PyTorch training image has plus this source directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from data import (
    DECODE_ERRORS,
    Batch,
    DatasetLayoutError,
    FailedFiles,
    ImageFiles,
    SplitFiles,
    auto_num_workers,
    discover_splits,
    make_loader,
    set_loader_epoch,
)
from debugger import DebuggerHook
from feature_cache import extract_features
from pixel_cache import KeepingPreset, PixelCache, build_cache
from profiler import Profiler, TorchTrace, write_report
from quantize import CALIBRATION_IMAGES, Quantized, quantize_and_compare
from recorder import Observer, Observers, Recorder
from rules import (
    ACTIVATION_RULES,
    DEBUGGER_RULES,
    Verdict,
    evaluate_debugger_rules,
    evaluate_profiler_rules,
    parse_rules,
    wants_profiler,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier.artifact import ModelMetadata, atomic_save, atomic_write_text, choose_precision, save_artifact
from classifier.backbones import (
    WeightsUnavailable,
    build_model,
    contains_batch_norm,
    has_batch_norm,
    head,
    trainable_parameters,
)
from classifier.presets import EvalPreset, TrainPreset
from classifier.schema import FINETUNE_MODES, OPTIMIZERS, QUANTIZE_SETTINGS, SCHEDULERS

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


def str2bool(value: str | bool) -> bool:
    """SageMaker passes booleans as "True"/"False"; accept true/false/True/False/1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false, 1 or 0, got {value!r}")


def _sagemaker_base_dir() -> Path:
    # The training toolkit honours $SAGEMAKER_BASE_DIR as the /opt/ml root; so do local runs.
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def get_args_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    env = os.environ.get
    hp = parser.add_argument_group("hyperparameters (SageMaker passes each as --name value)")
    # Required, no defaults: config.toml ([hyperparameters], [model]) holds these values once, and the
    # launcher passes every one of them; a default here would be a second copy that drifts.
    hp.add_argument("--epochs", type=int, required=True, help="passes over the training images")
    hp.add_argument("--batch_size", type=int, required=True, help="training batch size (per process)")
    hp.add_argument("--test_batch_size", type=int, required=True, help="validation and test batch size")
    hp.add_argument("--lr", type=float, required=True, help="peak learning rate")
    hp.add_argument("--backbone", required=True, help="torchvision model name, e.g. resnet18")
    hp.add_argument(
        "--num_classes", type=int, default=None, help="classes expected in the data (default: as found)"
    )
    hp.add_argument("--image_size", type=int, required=True, help="side of the square the network sees")
    hp.add_argument(
        "--finetune", choices=FINETUNE_MODES, required=True, help="head: new layer only; full: all"
    )
    hp.add_argument("--pretrained", type=str2bool, required=True, help="start from ImageNet weights")
    hp.add_argument("--optimizer", default="adamw", help=f"one of {', '.join(OPTIMIZERS)}")
    hp.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    hp.add_argument("--weight_decay", type=float, default=1e-4, help="decoupled (AdamW) or L2 (SGD) decay")
    hp.add_argument("--scheduler", default="cosine", help=f"per-epoch LR schedule: {', '.join(SCHEDULERS)}")
    hp.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after N epochs without a better validation loss; 0: never",
    )
    hp.add_argument(
        "--min_delta", type=float, default=0.0, help="smallest validation loss decrease that counts"
    )
    hp.add_argument("--seed", type=int, default=0, help="seed of weights init, shuffling and augmentation")
    hp.add_argument(
        "--num_workers", type=int, default=-1, help="loader processes per GPU/process; -1: one per CPU"
    )
    hp.add_argument(
        "--log_every", type=int, default=20, help="a progress line every N steps of each pass; 0: none"
    )
    hp.add_argument("--augment", type=str2bool, default=True, help="random crop and flip of training images")
    hp.add_argument(
        "--feature_cache",
        type=str2bool,
        default=False,
        help="head mode: compute backbone features once and train the head on them (implies augment=false)",
    )
    hp.add_argument(
        "--pixel_cache_gb",
        type=float,
        default=8.0,
        help="memory (GB, per process) to keep decoded training and validation images in from the "
        "first epoch on, so later epochs skip decoding; 0: decode every epoch",
    )
    hp.add_argument(
        "--class_weights", type=str2bool, default=False, help="weight the loss by inverse class frequency"
    )
    hp.add_argument("--amp", type=str2bool, default=True, help="mixed precision on GPU")
    hp.add_argument(
        "--quantize",
        choices=QUANTIZE_SETTINGS,
        default="auto",
        help="train_model.py: also save an int8 copy for CPU endpoints, measured on validation; float: not",
    )
    watch = parser.add_argument_group("rules and profiling judged in the job (train_model.py)")
    watch.add_argument(
        "--rules",
        default="",
        help="comma-separated rule names, e.g. overfit,LowGPUUtilization; empty: none",
    )
    watch.add_argument("--train_save_interval", type=int, default=100, help="record every N training steps")
    watch.add_argument(
        "--eval_save_interval", type=int, default=10, help="record every N validation/test steps"
    )
    watch.add_argument(
        "--profiler_interval_millis", type=int, default=500, help="system sample every N milliseconds"
    )
    watch.add_argument(
        "--torch_profiler_steps",
        type=int,
        default=0,
        help="trace N training steps with torch.profiler for TensorBoard; 0: off",
    )
    paths = parser.add_argument_group("paths and cluster (default: the SageMaker environment)")
    paths.add_argument("--data_dir", default=env("SM_CHANNEL_TRAINING"), help="the training channel")
    paths.add_argument("--model_dir", default=env("SM_MODEL_DIR", "model"), help="where the artifact goes")
    paths.add_argument("--output_data_dir", default=env("SM_OUTPUT_DATA_DIR", "output"), help="other outputs")
    paths.add_argument(
        "--checkpoint_dir", default=str(_sagemaker_base_dir() / "checkpoints"), help="per-epoch checkpoints"
    )
    paths.add_argument("--num_gpus", type=int, default=int(env("SM_NUM_GPUS", torch.cuda.device_count())))
    paths.add_argument("--hosts", type=json.loads, default=env("SM_HOSTS", '["localhost"]'))
    paths.add_argument("--current_host", default=env("SM_CURRENT_HOST", "localhost"))
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad combinations before any data is read."""
    if args.optimizer not in OPTIMIZERS:
        raise SystemExit(f"unknown optimizer {args.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
    if args.scheduler not in SCHEDULERS:
        raise SystemExit(f"unknown scheduler {args.scheduler!r}; choose {', '.join(SCHEDULERS)}")
    if args.feature_cache and args.finetune != "head":
        raise SystemExit(
            "feature_cache=true needs finetune=head: in full mode the backbone changes every step"
        )
    if not args.data_dir:
        raise SystemExit("no data: pass --data_dir or set SM_CHANNEL_TRAINING")
    for name in ("epochs", "batch_size", "test_batch_size", "train_save_interval", "eval_save_interval"):
        if getattr(args, name) < 1:
            raise SystemExit(f"{name} must be at least 1, got {getattr(args, name)}")
    if args.finetune == "full" and args.batch_size < 2 and has_batch_norm(args.backbone):
        raise SystemExit(
            f"batch_size {args.batch_size} cannot train {args.backbone} with finetune=full: BatchNorm cannot "
            "train on a batch of one image; use batch_size 2 or more, or finetune=head"
        )
    if args.profiler_interval_millis < 10:
        raise SystemExit(f"profiler_interval_millis must be at least 10, got {args.profiler_interval_millis}")
    try:
        parse_rules(args.rules)
    except ValueError as error:
        raise SystemExit(str(error)) from None


# --------------------------------------------------------------------------- processes and devices


@dataclass
class Cluster:
    """This process's place in a (possibly one-process) torch.distributed job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_cluster() -> Cluster:
    """torchrun (SageMaker's torch_distributed) sets RANK/WORLD_SIZE/LOCAL_RANK; otherwise one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    cluster = Cluster(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        device=device,
    )
    if cluster.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return cluster


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- one epoch


@dataclass
class Stage:
    """What every epoch runs: the network (or only its head, on cached features) and its loss."""

    module: nn.Module  # what is called on `inputs` (maybe DDP-wrapped)
    prepare: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    criterion: nn.Module
    amp: bool
    cluster: Cluster
    observer: Observer = field(default_factory=Observer)
    epoch: int = 0  # the epoch running, for the observers
    log_every: int = 0  # a progress line every N steps of a pass (0: none)


@dataclass
class ProgressLine:
    """Progress inside a pass, as torchvision's MetricLogger.log_every prints it: step, loss, rate, ETA.

    Plain lines, so they read the same in a terminal, in `train --local`'s log and in CloudWatch."""

    mode: str
    epoch: int
    total: int | None
    every: int
    started: float = field(default_factory=time.perf_counter)
    images: int = 0

    def step(self, done: int, batch_size: int, loss: float) -> None:
        self.images += batch_size
        if not self.every or done % self.every:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.images / elapsed if elapsed > 0 else 0.0
        where = f"{done}/{self.total}" if self.total else str(done)
        eta = ""
        if self.total and done:
            eta = f"  eta {datetime.timedelta(seconds=round(elapsed / done * (self.total - done)))}"
        print(
            f"{self.mode.lower()} epoch {self.epoch} [{where}] loss {loss:.4f}  {rate:.1f} images/s{eta}",
            flush=True,
        )


def image_preparer(device: torch.device, scaling: nn.Module, channels_last: bool):
    """uint8 batches from the workers -> float, normalised, on the device (the float work runs there)."""

    def prepare(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # Asynchronous only from pinned memory, a copy: the worker's own memory is read before release.
        images = scaling(batch.inputs.to(device, non_blocking=batch.inputs.is_pinned()))
        batch.release()
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch.labels.to(device, non_blocking=True)

    return prepare


def feature_preparer(device: torch.device):
    def prepare(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.inputs.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)

    return prepare


def set_train_mode(module: nn.Module, finetune: str) -> None:
    """In head mode the frozen backbone stays in eval mode, so BatchNorm statistics do not drift."""
    if finetune == "head":
        module.eval()
        head(module.module if isinstance(module, DistributedDataParallel) else module).train()
    else:
        module.train()


def _timed(loader: Iterable[Batch]) -> Iterator[tuple[Batch, float]]:
    """Each batch with the seconds spent waiting for it (the data side of a step)."""
    iterator = iter(loader)
    while True:
        waited = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - waited


def run_epoch(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    mode: str,
    first_step: int = 0,
    step: Callable[[torch.Tensor, Callable[[], None]], None] | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of `loader`; `step` (training) gets each loss.

    Steps are numbered from `first_step` per mode, as smdebug counts them; the observer hears of each.
    The caller sets the modes first: the debugger's (its steps are counted per mode) and the module's.
    """
    observer = stage.observer
    loss_sum, correct, count = 0.0, 0, 0
    index = first_step
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    every = stage.log_every if stage.cluster.is_main else 0
    progress = ProgressLine(mode, stage.epoch + 1, total, every)  # counted from 1, as the epoch lines are
    observer.begin_pass(mode, stage.epoch, first_step)
    for index, (batch, waited) in enumerate(_timed(loader), start=first_step):
        on_failed(batch.failed)
        if not len(batch.labels):
            continue
        started = time.perf_counter()
        observer.begin_step(mode, index)
        inputs, labels = stage.prepare(batch)
        with torch.autocast(stage.cluster.device.type, dtype=torch.float16, enabled=stage.amp):
            logits = stage.module(inputs)
            loss = stage.criterion(logits, labels)
        if step is not None:
            step(loss, lambda index=index: observer.after_backward(mode, index))
        value = loss.item()  # also the point where the host waits for the device
        observer.end_step(mode, index, value, logits, labels, waited, time.perf_counter() - started)
        loss_sum += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
        progress.step(index - first_step + 1, len(labels), value)
    observer.end_pass(mode, stage.epoch, index + 1)
    loss_sum, correct, count = stage.cluster.all_sum([loss_sum, correct, count])
    return loss_sum / max(count, 1), correct / max(count, 1)


def train_one_epoch(
    stage: Stage,
    loader: Iterable[Batch],
    finetune: str,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    on_failed: Callable[[list[int]], None],
    debugger: DebuggerHook,
    first_step: int = 0,
) -> tuple[float, float]:
    """One optimiser step per batch; returns the epoch's mean training loss and accuracy."""

    def step(loss: torch.Tensor, after_backward: Callable[[], None]) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the recorder reads true gradients (a no-op without AMP)
        after_backward()
        scaler.step(optimizer)
        scaler.update()

    debugger.set_mode("TRAIN")
    set_train_mode(stage.module, finetune)
    return run_epoch(stage, loader, on_failed, "TRAIN", first_step, step)


@torch.no_grad()
def evaluate(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    debugger: DebuggerHook,
    mode: str = "EVAL",
    first_step: int = 0,
) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of `loader`.

    `mode` is EVAL for validation, PREDICT for the final test pass: a test loss recorded as EVAL
    would be the last point of the validation curve, and rules comparing training with validation
    would judge test data.
    """
    debugger.set_mode(mode)
    stage.module.eval()
    return run_epoch(stage, loader, on_failed, mode, first_step)


def objective_line(loss: float, accuracy: float, split: str = "validation") -> str:
    """The line the tuner's metric regex reads (config.toml: tuning.objective_metric_regex)."""
    return f"{split}:loss={loss:.6f} {split}:accuracy={accuracy:.6f}"


# --------------------------------------------------------------------------- optimisation


def make_optimizer(args: argparse.Namespace, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


def class_weight_tensor(split: SplitFiles, num_classes: int) -> torch.Tensor:
    """Inverse frequency, normalised so that a balanced dataset gets all ones."""
    counts = torch.tensor(split.class_counts(num_classes), dtype=torch.float32)
    return counts.sum() / (num_classes * counts.clamp(min=1))


# --------------------------------------------------------------------------- checkpoints


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


# --------------------------------------------------------------------------- building the run


@dataclass
class Data:
    """The splits and their loaders; `prepare` turns a batch into device tensors."""

    class_names: list[str]
    splits: dict[str, SplitFiles]
    train: object
    valid: object
    test: object | None
    prepare: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    failed: FailedFiles = field(default_factory=FailedFiles)

    def on_failed(self, split: str) -> Callable[[list[int]], None]:
        return lambda indices: self.failed.add(self.splits[split], indices)


@dataclass
class Training:
    """What learns and how: `trained` is the network, or only its head on cached features."""

    model: nn.Module  # the whole network: what is saved
    trained: nn.Module
    stage: Stage
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


@dataclass
class Progress:
    """Where the run stands; a checkpoint holds it."""

    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"loss": math.inf, "accuracy": 0.0, "epoch": -1})
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False


@dataclass
class Watch:
    """Who watches the run: SageMaker's debugger hook, and the in-job recorder and profiler."""

    debugger: DebuggerHook
    rules: list[str] = field(default_factory=list)
    recorder: Recorder | None = None
    profiler: Profiler | None = None
    trace: TorchTrace | None = None


def discover(args: argparse.Namespace, log: Callable[..., None]) -> tuple[list[str], dict[str, SplitFiles]]:
    try:
        class_names, splits = discover_splits(Path(args.data_dir), args.num_classes)
    except DatasetLayoutError as error:
        raise SystemExit(f"data: {error}") from None
    log(
        f"data: {len(class_names)} classes; "
        + ", ".join(f"{name} {len(files.samples)} images" for name, files in splits.items()),
        flush=True,
    )
    return class_names, splits


def build_network(args: argparse.Namespace, cluster: Cluster, num_classes: int) -> nn.Module:
    if args.finetune == "head" and not args.pretrained:
        print(
            "WARNING model: finetune=head without pretrained weights trains only the last layer over a "
            "random network; expect accuracy near chance. Use pretrained=true, or finetune=full.",
            flush=True,
        )
    try:
        model = build_model(args.backbone, num_classes, pretrained=args.pretrained, finetune=args.finetune)
    except WeightsUnavailable as error:
        raise SystemExit(str(error)) from None  # one line in the job's log, not a torch.hub traceback
    # Moved once. On a GPU channels-last, the layout `image_preparer` gives the batches there.
    on_gpu = cluster.device.type == "cuda"
    return model.to(cluster.device, memory_format=torch.channels_last if on_gpu else torch.preserve_format)


def load_data(
    args: argparse.Namespace,
    cluster: Cluster,
    model: nn.Module,
    splits: tuple[list[str], dict[str, SplitFiles]],
    evaluate_test: bool,
    log: Callable[..., None],
) -> Data:
    """Loaders of decoded images, or (feature cache) of the frozen backbone's features."""
    class_names, files = splits
    on_gpu = cluster.device.type == "cuda"
    eval_preset = EvalPreset(args.image_size)
    augment = args.augment and not args.feature_cache
    train_preset = TrainPreset(args.image_size) if augment else eval_preset
    num_workers = auto_num_workers(cluster.local_world_size) if args.num_workers < 0 else args.num_workers
    prepare_images = image_preparer(cluster.device, eval_preset.scaling, channels_last=on_gpu)
    data = Data(class_names, files, None, None, None, prepare_images)

    # BatchNorm in training mode cannot normalise a batch of one image ("Expected more than 1 value per
    # channel"): when the whole network trains and has BatchNorm, a last training batch of one is dropped
    # (a different image each epoch, as the order is shuffled).
    single_image_batch_fails = args.finetune == "full" and contains_batch_norm(model)

    def images(split: str, shuffle: bool, batch_size: int, transform, cache=None, preset=None) -> object:
        return make_loader(
            ImageFiles(files[split], transform, cache, preset),
            batch_size,
            shuffle=shuffle,
            seed=args.seed,
            num_workers=num_workers,
            distributed=cluster.distributed,
            pin_memory=on_gpu,
            drop_last_single=split == "train" and single_image_batch_fails,
        )

    if not args.feature_cache:
        # Read every epoch, so decoded once (the test split is read once); training first.
        train_cache = valid_cache = None
        budget = int(args.pixel_cache_gb * 1e9)
        if budget > 0:
            train_cache = pixel_cache(files["train"], train_preset, budget, log)
            valid_budget = budget - (train_cache.nbytes if train_cache else 0)
            valid_cache = pixel_cache(files["valid"], eval_preset, valid_budget, log)
        else:
            log("pixel cache: off (pixel_cache_gb=0); every epoch decodes every image", flush=True)
        data.train = images("train", True, args.batch_size, train_preset.uint8, train_cache, train_preset)
        data.valid = images("valid", False, args.test_batch_size, eval_preset.uint8, valid_cache, eval_preset)
        data.test = images("test", False, args.test_batch_size, eval_preset.uint8) if evaluate_test else None
        return data
    return cache_features(args, cluster, model, data, images, evaluate_test, log)


def pixel_cache(
    files: SplitFiles, preset: KeepingPreset, max_bytes: int, log: Callable[..., None]
) -> PixelCache | None:
    """Where a split's loader keeps its decoded images from the first epoch on (None: it does not)."""
    paths = [path for path, _ in files.samples]
    return build_cache(
        paths, preset, max_bytes, DECODE_ERRORS, lambda line: log(line, flush=True), files.name
    )


def cache_features(
    args: argparse.Namespace,
    cluster: Cluster,
    model: nn.Module,
    data: Data,
    images: Callable[..., object],
    evaluate_test: bool,
    log: Callable[..., None],
) -> Data:
    """The frozen backbone runs once per image; the loop then trains the head alone on its features."""
    eval_preset = EvalPreset(args.image_size)
    used = ("train", "valid", "test") if evaluate_test else ("train", "valid")
    started = time.perf_counter()
    features = {
        split: extract_features(
            model,
            head(model),
            images(split, False, args.test_batch_size, eval_preset.uint8),
            data.prepare,
            data.on_failed(split),
        )
        for split in used
    }
    log(
        f"feature cache: {sum(map(len, features.values()))} images, {time.perf_counter() - started:.1f}s",
        flush=True,
    )

    def cached(split: str, shuffle: bool, batch_size: int) -> object:
        # Cached features are already sharded per process: no distributed sampler again.
        return make_loader(
            features[split],
            batch_size,
            shuffle=shuffle,
            seed=args.seed + cluster.rank,
            num_workers=0,
            distributed=False,
            pin_memory=False,
        )

    data.prepare = feature_preparer(cluster.device)
    data.train = cached("train", True, args.batch_size)
    data.valid = cached("valid", False, args.test_batch_size)
    data.test = cached("test", False, args.test_batch_size) if evaluate_test else None
    return data


def build_training(args: argparse.Namespace, cluster: Cluster, model: nn.Module, data: Data) -> Training:
    """The module that learns (DDP-wrapped where distributed), its loss, optimiser, schedule and scaler."""
    on_gpu = cluster.device.type == "cuda"
    amp = args.amp and on_gpu
    trained = head(model) if args.feature_cache else model
    num_classes = len(data.class_names)
    weights = class_weight_tensor(data.splits["train"], num_classes) if args.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(cluster.device) if weights is not None else None)
    module = (
        DistributedDataParallel(trained, device_ids=[cluster.local_rank] if on_gpu else None)
        if cluster.distributed
        else trained
    )
    optimizer = make_optimizer(args, trainable_parameters(trained))
    return Training(
        model=model,
        trained=trained,
        stage=Stage(module, data.prepare, criterion, amp, cluster, log_every=args.log_every),
        optimizer=optimizer,
        scheduler=make_scheduler(args, optimizer),
        scaler=torch.amp.GradScaler(cluster.device.type, enabled=amp),
    )


def build_watch(
    args: argparse.Namespace,
    cluster: Cluster,
    training: Training,
    data: Data,
    use_debugger: bool,
) -> Watch:
    """train_model.py's watchers (rank 0 only): smdebug's hook, the in-job recorder and profiler."""
    watching = use_debugger and cluster.is_main
    watch = Watch(DebuggerHook.from_sagemaker_config(watching))
    watch.debugger.register(training.trained, training.stage.criterion)
    planned = {
        "TRAIN": len(data.train) * args.epochs,
        "EVAL": len(data.valid) * args.epochs,
        **({"PREDICT": len(data.test)} if data.test is not None else {}),
    }
    watch.debugger.check_saved_steps(planned, "planned")
    if not watching:
        return watch
    watch.rules = parse_rules(args.rules)
    if any(name in DEBUGGER_RULES for name in watch.rules):
        activations = bool(ACTIVATION_RULES & set(watch.rules)) and args.finetune == "full"
        note = None if args.finetune == "full" else "finetune=head: the ReLUs are in the frozen backbone"
        watch.recorder = Recorder(
            training.trained,
            intervals={
                "TRAIN": args.train_save_interval,
                "EVAL": args.eval_save_interval,
                "PREDICT": args.eval_save_interval,
            },
            num_classes=len(data.class_names),
            class_names=data.class_names,
            activations=activations,
            activations_note=note,
            amp=training.stage.amp,
        )
    if wants_profiler(watch.rules):
        watch.profiler = Profiler(args.profiler_interval_millis)
    if args.torch_profiler_steps > 0:
        watch.trace = TorchTrace(args.torch_profiler_steps, Path(args.output_data_dir) / "torch_profiler")
    training.stage.observer = Observers(watch.recorder, watch.profiler, watch.trace)
    return watch


# --------------------------------------------------------------------------- checkpoints and the loop


def resume(args: argparse.Namespace, training: Training, watch: Watch, path: Path | None, log) -> Progress:
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
    if watch.recorder is not None and state.get("recording"):
        watch.recorder.load_state_dict(state["recording"])
    log(f"checkpoints: resuming at epoch {progress.start_epoch + 1} of {args.epochs} from {path}", flush=True)
    for entry in progress.history:
        log(objective_line(entry["loss"], entry["accuracy"]), flush=True)
    if state.get("stopped_early"):
        progress.start_epoch = args.epochs
    return progress


def save_checkpoint(
    args: argparse.Namespace, training: Training, watch: Watch, progress: Progress, epoch: int, path: Path
) -> None:
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
            "recording": watch.recorder.state_dict() if watch.recorder is not None else None,
        },
        path,
    )


def fit_epoch(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    watch: Watch,
    progress: Progress,
    epoch: int,
    log,
) -> bool:
    """Train and validate one epoch; keep it if it is the best so far. True: this epoch was the best."""
    started = time.perf_counter()
    torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout etc.: same after a restart
    set_loader_epoch(data.train, epoch)
    stage = training.stage
    stage.epoch = epoch
    train_loss, train_accuracy = train_one_epoch(
        stage,
        data.train,
        args.finetune,
        training.optimizer,
        training.scaler,
        data.on_failed("train"),
        watch.debugger,
        first_step=epoch * len(data.train),
    )
    valid_loss, valid_accuracy = evaluate(
        stage, data.valid, data.on_failed("valid"), watch.debugger, "EVAL", epoch * len(data.valid)
    )
    training.scheduler.step()
    progress.history.append({"loss": valid_loss, "accuracy": valid_accuracy})
    log(
        f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f} accuracy {train_accuracy:.4f}, "
        f"{time.perf_counter() - started:.1f}s",
        flush=True,
    )
    log(objective_line(valid_loss, valid_accuracy), flush=True)
    if valid_loss < progress.best["loss"] - args.min_delta:
        progress.best = {"loss": valid_loss, "accuracy": valid_accuracy, "epoch": epoch}
        progress.stale_epochs = 0
        progress.best_state = {k: v.detach().cpu().clone() for k, v in training.trained.state_dict().items()}
        return True
    progress.stale_epochs += 1
    return False


def fit(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    watch: Watch,
    progress: Progress,
    checkpoint_dir: Path | None,
    log,
) -> Progress:
    """Epochs from `progress.start_epoch` until the last one or early stopping; checkpoint each."""
    cluster = training.stage.cluster
    for epoch in range(progress.start_epoch, args.epochs):
        improved = fit_epoch(args, training, data, watch, progress, epoch, log)
        if improved and cluster.is_main and checkpoint_dir:
            with saving(checkpoint_dir / BEST_FILENAME):
                atomic_save(training.trained.state_dict(), checkpoint_dir / BEST_FILENAME)
        progress.stopped_early = args.patience > 0 and progress.stale_epochs >= args.patience
        if cluster.is_main and checkpoint_dir:
            with saving(checkpoint_dir / CHECKPOINT_FILENAME):
                save_checkpoint(args, training, watch, progress, epoch, checkpoint_dir / CHECKPOINT_FILENAME)
            log(f"checkpoints: epoch {epoch + 1} saved", flush=True)
        cluster.barrier()
        if progress.stopped_early:
            log(f"early stopping: no better validation loss for {progress.stale_epochs} epochs", flush=True)
            break
    return progress


def restore_best(training: Training, progress: Progress, checkpoint_dir: Path | None, log) -> dict:
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


# --------------------------------------------------------------------------- finishing


def judge(args: argparse.Namespace, watch: Watch, log) -> list[Verdict]:
    """Evaluate the rules on what was recorded; write the verdicts, the recording and the profile."""
    output = Path(args.output_data_dir)
    output.mkdir(parents=True, exist_ok=True)
    verdicts: list[Verdict] = []
    if watch.recorder is not None:
        recording = watch.recorder.recording()
        (output / "recording.json").write_text(json.dumps(recording))
        verdicts += evaluate_debugger_rules(watch.rules, recording)
    if watch.profiler is not None:
        profile = watch.profiler.data()
        (output / "profiler.json").write_text(json.dumps(profile))
        profiler_verdicts = evaluate_profiler_rules(watch.rules, profile)
        write_report(output / "profiler-report.html", profile, profiler_verdicts)
        verdicts += profiler_verdicts
    if not watch.rules:
        return verdicts
    for verdict in verdicts:
        log(verdict.log_line(), flush=True)
    (output / "rule_verdicts.json").write_text(
        json.dumps({"version": 1, "rules": [v.to_json() for v in verdicts]}, indent=2)
    )
    return verdicts


def quantize_for_cpu(
    args: argparse.Namespace, cluster: Cluster, training: Training, data: Data, log: Callable[..., None]
) -> Quantized:
    """The restored best model as int8 too, calibrated on training images and measured on validation.

    Both through the eval preset, in fresh loaders of image files (the training loaders may hold
    augmented images or cached features); the whole validation split, on this process alone.
    """
    if args.quantize == "float":
        log("int8: quantize=float; serving the float model, no int8 copy made", flush=True)
        return Quantized(None, {"available": False, "reason": "quantize=float when it was trained"})
    preset = EvalPreset(args.image_size)
    workers = auto_num_workers(cluster.local_world_size) if args.num_workers < 0 else args.num_workers
    train = data.splits["train"].samples
    # Evenly spread over the class-sorted list, so every class is in the calibration set when it can be.
    stride = max(1, len(train) // CALIBRATION_IMAGES)
    calibration_files = SplitFiles("train", train[::stride][:CALIBRATION_IMAGES])

    def batches(files: SplitFiles) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def generate() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            loader = make_loader(
                ImageFiles(files, preset.uint8),
                args.test_batch_size,
                shuffle=False,
                seed=args.seed,
                num_workers=workers,
                distributed=False,
                pin_memory=False,
            )
            for batch in loader:
                if len(batch.labels):
                    images = preset.scaling(batch.inputs)
                    batch.release()
                    yield images, batch.labels

        return generate

    training.model.eval()
    calibration, validation = batches(calibration_files), batches(data.splits["valid"])
    return quantize_and_compare(training.model, args.backbone, calibration, validation, cluster.device, log)


def save(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    result: dict,
    history: list[dict],
    quantized: Quantized | None = None,
) -> None:
    """The artifact (float weights, the int8 copy if any, metadata.json) and history.json."""
    metadata = ModelMetadata(
        backbone=args.backbone,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        image_size=args.image_size,  # resize_size follows from it, as for the eval preset
        finetune=args.finetune,
        training={**result, "hyperparameters": run_signature(args)},
        quantization={"setting": args.quantize, **quantized.figures} if quantized is not None else {},
    )
    save_artifact(args.model_dir, training.model, metadata, None if quantized is None else quantized.module)
    if quantized is not None:  # runs on the main process only: print is its log
        precision, reason = choose_precision(metadata, "cpu")
        print(f"int8: a CPU endpoint will serve {precision}: {reason}; GPU endpoints serve float", flush=True)
    Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    history_path = Path(args.output_data_dir) / "history.json"
    atomic_write_text(json.dumps({"epochs": history, **result}, indent=2), history_path)


def main(args: argparse.Namespace, *, use_debugger: bool = False, evaluate_test: bool = False) -> dict:
    """Train, keep the best epoch by validation loss, save it; optionally evaluate it on test/.

    `use_debugger` (train_model.py): SageMaker's debugger hook, and the rules and profiler of
    `--rules` judged in the job.
    """
    check_args(args)
    cluster = init_cluster()
    seed_everything(args.seed)
    log = print if cluster.is_main else (lambda *a, **k: None)
    started = time.perf_counter()

    splits = discover(args, log)
    model = build_network(args, cluster, len(splits[0]))
    data = load_data(args, cluster, model, splits, evaluate_test, log)
    training = build_training(args, cluster, model, data)
    watch = build_watch(args, cluster, training, data, use_debugger)
    checkpoint_dir = usable_checkpoint_dir(args.checkpoint_dir)
    checkpoint = checkpoint_dir / CHECKPOINT_FILENAME if checkpoint_dir else None
    progress = fit(
        args, training, data, watch, resume(args, training, watch, checkpoint, log), checkpoint_dir, log
    )
    result = restore_best(training, progress, checkpoint_dir, log)
    if data.test is not None:
        test_loss, test_accuracy = evaluate(
            training.stage, data.test, data.on_failed("test"), watch.debugger, "PREDICT"
        )
        log(objective_line(test_loss, test_accuracy, split="test"), flush=True)
        result.update(test_loss=test_loss, test_accuracy=test_accuracy)
    training.stage.observer.close()
    if watch.debugger.active:
        watch.debugger.check_saved_steps(watch.debugger.actual_steps(), "saved")
    watch.debugger.close()
    if cluster.is_main:
        judge(args, watch, log)

    skipped = int(cluster.all_sum([float(data.failed.count)])[0])
    if data.failed.count:
        print(data.failed.report(), flush=True)
    log(f"skipped images in total: {skipped}", flush=True)
    result["skipped_images"] = skipped
    if cluster.is_main:
        # The deployed model (train_model.py's) gets an int8 copy; a tuning job's is ranked, not served.
        quantized = quantize_for_cpu(args, cluster, training, data, log) if evaluate_test else None
        with saving(Path(args.model_dir)):
            save(args, training, data, result, progress.history, quantized)
        took = time.perf_counter() - started
        log(f"model saved to {args.model_dir}; the whole run took {took:.1f}s", flush=True)
    cluster.barrier()
    if cluster.distributed:
        dist.destroy_process_group()
    return result
