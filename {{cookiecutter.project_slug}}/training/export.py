"""What a training job leaves: the artifact in SM_MODEL_DIR (float weights, an int8 copy for CPU
endpoints when train_model.py made one, metadata.json) and history.json in the output folder.

The int8 copy (quantize.py) is the restored best model, calibrated on training images and measured on
the whole validation split; classifier/artifact.py chooses at the endpoint which one serves.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from checkpoints import run_signature
from cluster import Cluster
from data import ImageFiles, SplitFiles, auto_num_workers, make_loader
from loaders import Data
from optimisation import Training
from quantize import CALIBRATION_IMAGES, Quantized, quantize_and_compare

from classifier.artifact import ModelMetadata, atomic_write_text, choose_precision, save_artifact
from classifier.presets import EvalPreset


def quantize_for_cpu(
    args: argparse.Namespace, cluster: Cluster, training: Training, data: Data, log: Callable[..., None]
) -> Quantized:
    """The restored best model as int8 too, calibrated on training images and measured on validation.

    Both through the eval preset, in fresh loaders of image files (the training loaders may hold
    augmented images or cached features); the whole validation split, on this process alone.
    """
    if args.quantize == "float":
        log("int8: quantize=float; serving the float model, no int8 copy made", flush=True)
        return Quantized(None, {"available": False, "reason": "quantize=float when it was trained"})
    preset = EvalPreset(args.image_size)
    workers = auto_num_workers(cluster.local_world_size) if args.num_workers < 0 else args.num_workers
    train = data.splits["train"].samples
    # Evenly spread over the class-sorted list, so every class is in the calibration set when it can be.
    stride = max(1, len(train) // CALIBRATION_IMAGES)
    calibration_files = SplitFiles("train", train[::stride][:CALIBRATION_IMAGES])

    def batches(files: SplitFiles) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def generate() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            loader = make_loader(
                ImageFiles(files, preset.uint8),
                args.test_batch_size,
                shuffle=False,
                seed=args.seed,
                num_workers=workers,
                distributed=False,
                pin_memory=False,
            )
            for batch in loader:
                if len(batch.labels):
                    images = preset.scaling(batch.inputs)
                    batch.release()
                    yield images, batch.labels

        return generate

    training.model.eval()
    calibration, validation = batches(calibration_files), batches(data.splits["valid"])
    return quantize_and_compare(training.model, args.backbone, calibration, validation, cluster.device, log)


def save(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    result: dict,
    history: list[dict],
    quantized: Quantized | None = None,
) -> None:
    """The artifact (float weights, the int8 copy if any, metadata.json) and history.json."""
    metadata = ModelMetadata(
        backbone=args.backbone,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        image_size=args.image_size,  # resize_size follows from it, as for the eval preset
        finetune=args.finetune,
        training={**result, "hyperparameters": run_signature(args)},
        quantization={"setting": args.quantize, **quantized.figures} if quantized is not None else {},
    )
    save_artifact(args.model_dir, training.model, metadata, None if quantized is None else quantized.model)
    if quantized is not None:  # runs on the main process only: print is its log
        precision, reason = choose_precision(metadata, "cpu")
        print(f"int8: a CPU endpoint will serve {precision}: {reason}; GPU endpoints serve float", flush=True)
    Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    history_path = Path(args.output_data_dir) / "history.json"
    atomic_write_text(json.dumps({"epochs": history, **result}, indent=2), history_path)
