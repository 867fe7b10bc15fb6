"""Compute the frozen backbone's features once, then train only the head on them.

In `head` mode without random augmentation every epoch feeds the backbone the
same images and gets the same features back: all but the first epoch can skip
decoding and the backbone entirely. The features are what the head receives,
captured with a forward pre-hook, so this works for any backbone `build_model`
makes (fc, classifier, heads).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from data import Batch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class FeatureSet(Dataset):
    """Cached head inputs and labels of one split."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int, int]:
        index = item[0] if isinstance(item, tuple) else item
        return self.features[index], int(self.labels[index]), index


@torch.no_grad()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    loader: DataLoader,
    prepare: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    on_failed: Callable[[list[int]], None],
) -> FeatureSet:
    """Run the frozen network once over `loader` and keep what `head` receives, on the CPU."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].float().cpu()))
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            on_failed(batch.failed)
            if not len(batch.labels):
                continue
            inputs, _ = prepare(batch)
            model(inputs)
            labels.append(batch.labels.cpu())
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise RuntimeError("no image of this split could be decoded")
    return FeatureSet(torch.cat(captured), torch.cat(labels))
