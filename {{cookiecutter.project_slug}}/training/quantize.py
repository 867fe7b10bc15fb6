"""Post-training static int8 quantization of the trained network, for CPU endpoints.

FX graph mode with the `x86` qconfig (torch.ao.quantization): BatchNorms are folded and observers
placed by tracing the network, calibrated on a few hundred training images through the eval preset
(the tensors the endpoint will see), then converted to quantized kernels. The converted
GraphModule is traced and frozen into TorchScript: a TorchScript archive written by the training
image's PyTorch loads in the older inference image, where neither a pickled GraphModule nor the
state_dict of one (its packed weights are tied to the version that packed them) would.

Then both networks run over the validation split: top-1 agreement, and the accuracy of each. The
endpoint chooses between them from these figures (classifier/artifact.py: `choose_precision`).

A network that cannot be quantized (it does not trace, an op has no quantized kernel, ...) is
reported with the reason, and the artifact keeps only the float model.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

# Quantized kernels for x86 CPUs (fbgemm and oneDNN underneath); the endpoint selects the same engine.
ENGINE = "x86"
# Enough to settle the activation ranges (histogram observers); more adds minutes, not accuracy.
CALIBRATION_IMAGES = 300

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (normalised float images, labels) on the CPU


@dataclass
class Quantized:
    """The int8 network (None when the backbone could not be quantized) and the figures about it."""

    module: torch.jit.ScriptModule | None
    figures: dict = field(default_factory=dict)


def quantize(model: nn.Module, calibration: Batches, example: torch.Tensor) -> torch.jit.ScriptModule:
    """`model` (any device, unchanged) as a frozen TorchScript int8 network on the CPU.

    `calibration` yields normalised CPU batches from the eval preset; `example` is one such batch,
    for tracing. Raises whatever tracing, preparing or converting raises.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = ENGINE
    float_copy = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        # torch.ao announces its deprecation, and each observer a note about reduce_range: hundreds of
        # lines that would bury the job's log. They change nothing here.
        warnings.simplefilter("ignore")
        prepared = prepare_fx(float_copy, get_default_qconfig_mapping(ENGINE), (example,))
        with torch.no_grad():
            for images, _ in calibration:
                prepared(images)
            converted = convert_fx(prepared).eval()
            # check_trace would run the network twice more; the figures below are the check.
            traced = torch.jit.trace(converted, example, check_trace=False)
        # Frozen: weights become constants and the graph is optimised for inference, about 4x faster
        # than the merely traced module on a CPU.
        return torch.jit.freeze(traced.eval())


@torch.no_grad()
def compare(
    float_model: nn.Module, int8_model: torch.jit.ScriptModule, batches: Batches, device: torch.device
) -> dict:
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
    started = time.perf_counter()
    try:
        batches = list(calibration())
        if not batches:
            raise ValueError("no training images to calibrate on")
        module = quantize(model, batches, batches[0][0])
        calibrated = sum(len(labels) for _, labels in batches)
        figures = compare(model, module, validation(), device)
    except Exception as error:  # noqa: BLE001 - any failure means "serve float", and the job says why
        reason = (
            f"{backbone} cannot be quantized: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        )
        log(f"int8: {reason}; the artifact keeps the float model only", flush=True)
        return Quantized(None, {"available": False, "reason": reason})
    figures = {
        "available": True,
        "engine": ENGINE,
        "calibration_images": calibrated,
        **figures,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
    }
    log(
        f"int8: {figures['agreement']:.2%} top-1 agreement with float on {figures['validation_images']} "
        f"validation images; accuracy float {figures['float_accuracy']:.4f}, "
        f"int8 {figures['int8_accuracy']:.4f} "
        f"({figures['accuracy_drop_points']:+.2f} points lost); {figures['seconds']}s",
        flush=True,
    )
    return Quantized(module, figures)
