"""inference.py as the SageMaker PyTorch serving container runs it, plus train-vs-serve parity.

The container tier drives the real sagemaker-inference Transformer through the PyTorch toolkit's
HandlerService, from a model.tar.gz laid out as PyTorchModel repacks it, with a context shaped like
the one TorchServe passes. The unit tier calls the four functions directly.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SERVED_CLASS_NAMES, project_module
from inference_payloads import (
    HOSTILE_REQUESTS,
    JPEG,
    ODD_BUT_VALID_IMAGES,
    PNG,
    b64,
    encode,
    json_body,
    strip,
)

from classifier.artifact import readable_class_name

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
