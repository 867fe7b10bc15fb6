"""The prepared dataset and the training loader give the network what serving would give it.

`data prepare` writes each image upright at the eval preset's resize size; the loader decodes it
with the same presets the endpoint uses. Correctness only: benchmarks/bench_training_data.py
measures the speed.
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import project_module
from PIL import Image

from classifier.choices import resize_size_for
from classifier.presets import EvalPreset, TrainPreset

data = project_module("workflow.dataset")
ProjectConfig = project_module("config").ProjectConfig


def quadrants(size: tuple[int, int]) -> Image.Image:
    """Four colours, one per quadrant: any turn or flip of the picture moves them."""
    width, height = size
    image = Image.new("RGB", size)
    for box, colour in (
        ((0, 0, width // 2, height // 2), (220, 30, 30)),
        ((width // 2, 0, width, height // 2), (30, 200, 40)),
        ((0, height // 2, width // 2, height), (30, 40, 210)),
        ((width // 2, height // 2, width, height), (230, 220, 40)),
    ):
        image.paste(colour, box)
    return image


def save_jpeg(image: Image.Image, path, orientation: int = 1) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())


def dataset(root, size: tuple[int, int], orientation: int = 1):
    for split in ("train", "valid", "test"):
        for name in ("001.A", "002.B"):
            folder = root / split / name
            folder.mkdir(parents=True)
            save_jpeg(quadrants(size), folder / "photo.jpg", orientation)
    return root


def test_by_default_prepare_writes_the_eval_presets_resize_size(project_config):
    assert data.prepare_options(project_config)["resize_to"] == resize_size_for(
        project_config.settings.model.image_size
    )
    assert resize_size_for(224) == 256 == EvalPreset(224).resize_size


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_prepared_image_is_upright_and_gives_the_eval_tensor_of_the_original(tmp_path, orientation):
    source = dataset(tmp_path / "source", (600, 400), orientation)
    manifest = data.prepare(source, tmp_path / "prepared", resize_to=64)
    original = source / "train" / "001.A" / "photo.jpg"
    written = tmp_path / "prepared" / "train" / "001.A" / "photo.jpg"
    with Image.open(written) as image:
        assert min(image.size) == 64
        assert image.getexif().get(0x0112, 1) == 1, "the orientation is in the pixels now"
        # Portrait after orientations 6 and 8 turn the 600x400 landscape.
        assert (image.height > image.width) == (orientation in (6, 8))
    preset = EvalPreset(56, 64)
    with Image.open(original) as before, Image.open(written) as after:
        difference = (preset.uint8(before).float() - preset.uint8(after).float()).abs()
    assert difference.mean() < 3, "a turned or flipped picture would differ by a quadrant's colour"
    assert manifest.resized_to == 64
    assert 0 < manifest.written_bytes < manifest.source_bytes


def test_prepare_copies_an_image_already_that_small_byte_for_byte(tmp_path):
    source = dataset(tmp_path / "source", (60, 50), orientation=6)
    manifest = data.prepare(source, tmp_path / "prepared", resize_to=64)
    original = (source / "valid" / "002.B" / "photo.jpg").read_bytes()
    assert (tmp_path / "prepared" / "valid" / "002.B" / "photo.jpg").read_bytes() == original
    assert manifest.written_bytes == manifest.source_bytes


def test_a_prepared_images_longer_side_is_rounded_as_torchvisions_resize_rounds_it():
    # 500x375 -> 341x256: the eval preset's Resize(256) of the written image is then the identity.
    assert data.resized_size((500, 375), 256) == (341, 256)
    assert data.resized_size((375, 500), 256) == (256, 341)
    resized = EvalPreset(224)._resize_crop.transforms[0](torch.zeros(3, 256, 341, dtype=torch.uint8))
    assert resized.shape == (3, 256, 341)


def test_the_training_loader_gives_servings_tensor_of_a_prepared_image(tmp_path, training):
    """Validation batches of the prepared copy: exactly the endpoint's preprocessing of the same file."""
    source = dataset(tmp_path / "source", (600, 400), orientation=6)
    data.prepare(source, tmp_path / "prepared", resize_to=64)
    training_data = training("data")
    _, splits = training_data.discover_splits(tmp_path / "prepared")
    preset = EvalPreset(56, 64)
    dataset_ = training_data.ImageFiles(splits["valid"], preset.uint8)
    loader = training_data.make_loader(
        dataset_, 2, shuffle=False, seed=0, num_workers=0, distributed=False, pin_memory=False
    )
    batch = next(iter(loader))
    for row, (path, _) in zip(preset.scaling(batch.inputs), splits["valid"].samples, strict=True):
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            torch.testing.assert_close(row, preset(image), rtol=0, atol=0)


def _epochs(training_data, files, num_workers: int, epochs: int, release: bool) -> list:
    """Each epoch's batches, as (inputs, labels, failed) in the main process, from a loader with workers."""
    preset = TrainPreset(32)
    loader = training_data.make_loader(
        training_data.ImageFiles(files, preset.uint8),
        2,
        shuffle=True,
        seed=3,
        num_workers=num_workers,
        distributed=False,
        pin_memory=False,
    )
    batches = []
    for epoch in range(epochs):
        training_data.set_loader_epoch(loader, epoch)
        for batch in loader:
            if release:
                batches.append((batch.inputs.clone(), batch.labels, batch.failed, batch.inputs.data_ptr()))
                batch.release()
            else:
                batches.append((batch.inputs, batch.labels, batch.failed, batch.inputs.data_ptr()))
    return batches, loader


def test_workers_reuse_released_batch_memory_and_give_the_batches_of_one_process(training, tiny_dataset):
    training_data = training("data")
    _, splits = training_data.discover_splits(tiny_dataset)
    expected, _ = _epochs(training_data, splits["train"], 0, 3, release=True)
    reused, loader = _epochs(training_data, splits["train"], 2, 3, release=True)
    assert len(reused) == len(expected) == 27  # 18 images, batches of 2, 3 epochs
    for (inputs, labels, failed, _), (want, want_labels, want_failed, _) in zip(
        reused, expected, strict=True
    ):
        assert inputs.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(inputs, want) and torch.equal(labels, want_labels) and failed == want_failed
    # Released memory comes back: far fewer buffers than batches, all free again at the end.
    buffers = {pointer for *_, pointer in reused}
    assert len(buffers) <= 2 * loader.collate_fn.slots < len(reused)
    assert not loader.collate_fn.leases.any()


def test_batches_held_without_release_are_never_overwritten_by_later_ones(training, tiny_dataset):
    training_data = training("data")
    _, splits = training_data.discover_splits(tiny_dataset)
    expected, _ = _epochs(training_data, splits["train"], 0, 3, release=True)
    held, loader = _epochs(training_data, splits["train"], 2, 3, release=False)
    for (inputs, labels, _, _), (want, want_labels, _, _) in zip(held, expected, strict=True):
        assert torch.equal(inputs, want) and torch.equal(labels, want_labels)
    assert len({pointer for *_, pointer in held}) == len(held)


def test_a_worker_reports_the_files_it_could_not_decode_beside_its_batch(training, tmp_path):
    root = dataset(tmp_path / "data", (64, 48))
    (root / "train" / "002.B" / "broken.jpg").write_bytes(b"not a jpeg")
    training_data = training("data")
    _, splits = training_data.discover_splits(root)
    batches, _ = _epochs(training_data, splits["train"], 2, 1, release=True)
    broken = [i for i, (path, _) in enumerate(splits["train"].samples) if path.name == "broken.jpg"]
    assert sorted(index for _, _, failed, _ in batches for index in failed) == broken
    assert sum(len(labels) for _, labels, _, _ in batches) == 2  # the two good images


def mixed_images(root):
    """Every kind of file the cache must keep exactly or leave alone, in two classes of a train split."""
    folder_a, folder_b = root / "train" / "001.A", root / "train" / "002.B"
    for folder in (folder_a, folder_b):
        folder.mkdir(parents=True)
    save_jpeg(quadrants((60, 44)), folder_a / "turned.jpg", orientation=6)
    save_jpeg(quadrants((50, 40)), folder_a / "mirrored.jpg", orientation=2)
    quadrants((40, 56)).save(folder_a / "plain.png")
    quadrants((48, 40)).convert("L").save(folder_b / "grey.jpg", quality=90)
    quadrants((57, 43)).convert("RGBA").save(folder_b / "alpha.png")
    save_jpeg(quadrants((160, 120)), folder_b / "large.jpg")  # shorter side >= 2 x 32: not kept
    (folder_b / "broken.jpg").write_bytes(b"not a jpeg")
    return [(path, int(path.parent.name == "002.B")) for path in sorted(root.rglob("*")) if path.is_file()]


def cache_for(training, files, preset, max_bytes=10**9, lines=None):
    pixel_cache, training_data = training("pixel_cache"), training("data")
    paths = [path for path, _ in files.samples]
    log = (lines if lines is not None else []).append
    return pixel_cache.build_cache(paths, preset, max_bytes, training_data.DECODE_ERRORS, log, files.name)


def items(dataset, epoch: int) -> list:
    return [dataset[(index, epoch * 1000 + index)] for index in range(len(dataset))]


def assert_same_items(got: list, expected: list) -> None:
    for (tensor, label, index), (want, want_label, want_index) in zip(got, expected, strict=True):
        assert (label, index) == (want_label, want_index)
        assert (tensor is None) == (want is None), index
        if want is not None:
            assert torch.equal(tensor, want), index


@pytest.mark.parametrize("preset", [TrainPreset(32), EvalPreset(32)], ids=["train", "eval"])
def test_epochs_from_kept_pixels_give_exactly_the_tensors_of_decoding(training, tmp_path, preset):
    training_data = training("data")
    files = training_data.SplitFiles("train", mixed_images(tmp_path))
    plain = training_data.ImageFiles(files, preset.uint8)
    cache = cache_for(training, files, preset)
    cached = training_data.ImageFiles(files, preset.uint8, cache, preset)
    names = [path.name for path, _ in files.samples]
    held = {name for index, name in enumerate(names) if cache.holds(index)}
    # A training crop of a large JPEG is decoded at reduced scale, which kept full pixels would not match.
    not_kept = {"broken.jpg", "large.jpg"} if isinstance(preset, TrainPreset) else {"broken.jpg"}
    assert held == set(names) - not_kept
    for epoch in range(3):  # the first fills the cache, the later ones read it
        assert_same_items(items(cached, epoch), items(plain, epoch))
        filled = {name for index, name in enumerate(names) if cache.filled[index]}
        assert filled == held


def test_workers_fill_the_cache_that_later_epochs_and_other_workers_read(training, tiny_dataset):
    training_data = training("data")
    _, splits = training_data.discover_splits(tiny_dataset)
    preset = TrainPreset(32)
    expected, _ = _epochs(training_data, splits["train"], 0, 3, release=True)
    cache = cache_for(training, splits["train"], preset)
    loader = training_data.make_loader(
        training_data.ImageFiles(splits["train"], preset.uint8, cache, preset),
        2,
        shuffle=True,
        seed=3,
        num_workers=2,
        distributed=False,
        pin_memory=False,
    )
    got = []
    for epoch in range(3):
        training_data.set_loader_epoch(loader, epoch)
        for batch in loader:
            got.append((batch.inputs.clone(), batch.labels))
            batch.release()
        assert bool(cache.filled.all()), "every image was put by some worker in the first epoch"
    for (inputs, labels), (want, want_labels, _, _) in zip(got, expected, strict=True):
        assert torch.equal(inputs, want) and torch.equal(labels, want_labels)
    del loader, batch  # its workers exit: what they put stays, in this process too
    gc.collect()
    for index, (path, _) in enumerate(splits["train"].samples):
        with Image.open(path) as image:
            assert torch.equal(cache.get(index), preset.to_keep(image)), index


def test_the_cache_reserves_what_its_images_need_within_its_budget(training, tiny_dataset):
    training_data = training("data")
    _, splits = training_data.discover_splits(tiny_dataset)
    one_image, lines = 48 * 40 * 3, []
    cache = cache_for(training, splits["train"], TrainPreset(32), max_bytes=5 * one_image + 100, lines=lines)
    assert [cache.holds(index) for index in range(len(cache))] == [True] * 5 + [False] * 13
    assert cache.store.is_shared() and cache.store.untyped_storage().nbytes() == cache.nbytes == 5 * one_image
    assert lines == [
        f"pixel cache, train: 5 of 18 images ({5 * one_image / 1e6:.1f} MB of shared memory); "
        "decoded in the first epoch, read back after"
    ]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="shared memory is listed in /dev/shm on Linux")
def test_a_killed_training_process_leaves_no_cache_behind(training, tiny_dataset, tmp_path):
    """The memory is unlinked when made: nothing in /dev/shm outlives the processes that map it."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import os, sys, time\n"
        "sys.path[:0] = sys.argv[2:]\n"
        "import torch, data, pixel_cache\n"
        "from classifier.presets import TrainPreset\n"
        "_, splits = data.discover_splits(sys.argv[1])\n"
        "paths = [path for path, _ in splits['train'].samples]\n"
        "cache = pixel_cache.build_cache(paths, TrainPreset(32), 10**9, data.DECODE_ERRORS, print, 'train')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    before = set(os.listdir("/dev/shm"))
    source = Path(training("data").__file__).parent
    process = subprocess.Popen(
        [sys.executable, str(script), str(tiny_dataset), str(source)], stdout=subprocess.PIPE, text=True
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[1] == "ready\n", lines
        assert set(os.listdir("/dev/shm")) <= before, "the shared memory has no name to leave behind"
    finally:
        process.kill()
        process.wait()
    assert set(os.listdir("/dev/shm")) <= before


def test_a_cache_short_of_room_keeps_what_fits_or_nothing(training, tiny_dataset, monkeypatch):
    training_data, pixel_cache = training("data"), training("pixel_cache")
    _, splits = training_data.discover_splits(tiny_dataset)
    one_image, lines = 48 * 40 * 3, []
    assert cache_for(training, splits["train"], TrainPreset(32), max_bytes=one_image - 1, lines=lines) is None
    free = {"bytes": 2 * 8 * one_image + 10}  # room for 8 images, KEEP_FREE_SHARE left free
    monkeypatch.setattr(pixel_cache.shutil, "disk_usage", lambda _path: shutil_usage(free["bytes"]))
    cache = cache_for(training, splits["train"], TrainPreset(32), lines=lines)
    assert sum(cache.holds(index) for index in range(len(cache))) == 8 and cache.nbytes == 8 * one_image
    free["bytes"] = one_image
    assert cache_for(training, splits["train"], TrainPreset(32), lines=lines) is None
    assert lines[0] == (
        f"pixel cache, train: {(one_image - 1) / 1e6:.1f} MB of pixel_cache_gb left, too little "
        "for one image; every epoch decodes them"
    )
    assert lines[1] == (
        f"pixel cache, train: 8 of 18 images ({8 * one_image / 1e6:.1f} MB of shared memory); "
        "decoded in the first epoch, read back after"
    )
    assert lines[2] == (
        f"pixel cache, train: no room for {18 * one_image / 1e6:.1f} MB in shared memory; "
        "every epoch decodes them"
    )


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10 * free, 9 * free, free)
