"""The training loop hpo.py and train_model.py share: one parser, one loop.

Written against SageMaker's training contract: every hyperparameter arrives as
`--name value` (booleans as "True"/"False"), paths default to the SM_*
variables, checkpoints go to /opt/ml/checkpoints, and the model is saved to
SM_MODEL_DIR as a state_dict plus metadata.json. Run by hand, every path is a flag.

Imports only what the PyTorch training image has plus this source directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from data import (
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
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier.artifact import ModelMetadata, atomic_save, save_artifact
from classifier.backbones import FINETUNE_MODES, build_model, head, trainable_parameters
from classifier.presets import EvalPreset, TrainPreset

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
CHECKPOINT_FILENAME = "checkpoint.pth"
BEST_FILENAME = "best.pth"
# Arguments that do not change the result: a checkpoint written under other values still resumes.
NOT_RESULT_AFFECTING = {
    "model_dir",
    "data_dir",
    "output_data_dir",
    "checkpoint_dir",
    "num_workers",
    "num_gpus",
    "hosts",
    "current_host",
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
    hp.add_argument("--epochs", type=int, default=5, help="passes over the training images")
    hp.add_argument("--batch_size", type=int, default=40, help="training batch size (per process)")
    hp.add_argument("--test_batch_size", type=int, default=100, help="validation and test batch size")
    hp.add_argument("--lr", type=float, default=0.005, help="peak learning rate")
    hp.add_argument("--backbone", default="resnet18", help="torchvision model name, e.g. resnet18")
    hp.add_argument(
        "--num_classes", type=int, default=None, help="classes expected in the data (default: as found)"
    )
    hp.add_argument("--image_size", type=int, default=224, help="side of the square the network sees")
    hp.add_argument(
        "--finetune", choices=FINETUNE_MODES, default="head", help="head: new layer only; full: all"
    )
    hp.add_argument("--pretrained", type=str2bool, default=True, help="start from ImageNet weights")
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
    hp.add_argument("--augment", type=str2bool, default=True, help="random crop and flip of training images")
    hp.add_argument(
        "--feature_cache",
        type=str2bool,
        default=False,
        help="head mode: compute backbone features once and train the head on them (implies augment=false)",
    )
    hp.add_argument(
        "--class_weights", type=str2bool, default=False, help="weight the loss by inverse class frequency"
    )
    hp.add_argument("--amp", type=str2bool, default=True, help="mixed precision on GPU")
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
    for name in ("epochs", "batch_size", "test_batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"{name} must be at least 1, got {getattr(args, name)}")


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


def image_preparer(device: torch.device, scaling: nn.Module, channels_last: bool):
    """uint8 batches from the workers -> float, normalised, on the device (the float work runs there)."""

    def prepare(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.inputs.to(device, non_blocking=True)
        images = scaling(images)
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


def run_epoch(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    step: Callable[[torch.Tensor], None] | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of `loader`; `step` (training) gets each loss.

    The caller sets the modes first: the debugger's (its steps are counted per mode) and the module's.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        on_failed(batch.failed)
        if not len(batch.labels):
            continue
        inputs, labels = stage.prepare(batch)
        with torch.autocast(stage.cluster.device.type, dtype=torch.float16, enabled=stage.amp):
            logits = stage.module(inputs)
            loss = stage.criterion(logits, labels)
        if step is not None:
            step(loss)
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
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
) -> tuple[float, float]:
    """One optimiser step per batch; returns the epoch's mean training loss and accuracy."""

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    debugger.set_mode("TRAIN")
    set_train_mode(stage.module, finetune)
    return run_epoch(stage, loader, on_failed, step)


@torch.no_grad()
def evaluate(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    debugger: DebuggerHook,
) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of `loader`."""
    debugger.set_mode("EVAL")
    stage.module.eval()
    return run_epoch(stage, loader, on_failed)


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


# --------------------------------------------------------------------------- the run


def main(args: argparse.Namespace, *, use_debugger: bool = False, evaluate_test: bool = False) -> dict:
    """Train, keep the best epoch by validation loss, save it; optionally evaluate it on test/."""
    check_args(args)
    cluster = init_cluster()
    seed_everything(args.seed)
    log = print if cluster.is_main else (lambda *a, **k: None)
    started = time.perf_counter()

    try:
        class_names, splits = discover_splits(Path(args.data_dir), args.num_classes)
    except DatasetLayoutError as error:
        raise SystemExit(f"data: {error}") from None
    num_classes = len(class_names)
    log(
        f"data: {num_classes} classes; "
        + ", ".join(f"{name} {len(files.samples)} images" for name, files in splits.items()),
        flush=True,
    )

    on_gpu = cluster.device.type == "cuda"
    amp = args.amp and on_gpu
    model = build_model(args.backbone, num_classes, pretrained=args.pretrained, finetune=args.finetune)
    # Moved once. On a GPU channels-last, the layout `image_preparer` gives the batches there.
    model = model.to(cluster.device, memory_format=torch.channels_last if on_gpu else torch.preserve_format)
    train_preset = TrainPreset(args.image_size)
    eval_preset = EvalPreset(args.image_size)
    augment = args.augment and not args.feature_cache
    num_workers = auto_num_workers(cluster.local_world_size) if args.num_workers < 0 else args.num_workers

    def loader(split: str, shuffle: bool, batch_size: int, transform) -> object:
        return make_loader(
            ImageFiles(splits[split], transform),
            batch_size,
            shuffle=shuffle,
            seed=args.seed,
            num_workers=num_workers,
            distributed=cluster.distributed,
            pin_memory=on_gpu,
        )

    failed = FailedFiles()

    def note_failed(split: str) -> Callable[[list[int]], None]:
        return lambda indices: failed.add(splits[split], indices)

    prepare_images = image_preparer(cluster.device, eval_preset.scaling, channels_last=on_gpu)
    train_transform = train_preset.uint8 if augment else eval_preset.uint8
    weights = class_weight_tensor(splits["train"], num_classes) if args.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(cluster.device) if weights is not None else None)

    if args.feature_cache:
        # The frozen backbone runs once per image; the loop then trains the head alone.
        t0 = time.perf_counter()
        features = {
            split: extract_features(
                model,
                head(model),
                loader(split, False, args.test_batch_size, eval_preset.uint8),
                prepare_images,
                note_failed(split),
            )
            for split in (("train", "valid", "test") if evaluate_test else ("train", "valid"))
        }
        log(
            f"feature cache: {sum(map(len, features.values()))} images, {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        trained: nn.Module = head(model)

        def feature_loader(split: str, shuffle: bool, batch_size: int):
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

        prepare = feature_preparer(cluster.device)
        train_loader = feature_loader("train", True, args.batch_size)
        valid_loader = feature_loader("valid", False, args.test_batch_size)
        test_loader = feature_loader("test", False, args.test_batch_size) if evaluate_test else None
    else:
        trained = model
        prepare = prepare_images
        train_loader = loader("train", True, args.batch_size, train_transform)
        valid_loader = loader("valid", False, args.test_batch_size, eval_preset.uint8)
        test_loader = (
            loader("test", False, args.test_batch_size, eval_preset.uint8) if evaluate_test else None
        )

    module = (
        DistributedDataParallel(trained, device_ids=[cluster.local_rank] if on_gpu else None)
        if cluster.distributed
        else trained
    )
    stage = Stage(module, prepare, criterion, amp, cluster)
    optimizer = make_optimizer(args, trainable_parameters(trained))
    scheduler = make_scheduler(args, optimizer)
    scaler = torch.amp.GradScaler(cluster.device.type, enabled=amp)

    debugger = DebuggerHook.from_sagemaker_config(use_debugger and cluster.is_main)
    debugger.register(trained, criterion)
    planned = {
        "TRAIN": len(train_loader) * args.epochs,
        "EVAL": len(valid_loader) * args.epochs + (len(test_loader) if test_loader is not None else 0),
    }
    debugger.check_saved_steps(planned, "planned")

    # ---- resume after a spot interruption
    checkpoint_dir = usable_checkpoint_dir(args.checkpoint_dir)
    signature = run_signature(args)
    start_epoch, best, stale_epochs, history = 0, {"loss": math.inf, "accuracy": 0.0, "epoch": -1}, 0, []
    checkpoint_path = checkpoint_dir / CHECKPOINT_FILENAME if checkpoint_dir else None
    if checkpoint_path and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state["signature"] != signature:
            log(
                f"checkpoints: {checkpoint_path} is from a run with other settings; starting over", flush=True
            )
        else:
            trained.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, best, stale_epochs = state["epoch"] + 1, state["best"], state["stale_epochs"]
            history = state["history"]
            log(
                f"checkpoints: resuming at epoch {start_epoch + 1} of {args.epochs} from {checkpoint_path}",
                flush=True,
            )
            for entry in history:
                log(objective_line(entry["loss"], entry["accuracy"]), flush=True)
            if state.get("stopped_early"):
                start_epoch = args.epochs

    # ---- the loop
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(start_epoch, args.epochs):
        epoch_started = time.perf_counter()
        torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout etc.: same after a restart
        set_loader_epoch(train_loader, epoch)
        train_loss, train_accuracy = train_one_epoch(
            stage, train_loader, args.finetune, optimizer, scaler, note_failed("train"), debugger
        )
        valid_loss, valid_accuracy = evaluate(stage, valid_loader, note_failed("valid"), debugger)
        scheduler.step()
        history.append({"loss": valid_loss, "accuracy": valid_accuracy})
        log(
            f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f} accuracy {train_accuracy:.4f}, "
            f"{time.perf_counter() - epoch_started:.1f}s",
            flush=True,
        )
        log(objective_line(valid_loss, valid_accuracy), flush=True)
        if valid_loss < best["loss"] - args.min_delta:
            best, stale_epochs = {"loss": valid_loss, "accuracy": valid_accuracy, "epoch": epoch}, 0
            if cluster.is_main and checkpoint_dir:
                atomic_save(trained.state_dict(), checkpoint_dir / BEST_FILENAME)
            best_state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
        else:
            stale_epochs += 1
        stop = args.patience > 0 and stale_epochs >= args.patience
        if cluster.is_main and checkpoint_dir:
            atomic_save(
                {
                    "model": trained.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "stale_epochs": stale_epochs,
                    "history": history,
                    "stopped_early": stop,
                    "signature": signature,
                },
                checkpoint_path,
            )
            log(f"checkpoints: epoch {epoch + 1} saved", flush=True)
        cluster.barrier()
        if stop:
            log(f"early stopping: no better validation loss for {stale_epochs} epochs", flush=True)
            break

    # ---- the best epoch is the model
    if best_state is not None:
        trained.load_state_dict(best_state)
    elif checkpoint_dir and (checkpoint_dir / BEST_FILENAME).is_file():
        trained.load_state_dict(
            torch.load(checkpoint_dir / BEST_FILENAME, map_location="cpu", weights_only=True)
        )
    # The tuner reads the last objective line: make it the saved (best) epoch's.
    log(f"best epoch: {best['epoch'] + 1}", flush=True)
    log(objective_line(best["loss"], best["accuracy"]), flush=True)

    result = {
        "best_epoch": best["epoch"] + 1,
        "validation_loss": best["loss"],
        "validation_accuracy": best["accuracy"],
        "epochs_run": len(history),
    }
    if test_loader is not None:
        test_loss, test_accuracy = evaluate(stage, test_loader, note_failed("test"), debugger)
        log(objective_line(test_loss, test_accuracy, split="test"), flush=True)
        result.update(test_loss=test_loss, test_accuracy=test_accuracy)
    if debugger.active:
        debugger.check_saved_steps(debugger.actual_steps(), "saved")
    debugger.close()

    skipped = int(cluster.all_sum([float(failed.count)])[0])
    if failed.count:
        print(failed.report(), flush=True)
    log(f"skipped images in total: {skipped}", flush=True)
    result["skipped_images"] = skipped

    if cluster.is_main:
        metadata = ModelMetadata(
            backbone=args.backbone,
            num_classes=num_classes,
            class_names=class_names,
            image_size=args.image_size,  # resize_size follows from it, as for `eval_preset`
            finetune=args.finetune,
            training={**result, "hyperparameters": run_signature(args)},
        )
        save_artifact(args.model_dir, model, metadata)
        Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_data_dir) / "history.json").write_text(
            json.dumps({"epochs": history, **result}, indent=2)
        )
        log(f"model saved to {args.model_dir} in {time.perf_counter() - started:.1f}s", flush=True)
    cluster.barrier()
    if cluster.distributed:
        dist.destroy_process_group()
    return result
