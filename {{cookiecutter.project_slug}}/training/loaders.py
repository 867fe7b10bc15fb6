"""The data a training job reads: the splits, their loaders and the two caches that make epochs fast.

Pixel cache (pixel_cache.py): decoded, resized training and validation images kept in memory from the
first epoch on, so later epochs skip decoding. Feature cache (feature_cache.py, finetune=head): the
frozen backbone runs once per image, and the epochs train the head alone on its features.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cluster import Cluster
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
)
from feature_cache import extract_features
from pixel_cache import KeepingPreset, PixelCache, build_cache
from torch import nn

from classifier.backbones import contains_batch_norm, head
from classifier.presets import EvalPreset, TrainPreset


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
