"""Build a torchvision classification network with a new head for our classes."""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision import models

from .choices import BACKBONES, FINETUNE_MODES

# The backbones the template offers, named once in choices.py. Any torchvision classification
# model whose last module is an nn.Linear works; these are the ones that are tested.
SUPPORTED_BACKBONES = BACKBONES


def head_name(model: nn.Module) -> str:
    """Dotted name of the final nn.Linear: `fc` (ResNet), `classifier.1` (EfficientNet), ..."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to replace")
    return last


def _set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class WeightsUnavailable(RuntimeError):
    """The pretrained weights could not be downloaded; the message is one line with the ways out."""


def _get_model(backbone: str, pretrained: bool) -> nn.Module:
    if not pretrained:
        return models.get_model(backbone, weights=None)
    weights = models.get_model_weights(backbone).DEFAULT
    try:
        return models.get_model(backbone, weights=weights)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a cut download a RuntimeError
        # torch.hub keeps downloads under $TORCH_HOME/hub/checkpoints (default ~/.cache/torch).
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        reason = " ".join(str(error).split())[:200]
        raise WeightsUnavailable(
            f"cannot download the pretrained {backbone} weights ({reason}): either train without them "
            f"(--hp pretrained=false, or [model] pretrained = false), or put {weights.url} at {cache} "
            "(set $TORCH_HOME to use another folder)"
        ) from None


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    finetune: str = "head",
) -> nn.Module:
    """The backbone with its last layer replaced by a `num_classes` linear layer.

    `pretrained=True` downloads the ImageNet weights torchvision recommends
    (`weights="DEFAULT"`). In `head` mode every parameter but the new layer is frozen.
    """
    if backbone not in models.list_models(module=models):
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(SUPPORTED_BACKBONES)}")
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"unknown finetune mode {finetune!r}; choose one of {', '.join(FINETUNE_MODES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = _get_model(backbone, pretrained)
    name = head_name(model)
    old_head = model.get_submodule(name)
    _set_submodule(model, name, nn.Linear(old_head.in_features, num_classes))
    if finetune == "head":
        for param_name, param in model.named_parameters():
            param.requires_grad = param_name.startswith(name + ".")
    return model


def has_batch_norm(backbone: str) -> bool:
    """Whether torchvision's `backbone` has BatchNorm layers (which cannot train on a batch of one
    image). Built on the meta device: no weights, no memory, well under a second."""
    if backbone not in models.list_models(module=models):
        return False
    with torch.device("meta"):
        model = models.get_model(backbone, weights=None)
    return contains_batch_norm(model)


def contains_batch_norm(model: nn.Module) -> bool:
    """Whether `model` has a BatchNorm layer of any dimension."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def head(model: nn.Module) -> nn.Linear:
    """The classification layer `build_model` put in."""
    return model.get_submodule(head_name(model))


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
