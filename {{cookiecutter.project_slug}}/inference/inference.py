"""The endpoint handler that SageMaker's PyTorch serving container runs: the four functions its serving
contract names.

The container calls `model_fn(model_dir)` once per worker, then for each request
`input_fn(body, content_type)` -> `predict_fn(data, model)` -> `output_fn(prediction, accept)`,
through the sagemaker-inference toolkit's `Transformer`; `serve` (the project's local endpoint)
drives this same file through that same `Transformer`. What requests and answers look like, and the
bounds every request is held to, are protocol.py's (beside this file, shipped with it in code/).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

# PyTorchModel(dependencies=["classifier"]) repacks the shared package into code/lib/; the serving
# container puts only code/ on the import path. protocol.py is beside this file, in code/: a copy of
# this file loaded by path from elsewhere finds it there too (appended, so it shadows nothing).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
if HERE not in sys.path:
    sys.path.append(HERE)

from protocol import (  # noqa: E402
    JSON_TYPE,
    NPY_TYPE,
    RAW_IMAGE_TYPES,
    ImageRequest,
    Prediction,
    RequestError,
    accept_top_k,
    check_decode_budget,
    encode_json,
    media_type_of,
    negotiate,
    network_pixels,
    open_images,
    parse_json_request,
    shorten,
)

from classifier.artifact import (  # noqa: E402
    QUANTIZE_ENV,
    ModelMetadata,
    OnnxNetwork,
    choose_precision,
    load_artifact,
    load_metadata,
    load_quantized,
    readable_class_name,
)
from classifier.presets import EvalPreset  # noqa: E402

logger = logging.getLogger(__name__)


def model_fn(model_dir: str) -> LoadedModel:
    """The int8 network (ONNX Runtime, model_int8.onnx) on a CPU where the setting and metadata.json
    choose it; else the float one rebuilt from metadata.json + model.pth, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metadata = load_metadata(model_dir)
    precision, reason = choose_precision(metadata, device.type, os.environ.get(QUANTIZE_ENV) or None)
    if precision == "int8":
        network = load_quantized(model_dir, metadata)
    else:
        network, metadata = load_artifact(model_dir, device)
        network = _fold_batch_norms(network, metadata.image_size, device)
        # Convolutions run 10-20% faster in NHWC on CPUs (oneDNN) and on tensor-core GPUs; same results.
        network = network.to(memory_format=torch.channels_last)
    logger.info(
        "loaded %s with %d classes on %s, %s: %s",
        *(metadata.backbone, metadata.num_classes, device, precision, reason),
    )
    return LoadedModel(network=network, metadata=metadata, preset=metadata.eval_preset(), device=device)


def input_fn(request_body: bytes | bytearray | str, content_type: str | None) -> ImageRequest:
    """Parse the body and read each image's header; reject what cannot be served before decoding."""
    media_type = media_type_of(content_type or "")
    if media_type in RAW_IMAGE_TYPES:
        if isinstance(request_body, str):
            raise RequestError(400, f"a {media_type} body must be bytes, not text")
        return open_images([bytes(request_body)], ["the body"])
    if media_type == JSON_TYPE:
        return parse_json_request(request_body)
    raise RequestError(
        415,
        f"content type {shorten(content_type)} is not supported; "
        f"send one of {', '.join(RAW_IMAGE_TYPES)} or {JSON_TYPE}",
    )


def predict_fn(request: ImageRequest, model: LoadedModel) -> Prediction:
    """Decode each image at the size the preset needs, transform, and run the network once.

    The images are taken out of the request one at a time: once an image is decoded nothing refers
    to it, so its decoder's buffers (two full canvases for WebP) are freed before the next is decoded.
    """
    check_decode_budget(request.images, model.preset)
    crops = []
    while request.images:
        crops.append(network_pixels(request.images, model.preset, len(crops)))
    # uint8 to the device (a quarter of the bytes), scaled there as one batch, as training does.
    batch = model.preset.scaling(torch.stack(crops).to(model.device))
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = model.network(batch)
    return Prediction(logits.float().cpu(), model.metadata.class_names, model.labels, request.top_k)


def output_fn(prediction: Prediction, accept: str | None) -> tuple[bytes, str]:
    """Serialise for the type `accept` prefers among those we produce; returns (body, content type)."""
    media_type, params = negotiate(accept or JSON_TYPE)
    if media_type == NPY_TYPE:
        buffer = io.BytesIO()
        np.save(buffer, prediction.logits.numpy(), allow_pickle=False)
        return buffer.getvalue(), NPY_TYPE
    top_k = prediction.top_k if prediction.top_k is not None else accept_top_k(params)
    return encode_json(prediction, top_k), JSON_TYPE


@dataclass
class LoadedModel:
    """What `model_fn` builds once per worker: the network and everything around it."""

    network: torch.nn.Module | OnnxNetwork  # the float network, or the int8 one in ONNX Runtime
    metadata: ModelMetadata
    preset: EvalPreset
    device: torch.device
    # Readable class names in index order, worked out once rather than for every answer.
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = [readable_class_name(name) for name in self.metadata.class_names]


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
