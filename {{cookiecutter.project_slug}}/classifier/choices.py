"""The choices training and serving share: backbones, fine-tuning modes, optimisers, schedulers, image
suffixes, class names as people read them, the eval resize, and which network an endpoint serves.

Standard library only and torch-free: the containers import it with the rest of `classifier/`, and the
launcher's config schema (src/<package>/config/schema.py) and report read the same names from it.
"""

from __future__ import annotations

from typing import Any

# Tested torchvision classification models (each ends in an nn.Linear the project replaces).
BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny")
FINETUNE_MODES = ("head", "full")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
# Which network a CPU endpoint serves: int8 when auto finds it costs little accuracy (`serving_precision`).
QUANTIZE_SETTINGS = ("auto", "int8", "float")
# Files that data preparation, training and serving all treat as images (suffix, lowercase).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# A class's name as people read it (serving, the report): the dataset's folder name without its number.
def readable_class_name(folder_name: str) -> str:
    """`001.Affenpinscher` -> `Affenpinscher`, `017.Bull_terrier` -> `Bull terrier`."""
    prefix, dot, rest = folder_name.partition(".")
    name = rest if dot and prefix.isdigit() else folder_name
    return name.replace("_", " ")


def resize_size_for(image_size: int) -> int:
    """The shorter side the eval preset resizes to before its centre crop (256 for 224, as in ImageNet);
    here, not in presets.py, because `data prepare` (no torch on the launcher's side) writes images at it."""
    return round(image_size / 0.875)


# --- which network an endpoint serves --------------------------------------------------------------

# `auto` serves int8 on a CPU when it loses at most this many percentage points of validation accuracy.
AUTO_MAX_ACCURACY_DROP_POINTS = 0.5
# Set on the model (PyTorchModel env=) to override the setting the artifact was trained with.
QUANTIZE_ENV = "CLASSIFIER_QUANTIZE"
# The int8 model's format (training/quantize.py): ONNX with QuantizeLinear/DequantizeLinear pairs, for
# ONNX Runtime. Artifacts from before it hold a TorchScript int8 model, which no longer serves.
INT8_FORMAT = "onnx-qdq"


def serving_precision(
    quantization: dict[str, Any], device_type: str, override: str | None = None
) -> tuple[str, str]:
    """("int8" or "float", why) for an endpoint on `device_type` ("cpu", "cuda"), from the artifact's
    `quantization` (metadata.json: the setting it was trained with and the int8 model's figures).

    The setting is `override` (the endpoint's $CLASSIFIER_QUANTIZE) or the one training recorded:
    `float` always serves float; `int8` serves int8 where it exists; `auto` serves int8 when it
    costs at most AUTO_MAX_ACCURACY_DROP_POINTS of validation accuracy. int8 kernels run on the
    CPU only, so a GPU endpoint serves float whatever the setting.

    Here, not in artifact.py, so that the CLI's `report` (no torch) shows the decision model_fn makes.
    """
    setting = override or quantization.get("setting") or "float"
    source = f"${QUANTIZE_ENV}" if override else "quantize"
    if setting not in QUANTIZE_SETTINGS:
        raise ValueError(f"{source} is {setting!r}; choose one of {', '.join(QUANTIZE_SETTINGS)}")
    if setting == "float":
        if not quantization:
            return "float", "the artifact predates int8 models"
        return "float", f"{source}=float"
    if device_type != "cpu":
        return "float", f"{source}={setting}, but int8 runs on CPUs only and the endpoint has a {device_type}"
    if not quantization.get("available"):
        missing = quantization.get("reason")
        return "float", f"{source}={setting}, but the artifact has no int8 model ({missing})"
    if quantization.get("format") != INT8_FORMAT:
        return "float", f"{source}={setting}, but the artifact's int8 model is TorchScript (retrain for ONNX)"
    drop = quantization["accuracy_drop_points"]
    figures = (
        f"validation accuracy float {quantization['float_accuracy']:.4f}, "
        f"int8 {quantization['int8_accuracy']:.4f}, top-1 agreement {quantization['agreement']:.4f}"
    )
    limit = AUTO_MAX_ACCURACY_DROP_POINTS
    if setting == "int8":
        return "int8", f"{source}=int8 ({figures})"
    if drop <= limit:
        return "int8", f"{source}=auto and int8 loses {drop:.2f} points, at most {limit} ({figures})"
    return "float", f"{source}=auto and int8 would lose {drop:.2f} points, more than {limit} ({figures})"
