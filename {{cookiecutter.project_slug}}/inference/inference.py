"""The endpoint handler that SageMaker's PyTorch serving container runs.

The container calls `model_fn(model_dir)` once per worker, then for each request
`input_fn(body, content_type)` -> `predict_fn(data, model)` -> `output_fn(prediction, accept)`.
`serve` (the project's local endpoint) loads this same file and calls the same four functions.

Requests (Content-Type):
    image/jpeg, image/png, application/x-image, application/octet-stream
        one image's raw bytes; the format is read from the bytes (JPEG, PNG, WebP, BMP, GIF)
    application/json
        {"images": ["<base64>", ...], "top_k": 3}, or {"image": "<base64>"}; "top_k" is optional
Responses (Accept, first supported type in the order listed; default application/json):
    application/json
        {"predictions": [{"top_k": [{"label": "Affenpinscher", "class_name": "001.Affenpinscher",
                                     "index": 0, "probability": 0.93}, ...]}, ...]}, one entry per image;
        k is the body's "top_k", else an Accept parameter (application/json;top_k=3), else 5,
        at most the number of classes
    application/x-npy
        float32 logits, shape (images, classes), for the SDK's NumpyDeserializer
Errors: a 4xx status whose message is one line of JSON, {"error": "...", "status": 415};
the container appends a traceback after that line.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np
import torch
from PIL import Image
from torch.fx.experimental.optimization import fuse

from classifier.artifact import ModelMetadata, load_artifact, readable_class_name
from classifier.presets import EvalPreset

try:
    from sagemaker_inference.errors import BaseInferenceToolkitError
except ImportError:  # The local endpoint in a user's environment, which need not have the toolkit.

    class BaseInferenceToolkitError(Exception):
        """The toolkit's base class, same constructor: an error that carries its HTTP status."""

        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)


logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/octet-stream")
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
# Decoders Pillow may use on request bytes; the rest (TIFF, PSD, EPS, ...) only widen the attack surface.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# 40 megapixels covers phone photos (12-50 MP) yet bounds the memory a decode may take (a decompression
# bomb is a small file whose header claims a huge image; the header is checked before anything is decoded).
MAX_IMAGE_PIXELS = 40_000_000
# SageMaker caps a request at 6 MB anyway; this bounds one request's batch on the GPU.
MAX_IMAGES_PER_REQUEST = 16
DEFAULT_TOP_K = 5
JSON_KEYS = ("images", "image", "top_k")


class RequestError(BaseInferenceToolkitError):
    """A request the client must fix: answered with `status_code` and a one-line JSON message."""

    def __init__(self, status_code: int, reason: str) -> None:
        message = json.dumps({"error": reason, "status": status_code})
        super().__init__(status_code, message, HTTPStatus(status_code).phrase)


@dataclass
class LoadedModel:
    """What `model_fn` builds once per worker: the network and everything around it."""

    network: torch.nn.Module
    metadata: ModelMetadata
    preset: EvalPreset
    device: torch.device
    # Readable class names in index order, worked out once rather than for every answer.
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = [readable_class_name(name) for name in self.metadata.class_names]


@dataclass
class ImageRequest:
    """A parsed request: opened images (header read, pixels not yet decoded) and the asked-for k."""

    images: list[Image.Image]
    top_k: int | None = None


@dataclass
class Prediction:
    logits: torch.Tensor  # (images, classes), float32, on the CPU
    class_names: list[str]  # in index order, from the metadata
    labels: list[str]  # readable class names, in the same order
    top_k: int | None = None


def model_fn(model_dir: str) -> LoadedModel:
    """Rebuild the network from metadata.json + model.pth, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, metadata = load_artifact(model_dir, device)
    network = _fold_batch_norms(network, metadata.image_size, device)
    # Convolutions run 10-20% faster in NHWC on CPUs (oneDNN) and on tensor-core GPUs; same results.
    network = network.to(memory_format=torch.channels_last)
    logger.info("loaded %s with %d classes on %s", metadata.backbone, metadata.num_classes, device)
    return LoadedModel(network=network, metadata=metadata, preset=metadata.eval_preset(), device=device)


def input_fn(request_body: bytes | bytearray | str, content_type: str | None) -> ImageRequest:
    """Parse the body and read each image's header; reject what cannot be served before decoding."""
    media_type, _ = _parse_media_type(content_type or "")
    if media_type in RAW_IMAGE_TYPES:
        if isinstance(request_body, str):
            raise RequestError(400, f"a {media_type} body must be bytes, not text")
        return ImageRequest(images=[_open_image(bytes(request_body), "the body")])
    if media_type == JSON_TYPE:
        return _parse_json_request(request_body)
    raise RequestError(
        415,
        f"content type {_shorten(content_type)} is not supported; "
        f"send one of {', '.join(RAW_IMAGE_TYPES)} or {JSON_TYPE}",
    )


def predict_fn(request: ImageRequest, model: LoadedModel) -> Prediction:
    """Decode each image at the size the preset needs, transform, and run the network once."""
    preset = model.preset
    crops = [preset.geometry(_decode(image, preset, index)) for index, image in enumerate(request.images)]
    # uint8 to the device (a quarter of the bytes), scaled there as one batch, as training does.
    batch = preset.scaling(torch.stack(crops).to(model.device))
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = model.network(batch)
    return Prediction(logits.float().cpu(), model.metadata.class_names, model.labels, request.top_k)


def output_fn(prediction: Prediction, accept: str | None) -> tuple[bytes, str]:
    """Serialise for the first type in `accept` we can produce; returns (body, content type)."""
    for media_type, params in _parse_accept(accept or JSON_TYPE):
        if media_type in (JSON_TYPE, "application/*", "*/*"):
            top_k = prediction.top_k if prediction.top_k is not None else _accept_top_k(params)
            return _encode_json(prediction, top_k), JSON_TYPE
        if media_type == NPY_TYPE:
            buffer = io.BytesIO()
            np.save(buffer, prediction.logits.numpy(), allow_pickle=False)
            return buffer.getvalue(), NPY_TYPE
    raise RequestError(406, f"cannot answer with {_shorten(accept)}; accept {JSON_TYPE} or {NPY_TYPE}")


# --- the network ----------------------------------------------------------------------------------


def _fold_batch_norms(network: torch.nn.Module, image_size: int, device: torch.device) -> torch.nn.Module:
    """The network with each BatchNorm merged into the convolution before it, if that changes nothing.

    In eval mode a BatchNorm is a fixed per-channel scale and shift, so the convolution's weights and
    bias can absorb it: one pass over the activations fewer per layer, 7-14% faster on a CPU for the
    ResNets, EfficientNet and MobileNet (ConvNeXt has no BatchNorm). torch.fx traces torchvision's
    classifiers; a network it cannot trace, or whose logits move beyond float rounding, is served as is.
    """
    try:
        folded = fuse(network).eval()
    except Exception:  # tracing fails on data-dependent control flow; any failure just means "no folding"
        logger.info("serving %s without folding BatchNorm: torch.fx cannot trace it", type(network).__name__)
        return network
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        expected, actual = network(example), folded(example)
    if not torch.allclose(actual, expected, rtol=1e-4, atol=1e-4):
        # TF32 convolutions on a GPU can round this far apart; the unfolded network is the reference.
        difference = (actual - expected).abs().max().item()
        logger.info("serving without folding BatchNorm: the logits differ by %.2g", difference)
        return network
    return folded


# --- requests ---------------------------------------------------------------------------------------


def _parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """`application/json; top_k=3` -> ("application/json", {"top_k": "3"})."""
    media_type, *raw_params = value.split(";")
    params = {}
    for raw in raw_params:
        name, _, param_value = raw.partition("=")
        params[name.strip().lower()] = param_value.strip().strip('"')
    return media_type.strip().lower(), params


def _parse_accept(accept: str) -> list[tuple[str, dict[str, str]]]:
    return [_parse_media_type(part) for part in accept.split(",") if part.strip()]


def _shorten(value: str | None, limit: int = 80) -> str:
    """A client-supplied value, quoted and cut short, safe to echo in a message."""
    text = repr(value) if value is not None else "(none)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_top_k(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"{source} must be a positive integer, got {_shorten(str(value))}")
    return value


def _accept_top_k(params: dict[str, str]) -> int | None:
    if "top_k" not in params:
        return None
    raw = params["top_k"]
    return _parse_top_k(int(raw) if raw.isdigit() else raw, "the Accept parameter top_k")


def _parse_json_request(body: bytes | bytearray | str) -> ImageRequest:
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(400, f"the body is not valid JSON: {_shorten(str(error))}") from None
    if not isinstance(document, dict):
        raise RequestError(400, 'the JSON body must be an object like {"images": ["<base64>", ...]}')
    unknown = sorted(set(document) - set(JSON_KEYS))
    if unknown:
        allowed = ", ".join(JSON_KEYS)
        raise RequestError(400, f"unknown JSON keys {_shorten(', '.join(unknown))}; allowed: {allowed}")
    if ("images" in document) == ("image" in document):
        raise RequestError(400, 'give exactly one of "images" (a list) and "image" (one base64 string)')
    encoded = document["images"] if "images" in document else [document["image"]]
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise RequestError(400, '"images" must be a list of base64 strings')
    if not encoded:
        raise RequestError(400, '"images" is empty')
    if len(encoded) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(413, f"{len(encoded)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
    top_k = _parse_top_k(document["top_k"], '"top_k"') if "top_k" in document else None
    images = [
        _open_image(_decode_base64(text, index), f"image {index}") for index, text in enumerate(encoded)
    ]
    return ImageRequest(images=images, top_k=top_k)


def _decode_base64(text: str, index: int) -> bytes:
    # Accept data URLs (data:image/jpeg;base64,...) and line-wrapped base64 as `base64` tools write it.
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"image {index} is not valid base64") from None


def _open_image(data: bytes, where: str) -> Image.Image:
    """Read the header only: format and size. Pixels are decoded later, at the size the model needs."""
    if not data:
        raise RequestError(400, f"{where} is empty; send the image's bytes")
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
    return image


def _decode(image: Image.Image, preset: EvalPreset, index: int) -> torch.Tensor:
    """Decode the pixels; a truncated or corrupt file is the client's error (400), never a 500."""
    try:
        return preset.decode(image)
    except Exception:  # Corrupt data surfaces only now, as OSError, SyntaxError, zlib.error, ...
        logger.info("image %d could not be decoded", index, exc_info=True)
        raise RequestError(400, f"image {index} is truncated or corrupt") from None


# --- responses --------------------------------------------------------------------------------------


def _encode_json(prediction: Prediction, top_k: int | None) -> bytes:
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
