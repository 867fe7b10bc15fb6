"""int8: quantized at the end of train_model.py's run, chosen by model_fn, float wherever it must be.

Correctness only (agreement with float, int8 operators really in the graph, the fallbacks, the
artifact round trip, no deprecated API on the way), never speed: benchmarks/bench_inference.py
measures that, and benchmarks/int8_across_versions.py the round trip from the training image's
PyTorch to each serving image.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, project_module, tiny_args
from torch import nn
from torchvision import models

from classifier.artifact import (
    QUANTIZE_ENV,
    ModelMetadata,
    OnnxNetwork,
    choose_precision,
    load_artifact,
    load_metadata,
    load_quantized,
)
from classifier.backbones import build_model
from classifier.choices import BACKBONES

load_handler = project_module("local.endpoint").load_handler
make_image = project_module("workflow.synthetic").make_image


@pytest.fixture(scope="module")
def trained(training, tmp_path_factory) -> Path:
    """SM_MODEL_DIR after train_model.py's run (evaluate_test) on three hues: float + int8 + metadata."""
    root = tmp_path_factory.mktemp("int8")
    data = make_dataset(
        root / "data", num_classes=3, images_per_class={"train": 8, "valid": 4, "test": 1}, size=(48, 40)
    )
    train_model = training("train_model")
    # The head on cached features of a random backbone: learns the hues in seconds.
    hyperparameters = ("--feature_cache", "true", "--epochs", "8", "--lr", "0.05", "--test_batch_size", "12")
    train_model.main(tiny_args(train_model, data, root, *hyperparameters), evaluate_test=True)
    return root / "model"


def hue_batch(metadata: ModelMetadata, per_class: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images of each class (fresh noise, unseen in training) through the eval preset."""
    preset, rng = metadata.eval_preset(), random.Random(7)
    images, labels = [], []
    for label in range(metadata.num_classes):
        for _ in range(per_class):
            images.append(preset(make_image(label / metadata.num_classes, (56, 44), rng)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


@pytest.mark.slow
def test_the_final_job_saves_an_int8_copy_with_its_figures(trained):
    quantization = json.loads((trained / "metadata.json").read_text())["quantization"]
    assert (trained / "model_int8.onnx").is_file()
    assert quantization["setting"] == "auto" and quantization["available"] is True
    assert quantization["format"] == "onnx-qdq" and quantization["opset"] == 18
    assert quantization["int8_bytes"] == (trained / "model_int8.onnx").stat().st_size
    assert quantization["int8_bytes"] < quantization["float_bytes"] / 3  # int8 weights: a quarter
    assert quantization["int8_cpu_ms"] > 0 and quantization["float_cpu_ms"] > 0
    assert quantization["calibration_images"] == 24 and quantization["validation_images"] == 12
    drop = (quantization["float_accuracy"] - quantization["int8_accuracy"]) * 100
    assert quantization["accuracy_drop_points"] == pytest.approx(drop)
    assert 0 <= quantization["agreement"] <= 1


@pytest.mark.slow
def test_int8_agrees_with_float_on_generated_images(trained):
    network, metadata = load_artifact(trained)
    images, labels = hue_batch(metadata)
    with torch.inference_mode():
        float_top = network(images).argmax(1)
        int8_top = load_quantized(trained, metadata)(images).argmax(1)
    assert (float_top == labels).float().mean() >= 0.9, "the tiny network did not learn the hues"
    assert (int8_top == float_top).float().mean() >= 0.9


@pytest.mark.slow
def test_the_saved_int8_model_gives_the_figures_the_job_measured(trained, training):
    """Round trip: the ONNX file, loaded again, scores the validation split as the job's copy did."""
    metadata = load_metadata(trained)
    quantized = load_quantized(trained, metadata)
    network, _ = load_artifact(trained)
    _, splits = training("data").discover_splits(Path(trained).parent / "data")
    preset = metadata.eval_preset()
    from PIL import Image

    def batches():
        for path, label in splits["valid"].samples:
            with Image.open(path) as image:
                yield preset(image).unsqueeze(0), torch.tensor([label])

    figures = training("quantize").compare(network, quantized, batches(), torch.device("cpu"))
    for key in ("agreement", "float_accuracy", "int8_accuracy", "validation_images"):
        assert figures[key] == metadata.quantization[key], key


@pytest.mark.slow
def test_model_fn_serves_int8_on_a_cpu_and_says_why(trained, inference_source, monkeypatch, caplog):
    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    handler = load_handler(inference_source)
    with caplog.at_level(logging.INFO):
        model = handler.model_fn(str(trained))
    assert isinstance(model.network, OnnxNetwork)
    assert "int8: quantize=auto and int8 loses" in caplog.text
    body = io.BytesIO()
    make_image(0.0, (64, 48), random.Random(1)).save(body, format="JPEG")
    request = handler.input_fn(body.getvalue(), "image/jpeg")
    answer, _ = handler.output_fn(handler.predict_fn(request, model), None)
    assert json.loads(answer)["predictions"][0]["top_k"][0]["index"] == 0


@pytest.mark.slow
def test_the_endpoint_setting_overrides_the_trained_one(trained, inference_source, monkeypatch, caplog):
    monkeypatch.setenv(QUANTIZE_ENV, "float")
    with caplog.at_level(logging.INFO):
        model = load_handler(inference_source).model_fn(str(trained))
    assert isinstance(model.network, torch.nn.Module)
    assert f"float: ${QUANTIZE_ENV}=float" in caplog.text


def metadata_with(**quantization) -> ModelMetadata:
    return ModelMetadata("resnet18", 2, ["a", "b"], 32, quantization=quantization)


MEASURED = {
    "available": True,
    "format": "onnx-qdq",
    "float_accuracy": 0.9,
    "int8_accuracy": 0.897,
    "agreement": 0.98,
}


@pytest.mark.parametrize(
    ("quantization", "device", "override", "expected", "why"),
    [
        (
            {"setting": "auto", **MEASURED, "accuracy_drop_points": 0.3},
            "cpu",
            None,
            "int8",
            "loses 0.30 points",
        ),
        ({"setting": "auto", **MEASURED, "accuracy_drop_points": 0.5}, "cpu", None, "int8", "at most 0.5"),
        ({"setting": "auto", **MEASURED, "accuracy_drop_points": 2.5}, "cpu", None, "float", "more than 0.5"),
        ({"setting": "int8", **MEASURED, "accuracy_drop_points": 2.5}, "cpu", None, "int8", "quantize=int8"),
        (
            {"setting": "float", **MEASURED, "accuracy_drop_points": 0.0},
            "cpu",
            None,
            "float",
            "quantize=float",
        ),
        ({"setting": "auto", **MEASURED, "accuracy_drop_points": 0.0}, "cuda", None, "float", "CPUs only"),
        ({"setting": "int8", **MEASURED, "accuracy_drop_points": 0.0}, "cuda", None, "float", "CPUs only"),
        ({"setting": "auto", **MEASURED, "accuracy_drop_points": 0.0}, "cpu", "float", "float", "=float"),
        (
            {"setting": "float", "available": False, "reason": "quantize=float"},
            "cpu",
            "int8",
            "float",
            "no int8",
        ),
        (
            {"setting": "auto", "available": False, "reason": "x cannot be quantized"},
            "cpu",
            None,
            "float",
            "x cannot",
        ),
        ({}, "cpu", None, "float", "predates int8"),
        (  # an artifact from before ONNX: its TorchScript int8 model is not served
            {"setting": "int8", **MEASURED, "format": None, "accuracy_drop_points": 0.0},
            "cpu",
            None,
            "float",
            "int8 model is TorchScript",
        ),
    ],
)
def test_which_network_the_endpoint_serves(quantization, device, override, expected, why):
    precision, reason = choose_precision(metadata_with(**quantization), device, override)
    assert precision == expected
    assert why in reason


def test_an_unknown_endpoint_setting_is_refused_by_name():
    with pytest.raises(ValueError, match=rf"\${QUANTIZE_ENV} is 'int4'; choose one of auto, int8, float"):
        choose_precision(metadata_with(setting="auto"), "cpu", "int4")


def test_quantize_float_makes_no_int8_copy(training, capsys):
    quantized = training("export").quantize_for_cpu(
        argparse.Namespace(quantize="float"), None, None, None, print
    )
    assert quantized.model is None and quantized.figures["available"] is False
    assert "quantize=float" in capsys.readouterr().out


def random_batches(count: int, size: int = 32, classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(2, 3, size, size, generator=generator),
            torch.randint(classes, (2,), generator=generator),
        )
        for _ in range(count)
    ]


def architecture(backbone: str) -> str:
    """The torchvision module that defines `backbone`'s network (`resnet` for resnet18, 34 and 50)."""
    return models.get_model_builder(backbone).__module__.rpartition(".")[2]


# Backbones of one architecture export the same operator types through the same code path (resnet50's
# bottleneck blocks are more of resnet18's convolutions, batch norms, ReLUs and additions); each
# architecture brings its own (SiLU and squeeze-excitation, hardswish, LayerNorm and GELU).
ARCHITECTURES = sorted({architecture(backbone) for backbone in BACKBONES})


@pytest.mark.slow
@pytest.mark.parametrize("family", ARCHITECTURES)
def test_every_offered_architecture_quantizes(training, project_config, family):
    """One backbone of each architecture offered (the render's own for its architecture), at 32 px with
    random weights: it exports, quantizes (int8 operators checked), runs on another batch size, and is
    measured."""
    offered = [backbone for backbone in BACKBONES if architecture(backbone) == family]
    own = project_config.model["backbone"]
    backbone = own if own in offered else offered[0]
    torch.manual_seed(0)
    model = build_model(backbone, 3, finetune="full").eval()
    messages = []
    quantized = training("quantize").quantize_and_compare(
        model,
        backbone,
        lambda: random_batches(1),
        lambda: random_batches(2),
        torch.device("cpu"),
        lambda text, **_: messages.append(text),
    )
    assert quantized.model is not None, messages
    assert quantized.figures["validation_images"] == 4
    assert quantized.figures["int8_bytes"] < quantized.figures["float_bytes"] / 3
    assert OnnxNetwork(quantized.model)(torch.randn(3, 3, 32, 32)).shape == (3, 3)


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.export refuses it, so it cannot be quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.mean() > 0:
            images = images * 2
        return self.linear(images.flatten(1))


def test_a_network_that_cannot_be_quantized_keeps_float_and_the_job_says_why(training):
    messages = []
    quantized = training("quantize").quantize_and_compare(
        Untraceable(),
        "untraceable",
        lambda: random_batches(1),
        lambda: random_batches(1),
        torch.device("cpu"),
        lambda text, **_: messages.append(text),
    )
    assert quantized.model is None
    assert quantized.figures["available"] is False
    assert quantized.figures["reason"].startswith("untraceable cannot be quantized: ")
    assert "data-dependent" in quantized.figures["reason"]
    assert messages == [f"int8: {quantized.figures['reason']}; the artifact keeps the float model only"]


# Convolution, BatchNorm, ReLU, pooling and a linear head: what the backbones are made of, in 0.1 s.
TINY_CONV_NET = (
    "nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
    "nn.Linear(8, 3))"
)


def test_a_model_without_int8_operators_is_refused_loudly(training):
    """The float export itself, handed to the check: no QuantizeLinear, DequantizeLinear or int8 weight."""
    quantize = training("quantize")
    float_model = quantize.export_onnx(eval(TINY_CONV_NET).eval(), torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"holds no int8 operators \(0 QuantizeLinear, 0 DequantizeLinear"):
        quantize.check_int8(float_model)


# Made, saved, loaded and run in a fresh interpreter, where every warning is an error: imports included,
# since a deprecation warning is shown once per process, and pytest's filterwarnings ignores them here.
INT8_PATH_WITH_WARNINGS_AS_ERRORS = f"""
import sys, tempfile, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
import quantize
from classifier.artifact import ModelMetadata, load_quantized, save_artifact
def batches(count):
    return [(torch.randn(2, 3, 32, 32), torch.randint(3, (2,))) for _ in range(count)]
model = {TINY_CONV_NET}.eval()
made = quantize.quantize_and_compare(
    model, "tiny", lambda: batches(2), lambda: batches(1), torch.device("cpu"), lambda *a, **k: None
)
assert made.model is not None, made.figures
folder = tempfile.mkdtemp()
metadata = ModelMetadata("tiny", 3, ["a", "b", "c"], 32, quantization=made.figures)
save_artifact(folder, model, metadata, made.model)
with torch.inference_mode():
    assert load_quantized(folder, metadata)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
print(quantize.int8_operators(made.model))
"""


@pytest.mark.slow
def test_the_int8_path_emits_no_warning(training_source):
    """The job's quantize_and_compare, the artifact written and read back as model_fn reads it."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", INT8_PATH_WITH_WARNINGS_AS_ERRORS, str(training_source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    counts = json.loads(result.stdout.replace("'", '"'))
    assert counts["QuantizeLinear"] and counts["int8 weights"]
