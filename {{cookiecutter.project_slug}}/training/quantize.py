"""Post-training static int8 quantization of the trained network, for CPU endpoints.

ONNX Runtime's static quantization in QDQ format: the network is exported with torch.export (the
batch dimension dynamic) and the ONNX exporter, prepared by ONNX Runtime's pre-processing (shape
inference, BatchNorms folded into the convolutions), calibrated on a few hundred training images
through the eval preset (the tensors the endpoint will see), and written with int8 weights and
QuantizeLinear/DequantizeLinear pairs around every quantized operator, which ONNX Runtime runs as int8
kernels. `check_int8` refuses a model in which nothing was quantized.

ONNX, not TorchScript or a torch.export archive, because the file must outlive the PyTorch that wrote
it: torch.ao.quantization and torch.jit are deprecated, a torch.export archive written by one PyTorch
does not load in an older one (the inference image has 2.6), while an ONNX model of a fixed opset is
read by any ONNX Runtime that knows the opset, in any Python, with no torch at all: the TorchServe image
and a Python 3.13 Ray Serve image serve the same bytes with the same kernels.

Then both networks run over the validation split: top-1 agreement, the accuracy of each, and, on this
machine's CPU, their size and latency for one image. The endpoint chooses between them from these
figures (classifier/choices.py: `serving_precision`).

A network that cannot be quantized (it does not export, an op has no ONNX translation, ...) is reported
with the reason, and the artifact keeps only the float model.
"""

from __future__ import annotations

import copy
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from classifier.artifact import INT8_FORMAT, ONNX_OPSET, OnnxNetwork

# Enough to settle the activation ranges (min/max per tensor); more adds minutes, not accuracy.
CALIBRATION_IMAGES = 300
# The largest batch the exported graph is declared for (the endpoint's request limit is far lower).
MAX_BATCH = 1024
# Per-image CPU latency: the median of this many single-image runs, after one warm-up.
LATENCY_RUNS = 10

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (normalised float images, labels) on the CPU


@dataclass
class Quantized:
    """The int8 ONNX model's bytes (None when the backbone could not be quantized) and its figures."""

    model: bytes | None
    figures: dict = field(default_factory=dict)


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """`model` (on the CPU, in eval mode) as a float ONNX model whose batch dimension is free.

    torch.export traces the network as it is and refuses what it cannot capture whole (data-dependent
    control flow), rather than baking one branch in.
    """
    # The batch size must vary in the example, or export fixes it: two copies of the first image.
    example = torch.cat([example[:1], example[:1]])
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    program = torch.onnx.export(
        exported, opset_version=ONNX_OPSET, input_names=["images"], output_names=["logits"], verbose=False
    )
    return program.model_proto.SerializeToString()


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over normalised image batches (duck-typed: get_next)."""

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str) -> None:
        self.batches: Iterator[torch.Tensor] = iter(batches)
        self.input_name = input_name

    def get_next(self) -> dict | None:
        images = next(self.batches, None)
        return None if images is None else {self.input_name: images.contiguous().numpy()}


def quantize(model: nn.Module, calibration: Batches, example: torch.Tensor) -> bytes:
    """`model` (any device, unchanged) as an int8 ONNX model (QDQ format), calibrated on `calibration`.

    `calibration` yields normalised CPU batches from the eval preset; `example` is one such batch, for
    the export. Raises whatever exporting or quantizing raises, and ValueError when the result holds
    no int8 operator.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_copy = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    float_onnx = export_onnx(float_copy, example)
    with tempfile.TemporaryDirectory(prefix="int8-") as folder:
        exported, prepared, quantized = (Path(folder) / name for name in ("f.onnx", "p.onnx", "q.onnx"))
        exported.write_bytes(float_onnx)
        # Shape inference and ONNX Runtime's basic graph optimisations (BatchNorm folded into the
        # convolution before it), which the quantizer expects.
        quant_pre_process(str(exported), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration((images for images, _ in calibration), "images"),
            quant_format=QuantFormat.QDQ,
            # Unsigned activations and signed, per-channel weights: the x86 and ARM kernels' pairing.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        data = quantized.read_bytes()
    check_int8(data)
    return data


def int8_operators(model: bytes) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes `model` has, and how many int8 weights."""
    import onnx

    graph = onnx.load_model_from_string(model).graph
    int8_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8}
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "int8 weights": 0}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] += 1
            if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights:
                counts["int8 weights"] += 1
    return counts


def check_int8(model: bytes) -> None:
    """Raise ValueError unless `model` quantizes activations and holds int8 weights (QDQ pairs)."""
    counts = int8_operators(model)
    if not all(counts.values()):
        found = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise ValueError(f"the quantized model holds no int8 operators ({found})")


@torch.no_grad()
def compare(float_model: nn.Module, int8_model: OnnxNetwork, batches: Batches, device: torch.device) -> dict:
    """Top-1 agreement of the two networks and the accuracy of each, over `batches` (the validation split)."""
    float_model.eval()
    agree = float_correct = int8_correct = count = 0
    for images, labels in batches:
        float_top = float_model(images.to(device)).argmax(1).cpu()
        int8_top = int8_model(images).argmax(1)
        agree += (float_top == int8_top).sum().item()
        float_correct += (float_top == labels).sum().item()
        int8_correct += (int8_top == labels).sum().item()
        count += len(labels)
    if not count:
        raise ValueError("no validation images to compare the networks on")
    float_accuracy, int8_accuracy = float_correct / count, int8_correct / count
    return {
        "validation_images": count,
        "agreement": agree / count,
        "float_accuracy": float_accuracy,
        "int8_accuracy": int8_accuracy,
        # Percentage points lost; negative when int8 happens to do better.
        "accuracy_drop_points": round((float_accuracy - int8_accuracy) * 100, 4),
    }


def milliseconds_per_image(network: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> float:
    """Median time of `network` on one (1, C, H, W) image, on the CPU."""
    with torch.inference_mode():
        network(image)
        times = []
        for _ in range(LATENCY_RUNS):
            started = time.perf_counter()
            network(image)
            times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def cpu_costs(float_model: nn.Module, int8_model: OnnxNetwork, int8_bytes: int, image: torch.Tensor) -> dict:
    """Size of each network's file and its latency for one image on this machine's CPU (the endpoint's
    device for int8); the float network as model.pth holds it."""
    float_copy = copy.deepcopy(float_model).cpu().eval()
    buffer = io.BytesIO()
    torch.save(float_copy.state_dict(), buffer)
    return {
        "float_bytes": buffer.getbuffer().nbytes,
        "int8_bytes": int8_bytes,
        "float_cpu_ms": milliseconds_per_image(float_copy, image),
        "int8_cpu_ms": milliseconds_per_image(int8_model, image),
    }


def quantize_and_compare(
    model: nn.Module,
    backbone: str,
    calibration: Callable[[], Batches],
    validation: Callable[[], Batches],
    device: torch.device,
    log: Callable[..., None] = print,
) -> Quantized:
    """Quantize `model` and measure what it costs; on failure, say why and return no int8 network.

    `calibration` and `validation` make the batches when called (loaders start their workers then).
    """
    import onnxruntime

    started = time.perf_counter()
    try:
        batches = list(calibration())
        if not batches:
            raise ValueError("no training images to calibrate on")
        example = batches[0][0]
        data = quantize(model, batches, example)
        calibrated = sum(len(labels) for _, labels in batches)
        network = OnnxNetwork(data)
        figures = compare(model, network, validation(), device)
        costs = cpu_costs(model, network, len(data), example[:1])
    except Exception as error:  # noqa: BLE001 - any failure means "serve float", and the job says why
        reason = (
            f"{backbone} cannot be quantized: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        )
        log(f"int8: {reason}; the artifact keeps the float model only", flush=True)
        return Quantized(None, {"available": False, "reason": reason})
    figures = {
        "available": True,
        "format": INT8_FORMAT,
        "calibration_images": calibrated,
        **figures,
        **costs,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "opset": ONNX_OPSET,
    }
    log(
        f"int8: {figures['agreement']:.2%} top-1 agreement with float on {figures['validation_images']} "
        f"validation images; accuracy float {figures['float_accuracy']:.4f}, "
        f"int8 {figures['int8_accuracy']:.4f} "
        f"({figures['accuracy_drop_points']:+.2f} points lost); "
        f"{figures['int8_bytes'] / 1e6:.1f} MB (float {figures['float_bytes'] / 1e6:.1f} MB), "
        f"{figures['int8_cpu_ms']:.1f} ms per image on this CPU (float {figures['float_cpu_ms']:.1f} ms); "
        f"{figures['seconds']}s",
        flush=True,
    )
    return Quantized(data, figures)
