"""The endpoint's request and response handling, which inference.py's four functions call: content
types and Accept negotiation, the JSON request and answer, image header checks (the JPEG marker walk)
and the bounds every request is held to.

The container calls `model_fn(model_dir)` once per worker, then for each request
`input_fn(body, content_type)` -> `predict_fn(data, model)` -> `output_fn(prediction, accept)`,
through the sagemaker-inference toolkit's `Transformer`; `serve` (the project's local endpoint)
drives this same file through that same `Transformer`.

Requests (Content-Type):
    image/jpeg, image/png, image/webp, image/gif, image/bmp, application/x-image, application/octet-stream
        one image's raw bytes; the format is read from the bytes (JPEG, PNG, WebP, BMP, GIF)
    application/json
        {"images": ["<base64>", ...], "top_k": 3}, or {"image": "<base64>"}; "top_k" is optional;
        {"instances": ["<base64>" or {"b64": "<base64>"}, ...]}, the shape SageMaker users send by habit
Responses (Accept, negotiated as HTTP says: the highest q wins, q=0 refuses a type, ties go to the
type listed first; no Accept or */*: application/json):
    application/json
        {"predictions": [{"top_k": [{"label": "Affenpinscher", "class_name": "001.Affenpinscher",
                                     "index": 0, "probability": 0.93}, ...]}, ...]}, one entry per image;
        k is the body's "top_k", else an Accept parameter (application/json;top_k=3), else 5,
        at most the number of classes
    application/x-npy
        float32 logits, shape (images, classes), for the SDK's NumpyDeserializer
Errors: a 4xx status whose message is one line of JSON, {"error": "...", "status": 415};
the container appends a traceback after that line. Only `RequestError` (a toolkit error class)
gives a 4xx; anything else is the toolkit's 500.

Every request is bounded in memory and CPU time, whatever its format, shape or batch, and refused
from the headers, before anything is decoded, where a bound would be passed:
- one image: at most MAX_IMAGE_PIXELS (40 megapixels) in its header;
- one request: at most MAX_DECODED_PIXELS_PER_REQUEST (80 megapixels) written by the decoders, a JPEG
  counted at the reduced scale libjpeg decodes it at (a few kilobytes of lossless WebP or PNG can
  declare a 36-megapixel image, a second of decoding each);
- JPEG: only Huffman-coded baseline, sequential and progressive frames; at most MAX_JPEG_SCANS (256)
  scans an image and MAX_JPEG_BLOCK_SCANS 8x8-block visits a request over all scans (libjpeg decodes
  every repeated scan, each in a few bytes: 78 KB of them took 7 s); data at least one bit a block.
  Incomplete image data is a 400, never a gray-filled prediction.
- animations (GIF, APNG, animated WebP): only the first frame is decoded.
Images are decoded one at a time, each freed before the next (WebP's decoder keeps two full canvases),
JPEGs at reduced scale where the resize allows, other formats whole (about 4 bytes a pixel, 16 for
WebP, whose decoder has no reduced scale in Pillow) and shrunk right after. Past decoding, memory is
bounded by the pixels the network sees, whatever the image's shape: cropped to at most 4:1 before the
resize (a 3 x 30000 strip would otherwise grow to gigabytes), each crop copied out of its resize buffer.
The costliest request accepted takes about 2 s of one core (two 36-megapixel lossless WebPs and a
JPEG of 17 million block visits), far inside SageMaker's 60 s invocation timeout, and one image's
decode of memory (under 600 MB); test_endpoint_bounds.py measures each request's peak and CPU time.

Every body reaches `input_fn` as bytes, whatever its Content-Type: the toolkit would otherwise decode
`application/json` and `text/csv` bodies to str first, and answer invalid UTF-8 with a 500 (see
`content_types.UTF8_TYPES` below). Invalid UTF-8 in JSON is a 400, text/csv a 415.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from http import HTTPStatus

import torch
from PIL import Image
from sagemaker_inference import content_types
from sagemaker_inference.errors import GenericInferenceToolkitError

from classifier.presets import EvalPreset, decoded_pixels

logger = logging.getLogger(__name__)

# The toolkit's Transformer.transform decodes a body whose Content-Type is exactly one of
# content_types.UTF8_TYPES (application/json, text/csv; HTTP servers strip the spaces around a
# header's value first) to str before it calls input_fn, and turns invalid UTF-8 into a 500 that no
# handler function sees: no hook runs between the two, transform_fn may not sit beside input_fn, and
# the container's entry point fixes the handler service (aws/sagemaker-inference-toolkit#10 asks for
# a way). The Transformer looks the list up on every request, so emptying it in this worker, which
# serves only this model, hands every body to input_fn as bytes: JSON is decoded there (invalid
# UTF-8 is a 400) and text/csv is a 415 like any type we do not take.
content_types.UTF8_TYPES = []


# Each format under its own type, plus the generic ones; the format is always read from the bytes.
RAW_IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "application/x-image",
    "application/octet-stream",
)
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
# What output_fn can produce, in the order preferred when the client likes several equally.
ANSWER_TYPES = (JSON_TYPE, NPY_TYPE)
# Decoders Pillow may use on request bytes; the rest (TIFF, PSD, EPS, ...) only widen the attack surface.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# 40 megapixels covers phone photos (12-50 MP) yet bounds the memory a decode may take (a decompression
# bomb is a small file whose header claims a huge image; the header is checked before anything is decoded).
MAX_IMAGE_PIXELS = 40_000_000
# SageMaker caps a request at 6 MB anyway; this bounds one request's batch on the GPU.
MAX_IMAGES_PER_REQUEST = 16
# Decode time follows the pixels decoders write (1 s for a 36-megapixel lossless WebP on one core, a
# 1.4 KB file), not the file's size: a request may have two of the largest images decoded whole. A
# batch of photos stays far below it: JPEGs count at the reduced scale they are decoded at, and 6 MB
# of other photos holds some 40 megapixels.
MAX_DECODED_PIXELS_PER_REQUEST = 2 * MAX_IMAGE_PIXELS
# A progressive JPEG may repeat scans, each visiting every block of its components for a few bytes;
# libjpeg warns and goes on. libjpeg's progressive script has 10 scans, mozjpeg's about a dozen;
# nvImageCodec refuses over 256 by default.
MAX_JPEG_SCANS = 256
# 8x8 blocks the entropy decoders may visit in one request, over all scans of all its JPEGs: 32
# passes over a 40-megapixel image (a progressive 4:4:4 one takes 14, 4:2:0 takes 8; a baseline one 1.5
# to 3). A visit costs 5-40 ns, so this bounds a request's entropy decoding to about a second.
MAX_JPEG_BLOCK_SCANS = 32 * MAX_IMAGE_PIXELS // 64
# Marker segments in one JPEG: a photo has a few dozen (EXIF, ICC chunks, tables, scans).
MAX_JPEG_SEGMENTS = 1024
DEFAULT_TOP_K = 5
JSON_KEYS = ("images", "image", "instances", "top_k")
# The keys that carry images: a list of base64 strings, one string, or a list in the "instances" habit.
IMAGE_KEYS = ("images", "image", "instances")


class RequestError(GenericInferenceToolkitError):
    """A request the client must fix: answered with `status_code` and a one-line JSON message.

    The toolkit answers a `BaseInferenceToolkitError` with its status code; anything else is a 500.
    """

    def __init__(self, status_code: int, reason: str) -> None:
        message = json.dumps({"error": reason, "status": status_code})
        super().__init__(status_code, message, HTTPStatus(status_code).phrase)


@dataclass
class ImageRequest:
    """A parsed request: opened images (header read, pixels not yet decoded) and the asked-for k.

    `predict_fn` takes the images out as it decodes them.
    """

    images: list[Image.Image]
    top_k: int | None = None


@dataclass
class Prediction:
    logits: torch.Tensor  # (images, classes), float32, on the CPU
    class_names: list[str]  # in index order, from the metadata
    labels: list[str]  # readable class names, in the same order
    top_k: int | None = None


# --- requests ---------------------------------------------------------------------------------------


def media_type_of(content_type: str) -> str:
    """`Application/JSON; charset=utf-8` -> `application/json`."""
    return content_type.partition(";")[0].strip().lower()


def shorten(value: str | None, limit: int = 80) -> str:
    """A client-supplied value, quoted and cut short, safe to echo in a message."""
    text = repr(value) if value is not None else "(none)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: `type/subtype;param=value;q=0.5`."""

    type: str
    subtype: str
    params: dict[str, str]  # the media type's own parameters (those before q), names lowercased
    q: float
    position: int  # where the client listed it: earlier wins a tie

    def matches(self, media_type: str) -> bool:
        offered_type, _, offered_subtype = media_type.partition("/")
        return self.type == "*" or (self.type == offered_type and self.subtype in ("*", offered_subtype))

    @property
    def specificity(self) -> tuple[int, int]:
        """type/subtype;params > type/subtype > type/* > */*: the most specific match sets the q."""
        return (self.type != "*") + (self.subtype != "*"), len(self.params)


# RFC 9110's grammar: tokens, quoted strings, media ranges with parameters, qvalues.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED_STRING = r'"(?:[^"\\\x00-\x1f]|\\[^\x00-\x1f])*"'
_LIST_SEPARATORS = re.compile(r"[ \t,]*")
_MEDIA_RANGE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_PARAMETER = re.compile(rf"[ \t]*;[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED_STRING}))?")
_ELEMENT_END = re.compile(r"[ \t]*(?:,|\Z)")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_TOP_K = re.compile(r"[0-9]{1,6}")  # ASCII digits only: int() would also take "²" or "١"


def parse_accept(accept: str) -> list[MediaRange]:
    """The media ranges of an Accept header; a malformed one is the client's error (400)."""
    ranges: list[MediaRange] = []
    position = _LIST_SEPARATORS.match(accept).end()
    while position < len(accept):
        media_range = _MEDIA_RANGE.match(accept, position)
        if media_range is None or (media_range[1] == "*" and media_range[2] != "*"):
            raise RequestError(
                400, f"the Accept header {shorten(accept)} is not a list like application/json;q=0.9"
            )
        position = media_range.end()
        params: dict[str, str] = {}
        q: float | None = None
        while (parameter := _PARAMETER.match(accept, position)) is not None:
            position = parameter.end()
            name, value = parameter[1], parameter[2]
            if name is None:  # an empty parameter, as in "application/json;"
                continue
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name.lower() == "q" and q is None:
                if not _QVALUE.fullmatch(value):
                    raise RequestError(400, f"q={shorten(value)} in Accept is not a weight from 0 to 1")
                q = float(value)
            elif q is None:  # after q come accept-extensions, which mean nothing here
                params[name.lower()] = value
        element_end = _ELEMENT_END.match(accept, position)
        if element_end is None:
            raise RequestError(
                400, f"the Accept header {shorten(accept)} is not a list like application/json;q=0.9"
            )
        weight = 1.0 if q is None else q
        ranges.append(MediaRange(media_range[1].lower(), media_range[2].lower(), params, weight, len(ranges)))
        position = _LIST_SEPARATORS.match(accept, element_end.end()).end()
    return ranges


def negotiate(accept: str) -> tuple[str, dict[str, str]]:
    """The answer type `accept` prefers, with the parameters of the range that chose it (RFC 9110 12.5.1).

    Each type we produce takes the q of the most specific range matching it; q=0 means "not this".
    The highest q wins; a tie goes to the range listed first, then to the order of ANSWER_TYPES.
    """
    ranges = parse_accept(accept) or parse_accept("*/*")
    best: tuple[tuple[float, int, int], str, dict[str, str]] | None = None
    for preference, answer_type in enumerate(ANSWER_TYPES):
        matching = [media_range for media_range in ranges if media_range.matches(answer_type)]
        if not matching:
            continue
        chosen = max(matching, key=lambda media_range: (media_range.specificity, -media_range.position))
        rank = (chosen.q, -chosen.position, -preference)
        if chosen.q > 0 and (best is None or rank > best[0]):
            best = (rank, answer_type, chosen.params)
    if best is None:
        raise RequestError(406, f"cannot answer with {shorten(accept)}; accept {' or '.join(ANSWER_TYPES)}")
    return best[1], best[2]


def _parse_top_k(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"{source} must be a positive integer, got {shorten(str(value))}")
    return value


def accept_top_k(params: dict[str, str]) -> int | None:
    if "top_k" not in params:
        return None
    raw = params["top_k"]
    return _parse_top_k(int(raw) if _TOP_K.fullmatch(raw) else raw, "the Accept parameter top_k")


def parse_json_request(body: bytes | bytearray | str) -> ImageRequest:
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(400, f"the body is not valid JSON: {shorten(str(error))}") from None
    if not isinstance(document, dict):
        raise RequestError(400, 'the JSON body must be an object like {"images": ["<base64>", ...]}')
    unknown = sorted(set(document) - set(JSON_KEYS))
    if unknown:
        allowed = ", ".join(JSON_KEYS)
        raise RequestError(400, f"unknown JSON keys {shorten(', '.join(unknown))}; allowed: {allowed}")
    given = [key for key in IMAGE_KEYS if key in document]
    if len(given) != 1:
        raise RequestError(
            400, 'give exactly one of "images" (a list), "image" (one base64 string) and "instances" (a list)'
        )
    (key,) = given
    encoded = [document["image"]] if key == "image" else document[key]
    if key == "instances" and isinstance(encoded, list):
        # TensorFlow Serving's habit, {"b64": "..."} per instance, beside plain base64 strings.
        encoded = [_instance(item) for item in encoded]
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise RequestError(400, f'"{key}" must be a list of base64 strings')
    if not encoded:
        raise RequestError(400, f'"{key}" is empty')
    if len(encoded) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(413, f"{len(encoded)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
    top_k = _parse_top_k(document["top_k"], '"top_k"') if "top_k" in document else None
    request = open_images(
        [_decode_base64(text, index) for index, text in enumerate(encoded)],
        [f"image {index}" for index in range(len(encoded))],
    )
    request.top_k = top_k
    return request


def _instance(item: object) -> object:
    """One entry of "instances": a base64 string, or {"b64": "<base64>"}; anything else as it is."""
    return item.get("b64") if isinstance(item, dict) and set(item) == {"b64"} else item


def _decode_base64(text: str, index: int) -> bytes:
    # Accept data URLs (data:image/jpeg;base64,...) and line-wrapped base64 as `base64` tools write it.
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"image {index} is not valid base64") from None


def open_images(encoded: list[bytes], names: list[str]) -> ImageRequest:
    """Each image's header read, and the request's JPEG decoding work summed against its bound."""
    images, block_scans = [], 0
    for data, where in zip(encoded, names, strict=True):
        image, image_block_scans = _open_image(data, where)
        images.append(image)
        block_scans += image_block_scans
    if block_scans > MAX_JPEG_BLOCK_SCANS:
        raise RequestError(
            413,
            f"the JPEG scans in this request make the decoder visit {block_scans} 8x8 blocks; at most "
            f"{MAX_JPEG_BLOCK_SCANS}: send fewer or smaller images, or fewer progressive scans",
        )
    return ImageRequest(images=images)


def _open_image(data: bytes, where: str) -> tuple[Image.Image, int]:
    """Read the header only: format and size. Pixels are decoded later, at the size the model needs.

    Also returns the 8x8 block visits a JPEG's scans make its decoder do (0 for other formats).
    """
    if not data:
        raise RequestError(400, f"{where} is empty; send the image's bytes")
    # JPEG's markers are walked before Pillow's: Pillow reads them in Python up to the first scan, and
    # a few megabytes of empty markers would take it seconds; this walk stops at MAX_JPEG_SEGMENTS.
    layout = _check_jpeg(data, where) if data.startswith(b"\xff\xd8\xff") else None
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise RequestError(413, f"{where} is too large; at most {MAX_IMAGE_PIXELS} pixels") from None
    except Exception:  # Pillow raises many types on hostile headers; all mean "not an image we read".
        raise RequestError(
            400, f"{where} is not an image we can read ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(
            413, f"{where} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} pixels in all"
        )
    if layout is None:
        return image, 0
    _require_whole_jpeg(layout, where)
    return image, layout.block_scans


# Frame headers (SOFn) refused by name; the others, SOF0-SOF2, are Huffman-coded baseline, extended
# sequential and progressive frames.
_REFUSED_FRAMES = {
    0xC3: "lossless",
    **dict.fromkeys((0xC5, 0xC6, 0xC7), "hierarchical"),
    **dict.fromkeys((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF), "arithmetic-coded"),
}
# A marker, found as libjpeg's next_marker finds it: skip anything up to 0xFF, fill bytes (more 0xFF),
# then a code that is not a stuffed 0x00.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff]")
# A scan's entropy-coded data ends at the first marker other than a stuffed 0xFF00 or a restart (RSTn).
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9


class MalformedJpeg(ValueError):
    """A JPEG structure libjpeg would refuse too; the message says what is wrong."""


@dataclass
class JpegLayout:
    """What a JPEG's markers say its decode will cost, read before any pixel is decoded."""

    frame: int = 0  # the SOFn marker's code
    blocks: int = 0  # 8x8 blocks of all components in the frame
    scans: int = 0
    # Blocks the entropy decoder visits, summed over scans: what decoding costs besides the output.
    # A progressive scan may code a whole component in a few bytes (EOB runs), so this, not the
    # file's size, is what a file of thousands of repeated scans inflates.
    block_scans: int = 0
    scan_bytes: int = 0  # bytes of entropy-coded data in all scans
    segments: int = 0  # marker segments, scans included


def jpeg_layout(data: bytes) -> JpegLayout:
    """Walk a JPEG's markers up to its first EOI as libjpeg does, without decoding: frame, scans, costs.

    Stops early, with what it has counted so far over the limit, once a file has more scans or
    segments than any decoder here will be asked to process.
    """
    layout = JpegLayout()
    components: dict[int, tuple[int, int]] = {}  # id -> (horizontal, vertical) sampling factors
    width = height = 0
    position = 2  # after SOI
    while position + 2 <= len(data):
        found = _NEXT_MARKER.search(data, position)
        if found is None:
            break
        marker, position = data[found.start() + 1], found.end()
        if marker == _EOI:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn have no length
            continue
        layout.segments += 1
        if layout.segments > MAX_JPEG_SEGMENTS or layout.scans > MAX_JPEG_SCANS:
            return layout
        if position + 2 > len(data):
            break
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:
            raise MalformedJpeg(f"a marker segment declares {length} bytes")
        segment = data[position + 2 : position + length]
        position += length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (C4 DHT, C8 JPG, CC DAC)
            if layout.frame:
                raise MalformedJpeg("it has two frame headers")
            if marker in _REFUSED_FRAMES:
                layout.frame = marker
                return layout
            width, height, components = _frame_header(segment)
            layout.frame = marker
            layout.blocks = sum(_component_blocks(width, height, components, [key]) for key in components)
        elif marker == _SOS:
            if not layout.frame:
                raise MalformedJpeg("a scan comes before the frame header")
            selectors = segment[1 : 1 + 2 * segment[0] : 2] if segment else b""
            if not selectors or len(segment) < 4 + 2 * len(selectors) or set(selectors) - set(components):
                raise MalformedJpeg("a scan header names no component, or one the frame lacks")
            layout.scans += 1
            layout.block_scans += _component_blocks(width, height, components, list(selectors))
            end = _END_OF_SCAN.search(data, position)
            scan_end = end.start() if end else len(data)
            layout.scan_bytes += scan_end - position
            position = scan_end
    return layout


def _frame_header(segment: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """(width, height, {component id: (h, v) sampling}) from an SOFn segment's payload."""
    if len(segment) < 6 or len(segment) < 6 + 3 * segment[5]:
        raise MalformedJpeg("its frame header is cut short")
    height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
    components = {
        segment[offset]: (segment[offset + 1] >> 4, segment[offset + 1] & 15)
        for offset in range(6, 6 + 3 * segment[5], 3)
    }
    if not components or not all(1 <= factor <= 4 for pair in components.values() for factor in pair):
        raise MalformedJpeg("its frame header has no components, or sampling factors outside 1-4")
    return width, height, components


def _component_blocks(
    width: int, height: int, components: dict[int, tuple[int, int]], scanned: list[int]
) -> int:
    """8x8 blocks one scan of `scanned` components codes: each component's own blocks when alone,
    whole MCUs (padded at the right and bottom edges) when interleaved (JPEG standard A.2)."""
    h_max = max(h for h, _ in components.values())
    v_max = max(v for _, v in components.values())
    if len(scanned) == 1:
        h, v = components[scanned[0]]
        return math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    return mcus * sum(components[key][0] * components[key][1] for key in scanned)


def _check_jpeg(data: bytes, where: str) -> JpegLayout:
    """Refuse, before decoding, a JPEG whose decode would be unbounded or would invent pixels.

    - Only Huffman-coded baseline, sequential and progressive frames: browsers decode no other kind
      either. Arithmetic coding may legally end a scan's data early (the decoder then supplies zeros,
      and a mid-gray image codes to no bytes at all), so a header over no data could not be told from
      a whole image; lossless and hierarchical JPEGs are not photos anyone sends.
    - At most MAX_JPEG_SCANS scans (libjpeg-turbo leaves this limit to the application, as
      TJPARAM_SCANLIMIT) and MAX_JPEG_SEGMENTS segments; a request's block visits are summed against
      MAX_JPEG_BLOCK_SCANS by the caller, and whole data is checked once the header's size is known
      to be within bounds (`_require_whole_jpeg`).
    """
    try:
        layout = jpeg_layout(data)
    except MalformedJpeg as error:
        raise RequestError(400, f"{where} is not a JPEG we can read: {error}") from None
    if layout.frame in _REFUSED_FRAMES:
        raise RequestError(
            400,
            f"{where} is a {_REFUSED_FRAMES[layout.frame]} JPEG (SOF{layout.frame - 0xC0}), which this "
            "endpoint does not decode; send a baseline or progressive JPEG",
        )
    if layout.segments > MAX_JPEG_SEGMENTS:
        raise RequestError(400, f"{where} has over {MAX_JPEG_SEGMENTS} JPEG marker segments")
    if layout.scans > MAX_JPEG_SCANS:
        raise RequestError(
            400, f"{where} has over {MAX_JPEG_SCANS} JPEG scans; a photo has a few dozen at most"
        )
    return layout


def _require_whole_jpeg(layout: JpegLayout, where: str) -> None:
    """Refuse a JPEG whose image data is too short for the size its header declares.

    libjpeg fills what is missing with gray and only warns (Pillow and torchvision both return the
    gray image), so a header claiming 6000x6000 over a few hundred bytes would be "predicted". Every
    8x8 block of every component needs at least one bit in a Huffman-coded scan (its DC symbol), so
    fewer bits than blocks cannot be a whole image. Data cut off mid-scan needs no check here: the
    decoders fail on it (Pillow without LOAD_TRUNCATED_IMAGES).
    """
    if layout.scan_bytes * 8 < layout.blocks:
        raise RequestError(
            400,
            f"{where} is incomplete: its size needs at least {math.ceil(layout.blocks / 8)} bytes of image "
            f"data, it has {layout.scan_bytes}",
        )


def check_decode_budget(images: list[Image.Image], preset: EvalPreset) -> None:
    """Refuse, before decoding any of them, images whose decoders would write too many pixels in all.

    A few kilobytes of lossless WebP or PNG can declare a 36-megapixel flat image each; the bound per
    image keeps one decode's memory in check, this keeps a batch's time in check.
    """
    pixels = sum(decoded_pixels(image, preset.resize_size) for image in images)
    if pixels > MAX_DECODED_PIXELS_PER_REQUEST:
        raise RequestError(
            413,
            f"decoding these {len(images)} image(s) means writing {pixels / 1e6:.0f} megapixels; "
            f"at most {MAX_DECODED_PIXELS_PER_REQUEST // 1_000_000} per request (JPEGs count at the "
            "reduced scale they are decoded at): send fewer or smaller images",
        )


def network_pixels(images: list[Image.Image], preset: EvalPreset, index: int) -> torch.Tensor:
    """The crop the network sees of the first of `images`, taken out of the list: uint8 CHW, in memory
    of its own.

    A truncated or corrupt file is the client's error (400). Running out of memory on one image is
    answered 413, not 500: the preset bounds the work by the crop's size, this is the last line.
    """
    pixels = _decode(images, preset, index)  # the image itself is gone once this returns
    try:
        return preset.geometry(pixels)
    except (MemoryError, RuntimeError) as error:
        if _is_allocation_failure(error):
            raise _too_large(index) from None
        raise  # anything else is this code's fault: the toolkit's 500


def _decode(images: list[Image.Image], preset: EvalPreset, index: int) -> torch.Tensor:
    image = images.pop(0)  # the only reference to it from here on
    try:
        try:
            return preset.decode(image)
        finally:
            image.close()
    except Exception as error:  # Corrupt data surfaces only now, as OSError, SyntaxError, zlib.error, ...
        if _is_allocation_failure(error):
            raise _too_large(index) from None
        logger.info("image %d could not be decoded: %s", index, error)
        raise RequestError(400, f"image {index} is truncated or corrupt") from None


def _is_allocation_failure(error: Exception) -> bool:
    # Pillow raises MemoryError; torch's CPU allocator a RuntimeError ("can't allocate memory").
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def _too_large(index: int) -> RequestError:
    return RequestError(413, f"image {index} needs more memory than one image may take here")


# --- responses --------------------------------------------------------------------------------------


def encode_json(prediction: Prediction, top_k: int | None) -> bytes:
    logits, class_names, labels = prediction.logits, prediction.class_names, prediction.labels
    k = min(top_k or DEFAULT_TOP_K, logits.shape[1])
    probabilities, indices = torch.softmax(logits, dim=1).topk(k, dim=1)
    predictions = [
        {
            "top_k": [
                {
                    "label": labels[index],
                    "class_name": class_names[index],
                    "index": index,
                    "probability": round(probability, 6),
                }
                for probability, index in zip(row_probabilities, row_indices, strict=True)
            ]
        }
        for row_probabilities, row_indices in zip(probabilities.tolist(), indices.tolist(), strict=True)
    ]
    return json.dumps({"predictions": predictions}).encode("utf-8")
