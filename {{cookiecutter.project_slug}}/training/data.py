"""The dataset on disk and the loaders that feed the network.

Layout of the `training` channel (dogImages): `train/`, `valid/`, `test/`, each
holding one folder per class (`001.Affenpinscher`, ...). Class index = position
in the sorted folder names, the same in every split.

Speed: workers decode only what the crop needs (`TrainPreset`: the random box
first, then a reduced-scale or torchvision decode) and ship small uint8 images;
the float conversion and normalisation run on whole batches on the device
(`image_preparer`). A pre-resized copy of the dataset (same layout, smaller
files) is read the same way and decodes faster still.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from classifier.presets import is_interleaved
from classifier.schema import IMAGE_SUFFIXES

SPLITS = ("train", "valid", "test")
# What a broken file raises while PIL opens or decodes it (truncated JPEGs raise OSError).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class DatasetLayoutError(ValueError):
    """The data channel does not have the layout training needs."""


@dataclass(frozen=True)
class SplitFiles:
    """The image files of one split, with their class indices."""

    name: str
    samples: list[tuple[Path, int]]

    def class_counts(self, num_classes: int) -> list[int]:
        counts = [0] * num_classes
        for _, label in self.samples:
            counts[label] += 1
        return counts


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover_splits(root: Path, num_classes: int | None = None) -> tuple[list[str], dict[str, SplitFiles]]:
    """Check the layout and list every split's images; fails before any training starts.

    Returns the class folder names in index order and the files of each split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"data directory {root} does not exist")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise DatasetLayoutError(
            f"{root} has no {', '.join(s + '/' for s in missing)} folder; expected {', '.join(SPLITS)}"
        )
    # Each class folder is listed once: its images say whether the class is present, and are the samples.
    images_per_split: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        listed = {folder.name: _image_files(folder) for folder in (root / split).iterdir() if folder.is_dir()}
        images_per_split[split] = {name: images for name, images in listed.items() if images}
    class_names = sorted(set().union(*images_per_split.values()))
    for split, present in images_per_split.items():
        absent = sorted(set(class_names) - set(present))
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise DatasetLayoutError(f"split {split}/ has no images of class {shown}")
    if num_classes is not None and len(class_names) != num_classes:
        raise DatasetLayoutError(
            f"num_classes is {num_classes} but {root} has {len(class_names)} class folders "
            f"({class_names[0]} ... {class_names[-1]})"
        )
    if len(class_names) < 2:
        raise DatasetLayoutError(f"{root} has {len(class_names)} class folder(s); need at least 2")
    splits = {
        split: SplitFiles(
            split,
            [
                (path, index)
                for index, name in enumerate(class_names)
                for path in images_per_split[split][name]
            ],
        )
        for split in SPLITS
    }
    return class_names, splits


class ImageFiles(Dataset):
    """Decoded, transformed images of one split; a file that fails to decode yields `None`.

    Items are requested as `(index, seed)` by `SeededSampler`: the random
    transform is seeded per item, so an epoch gives the same tensors whether it
    runs in one go or after a restart, with any number of workers.
    """

    def __init__(self, files: SplitFiles, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files.samples)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor | None, int, int]:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(0, 0, item))
        path, label = self.files.samples[index]
        try:
            with Image.open(path) as image, torch.random.fork_rng(devices=[]):
                # The CPU generator only (what fork_rng saves): torch.manual_seed also seeds every
                # accelerator backend, about 0.15 ms a call, a tenth of this item's work.
                torch.default_generator.manual_seed(seed)
                return self.transform(image), label, index
        except DECODE_ERRORS:
            return None, label, index


def index_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63)


class SeededSampler(Sampler):
    """Wraps a sampler to yield `(index, item_seed)`; the order and the seeds depend only on (seed, epoch)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool, distributed: bool) -> None:
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator()
        indices = range(num_samples)
        if distributed:
            self.base: Sampler = DistributedSampler(indices, shuffle=shuffle, seed=seed)
        elif shuffle:
            self.base = RandomSampler(indices, generator=self.generator)
        else:
            self.base = SequentialSampler(indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(index_seed(self.seed, epoch, 0))
        if isinstance(self.base, DistributedSampler):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.base:
            yield index, index_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.base)


@dataclass
class Batch:
    inputs: torch.Tensor
    labels: torch.Tensor
    # Dataset indices of files that failed to decode (left out of `inputs`).
    failed: list[int]

    def pin_memory(self) -> Batch:
        return Batch(self.inputs.pin_memory(), self.labels.pin_memory(), self.failed)


def collate_skipping_failures(items: Sequence[tuple[torch.Tensor | None, int, int]]) -> Batch | None:
    """The decoded items as one batch; the indices of those that failed beside it.

    `default_collate` stacks straight into shared memory in a worker (no copy when the batch is
    sent to the main process). Images stored pixel-interleaved (`TrainPreset`'s) are stacked as
    such, into a channels-last batch: reordering them to planar would cost as much as their resize.
    """
    good = [(tensor, label) for tensor, label, _ in items if tensor is not None]
    failed = [index for tensor, _, index in items if tensor is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), failed)
    tensors = [tensor for tensor, _ in good]
    labels = torch.tensor([label for _, label in good])
    if tensors[0].dim() == 3 and all(is_interleaved(t) for t in tensors):
        pixels = default_collate([t.movedim(0, -1) for t in tensors])  # (N, H, W, C), contiguous
        return Batch(pixels.movedim(-1, 1), labels, failed)
    return Batch(default_collate(tensors), labels, failed)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_num_workers(processes_per_host: int = 1) -> int:
    """One loader worker per CPU this process may use (decoding is the bottleneck), at most 16."""
    return max(1, min(16, available_cpus() // max(1, processes_per_host)))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int,
    distributed: bool,
    pin_memory: bool,
) -> DataLoader:
    sampler = SeededSampler(len(dataset), seed, shuffle, distributed)
    sampler.set_epoch(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping_failures,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Order and augmentation seeds of `epoch`, for a loader from `make_loader` (others: unchanged)."""
    if isinstance(loader.sampler, SeededSampler):
        loader.sampler.set_epoch(epoch)


class FailedFiles:
    """Counts images that could not be decoded, to report them once at the end."""

    def __init__(self) -> None:
        self.paths: dict[str, set[Path]] = {}

    def add(self, split: SplitFiles, indices: list[int]) -> None:
        if indices:
            self.paths.setdefault(split.name, set()).update(split.samples[i][0] for i in indices)

    @property
    def count(self) -> int:
        return sum(len(paths) for paths in self.paths.values())

    def report(self, limit: int = 20) -> str:
        if not self.count:
            return "skipped images: 0"
        lines = [f"skipped images: {self.count} could not be decoded and were left out"]
        for split, paths in sorted(self.paths.items()):
            shown = sorted(paths)[:limit]
            lines += [f"  {split}: {p}" for p in shown]
            if len(paths) > limit:
                lines.append(f"  {split}: ... and {len(paths) - limit} more")
        return "\n".join(lines)
