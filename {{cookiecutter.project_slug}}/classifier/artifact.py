"""The model artifact: a state_dict plus a JSON description, never a pickled model.

Layout of SM_MODEL_DIR (and of model.tar.gz):
    model.pth       the network's state_dict (load with weights_only=True)
    model_int8.onnx the same network quantized to int8, ONNX in QDQ format for ONNX Runtime (when it
                    could be quantized: training/quantize.py)
    metadata.json   everything needed to rebuild the network and its input transform, and the
                    int8 model's figures (`quantization`), from which the endpoint chooses one
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
import torchvision
from torch import nn

from classifier import choices
from classifier.backbones import build_model
from classifier.choices import QUANTIZE_ENV as QUANTIZE_ENV  # serving and the benchmarks import it from here
from classifier.choices import readable_class_name as readable_class_name  # serving imports it from here
from classifier.choices import serving_precision
from classifier.presets import IMAGENET_MEAN, IMAGENET_STD, EvalPreset, resize_size_for

WEIGHTS_FILENAME = "model.pth"
QUANTIZED_FILENAME = "model_int8.onnx"
METADATA_FILENAME = "metadata.json"
# The int8 model's format (metadata.json's quantization.format) and the ONNX opset it is written in:
# 18 is read by every ONNX Runtime since 1.14, so the serving image's onnxruntime need not be new.
INT8_FORMAT = choices.INT8_FORMAT
ONNX_OPSET = 18


@dataclass
class ModelMetadata:
    backbone: str
    num_classes: int
    class_names: list[str]
    image_size: int
    resize_size: int = 0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    finetune: str = "head"
    torch_version: str = torch.__version__
    torchvision_version: str = torchvision.__version__
    # Free-form facts about training (best epoch, validation loss, ...).
    training: dict = field(default_factory=dict)
    # The int8 model: the setting, whether it exists (else the reason), agreement and accuracies.
    # Empty in artifacts from before int8 (they serve float).
    quantization: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.resize_size:
            self.resize_size = resize_size_for(self.image_size)
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"metadata lists {len(self.class_names)} class names but num_classes is {self.num_classes}"
            )

    def eval_preset(self) -> EvalPreset:
        return EvalPreset(self.image_size, self.resize_size, tuple(self.mean), tuple(self.std))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        return cls(**json.loads(text))


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file beside `path`, then rename it to `path`.

    `path` then holds the old file or the new one whole, never half of one: a spot interruption or
    a full disk can stop the process mid-write. On any error the temporary file is removed too.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as stream:
            write(stream)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _KeepsWriteErrors:
    """A file for `torch.save` that keeps the OSError its write() raised: torch's zip writer reports it
    as "unexpected pos" (a RuntimeError), which would hide a full disk (ENOSPC) behind a C++ message."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.name = stream.name
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.stream.flush()


def atomic_save(obj: object, path: Path) -> None:
    """`torch.save` to `path`, whole or not at all; a full disk raises its OSError (ENOSPC)."""

    def save(stream: BinaryIO) -> None:
        writer = _KeepsWriteErrors(stream)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None

    _write_atomically(path, save)


def atomic_write_text(text: str, path: Path) -> None:
    """`atomic_save` for text files (UTF-8)."""
    _write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def save_artifact(
    model_dir: str | Path,
    model: nn.Module,
    metadata: ModelMetadata,
    quantized: bytes | None = None,
) -> None:
    """Write the weights, the int8 ONNX model if any, then the metadata; each file whole or not at all."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(model.state_dict(), model_dir / WEIGHTS_FILENAME)
    if quantized is not None:
        _write_atomically(model_dir / QUANTIZED_FILENAME, lambda stream: stream.write(quantized))
    atomic_write_text(metadata.to_json(), model_dir / METADATA_FILENAME)


def load_metadata(model_dir: str | Path) -> ModelMetadata:
    return ModelMetadata.from_json((Path(model_dir) / METADATA_FILENAME).read_text())


def load_artifact(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMetadata]:
    """Rebuild the network from metadata (no download) and load its weights, in eval mode."""
    metadata = load_metadata(model_dir)
    model = build_model(metadata.backbone, metadata.num_classes, pretrained=False, finetune="full")
    state = torch.load(Path(model_dir) / WEIGHTS_FILENAME, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), metadata


class OnnxNetwork:
    """An ONNX Runtime session on the CPU, called as the float network is: a float (N, C, H, W) batch in,
    the logits out, as tensors. ONNX Runtime reads the model itself: no Python runs from the file."""

    def __init__(self, model: bytes | str | Path) -> None:
        import onnxruntime  # only where an int8 model is served or made

        source = model if isinstance(model, bytes) else str(model)
        options = onnxruntime.SessionOptions()
        # As many threads as torch uses here (the container's OMP_NUM_THREADS, or torch.set_num_threads),
        # so int8 and float share the CPU alike.
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # ONNX Runtime takes NCHW float32 in C order; channels_last batches are copied into it.
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def load_quantized(model_dir: str | Path, metadata: ModelMetadata) -> OnnxNetwork:
    """The int8 ONNX model of the artifact, in an ONNX Runtime session on the CPU."""
    if metadata.quantization.get("format") != INT8_FORMAT:
        raise ValueError(f"the artifact's int8 model is not {INT8_FORMAT}: {metadata.quantization}")
    return OnnxNetwork(Path(model_dir) / QUANTIZED_FILENAME)


def choose_precision(
    metadata: ModelMetadata, device_type: str, override: str | None = None
) -> tuple[str, str]:
    """("int8" or "float", why) for an endpoint on `device_type` ("cpu", "cuda"); `override` is the
    endpoint's $CLASSIFIER_QUANTIZE.

    The rules are classifier/choices.py's `serving_precision`: torch-free, so the CLI's `report` shows
    the same choice.
    """
    return serving_precision(metadata.quantization, device_type, override)
