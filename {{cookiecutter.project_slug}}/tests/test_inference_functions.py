"""inference.py's four functions called directly: train-vs-serve parity, Accept negotiation, the JPEG
walk, and what the source directory may import."""

from __future__ import annotations

import ast
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SERVED_CLASS_NAMES, project_module
from hostile_images import repeated_scans
from inference_payloads import (
    JPEG,
    encode,
    exif_with_orientation,
    photo,
)
from PIL import Image, ImageOps

from classifier.backbones import SUPPORTED_BACKBONES, build_model
from classifier.presets import EvalPreset

load_handler = project_module("local.endpoint").load_handler


# --- the unit tier: the four functions, no toolkit -------------------------------------------------


@pytest.fixture(scope="module")
def handler(inference_source):
    return load_handler(inference_source)


@pytest.fixture(scope="module")
def protocol(handler):
    """protocol.py, the request and response handling the handler imports from beside it."""
    return sys.modules[handler.RequestError.__module__]


@pytest.fixture(scope="module")
def loaded_model(handler, model_artifact_dir):
    return handler.model_fn(str(model_artifact_dir))


def network_input(handler, model, body: bytes, content_type: str) -> torch.Tensor:
    """The batch the network receives for this request body, captured by a forward pre-hook."""
    captured: list[torch.Tensor] = []
    hook = model.network.register_forward_pre_hook(lambda _, args: captured.append(args[0].cpu().clone()))
    try:
        handler.predict_fn(handler.input_fn(body, content_type), model)
    finally:
        hook.remove()
    return captured[0]


@pytest.mark.parametrize(
    ("size", "image_format", "orientation"),
    [
        ((640, 480), "JPEG", None),
        ((90, 70), "JPEG", None),
        ((300, 200), "PNG", None),
        ((640, 480), "JPEG", 6),  # a portrait phone photo, stored lying on its side
        ((90, 70), "JPEG", 8),
        ((300, 200), "PNG", 3),
        ((120, 90), "WEBP", 5),
    ],
    ids=["jpeg-draft", "jpeg", "png", "jpeg-draft-exif-6", "jpeg-exif-8", "png-exif-3", "webp-exif-5"],
)
def test_serving_preprocessing_equals_training_evaluation(
    tmp_path, handler, loaded_model, size, image_format, orientation
):
    """Same file, same tensor: the endpoint sees what evaluation saw during training, upright.

    640x480 is large enough for the JPEG decoder to decode at reduced scale (draft mode).
    """
    path = tmp_path / f"dog.{image_format.lower()}"
    options = {"exif": exif_with_orientation(orientation)} if orientation else {}
    photo(size, hue=0.3).save(path, format=image_format, quality=90, **options)
    # As training builds its evaluation transform, and as its dataset hands over each file (opened lazily,
    # so the JPEG decoder can skip detail); training scales whole uint8 batches, which must not matter.
    preset = EvalPreset(loaded_model.metadata.image_size)
    training_tensor = preset(Image.open(path))
    training_batch = preset.scaling(preset.uint8(Image.open(path)).unsqueeze(0))
    serving_batch = network_input(handler, loaded_model, path.read_bytes(), f"image/{image_format.lower()}")
    assert serving_batch.shape == (1, 3, 32, 32)
    assert torch.equal(serving_batch[0], training_tensor)
    assert torch.equal(serving_batch, training_batch)
    if orientation and min(size) < 2 * preset.resize_size:  # decoded whole: exactly PIL's upright image
        upright = ImageOps.exif_transpose(Image.open(path))
        assert torch.equal(serving_batch[0], preset(upright))


def test_sixteen_bit_grey_is_scaled_not_clipped(handler, loaded_model):
    sixteen_bit = encode(Image.fromarray(np.full((40, 48), 257 * 100, np.uint16)), "PNG")
    eight_bit = encode(Image.new("L", (48, 40), 100), "PNG")
    assert torch.equal(
        network_input(handler, loaded_model, sixteen_bit, "image/png"),
        network_input(handler, loaded_model, eight_bit, "image/png"),
    )


def test_model_fn_builds_an_eval_network_and_its_preset_once(loaded_model, model_artifact_dir):
    assert not loaded_model.network.training
    assert loaded_model.metadata.class_names == SERVED_CLASS_NAMES
    assert loaded_model.preset.crop_size == 32
    assert loaded_model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("backbone", SUPPORTED_BACKBONES)
def test_folding_batch_norm_into_convolutions_keeps_the_logits(handler, backbone):
    torch.manual_seed(0)
    network = build_model(backbone, 5, pretrained=False, finetune="full")
    for module in network.modules():  # statistics like a trained network's, not a fresh BatchNorm's identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    network.eval()
    folded = handler._fold_batch_norms(network, 32, torch.device("cpu"))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(images), network(images), rtol=1e-4, atol=1e-4)


def test_a_network_that_does_not_trace_is_served_unfolded(handler):
    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.BatchNorm2d(4)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            features = self.norm(self.conv(images))
            return features if features.sum() > 0 else -features  # torch.fx cannot trace this branch

    network = DataDependent().eval()
    assert handler._fold_batch_norms(network, 32, torch.device("cpu")) is network


def test_errors_are_the_toolkits_generic_error_with_a_status_code(handler):
    from sagemaker_inference.errors import GenericInferenceToolkitError

    with pytest.raises(GenericInferenceToolkitError) as raised:
        handler.input_fn(JPEG, "text/plain")
    assert raised.value.status_code == 415
    assert "text/plain" in json.loads(raised.value.message)["error"]


@pytest.fixture(scope="module")
def a_prediction(handler, loaded_model):
    return handler.predict_fn(handler.input_fn(JPEG, "image/jpeg"), loaded_model)


@pytest.mark.parametrize(
    ("accept", "answer_type", "top_k"),
    [
        ("application/json", "application/json", 3),
        ("application/x-npy", "application/x-npy", None),
        ("*/*", "application/json", 3),
        ("application/*", "application/json", 3),
        ("Application/JSON", "application/json", 3),
        ("application/x-npy;q=0.5, application/json;q=0.9", "application/json", 3),
        ("application/json;q=0.5, application/x-npy;q=0.9", "application/x-npy", None),
        ("application/x-npy, application/json", "application/x-npy", None),  # a tie: listed first
        ("application/json;q=0, */*", "application/x-npy", None),  # the specific range sets json's q
        ("*/*;q=0.1, application/json;q=0", "application/x-npy", None),
        ("application/json;q=0.001", "application/json", 3),
        ("application/json;top_k=2", "application/json", 2),
        ('application/json; top_k="1"', "application/json", 1),
        ("application/json;q=0.5;top_k=1", "application/json", 3),  # after q: an extension, not top_k
        ("text/html, application/x-npy;q=0.1, application/json;top_k=2;q=0.2", "application/json", 2),
        ('application/json;note="a, b", application/x-npy;q=0.5', "application/json", 3),
        ("application/json, , application/x-npy", "application/json", 3),
        ("application/json;", "application/json", 3),
    ],
)
def test_accept_is_negotiated_by_q_value(handler, a_prediction, accept, answer_type, top_k):
    body, content_type = handler.output_fn(a_prediction, accept)
    assert content_type == answer_type
    if top_k is not None:
        assert [len(image["top_k"]) for image in json.loads(body)["predictions"]] == [top_k]


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json;q=0", 406),
        ("application/json;q=0.000, application/x-npy;q=0", 406),
        ("text/*", 406),
        ("application/json;q=1.001", 400),
        ("application/json;q=0.1234", 400),
        ("application/json;q=", 400),
        ("application/json;q", 400),
        ("*/json", 400),
        ("application/json;top_k=\u00b2", 400),
        ("application/json;top_k=-1", 400),
        ('application/json;top_k="unterminated', 400),
        ("application/json garbage", 400),
        ("application/\u00e9", 400),
    ],
)
def test_accept_refusals_are_clean_4xx(handler, a_prediction, accept, status):
    with pytest.raises(handler.RequestError) as raised:
        handler.output_fn(a_prediction, accept)
    assert raised.value.status_code == status
    assert json.loads(raised.value.message)["status"] == status


def test_the_jpeg_walk_counts_every_components_blocks_and_every_scans_visits(protocol):
    whole = encode(photo((640, 480)))
    layout = protocol.jpeg_layout(whole)
    assert layout.blocks == 80 * 60 + 2 * 40 * 30  # 4:2:0: full-size luma, chroma at half in each direction
    assert layout.scans == 1 and layout.block_scans == layout.blocks  # one interleaved scan
    assert layout.scan_bytes < len(whole) and layout.scan_bytes * 8 >= layout.blocks
    # libjpeg's progressive script: DC scans over all three components twice, each component's AC
    # bands in 2 (chroma) or 4 (luma) scans of that component alone.
    progressive = protocol.jpeg_layout(encode(photo((640, 480)), progressive=True, subsampling=0))
    assert progressive.scans == 10 and progressive.block_scans == 14 * 80 * 60
    # Junk between segments is skipped, as libjpeg skips it: the scans after it still count.
    junk = repeated_scans(photo((64, 48)), 3).replace(b"\xff\xda", b"junk\xff\xda")
    assert (
        protocol.jpeg_layout(junk).scans
        == protocol.jpeg_layout(repeated_scans(photo((64, 48)), 3)).scans
        == 13
    )


def test_jpeg_decoded_pixels_follow_the_draft_scale(loaded_model):
    """The request's pixel budget counts what the decoder writes: a JPEG at the scale draft picks."""
    from classifier.presets import decode_pixels, decoded_pixels

    preset = loaded_model.preset
    for size, image_format in [
        ((640, 480), "JPEG"),
        ((2000, 70), "JPEG"),
        ((333, 999), "JPEG"),
        ((300, 200), "PNG"),
    ]:
        image = Image.open(io.BytesIO(encode(photo(size), image_format)))
        expected = decoded_pixels(image, preset.resize_size)
        pixels = decode_pixels(image, preset.resize_size)
        assert pixels.shape[1] * pixels.shape[2] <= expected
        if image_format != "PNG":  # PNG is shrunk after decoding; the decoder wrote the whole frame
            assert pixels.shape[1] * pixels.shape[2] == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_and_cpu_logits(handler, model_artifact_dir):
    model = handler.model_fn(str(model_artifact_dir))
    assert next(model.network.parameters()).is_cuda
    prediction = handler.predict_fn(handler.input_fn(JPEG, "image/jpeg"), model)
    assert prediction.logits.device.type == "cpu"


# --- what the source directory may depend on -------------------------------------------------------

# What the PyTorch serving image has; training-only packages (smdebug) must never be needed.
# classifier and protocol are the sources' own (code/lib/classifier/, code/protocol.py).
SERVING_IMAGE_MODULES = {
    "torch",
    "torchvision",
    "PIL",
    "numpy",
    "sagemaker_inference",
    "classifier",
    "protocol",
}
# What inference/requirements.txt installs at start-up, by distribution and the module it brings: ONNX
# Runtime, imported only where an int8 model is served (classifier/artifact.py).
STARTUP_REQUIREMENTS = {"onnxruntime": "onnxruntime"}


def imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_inference_sources_need_only_the_serving_image(inference_source):
    sources = sorted(inference_source.rglob("*.py"))
    assert {path.name for path in sources} >= {"inference.py", "artifact.py", "presets.py", "backbones.py"}
    installed_at_start = set(STARTUP_REQUIREMENTS.values())
    for path in sources:
        outside = imported_top_level_modules(path) - SERVING_IMAGE_MODULES - set(sys.stdlib_module_names)
        assert outside <= installed_at_start, f"{path.name} imports {outside - installed_at_start}"
    requirements = (inference_source / "requirements.txt").read_text().splitlines()
    named = [re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0] for line in requirements]
    assert [name for name in named if name.strip() and not name.startswith("#")] == list(STARTUP_REQUIREMENTS)
