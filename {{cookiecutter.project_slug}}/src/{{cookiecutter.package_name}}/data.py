"""Get the dataset ready: check and lay it out (`prepare`), put it in S3 (`upload`), or generate one.

The layout everything expects is dogImages': `train/`, `valid/`, `test/`, one
folder per class inside each (`001.Affenpinscher/`, ...). `prepare` writes it
plus `manifest.json` (counts per split and class, what was excluded and why, the bytes read and
written). By default it writes each image at the eval preset's resize size (shorter side 256 for
224-pixel crops; an image already that small is copied as it is): the network sees the same pixels
at a fraction of the bytes, so the upload, every job's download and every epoch's decoding shrink.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, track

from .config import ProjectConfig, schema
from .context import AwsContext
from .synthetic import SPLITS

MANIFEST_FILENAME = "manifest.json"


class DataError(Exception):
    """The source is not a dataset this project can use; the message says why."""


@dataclass
class Manifest:
    classes: list[str]
    counts: dict[str, dict[str, int]]
    excluded: list[dict[str, str]] = field(default_factory=list)
    resized_to: int | None = None
    source: str = ""
    # Bytes of the images read (those kept) and written: what resizing saved in the upload.
    source_bytes: int = 0
    written_bytes: int = 0

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


# --- finding the images ---------------------------------------------------------------------------


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "s3")


def download(url: str, destination: Path) -> Path:
    """Fetch `url` (http(s):// or s3://) into `destination` (a file), with a progress bar; kept if
    already there."""
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".part")
    if url.startswith("s3://"):
        download_s3(url, partial)
        partial.replace(destination)
        return destination
    columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with urllib.request.urlopen(url) as response, partial.open("wb") as sink, Progress(*columns) as progress:
        task = progress.add_task(
            f"download {destination.name}", total=int(response.headers.get("Content-Length", 0)) or None
        )
        while chunk := response.read(1 << 20):
            sink.write(chunk)
            progress.advance(task, len(chunk))
    partial.replace(destination)
    return destination


def download_s3(url: str, destination: Path) -> None:
    """Copy the object at s3://bucket/key to `destination`, with the caller's AWS credentials.

    The schema lets [data] url be an s3:// URL (a dataset kept in the course's or your own bucket):
    boto3 fetches it as the http(s) branch fetches a public URL. A missing object, a refused request
    or no credentials is a DataError naming the URL, and `destination` is removed.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise DataError(f"{url} names no object; expected s3://bucket/path/dataset.zip")
    columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        s3 = boto3.client("s3")
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        with destination.open("wb") as sink, Progress(*columns) as progress:
            task = progress.add_task(f"download {Path(key).name}", total=size or None)
            s3.download_fileobj(bucket, key, sink, Callback=lambda sent: progress.advance(task, sent))
    except (BotoCoreError, ClientError) as error:
        destination.unlink(missing_ok=True)
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        why = {"404": "no such object", "NoSuchKey": "no such object", "NoSuchBucket": "no such bucket"}
        reason = why.get(code) or ("access denied" if code in ("403", "AccessDenied") else str(error))
        raise DataError(f"cannot download {url}: {reason}") from None
    except BaseException:
        destination.unlink(missing_ok=True)
        raise


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
    """None when the image decodes completely, else the reason it does not."""
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def resized_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter_side`, the longer as torchvision's Resize rounds it
    (down), so the eval preset's own resize of the written image changes nothing."""
    width, height = size
    if width <= height:
        return shorter_side, int(shorter_side * height / width)
    return int(shorter_side * width / height), shorter_side


def _write_image(source: Path, target: Path, resize_to: int | None) -> Path:
    """Copy `source`, or write it upright with its shorter side `resize_to` (JPEG); returns what was written.

    The EXIF orientation is applied before the resize, as both presets apply it: the written JPEG
    carries no orientation tag, so training reads the same upright picture the endpoint would
    make of the original. An image whose shorter side is already at most `resize_to` is copied
    whole, EXIF and format included: enlarging it would add bytes and no detail.
    """
    with Image.open(source) as image:
        upright = image.size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else image.size
        if resize_to is None or min(upright) <= resize_to:
            shutil.copy2(source, target)
            return target
        image = ImageOps.exif_transpose(image)
        image = image if image.mode == "RGB" else image.convert("RGB")
        written = target.with_suffix(".jpg")
        image.resize(resized_size(image.size, resize_to), Image.Resampling.BILINEAR).save(
            written, format="JPEG", quality=90
        )
        return written


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

    `source` is a URL or path of a zip (e.g. dogImages.zip), or a folder. Images
    that do not decode are listed in the manifest and left out. `resize_to` writes
    upright JPEGs whose shorter side is that many pixels (smaller images are copied as
    they are); None copies every image.
    """
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise DataError(f"{destination} is not empty; remove it or choose another --out")
    with tempfile.TemporaryDirectory(prefix="prepare-") as scratch:
        text = str(source)
        if _is_url(text):
            name = Path(urllib.parse.urlsplit(text).path).name or "dataset.zip"
            source_path = download(text, Path(download_dir or Path(scratch)) / name)
        else:
            source_path = Path(source)
        if not source_path.exists():
            raise DataError(f"{source_path} does not exist")
        if source_path.is_file():
            if not zipfile.is_zipfile(source_path):
                raise DataError(f"{source_path} is not a zip file or a folder")
            with zipfile.ZipFile(source_path) as archive:
                members = archive.infolist()
                for member in track(members, description=f"unzip {source_path.name}"):
                    archive.extract(member, scratch)
            root = find_dataset_root(Path(scratch))
        else:
            root = find_dataset_root(source_path)
        has_splits = all((root / split).is_dir() for split in SPLITS)
        splits = _existing_splits(root) if has_splits else _split_by_ratio(root, ratios, seed)
        manifest = _write_checked(splits, destination, resize_to)
    manifest.source = text
    (destination / MANIFEST_FILENAME).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _write_checked(
    splits: dict[str, dict[str, list[Path]]], destination: Path, resize_to: int | None
) -> Manifest:
    classes = sorted({name for per_class in splits.values() for name in per_class})
    counts: dict[str, dict[str, int]] = {split: dict.fromkeys(classes, 0) for split in SPLITS}
    excluded = []
    source_bytes = written_bytes = 0
    work = [
        (split, name, image) for split in SPLITS for name, images in splits[split].items() for image in images
    ]
    for split, name, image in track(work, description="check images"):
        reason = check_image(image)
        if reason:
            excluded.append({"path": f"{split}/{name}/{image.name}", "reason": reason})
            continue
        target = destination / split / name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        source_bytes += image.stat().st_size
        written_bytes += _write_image(image, target, resize_to).stat().st_size
        counts[split][name] += 1
    return Manifest(
        classes=classes,
        counts=counts,
        excluded=excluded,
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
