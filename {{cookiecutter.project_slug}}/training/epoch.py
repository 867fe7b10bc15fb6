"""What a pass over a loader needs around train_model.py's forward and backward.

`Stage`: the module called on each batch, how a batch reaches the device, the loss and who observes the
steps. `ProgressLine`: torchvision-style progress every N steps. `objective_line`: the line the tuner reads.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from cluster import Cluster
from data import Batch
from recorder import Observer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier.backbones import head


@dataclass
class Stage:
    """What every epoch runs: the network (or only its head, on cached features) and its loss."""

    module: nn.Module  # what is called on `inputs` (maybe DDP-wrapped)
    prepare: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    criterion: nn.Module
    amp: bool
    cluster: Cluster
    observer: Observer = field(default_factory=Observer)
    epoch: int = 0  # the epoch running, for the observers
    log_every: int = 0  # a progress line every N steps of a pass (0: none)


@dataclass
class ProgressLine:
    """Progress inside a pass, as torchvision's MetricLogger.log_every prints it: step, loss, rate, ETA.

    Plain lines, so they read the same in a terminal, in `train --local`'s log and in CloudWatch."""

    mode: str
    epoch: int
    total: int | None
    every: int
    started: float = field(default_factory=time.perf_counter)
    images: int = 0

    def step(self, done: int, batch_size: int, loss: float) -> None:
        self.images += batch_size
        if not self.every or done % self.every:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.images / elapsed if elapsed > 0 else 0.0
        where = f"{done}/{self.total}" if self.total else str(done)
        eta = ""
        if self.total and done:
            eta = f"  eta {datetime.timedelta(seconds=round(elapsed / done * (self.total - done)))}"
        print(
            f"{self.mode.lower()} epoch {self.epoch} [{where}] loss {loss:.4f}  {rate:.1f} images/s{eta}",
            flush=True,
        )


def progress_line(stage: Stage, loader: Iterable[Batch], mode: str) -> ProgressLine:
    """The progress printer of one pass over `loader` (silent on every process but rank 0)."""
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    every = stage.log_every if stage.cluster.is_main else 0
    return ProgressLine(mode, stage.epoch + 1, total, every)  # counted from 1, as the epoch lines are


def timed(loader: Iterable[Batch]) -> Iterator[tuple[Batch, float]]:
    """Each batch with the seconds spent waiting for it (the data side of a step)."""
    iterator = iter(loader)
    while True:
        waited = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - waited


def set_train_mode(module: nn.Module, finetune: str) -> None:
    """In head mode the frozen backbone stays in eval mode, so BatchNorm statistics do not drift."""
    if finetune == "head":
        module.eval()
        head(module.module if isinstance(module, DistributedDataParallel) else module).train()
    else:
        module.train()


def objective_line(loss: float, accuracy: float, split: str = "validation") -> str:
    """The line the tuner's metric regex reads (config.toml: tuning.objective_metric_regex)."""
    return f"{split}:loss={loss:.6f} {split}:accuracy={accuracy:.6f}"
