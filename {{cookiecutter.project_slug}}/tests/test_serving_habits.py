"""The endpoint takes what SageMaker users send by habit, and loads what a GPU job saved.

- `{"instances": ["<base64>", ...]}` (or `{"b64": ...}` entries, as in TF Serving), beside `{"images": ...}`;
- weights saved on a CUDA device load on a CPU endpoint (the artifact is read with map_location).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, SERVED_CLASS_NAMES
from PIL import Image

from classifier.artifact import WEIGHTS_FILENAME, load_artifact


@pytest.fixture(scope="module")
def handler():
    path = PROJECT_ROOT / "inference" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference_habits", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def jpeg(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), colour).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_instances_json_is_served(handler, model_artifact_dir):
    model = handler.model_fn(str(model_artifact_dir))
    body = json.dumps({"instances": [jpeg((200, 10, 10)), {"b64": jpeg((10, 200, 10))}], "top_k": 2})
    request = handler.input_fn(body.encode(), "application/json")
    assert len(request.images) == 2 and request.top_k == 2
    answer, content_type = handler.output_fn(handler.predict_fn(request, model), "application/json")
    predictions = json.loads(answer)["predictions"]
    assert content_type == "application/json" and len(predictions) == 2
    assert all(len(item["top_k"]) == 2 for item in predictions)
    assert {entry["class_name"] for entry in predictions[0]["top_k"]} <= set(SERVED_CLASS_NAMES)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"instances": ["x"], "images": ["x"]}, "exactly one of"),
        ({"instances": []}, '"instances" is empty'),
        ({"instances": [{"b64": 3}]}, '"instances" must be a list of base64 strings'),
        ({"instances": "not-a-list"}, '"instances" must be a list'),
    ],
)
def test_bad_instances_are_a_400_naming_the_key(handler, document, message):
    with pytest.raises(handler.RequestError) as raised:
        handler.input_fn(json.dumps(document).encode(), "application/json")
    assert raised.value.status_code == 400
    # The toolkit's error carries (status, message, phrase); the message is one line of JSON.
    assert message in json.loads(raised.value.args[1])["error"]


def test_weights_saved_on_a_gpu_load_on_a_cpu_endpoint(model_artifact_dir, tmp_path, monkeypatch):
    """A checkpoint whose storages say cuda:0 (as a GPU training job writes them), read without CUDA."""
    import shutil

    gpu_dir = tmp_path / "gpu-model"
    shutil.copytree(model_artifact_dir, gpu_dir)
    state = torch.load(gpu_dir / WEIGHTS_FILENAME, weights_only=True)
    registry = torch.serialization._package_registry
    saved = list(registry)

    # Tag every storage as cuda:0 when saving: the location a GPU job's torch.save records.
    def as_cuda(obj: object) -> str | None:
        return "cuda:0" if getattr(obj, "device", None) is not None and obj.device.type == "cpu" else None

    registry.insert(0, (-1, as_cuda, lambda obj, location: None))
    try:
        torch.save(state, gpu_dir / WEIGHTS_FILENAME)
    finally:
        registry[:] = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):  # without map_location, this file cannot load here
        torch.load(gpu_dir / WEIGHTS_FILENAME, weights_only=True)
    network, _ = load_artifact(Path(gpu_dir), "cpu")
    assert {parameter.device.type for parameter in network.parameters()} == {"cpu"}
