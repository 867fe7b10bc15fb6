"""Each image of a split decoded once per job: later epochs read its pixels from memory.

Decoding is most of a loader worker's time (a 341x256 JPEG: about 0.45 of 0.65 ms), and every epoch
decodes the same files to the same pixels; only the random crop after it changes. So the first
epoch keeps what the preset can keep (`kept_bytes`, `to_keep`: a training image's whole upright
pixels, a validation image's final crop), and later epochs start from that (`from_kept`), drawing
the same random numbers: the batches are identical, bit for bit.

The pixels live in one block of shared memory, reserved whole before the first write and bounded
by the job's pixel_cache_gb and by /dev/shm's free space. Each image has a fixed place in it, from
the size in its file's header, and a shared byte saying whether it is filled, so the loader's
worker processes fill and read it without locks. The memory is freed when the last process that
maps it exits, however it exits: a killed job leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

# Where Linux keeps shared memory (a tmpfs): its free space bounds the cache.
SHARED_MEMORY = "/dev/shm"
# Share of that free space the cache leaves free: the loaders' batches travel through it too.
KEEP_FREE_SHARE = 0.5
# Largest image kept: a bigger one is decoded every epoch (4096x4096 RGB = 48 MiB).
MAX_IMAGE_BYTES = 48 * 2**20
DECODES = "every epoch decodes them"


class KeepingPreset(Protocol):
    def kept_bytes(self, image: Image.Image) -> int | None: ...
    def to_keep(self, image: Image.Image) -> torch.Tensor: ...
    def from_kept(self, pixels: torch.Tensor) -> torch.Tensor: ...


class PixelCache:
    """Kept uint8 (C, H, W) images 0..n-1 in shared memory: `get` (any process) views one, `put` fills it.

    `sizes[i]` bytes are reserved for image i (0: it is never kept).
    """

    def __init__(self, sizes: list[int]) -> None:
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.nbytes = self.offsets[-1]
        # Shared memory as default_collate allocates it: reserved whole now (a tmpfs that filled up
        # later would kill the writing worker with SIGBUS; this raises instead), unlinked at once and
        # handed to workers by file descriptor, so it is freed when the last process using it exits,
        # however it exits. Allocated shared, not copied into shared memory: no second copy of it.
        storage = torch.UntypedStorage._new_shared(max(self.nbytes, 1))
        self.store = torch.empty(0, dtype=torch.uint8).set_(storage)
        # (channels, height, width) of each image put, and whether it is filled (1) or not (0).
        self.shapes = torch.zeros((len(sizes), 3), dtype=torch.int32).share_memory_()
        self.filled = torch.zeros(len(sizes), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.filled)

    def holds(self, index: int) -> bool:
        """Whether image `index` has a place in the cache."""
        return self.offsets[index + 1] > self.offsets[index]

    def get(self, index: int) -> torch.Tensor | None:
        """Image `index`'s kept pixels as a (C, H, W) view of the cache, or None before they are put."""
        if not self.filled[index]:
            return None
        channels, height, width = self.shapes[index].tolist()
        return self._place(index).view(height, width, channels).permute(2, 0, 1)

    def put(self, index: int, pixels: torch.Tensor) -> None:
        """Keep uint8 (C, H, W) `pixels` as image `index`'s if they fill the place it was given."""
        place = self._place(index)
        if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.numel() != len(place) or not len(place):
            return
        channels, height, width = pixels.shape
        place.view(height, width, channels).copy_(pixels.permute(1, 2, 0))
        self.shapes[index] = torch.tensor([channels, height, width], dtype=torch.int32)
        self.filled[index] = 1  # last: a reader that sees 1 finds the pixels and their shape written

    def clear(self) -> None:
        """Forget every image (each is decoded and put again), in every process using this cache."""
        self.filled.zero_()

    def _place(self, index: int) -> torch.Tensor:
        return self.store[self.offsets[index] : self.offsets[index + 1]]


def kept_sizes(paths: list[Path], preset: KeepingPreset, errors: tuple[type[Exception], ...]) -> list[int]:
    """Bytes to reserve for each file, from its header; 0 for one not to keep.

    0 for a file whose header cannot be read (the loader reports it when it fails to decode), one
    the preset cannot keep exactly, and one over MAX_IMAGE_BYTES.
    """
    sizes: list[int] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                size = preset.kept_bytes(image) or 0
        except errors:
            size = 0
        sizes.append(size if size <= MAX_IMAGE_BYTES else 0)
    return sizes


def within(sizes: list[int], max_bytes: int) -> list[int]:
    """`sizes`, each in order if it still fits within `max_bytes` beside those before it; else 0."""
    placed, kept = 0, []
    for size in sizes:
        fits = placed + size <= max_bytes
        placed += size if fits else 0
        kept.append(size if fits else 0)
    return kept


def room() -> int | None:
    """Bytes the cache may take in shared memory: /dev/shm's free space less KEEP_FREE_SHARE of it.

    None where there is no /dev/shm to measure (not Linux): the allocation itself then says.
    """
    if not os.path.isdir(SHARED_MEMORY):
        return None
    return int(shutil.disk_usage(SHARED_MEMORY).free * (1 - KEEP_FREE_SHARE))


def build_cache(
    paths: list[Path],
    preset: KeepingPreset,
    max_bytes: int,
    errors: tuple[type[Exception], ...],
    log: Callable[[str], None],
    name: str,
) -> PixelCache | None:
    """A cache for as many of these files as fit in `max_bytes` and in shared memory, or None (logged why)."""
    sizes = kept_sizes(paths, preset, errors)
    if not any(sizes):
        log(
            f"pixel cache, {name}: none of {len(paths)} images can be kept (large JPEGs are decoded at "
            "reduced scale instead; `data prepare` writes smaller ones); " + DECODES
        )
        return None
    sizes = within(sizes, max_bytes)
    if not any(sizes):
        log(
            f"pixel cache, {name}: {max(max_bytes, 0) / 1e6:.1f} MB of pixel_cache_gb left, too little "
            "for one image; " + DECODES
        )
        return None
    wanted, space = sum(sizes), room()
    sizes = within(sizes, space) if space is not None else sizes
    if not any(sizes):
        log(f"pixel cache, {name}: no room for {wanted / 1e6:.1f} MB in shared memory; " + DECODES)
        return None
    nbytes, kept = sum(sizes), sum(size > 0 for size in sizes)
    try:
        cache = PixelCache(sizes)
    except RuntimeError as error:  # torch's message: "unable to allocate shared memory(shm) ..."
        log(f"pixel cache, {name}: could not reserve {nbytes / 1e6:.1f} MB ({error}); " + DECODES)
        return None
    log(
        f"pixel cache, {name}: {kept} of {len(paths)} images ({nbytes / 1e6:.1f} MB of shared memory); "
        "decoded in the first epoch, read back after"
    )
    return cache
