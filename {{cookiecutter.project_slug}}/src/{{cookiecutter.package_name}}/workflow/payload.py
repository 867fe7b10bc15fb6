"""What `predict` sends: each image file checked, read within bounds and fitted to the request limit.

The SageMaker endpoint and the local one (`serve`) get the same treatment, so what `predict --local`
shows is what the endpoint gets:

- Only regular files are read: a FIFO would block, /dev/zero never ends, a folder is no image. The
  path is checked with stat before anything is opened, and the open file again (it is opened
  non-blocking, so a FIFO put in its place meanwhile cannot hang the open).
- Sizes are checked before reading. A file within the request limit is sent as it is (at most
  limit + 1 bytes are read, so one that grows meanwhile is still bounded). A photo over the limit, up
  to MAX_PHOTO_BYTES, is decoded and sent as a JPEG that fits, with a note saying so; anything larger,
  or over the limit and not an image, is refused in one line, unread.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from PIL import Image

    from ..config import ProjectConfig

# InvokeEndpoint's request body limits: 6 MB for a real-time endpoint, 4 MB for a serverless one.
REALTIME_BODY_LIMIT = 6 * 1024 * 1024
SERVERLESS_BODY_LIMIT = 4 * 1024 * 1024
# The largest photo shrunk to fit the limit (a 200-megapixel phone JPEG is about 30 MB); larger files
# are refused before they are read.
MAX_PHOTO_BYTES = 50 * 1024 * 1024
# The most pixels decoded to shrink a photo (JPEGs are decoded at 1/2, 1/4 or 1/8 scale first where
# that is enough): the endpoint's own bound (inference.py's MAX_IMAGE_PIXELS).
MAX_PHOTO_PIXELS = 40_000_000
# A shrunk photo keeps at least this many pixels on its shorter side: the largest image_size the
# config allows, so the network's input is never starved.
MIN_SHRUNK_SIDE = 1024
# The formats a photo is decoded from to shrink it: the endpoint's decoders.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
SHRUNK_JPEG_QUALITY = 90


class ImageFileError(Exception):
    """An image file `predict` does not send; the message is one line naming the file."""


def body_limit(config: ProjectConfig) -> int:
    """The largest request body the configured endpoint takes (and `serve` with it)."""
    return SERVERLESS_BODY_LIMIT if config.settings.endpoint.serverless else REALTIME_BODY_LIMIT


def _megabytes(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def _not_a_file(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check(path: Path, status: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ImageFileError(f"{path} is {_not_a_file(status.st_mode)}, not an image file")
    if status.st_size > max(limit, MAX_PHOTO_BYTES):
        raise ImageFileError(
            f"{path} is {_megabytes(status.st_size)}: images go as they are up to the endpoint's "
            f"{_megabytes(limit)} request limit, and photos up to {_megabytes(MAX_PHOTO_BYTES)} are shrunk "
            "to fit it; resize it first"
        )


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as error:
        raise ImageFileError(f"{path}: {error.strerror or error}") from None


def check_image_files(paths: Iterable[Path], limit: int) -> None:
    """Refuse, before any is read, a path that is not a regular file or is too large to send."""
    for path in map(Path, paths):
        _check(path, _stat(path), limit)


def request_body(
    path: Path, content_type: str, limit: int, min_side: int = MIN_SHRUNK_SIDE
) -> tuple[bytes, str, str | None]:
    """(body, content type, note) for the image at `path`: its bytes when they fit in `limit`, else the
    photo shrunk to a JPEG that fits (never below `min_side` pixels on its shorter side) and a note
    saying so. Raises ImageFileError, in one line, for anything else."""
    path = Path(path)
    _check(path, _stat(path), limit)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise ImageFileError(f"{path}: {error.strerror or error}") from None
    with open(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        _check(path, status, limit)  # what was opened, should the path have changed since
        if status.st_size <= limit:
            payload = file.read(limit + 1)
            if len(payload) <= limit:
                return payload, content_type, None
            del payload  # it grew past the limit meanwhile: shrink it like any photo too large
            file.seek(0)
        body, size = _shrunk_jpeg(file, path, limit, min_side)
    note = (
        f"{_megabytes(status.st_size)} is over the endpoint's {_megabytes(limit)} request limit: "
        f"sent as a {size[0]}x{size[1]} JPEG of {_megabytes(len(body))} (shrunk on this machine)"
    )
    return body, "image/jpeg", note


def _decoded_photo(file: BinaryIO, path: Path, limit: int, min_side: int) -> tuple[Image.Image, float]:
    """The photo upright in RGB, decoded at reduced scale where the format allows, and the scale to
    resize it by first: about one byte per pixel of the limit (a photo's JPEG at quality 90 takes about
    half that), never below `min_side`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(file, formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:  # its header claims over twice Pillow's own pixel limit
        raise ImageFileError(
            f"{path} is over the {MAX_PHOTO_PIXELS / 1e6:.0f} megapixels the endpoint decodes; "
            "resize it first"
        ) from None
    except UnidentifiedImageError:
        size = _megabytes(os.fstat(file.fileno()).st_size)
        raise ImageFileError(
            f"{path} is {size}, over the endpoint's {_megabytes(limit)} request limit, and not an image "
            f"this machine can shrink to fit it ({', '.join(PHOTO_FORMATS)})"
        ) from None
    width, height = image.size
    scale = min(1.0, max((limit / (width * height)) ** 0.5, min_side / min(width, height)))
    image.draft("RGB", (max(round(width * scale), 1), max(round(height * scale), 1)))  # JPEG only
    if image.width * image.height > MAX_PHOTO_PIXELS:
        raise ImageFileError(
            f"{path} is {width}x{height} pixels, over the {MAX_PHOTO_PIXELS / 1e6:.0f} megapixels the "
            "endpoint decodes; resize it first"
        )
    step = scale * width / image.width  # what is left to scale by after the reduced-scale decoding
    picture = image.convert("RGB") if image.mode != "RGB" else image
    picture.load()
    ImageOps.exif_transpose(picture, in_place=True)
    return picture, step


def _shrunk_jpeg(file: BinaryIO, path: Path, limit: int, min_side: int) -> tuple[bytes, tuple[int, int]]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns on stderr of corrupt EXIF data and of images past its own pixel limit; the
            # outcome says what matters here (shrunk, or a one-line error), in the one line it promises.
            warnings.simplefilter("ignore")
            picture, step = _decoded_photo(file, path, limit, min_side)
            floor = min(1.0, min_side / min(picture.size))
            step = max(min(step, 1.0), floor)
            while True:
                size = (max(round(picture.width * step), 1), max(round(picture.height * step), 1))
                resized = picture if size == picture.size else picture.resize(size, Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                resized.save(buffer, format="JPEG", quality=SHRUNK_JPEG_QUALITY)
                body = buffer.getvalue()
                if len(body) <= limit or step <= floor:
                    break
                step = max(step * min(0.9, (limit / len(body)) ** 0.5), floor)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFileError(
            f"{path}: cannot decode it to shrink it ({' '.join(str(error).split())})"
        ) from None
    if len(body) > limit:
        raise ImageFileError(
            f"{path} does not fit the endpoint's {_megabytes(limit)} request limit even shrunk to "
            f"{size[0]}x{size[1]}; send a smaller image"
        )
    return body, size
