"""What learns and how: the trained module (DDP-wrapped where distributed), its loss, optimiser,
learning-rate schedule and mixed-precision scaler."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from cluster import Cluster
from data import SplitFiles
from epoch import Stage
from loaders import Data
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier.backbones import head, trainable_parameters


@dataclass
class Training:
    """What learns and how: `trained` is the network, or only its head on cached features."""

    model: nn.Module  # the whole network: what is saved
    trained: nn.Module
    stage: Stage
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


def make_optimizer(args: argparse.Namespace, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


def class_weight_tensor(split: SplitFiles, num_classes: int) -> torch.Tensor:
    """Inverse frequency, normalised so that a balanced dataset gets all ones."""
    counts = torch.tensor(split.class_counts(num_classes), dtype=torch.float32)
    return counts.sum() / (num_classes * counts.clamp(min=1))


def build_training(args: argparse.Namespace, cluster: Cluster, model: nn.Module, data: Data) -> Training:
    """The module that learns (DDP-wrapped where distributed), its loss, optimiser, schedule and scaler."""
    on_gpu = cluster.device.type == "cuda"
    amp = args.amp and on_gpu
    trained = head(model) if args.feature_cache else model
    num_classes = len(data.class_names)
    weights = class_weight_tensor(data.splits["train"], num_classes) if args.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(cluster.device) if weights is not None else None)
    module = (
        DistributedDataParallel(trained, device_ids=[cluster.local_rank] if on_gpu else None)
        if cluster.distributed
        else trained
    )
    optimizer = make_optimizer(args, trainable_parameters(trained))
    return Training(
        model=model,
        trained=trained,
        stage=Stage(module, data.prepare, criterion, amp, cluster, log_every=args.log_every),
        optimizer=optimizer,
        scheduler=make_scheduler(args, optimizer),
        scaler=torch.amp.GradScaler(cluster.device.type, enabled=amp),
    )
