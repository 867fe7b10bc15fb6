"""The images and requests inference.py is tested with: well-formed ones of every format, odd but valid
ones, and hostile requests with the status each must get."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib

import numpy as np
from conftest import project_module
from hostile_images import jpeg_header_only, repeated_scans
from PIL import ExifTags, Image

make_image = project_module("workflow.synthetic").make_image


def photo(size: tuple[int, int] = (96, 80), hue: float = 0.1, seed: int = 0) -> Image.Image:
    return make_image(hue, size, random.Random(seed))


def encode(image: Image.Image, image_format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def strip(size: tuple[int, int]) -> Image.Image:
    """A thin image with some texture, made fast (make_image draws pixel by pixel)."""
    return Image.merge("RGB", [Image.effect_noise(size, 40).point(lambda v, o=o: v + o) for o in (0, 30, 60)])


def raw_png(width: int, height: int, bit_depth: int, color_type: int, pixel_rows: bytes) -> bytes:
    """A PNG written by hand: for 16-bit colour, and for headers that lie about the size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixel_rows))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims `width` x `height`: a decompression bomb's shape."""
    data = bytearray(encode(photo((16, 16))))
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length, precision, height, width
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def json_body(**document) -> bytes:
    return json.dumps(document).encode("utf-8")


JPEG = encode(photo())
PNG = encode(photo(hue=0.6), "PNG")
WEBP = encode(photo(hue=0.4), "WEBP")
GIF = encode(photo(hue=0.8).convert("P"), "GIF")
BMP = encode(photo(hue=0.2), "BMP")
INVALID_UTF8_JSON = b'{"images": ["\xff\xfe"]}'

# (id, Content-Type, Accept, body, expected status). Every one must leave the worker serving.
HOSTILE_REQUESTS = [
    ("empty-body", "image/jpeg", None, b"", 400),
    ("truncated-jpeg", "image/jpeg", None, JPEG[: len(JPEG) // 2], 400),
    ("truncated-png", "image/png", None, PNG[: len(PNG) // 2], 400),
    ("text-not-image", "image/jpeg", None, b"certainly not an image", 400),
    ("html-as-octet-stream", "application/octet-stream", None, b"<html><body>hi</body></html>", 400),
    ("tiff-not-allowed", "application/x-image", None, encode(photo(), "TIFF"), 400),
    ("jpeg-header-3.6-gigapixels", "image/jpeg", None, jpeg_claiming(60_000, 60_000), 413),
    ("jpeg-header-49-megapixels", "image/jpeg", None, jpeg_claiming(7_000, 7_000), 413),
    ("png-header-49-megapixels", "image/png", None, raw_png(7_000, 7_000, 8, 2, b""), 413),
    # Headers that claim more pixels than the data holds: decoders fill the rest with gray, or fail.
    ("jpeg-header-36-megapixels-over-750-bytes", "image/jpeg", None, jpeg_claiming(6_000, 6_000), 400),
    ("jpeg-header-640x480-over-16x16-data", "image/jpeg", None, jpeg_claiming(640, 480), 400),
    ("png-header-larger-than-its-rows", "image/png", None, raw_png(400, 300, 8, 2, b"\0" * 16), 400),
    ("truncated-webp", "image/webp", None, WEBP[: len(WEBP) // 2], 400),
    ("truncated-gif", "image/gif", None, GIF[: len(GIF) // 2], 400),
    ("truncated-bmp", "image/bmp", None, BMP[: len(BMP) // 2], 400),
    ("text-plain", "text/plain", None, JPEG, 415),
    ("unlisted-image-type", "image/tiff", None, JPEG, 415),
    ("no-content-type", None, None, JPEG, 415),
    ("accept-csv", "image/jpeg", "text/csv", JPEG, 406),
    ("accept-list-unsupported", "image/jpeg", "application/xml, text/html", JPEG, 406),
    ("accept-json-q-zero", "image/jpeg", "application/json;q=0", JPEG, 406),
    ("accept-everything-q-zero", "image/jpeg", "*/*;q=0", JPEG, 406),
    ("accept-q-not-a-number", "image/jpeg", "application/json;q=high", JPEG, 400),
    ("accept-q-above-one", "image/jpeg", "application/json;q=1.5", JPEG, 400),
    ("accept-not-a-media-type", "image/jpeg", "json", JPEG, 400),
    ("accept-top-k-word", "image/jpeg", "application/json;top_k=three", JPEG, 400),
    ("accept-top-k-zero", "image/jpeg", "application/json;top_k=0", JPEG, 400),
    # str.isdigit() says yes to these, int() says no (or takes the Arabic-Indic digit): a 400, not a 500.
    ("accept-top-k-superscript-two", "image/jpeg", "application/json;top_k=\u00b2", JPEG, 400),
    ("accept-top-k-arabic-indic-three", "image/jpeg", "application/json;top_k=\u0663", JPEG, 400),
    ("accept-top-k-5000-digits", "image/jpeg", "application/json;top_k=" + "9" * 5000, JPEG, 400),
    ("json-malformed", "application/json", None, b'{"images": [', 400),
    ("json-not-object", "application/json", None, b'["abc"]', 400),
    ("json-nested-100k", "application/json", None, b"[" * 100_000 + b"]" * 100_000, 400),
    ("json-unknown-key", "application/json", None, json_body(imgs=[b64(JPEG)]), 400),
    ("json-image-and-images", "application/json", None, json_body(image=b64(JPEG), images=[]), 400),
    ("json-images-empty", "application/json", None, json_body(images=[]), 400),
    ("json-images-not-list", "application/json", None, json_body(images=b64(JPEG)), 400),
    ("json-bad-base64", "application/json", None, json_body(images=["***"]), 400),
    ("json-base64-not-image", "application/json", None, json_body(images=[b64(b"hello")]), 400),
    ("json-top-k-string", "application/json", None, json_body(images=[b64(JPEG)], top_k="3"), 400),
    ("json-top-k-bool", "application/json", None, json_body(images=[b64(JPEG)], top_k=True), 400),
    ("json-17-images", "application/json", None, json_body(images=[b64(JPEG)] * 17), 413),
    (
        "json-batch-one-truncated",
        "application/json",
        None,
        json_body(images=[b64(JPEG), b64(JPEG[:200])]),
        400,
    ),
    ("json-charset-invalid-utf8", "application/json; charset=utf-8", None, INVALID_UTF8_JSON, 400),
    # Transformer.transform decodes bodies sent as exactly `application/json` or `text/csv` to str
    # before input_fn unless inference.py empties content_types.UTF8_TYPES: without that, a 500.
    ("json-invalid-utf8", "application/json", None, INVALID_UTF8_JSON, 400),
    ("json-trailing-space-invalid-utf8", "application/json ", None, INVALID_UTF8_JSON, 400),
    ("json-capitals-invalid-utf8", "Application/JSON", None, INVALID_UTF8_JSON, 400),
    ("csv-invalid-utf8", "text/csv", None, b"\xff\xfe,1\n", 415),
    ("csv-utf8", "text/csv", None, b"a,b\n1,2\n", 415),
    ("csv-charset-invalid-utf8", "text/csv; charset=latin-1", None, b"\xe9,1\n", 415),
    # JPEG structures whose decode would be unbounded or invented (see also test_endpoint_bounds.py).
    ("jpeg-arithmetic-header-only", "image/jpeg", None, jpeg_header_only(6_000, 6_000, 0xC9), 400),
    ("jpeg-arithmetic-progressive", "image/jpeg", None, jpeg_header_only(64, 64, 0xCA), 400),
    ("jpeg-lossless", "image/jpeg", None, jpeg_header_only(64, 64, 0xC3), 400),
    ("jpeg-hierarchical", "image/jpeg", None, jpeg_header_only(64, 64, 0xC5), 400),
    ("jpeg-progressive-header-only", "image/jpeg", None, jpeg_header_only(6_000, 6_000, 0xC2), 400),
    ("jpeg-300-repeated-scans", "image/jpeg", None, repeated_scans(photo((64, 48)), 300), 400),
    ("jpeg-scan-before-frame", "image/jpeg", None, b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00", 400),
    ("jpeg-2000-empty-comments", "image/jpeg", None, JPEG[:2] + b"\xff\xfe\x00\x02" * 2000 + JPEG[2:], 400),
]

ODD_BUT_VALID_IMAGES = {
    "grayscale-jpeg": ("image/jpeg", encode(photo().convert("L"))),
    "cmyk-jpeg": ("image/jpeg", encode(photo().convert("CMYK"))),
    "progressive-jpeg": ("image/jpeg", encode(photo((300, 200)), progressive=True)),
    "rgba-png": ("image/png", encode(photo().convert("RGBA"), "PNG")),
    "grey-alpha-png": ("image/png", encode(photo().convert("LA"), "PNG")),
    "palette-gif": ("application/octet-stream", encode(photo().convert("P"), "GIF")),
    "16-bit-grey-png": ("image/png", encode(Image.fromarray(np.full((40, 48), 30_000, np.uint16)), "PNG")),
    "16-bit-rgb-png": ("image/png", raw_png(8, 8, 16, 2, (b"\0" + struct.pack(">HHH", 9, 3, 6) * 8) * 8)),
    "one-pixel-png": ("image/png", encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")),
    "wide-strip-jpeg": ("image/jpeg", encode(photo((600, 8)))),
    "bmp": ("application/x-image", encode(photo(), "BMP")),
    "webp": ("application/octet-stream", encode(photo(), "WEBP")),
    "png-sent-as-jpeg": ("image/jpeg", PNG),
    # Each format under its own type.
    "webp-as-image/webp": ("image/webp", WEBP),
    "gif-as-image/gif": ("image/gif", GIF),
    "bmp-as-image/bmp": ("image/bmp", BMP),
    # Thin strips: their shorter side grows to the resize size; the crop is taken before that.
    "3x30000-jpeg": ("image/jpeg", encode(strip((3, 30_000)))),
    "30000x3-png": ("image/png", encode(strip((30_000, 3)), "PNG")),
    "1x65500-jpeg": ("image/jpeg", encode(strip((1, 65_500)))),
    "16383x1-webp": ("image/webp", encode(strip((16_383, 1)), "WEBP")),
    "1x40000-gif": ("image/gif", encode(strip((1, 40_000)).convert("P"), "GIF")),
    # As few bits per block as a whole JPEG can have: the completeness check must let it through.
    "uniform-progressive-jpeg-2000px": (
        "image/jpeg",
        encode(Image.new("RGB", (2000, 2000), (90, 90, 90)), progressive=True, optimize=True),
    ),
    "exif-rotated-jpeg": ("image/jpeg", encode(photo((120, 80)), exif=exif_with_orientation(6))),
}
