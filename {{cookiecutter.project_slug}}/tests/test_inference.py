"""inference.py as the SageMaker PyTorch serving container runs it, plus train-vs-serve parity.

The container tier drives the real sagemaker-inference Transformer through the PyTorch toolkit's
HandlerService, from a model.tar.gz laid out as PyTorchModel repacks it, with a context shaped like
the one TorchServe passes. The unit tier calls the four functions directly.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import random
import re
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SERVED_CLASS_NAMES, project_module
from hostile_images import jpeg_header_only, repeated_scans
from PIL import ExifTags, Image, ImageOps

from classifier.artifact import readable_class_name
from classifier.backbones import SUPPORTED_BACKBONES, build_model
from classifier.presets import EvalPreset

load_handler = project_module("local.endpoint").load_handler
make_image = project_module("workflow.synthetic").make_image


# --- images, well-formed and hostile ----------------------------------------------------------------


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


# --- the container tier -----------------------------------------------------------------------------


# What the toolkit reads and writes of TorchServe's `ts.context.Context`: the local endpoint's stand-in.
ServerContext = project_module("local.endpoint")._Context


@dataclass
class Response:
    status: int
    content_type: str | None
    body: bytes


@dataclass
class Container:
    service: object
    model_dir: Path

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None) -> Response:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        context = ServerContext(self.model_dir, headers)
        # TorchServe hands the body over as a bytearray (decode_input_request=false in the toolkit's config).
        [result] = self.service.handle([{"body": bytearray(body)}], context)
        payload = result.encode("utf-8") if isinstance(result, str) else bytes(result)
        return Response(context.status_code, context.content_type, payload)


HANDLER_PACKAGES = ("inference", "protocol", "classifier")


def _handler_modules() -> dict[str, object]:
    return {name: mod for name, mod in sys.modules.items() if name.partition(".")[0] in HANDLER_PACKAGES}


@pytest.fixture(scope="module")
def container(tmp_path_factory, model_archive) -> Iterator[Container]:
    """The serving container's worker: /opt/ml/model unpacked from model.tar.gz, code/ on the path."""
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    model_dir = tmp_path_factory.mktemp("opt-ml") / "model"
    with tarfile.open(model_archive) as tar:
        tar.extractall(model_dir, filter="data")
    code_dir = model_dir / "code"
    saved_modules = _handler_modules()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_PROGRAM", "inference.py")  # what PyTorchModel(entry_point=...) sets
        patch.setenv("PYTHONPATH", "")  # HandlerService.initialize prepends code/ to it
        patch.syspath_prepend(str(code_dir))  # the worker process starts with code/ on PYTHONPATH
        for name in saved_modules:  # import inference and classifier from code/, as the worker does
            del sys.modules[name]
        try:
            service = HandlerService()
            service.initialize(ServerContext(model_dir, {}))
            yield Container(service, model_dir)
        finally:
            for name in _handler_modules():
                del sys.modules[name]
            sys.modules.update(saved_modules)


def predictions(response: Response) -> list[list[dict]]:
    assert response.status == 200, response.body[:500]
    assert response.content_type == "application/json"
    return [image["top_k"] for image in json.loads(response.body)["predictions"]]


def test_container_imports_handler_and_classifier_from_code_dir(container):
    """The model as the SDK repacks it: inference.py in code/, the `dependencies=` package in code/lib/."""
    code_dir = container.model_dir / "code"
    assert Path(sys.modules["inference"].__file__).parent == code_dir
    assert Path(sys.modules["protocol"].__file__).parent == code_dir  # the request handling beside it
    assert Path(sys.modules["classifier"].__file__).parent == code_dir / "lib" / "classifier"


def test_container_answers_jpeg_with_readable_breeds(container):
    [top] = predictions(container.invoke(JPEG, "image/jpeg"))
    # k defaults to 5, capped at the 3 classes.
    assert sorted(entry["class_name"] for entry in top) == SERVED_CLASS_NAMES
    for entry in top:
        assert entry["label"] == readable_class_name(entry["class_name"])
        assert SERVED_CLASS_NAMES[entry["index"]] == entry["class_name"]
    probabilities = [entry["probability"] for entry in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert {entry["label"] for entry in top} == {"Affenpinscher", "Afghan hound", "Airedale terrier"}


def test_container_reads_top_k_from_accept_and_names_the_chosen_type(container):
    response = container.invoke(JPEG, "image/jpeg", "application/json;top_k=2")
    [top] = predictions(response)
    assert len(top) == 2
    # q decides, not the order: JSON (q=1) over NumPy (q=0.9), NumPy (q=1) over JSON (q=0.5).
    response = container.invoke(JPEG, "image/jpeg", "text/html, application/x-npy;q=0.9, application/json")
    assert response.content_type == "application/json"
    response = container.invoke(JPEG, "image/jpeg", "application/json;q=0.5, application/x-npy")
    assert response.content_type == "application/x-npy"


def test_container_npy_logits_agree_with_json(container):
    [top] = predictions(container.invoke(JPEG, "image/jpeg", "application/json;top_k=3"))
    response = container.invoke(JPEG, "image/jpeg", "application/x-npy")
    assert response.status == 200
    logits = np.load(io.BytesIO(response.body), allow_pickle=False)
    assert logits.shape == (1, len(SERVED_CLASS_NAMES)) and logits.dtype == np.float32
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1)[0]
    assert [entry["index"] for entry in top] == probabilities.argsort(descending=True).tolist()
    expected = probabilities.sort(descending=True).values.tolist()
    assert [entry["probability"] for entry in top] == pytest.approx(expected, abs=1e-5)


def test_container_json_batch_matches_single_requests(container):
    body = json_body(images=[b64(JPEG), b64(PNG)], top_k=1)
    batch = predictions(container.invoke(body, "application/json"))
    singles = [predictions(container.invoke(image, "image/jpeg"))[0] for image in (JPEG, PNG)]
    assert len(batch) == 2 and all(len(top) == 1 for top in batch)
    for batched, single in zip(batch, singles, strict=True):
        assert batched[0]["index"] == single[0]["index"]
        assert batched[0]["probability"] == pytest.approx(single[0]["probability"], abs=1e-4)


def test_container_json_top_k_wins_over_accept_and_data_urls_work(container):
    body = json_body(image="data:image/png;base64," + b64(PNG), top_k=1)
    [top] = predictions(container.invoke(body, "application/json", "application/json;top_k=3"))
    assert len(top) == 1


@pytest.mark.parametrize(
    ("content_type", "accept", "body", "status"),
    [case[1:] for case in HOSTILE_REQUESTS],
    ids=[case[0] for case in HOSTILE_REQUESTS],
)
def test_container_refuses_hostile_request_and_keeps_serving(container, content_type, accept, body, status):
    response = container.invoke(body, content_type, accept)
    assert response.status == status
    if status < 500:
        # The toolkit appends a traceback: the message is the first line, one JSON object.
        message = json.loads(response.body.decode("utf-8").partition("\n")[0])
        assert message["status"] == status and message["error"]
    assert predictions(container.invoke(JPEG, "image/jpeg"))  # the worker still answers


@pytest.mark.parametrize("name", list(ODD_BUT_VALID_IMAGES))
def test_container_converts_odd_images(container, name):
    content_type, body = ODD_BUT_VALID_IMAGES[name]
    [top] = predictions(container.invoke(body, content_type))
    assert len(top) == len(SERVED_CLASS_NAMES)


def test_container_json_batch_of_sixteen_thin_images_is_served(container):
    """The batch that ran the worker out of memory: 16 strips of 3 x 30000 pixels."""
    body = json_body(images=[b64(encode(strip((3, 30_000)), "PNG"))] * 16, top_k=1)
    assert len(predictions(container.invoke(body, "application/json"))) == 16


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (MemoryError(), 413),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), 413),
        (RuntimeError("a bug in the resize"), 500),
        (ValueError("a bug in the crop"), 500),
    ],
    ids=["memory-error", "torch-allocation", "other-runtime-error", "value-error"],
)
def test_container_only_toolkit_errors_are_4xx(container, monkeypatch, raised, status):
    """Running out of memory on one image is the request's size (413); every other failure is ours (500)."""

    def geometry(self, pixels):
        raise raised

    monkeypatch.setattr(sys.modules["classifier.presets"].EvalPreset, "geometry", geometry)
    response = container.invoke(JPEG, "image/jpeg")
    assert response.status == status
    if status == 413:
        assert json.loads(response.body.decode("utf-8").partition("\n")[0])["status"] == 413


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
