"""Get the dataset ready: check and lay it out (`prepare`), put it in S3 (`upload`), or generate one.

The layout everything expects is dogImages': `train/`, `valid/`, `test/`, one
folder per class inside each (`001.Affenpinscher/`, ...). `prepare` writes it
plus `manifest.json` (counts per split and class, what was excluded and why, the bytes read and
written). By default it writes each image at the eval preset's resize size (shorter side 256 for
224-pixel crops; an image already that small is copied as it is): the network sees the same pixels
at a fraction of the bytes, so the upload, every job's download and every epoch's decoding shrink.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from rich.progress import track

from ..aws.context import AwsContext
from ..config import ProjectConfig, schema
from .dataset_source import (
    DataError,
    check_zip_bounds,
    check_zip_names,
    download,
    is_url,
)
from .synthetic import SPLITS

MANIFEST_FILENAME = "manifest.json"

# What a full disk or an exhausted quota raises while writing.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@dataclass
class Manifest:
    classes: list[str]
    counts: dict[str, dict[str, int]]
    excluded: list[dict[str, str]] = field(default_factory=list)
    # Images written under another name than their own, because that name was taken in their folder.
    renamed: list[dict[str, str]] = field(default_factory=list)
    resized_to: int | None = None
    source: str = ""
    # Bytes of the images read (those kept) and written: what resizing saved in the upload.
    source_bytes: int = 0
    written_bytes: int = 0

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


# --- finding the images ---------------------------------------------------------------------------


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in schema.IMAGE_SUFFIXES
    )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.is_dir() and not path.name.startswith((".", "__"))
    )


def find_dataset_root(folder: Path) -> Path:
    """The folder holding train/valid/test or the class folders (a zip often wraps it in one more folder)."""
    current = folder
    while True:
        if all((current / split).is_dir() for split in SPLITS):
            return current
        children = _class_folders(current)
        if children and any(_images_in(child) for child in children):
            return current
        if len(children) != 1:
            raise DataError(
                f"{folder} has neither train/valid/test folders nor one folder of images per class"
            )
        current = children[0]


def _split_by_ratio(root: Path, ratios: Iterable[float], seed: int) -> dict[str, dict[str, list[Path]]]:
    """Each class's images shuffled with `seed` and cut by `ratios` (train, valid, test)."""
    ratios = list(ratios)
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(f"split ratios must be three numbers adding up to 1, got {ratios}")
    rng = random.Random(seed)
    splits: dict[str, dict[str, list[Path]]] = {split: {} for split in SPLITS}
    for class_folder in _class_folders(root):
        images = _images_in(class_folder)
        rng.shuffle(images)
        n_train = round(len(images) * ratios[0])
        n_valid = round(len(images) * ratios[1])
        parts = (images[:n_train], images[n_train : n_train + n_valid], images[n_train + n_valid :])
        for split, part in zip(SPLITS, parts, strict=True):
            splits[split][class_folder.name] = part
    return splits


def _existing_splits(root: Path) -> dict[str, dict[str, list[Path]]]:
    return {
        split: {folder.name: _images_in(folder) for folder in _class_folders(root / split)}
        for split in SPLITS
    }


# --- checking and writing -------------------------------------------------------------------------


def check_image(path: Path) -> str | None:
    """None when the image decodes completely, else the reason it does not.

    Any exception counts: on hostile files Pillow's decoders raise many kinds (DecompressionBombError
    over its pixel limit, struct.error, IndexError, ...), and each means the same here: the image
    cannot be trained on, so it is left out and listed, never a traceback.
    """
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - see the docstring
        return f"{type(error).__name__}: {' '.join(str(error).split())}"
    return None


def resized_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter_side`, the longer as torchvision's Resize rounds it
    (down), so the eval preset's own resize of the written image changes nothing."""
    width, height = size
    if width <= height:
        return shorter_side, int(shorter_side * height / width)
    return int(shorter_side * width / height), shorter_side


def upright_resized(source: Path, resize_to: int | None) -> Image.Image | None:
    """`source` upright with its shorter side `resize_to`, in memory; None when it is to be copied as is.

    The EXIF orientation is applied before the resize, as both presets apply it: the written JPEG
    carries no orientation tag, so training reads the same upright picture the endpoint would
    make of the original. An image whose shorter side is already at most `resize_to` is copied
    whole, EXIF and format included: enlarging it would add bytes and no detail.
    """
    with Image.open(source) as image:
        upright = image.size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else image.size
        if resize_to is None or min(upright) <= resize_to:
            return None
        image = ImageOps.exif_transpose(image)
        image = image if image.mode == "RGB" else image.convert("RGB")
        return image.resize(resized_size(image.size, resize_to), Image.Resampling.BILINEAR)


def distinct_name(source: Path, suffix: str, taken: set[str]) -> str:
    """`source`'s stem with `suffix`, unless an earlier image of the same folder took that name: then one
    with the original suffix in it (`dog.png` -> `dog-png.jpg`, then `dog-png-2.jpg`, ...).

    `taken` holds the folder's names so far, in lower case: on macOS and Windows `dog.JPG` and
    `dog.jpg` are one file. The images come in a fixed order (sorted, or shuffled with the split seed),
    so the names are the same every run.
    """
    extension = source.suffix.lstrip(".")
    fallbacks = (f"{source.stem}-{extension}-{number}{suffix}" for number in itertools.count(2))
    for name in itertools.chain((source.stem + suffix, f"{source.stem}-{extension}{suffix}"), fallbacks):
        if name.lower() not in taken:
            taken.add(name.lower())
            return name
    raise AssertionError("unreachable: itertools.count never ends")


def default_resize(config: ProjectConfig) -> int:
    """The shorter side `prepare` writes by default: the eval preset's resize size for [model] image_size."""
    return schema.resize_size_for(config.settings.model.image_size)


def prepare_options(config: ProjectConfig) -> dict[str, Any]:
    """`prepare`'s keyword arguments from the config: split ratios and seed, downloads' folder, resize."""
    settings = config.section("data")
    return {
        "ratios": settings.get("split_ratios", (0.8, 0.1, 0.1)),
        "seed": settings.get("split_seed", 0),
        "download_dir": config.root / "data" / "downloads",
        "resize_to": default_resize(config),
    }


def prepare(
    source: str | Path,
    destination: Path,
    *,
    ratios: Iterable[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    resize_to: int | None = None,
    download_dir: Path | None = None,
) -> Manifest:
    """Check every image of `source`; write the train/valid/test layout and manifest.json to `destination`.

    `source` is a URL or path of a zip (e.g. dogImages.zip), or a folder. Images that do not
    decode (or are over Pillow's pixel limit) are listed in the manifest and left out; every other
    image is one file of the output, renamed where its name was taken (listed too). `resize_to`
    writes upright JPEGs whose shorter side is that many pixels (smaller images are copied as they
    are); None copies every image.

    Everything is written to a hidden staging folder beside `destination` and moved into place at
    the end: an error (a DataError, a full disk) leaves no `destination` behind, and the staging
    folders a killed prepare left (kill -9, a closed laptop) are removed by the next one.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DataError(f"{destination} is not empty; remove it or choose another --dest")
    text = str(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_abandoned_staging(destination)
    if removed:
        shown = ", ".join(path.name for path in removed[:3]) + (" ..." if len(removed) > 3 else "")
        print(f"removed what a killed earlier prepare of {destination} left: {shown}")
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(destination), dir=destination.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="prepare-") as scratch:
            root = _dataset_root(text, Path(download_dir or scratch), Path(scratch))
            has_splits = all((root / split).is_dir() for split in SPLITS)
            _refuse_empty_class_folders(root, has_splits)
            splits = _existing_splits(root) if has_splits else _split_by_ratio(root, ratios, seed)
            manifest = _write_checked(splits, staging, resize_to)
        _refuse_missing_classes(manifest, ratios if not has_splits else None)
        manifest.source = text
        (staging / MANIFEST_FILENAME).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        if destination.exists():
            destination.rmdir()  # empty, as checked above
        staging.rename(destination)
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        where = f" ({error.filename})" if error.filename else ""
        raise DataError(
            f"{error.strerror} while preparing {destination}{where}: free some space, or choose another "
            f"--dest (or TMPDIR for the zip's scratch folder); nothing was left in {destination}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was moved into place
    return manifest


def staging_prefix(destination: Path) -> str:
    """The start of the name of this process's staging folder for `destination`: hidden, and naming its
    owner (process id and machine), so a later prepare can tell one whose owner is gone."""
    return f".{destination.name}.partial-{os.getpid()}-{_machine_tag()}-"


def _machine_tag() -> str:
    # A folder on a shared disk (EFS in SageMaker Studio) may belong to a process of another machine,
    # whose process ids mean nothing here.
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: no folder is judged abandoned
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_staging(destination: Path) -> list[Path]:
    """Remove the staging folders of `destination` whose prepare was killed before it could clean up:
    made on this machine by a process that is gone. A running prepare's folder is kept."""
    owned = re.compile(re.escape(f".{destination.name}.partial-") + r"(\d+)-([0-9a-f]{8})-[a-z0-9_]+")
    if not destination.parent.is_dir():
        return []
    removed = []
    for path in sorted(destination.parent.iterdir()):
        match = owned.fullmatch(path.name)
        if not match or match[2] != _machine_tag() or path.is_symlink() or not path.is_dir():
            continue
        if not _process_alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def _dataset_root(source: str, download_dir: Path, scratch: Path) -> Path:
    """The folder of images `source` names: itself, or a zip (downloaded first for a URL) extracted."""
    if is_url(source):
        name = Path(urllib.parse.urlsplit(source).path).name or "dataset.zip"
        source_path = download(source, download_dir / name)
    else:
        source_path = Path(source)
    if not source_path.exists():
        raise DataError(f"{source_path} does not exist")
    if source_path.is_dir():
        return find_dataset_root(source_path)
    if not zipfile.is_zipfile(source_path):
        raise DataError(f"{source_path} is not a zip file or a folder")
    with zipfile.ZipFile(source_path) as archive:
        members = archive.infolist()
        check_zip_bounds(source_path, members, shutil.disk_usage(scratch).free)
        check_zip_names(source_path, members)
        for member in track(members, description=f"unzip {source_path.name}"):
            # ZipFile.extract drops absolute paths and `..` (zip slip); the sizes were checked above and
            # the reader stops at each member's recorded size, so what is written is what was checked.
            archive.extract(member, scratch)
    return find_dataset_root(scratch)


def _refuse_empty_class_folders(root: Path, has_splits: bool) -> None:
    """A class folder with no images is almost certainly a mistake: it would change the class count."""
    if has_splits:
        folders = [folder for split in SPLITS for folder in _class_folders(root / split)]
    else:
        folders = _class_folders(root)
    empty = [folder.relative_to(root).as_posix() for folder in folders if not _images_in(folder)]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(
            f"{len(empty)} class folder(s) of {root} hold no images ({shown}): add the images or remove "
            f"the folder; the class count would change (suffixes read: {', '.join(schema.IMAGE_SUFFIXES)})"
        )


def _refuse_missing_classes(manifest: Manifest, ratios: Iterable[float] | None) -> None:
    """Training needs every class in every split (it refuses the data otherwise): say so now."""
    missing = [
        f"{split}/{name}" for split in SPLITS for name in manifest.classes if not manifest.counts[split][name]
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        why = f"split ratios {list(ratios)} and " if ratios is not None else ""
        raise DataError(
            f"no images left for {shown} (after {why}{len(manifest.excluded)} excluded images): training "
            "needs every class in every split; add images of those classes"
        )


def _write_checked(
    splits: dict[str, dict[str, list[Path]]], destination: Path, resize_to: int | None
) -> Manifest:
    classes = sorted({name for per_class in splits.values() for name in per_class})
    excluded: list[dict[str, str]] = []
    renamed: list[dict[str, str]] = []
    source_bytes = written_bytes = 0
    work = [
        (split, name, image) for split in SPLITS for name, images in splits[split].items() for image in images
    ]
    taken: dict[Path, set[str]] = {}
    for split, name, image in track(work, description="check images"):
        place = f"{split}/{name}/{image.name}"
        reason = check_image(image)
        picture = None
        if reason is None:
            try:
                picture = upright_resized(image, resize_to)
            except Exception as error:  # noqa: BLE001 - as in check_image: left out and listed
                reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if reason:
            excluded.append({"path": place, "reason": reason})
            continue
        folder = destination / split / name
        folder.mkdir(parents=True, exist_ok=True)
        suffix = image.suffix if picture is None else ".jpg"
        target = folder / distinct_name(image, suffix, taken.setdefault(folder, set()))
        if target.stem != image.stem:
            renamed.append({"path": place, "written_as": target.name})
        if picture is None:
            shutil.copy2(image, target)
        else:
            picture.save(target, format="JPEG", quality=90)
        source_bytes += image.stat().st_size
        written_bytes += target.stat().st_size
    # Counted on disk, from what was written: the manifest cannot claim an image that is not there.
    counts = {
        split: {
            name: sum(1 for path in (destination / split / name).glob("*") if path.is_file())
            if (destination / split / name).is_dir()
            else 0
            for name in classes
        }
        for split in SPLITS
    }
    return Manifest(
        classes=classes,
        counts=counts,
        excluded=excluded,
        renamed=renamed,
        resized_to=resize_to,
        source_bytes=source_bytes,
        written_bytes=written_bytes,
    )


def read_manifest(folder: Path) -> Manifest:
    return Manifest(**json.loads((Path(folder) / MANIFEST_FILENAME).read_text()))


# --- upload ---------------------------------------------------------------------------------------


@dataclass
class UploadResult:
    destination: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _unchanged(path: Path, remote: dict[str, Any] | None) -> bool:
    """Same size, and the same MD5 where S3's ETag is one (single-part uploads)."""
    if remote is None or remote["Size"] != path.stat().st_size:
        return False
    etag = remote["ETag"].strip('"')
    return "-" in etag or etag == _md5(path)


def upload(aws: AwsContext, data_dir: Path) -> UploadResult:
    """Copy `data_dir` to `s3://<bucket>/<prefix>/data/`, skipping files already there unchanged."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} does not exist; run `data prepare` or `data synthetic` first")
    files = sorted(path for path in data_dir.rglob("*") if path.is_file())
    s3 = aws.client("s3")
    destination = aws.s3_uri("data")
    prefix = aws.s3_key("data") + "/"
    remote = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix):
        remote.update({item["Key"]: item for item in page.get("Contents", [])})
    result = UploadResult(destination=destination + "/")
    for path in track(files, description=f"upload to {destination}/"):
        key = prefix + path.relative_to(data_dir).as_posix()
        if _unchanged(path, remote.get(key)):
            result.skipped.append(key)
        else:
            s3.upload_file(str(path), aws.bucket, key)
            result.uploaded.append(key)
    return result


def prepared(config: ProjectConfig, destination: Path) -> Manifest:
    """The prepared dataset in `destination`: read when it is there, else downloaded and checked once."""
    if (Path(destination) / MANIFEST_FILENAME).is_file():
        return read_manifest(destination)
    url = config.section("data")["url"]
    if not url:
        raise DataError(
            f"{destination} holds no prepared dataset and [data] url is empty: "
            "run `data prepare path/to/your/images` first"
        )
    return prepare(url, destination, **prepare_options(config))


def test_images(data_dir: Path, count: int = 3) -> list[Path]:
    """The first test image of `count` classes spread over the test split, to try the endpoint with."""
    folders = _class_folders(Path(data_dir) / "test")
    step = max(len(folders) // max(count, 1), 1)
    return [images[0] for images in (_images_in(folder) for folder in folders[::step][:count]) if images]


# --- synthetic ------------------------------------------------------------------------------------


def synthetic(
    destination: Path,
    *,
    num_classes: int = 3,
    size: tuple[int, int] = (48, 40),
    per_class: tuple[int, int, int] = (6, 2, 2),
    seed: int = 0,
) -> Manifest:
    """A small generated dataset in the same layout, with its manifest (for demos and dry runs)."""
    from .synthetic import make_dataset

    destination = Path(destination)
    make_dataset(
        destination,
        num_classes=num_classes,
        images_per_class=dict(zip(SPLITS, per_class, strict=True)),
        size=size,
        seed=seed,
    )
    splits = _existing_splits(destination)
    counts = {split: {name: len(images) for name, images in splits[split].items()} for split in SPLITS}
    manifest = Manifest(classes=sorted(counts["train"]), counts=counts, source="synthetic")
    (destination / MANIFEST_FILENAME).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest
