"""The int8 serving line: the int8 model's figures and what the configured endpoint would serve.

The decision is model_fn's own (classifier's `serving_precision`), not derived again here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import schema
from .fetch import METADATA_FILE

if TYPE_CHECKING:
    from ..config import ProjectConfig

# --- the int8 model and what an endpoint serves ---------------------------------------------------


@dataclass(frozen=True)
class Int8Endpoint:
    """The int8 model's figures and what the endpoint `deploy` makes would serve, in words.

    Without a readable metadata.json only `figures` (why not, or where they will appear) is set.
    """

    figures: str  # agreement and accuracies, why there is no int8 model, or why they were not read
    source: str = ""  # where metadata.json was read
    endpoint: str = ""  # the configured endpoint: "ml.m5.large (CPU)", "a serverless endpoint (CPU)"
    serves: str = ""  # "int8" or "float"
    why: str = ""  # model_fn's own reason
    note: str = ""  # config.toml's quantize no longer matches the model's
    quantization: dict[str, Any] | None = None  # metadata.json's `quantization`, as read


def endpoint_device(config: ProjectConfig) -> tuple[str, str]:
    """(the endpoint `deploy` makes, in words; the device model_fn finds on it, as torch names it)."""
    if config.settings.endpoint.serverless:
        return "a serverless endpoint (CPU)", "cpu"
    instance_type = config.settings.instances.endpoint.type
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    # NVIDIA GPU families (ml.g4dn, ml.g5, ml.p3, ...) get the GPU image, where torch finds CUDA.
    device = "cuda" if re.match(r"^[gp][0-9]", family) else "cpu"
    return f"{instance_type} ({'GPU' if device == 'cuda' else 'CPU'})", device


def int8_figures(quantization: dict[str, Any]) -> str:
    """metadata.json's `quantization` in words (training/quantize.py: `quantize_and_compare`)."""
    if not quantization:
        return f"none in {METADATA_FILE} (a tuning job's model, or one trained before int8)"
    if not quantization.get("available"):
        return f"not made: {quantization.get('reason') or 'no reason recorded'}"
    drop = quantization["accuracy_drop_points"]
    change = f"{drop:.2f} points lost" if drop >= 0 else f"{-drop:.2f} points gained"
    figures = (
        f"{quantization['agreement']:.2%} top-1 agreement with float on "
        f"{quantization['validation_images']} validation images; validation accuracy "
        f"float {quantization['float_accuracy']:.2%}, int8 {quantization['int8_accuracy']:.2%} ({change})"
    )
    if "int8_bytes" in quantization:  # measured since the int8 model is ONNX
        megabytes = {precision: quantization[f"{precision}_bytes"] / 1e6 for precision in ("int8", "float")}
        figures += (
            f"; {megabytes['int8']:.1f} MB (float {megabytes['float']:.1f} MB), "
            f"{quantization['int8_cpu_ms']:.1f} ms per image on the training job's CPU "
            f"(float {quantization['float_cpu_ms']:.1f} ms)"
        )
    return figures


def _setting_note(config: ProjectConfig, quantization: dict[str, Any]) -> str:
    """A word when config.toml's quantize changed since training: the endpoint follows the model."""
    now, trained = config.settings.hyperparameters.quantize, quantization.get("setting")
    if now is None or trained is None or now == trained:
        return ""
    return (
        f"config.toml now says quantize = {now}, but this model was trained with quantize = {trained} "
        "and the endpoint follows the model: train again to change it"
    )


def int8_endpoint(config: ProjectConfig, metadata: dict[str, Any] | None, source: str) -> Int8Endpoint:
    """The int8 figures of `metadata` (metadata.json, read from `source`; None: `source` says why not)
    and what the configured endpoint would serve: model_fn's own decision, without its override."""
    if metadata is None:
        return Int8Endpoint(source)
    endpoint, device = endpoint_device(config)
    try:
        quantization = metadata.get("quantization") or {}
        figures = int8_figures(quantization)
        serves, why = schema.serving_precision(quantization, device)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # model_fn would fail on it too
        return Int8Endpoint(f"{METADATA_FILE} is not as training writes it: {error!r}", source)
    note = _setting_note(config, quantization)
    return Int8Endpoint(figures, source, endpoint, serves, why, note, quantization)


def int8_facts(int8: Int8Endpoint) -> list[tuple[str, str]]:
    """(label, text) lines of the report's int8 endpoint section."""
    if not int8.serves:
        return [("int8 model", int8.figures)]
    facts = [
        ("int8 model", int8.figures),
        (f"{int8.endpoint} serves", f"{int8.serves}: {int8.why}"),
        ("Read from", int8.source),
    ]
    return facts + ([("Note", int8.note)] if int8.note else [])
