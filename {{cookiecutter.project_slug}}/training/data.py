"""The dataset on disk and the loaders that feed the network.

Layout of the `training` channel (dogImages): `train/`, `valid/`, `test/`, each
holding one folder per class (`001.Affenpinscher`, ...). Class index = position
in the sorted folder names, the same in every split.

Speed: workers decode only what the crop needs (`TrainPreset`: the random box
first, then a reduced-scale or torchvision decode) and ship small uint8 images;
the float conversion and normalisation run on whole batches on the device
(`image_preparer`). Each worker stacks its batches into shared memory it
reuses once the main process has converted them (`BatchMemory`), so no batch
costs a fresh segment's page faults. A pre-resized copy of the dataset (same
layout, smaller files) is read the same way and decodes faster still.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pixel_cache import KeepingPreset, PixelCache
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from classifier.choices import IMAGE_SUFFIXES
from classifier.presets import is_interleaved

SPLITS = ("train", "valid", "test")
# Batches each loader worker prepares ahead of the one being trained on.
PREFETCH_BATCHES = 4
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

    With a `cache` (`pixel_cache.build_cache`, for `preset`), the first epoch keeps each image's
    `preset.to_keep` and later ones start from it (`preset.from_kept`) instead of decoding the file:
    the same tensors, without the decoding. `transform` is then `preset.uint8`.
    """

    def __init__(
        self,
        files: SplitFiles,
        transform: Callable[[Image.Image], torch.Tensor],
        cache: PixelCache | None = None,
        preset: KeepingPreset | None = None,
    ) -> None:
        if cache is not None and preset is None:
            raise ValueError("a pixel cache needs the preset whose pixels it keeps")
        self.files = files
        self.transform = transform
        self.cache = cache
        self.preset = preset

    def __len__(self) -> int:
        return len(self.files.samples)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor | None, int, int]:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(0, 0, item))
        path, label = self.files.samples[index]
        kept = self.cache.get(index) if self.cache is not None else None
        try:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only (what fork_rng saves): torch.manual_seed also seeds every
                # accelerator backend, about 0.15 ms a call, a tenth of this item's work.
                torch.default_generator.manual_seed(seed)
                if kept is not None:
                    return self.preset.from_kept(kept), label, index
                with Image.open(path) as image:
                    if self.cache is None or not self.cache.holds(index):
                        return self.transform(image), label, index
                    pixels = self.preset.to_keep(image)
                self.cache.put(index, pixels)
                return self.preset.from_kept(pixels), label, index
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
    # (BatchMemory.token, slot) while `inputs` lies in a worker's reused memory.
    slot: tuple[int, int] | None = None

    def pin_memory(self) -> Batch:
        pinned = Batch(self.inputs.pin_memory(), self.labels.pin_memory(), self.failed)
        self.release()  # copied out: the worker may fill that memory again
        return pinned

    def release(self) -> None:
        """Hand `inputs`' memory back to the worker that filled it; `inputs` must not be read after this.

        Call it once the pixels are copied or converted (`loaders.image_preparer` does). A batch never
        released only costs its worker a fresh buffer for a later batch, as without reuse.
        """
        if self.slot is not None:
            token, slot = self.slot
            memory = _BATCH_MEMORIES.get(token)
            if memory is not None:  # else its loader is gone, and the memory with it
                memory.release(slot, self.inputs)
            self.slot = None

    def __reduce__(self):
        # From a worker: the labels and failures as plain lists, inside the message. As tensors they
        # would each take a shared-memory segment of their own, a few system calls per batch.
        return _rebuild_batch, (self.inputs, self.labels.tolist(), self.failed, self.slot)


def _rebuild_batch(
    inputs: torch.Tensor, labels: list[int], failed: list[int], slot: tuple[int, int] | None
) -> Batch:
    return Batch(inputs, torch.tensor(labels, dtype=torch.long), failed, slot)


def _decoded(items: Sequence[tuple[torch.Tensor | None, int, int]]) -> tuple[list, torch.Tensor, list[int]]:
    good = [(tensor, label) for tensor, label, _ in items if tensor is not None]
    failed = [index for tensor, _, index in items if tensor is None]
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return [tensor for tensor, _ in good], labels, failed


def _stack_layout(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """What to stack, and whether it is pixel-interleaved (then as (H, W, C), for a channels-last batch)."""
    if tensors[0].dim() == 3 and all(is_interleaved(t) for t in tensors):
        return [t.movedim(0, -1) for t in tensors], True
    return tensors, False


def collate_skipping_failures(items: Sequence[tuple[torch.Tensor | None, int, int]]) -> Batch:
    """The decoded items as one batch; the indices of those that failed beside it.

    `default_collate` stacks straight into shared memory in a worker (no copy when the batch is
    sent to the main process). Images stored pixel-interleaved (`TrainPreset`'s) are stacked as
    such, into a channels-last batch: reordering them to planar would cost as much as their resize.
    """
    tensors, labels, failed = _decoded(items)
    if not tensors:
        return Batch(torch.empty(0), labels, failed)
    stacked, interleaved = _stack_layout(tensors)
    pixels = default_collate(stacked)
    return Batch(pixels.movedim(-1, 1) if interleaved else pixels, labels, failed)


# The main process's BatchMemory of each live loader, by token: where a released batch is handed back.
_BATCH_MEMORIES: weakref.WeakValueDictionary[int, BatchMemory] = weakref.WeakValueDictionary()
_TOKENS = itertools.count()


class BatchMemory:
    """`collate_skipping_failures` into shared memory that each worker reuses once the batch is released.

    Without reuse every batch goes to a fresh shared-memory segment, which the worker faults in page
    by page as it writes and the main process again as it reads: on 2 cores that alone held a loader
    of 224 px crops to 4,000-6,000 images/s, against 13,000 with reused memory. Each worker keeps
    `slots` buffers. The main process marks a slot free (`Batch.release`) once it has converted the
    pixels, and keeps its own mapping of that buffer, so receiving it again maps nothing new. A worker
    that finds no slot free stacks into fresh memory, as `default_collate` does: a consumer that never
    releases gets the usual behaviour, and no batch is overwritten while it is held.
    """

    def __init__(self, num_workers: int, slots: int) -> None:
        self.slots = slots
        self.token = next(_TOKENS)
        # One byte per slot, shared with the workers before they start: 1 from filled to released.
        self.leases = torch.zeros(num_workers * slots, dtype=torch.uint8).share_memory_()
        self._buffers: dict[int, torch.Tensor] = {}  # a worker's: its filled buffers, by slot
        self._mapped: dict[int, torch.UntypedStorage] = {}  # the main process's: released ones, by slot
        _BATCH_MEMORIES[self.token] = self

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": {}, "_mapped": {}}  # to a worker, which allocates its own

    def release(self, slot: int, inputs: torch.Tensor) -> None:
        self._mapped[slot] = inputs.untyped_storage()
        self.leases[slot] = 0

    def __call__(self, items: Sequence[tuple[torch.Tensor | None, int, int]]) -> Batch:
        worker = get_worker_info()
        if worker is None:  # the main process: nothing to send, nothing to reuse
            return collate_skipping_failures(items)
        tensors, labels, failed = _decoded(items)
        if not tensors:
            return Batch(torch.empty(0), labels, failed)
        stacked, interleaved = _stack_layout(tensors)
        shape, dtype = (len(stacked), *stacked[0].shape), stacked[0].dtype
        slot = self._free_slot(worker.id)
        if slot is None:
            pixels, lease = default_collate(stacked), None
        else:
            buffer = self._buffers.get(slot)
            fits = buffer is not None and buffer.dtype == dtype and buffer.shape[1:] == shape[1:]
            if not fits or len(buffer) < shape[0]:
                buffer = self._buffers[slot] = torch.empty(shape, dtype=dtype).share_memory_()
            self.leases[slot] = 1
            pixels, lease = torch.stack(stacked, out=buffer[: shape[0]]), (self.token, slot)
        return Batch(pixels.movedim(-1, 1) if interleaved else pixels, labels, failed, lease)

    def _free_slot(self, worker: int) -> int | None:
        """The first of `worker`'s slots that the main process has released (or never received)."""
        for slot in range(worker * self.slots, (worker + 1) * self.slots):
            if not self.leases[slot]:
                return slot
        return None


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
    drop_last_single: bool = False,
) -> DataLoader:
    """Batches of `dataset` in a seeded order; `drop_last_single` leaves out a last batch of one item
    unless it is the only batch (each process's share is the same length, so every process drops it
    or none does)."""
    sampler = SeededSampler(len(dataset), seed, shuffle, distributed)
    sampler.set_epoch(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last_single and len(sampler) > batch_size and len(sampler) % batch_size == 1,
        num_workers=num_workers,
        # A worker has at most PREFETCH_BATCHES batches queued; one more is being read, one pinned.
        collate_fn=(
            BatchMemory(num_workers, PREFETCH_BATCHES + 2) if num_workers else collate_skipping_failures
        ),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
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
