"""Per-image latency and throughput of inference.py against a reference-style handler.

The reference is how endpoint handlers are commonly written (the course project's among them):
the whole JPEG decoded at full size, the torchvision transform built for every request, and the
network called under `torch.no_grad()` instead of `torch.inference_mode()`. Ours runs twice: as
model_fn serves float, and as it serves the int8 copy (ONNX Runtime). All run the same network on the same
images, one request per image, sequentially, on the CPU.

The network is the configured backbone (random weights: nothing is downloaded) with a head trained
by train_model.py's own main() on generated hues (cached features, seconds), which also quantizes
it as a training job does. A held-out generated labelled set then gives each handler's accuracy
and the int8 handler's top-1 agreement with the float one.

    python benchmarks/bench_inference.py                   # phone photos and dataset-sized images
    python benchmarks/bench_inference.py --sizes 4032x3024 --images 16 --passes 3
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from PIL.Image import Resampling
from torchvision import transforms

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)]
# The package's name is data (config.toml), as in the tests.
PACKAGE = tomllib.loads((PROJECT_ROOT / "config.toml").read_text(encoding="utf-8"))["project"]["package"]
local_endpoint = importlib.import_module(f"{PACKAGE}.local.endpoint")
ProjectConfig = importlib.import_module(f"{PACKAGE}.config").ProjectConfig

from classifier.artifact import (  # noqa: E402
    QUANTIZE_ENV,
    ModelMetadata,
    OnnxNetwork,
    load_artifact,
    readable_class_name,
)

make_image = importlib.import_module(f"{PACKAGE}.workflow.synthetic").make_image
make_dataset = importlib.import_module(f"{PACKAGE}.workflow.synthetic").make_dataset

Handler = Callable[[bytes], bytes]


def make_photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG with photo-like statistics: smooth shapes plus sensor-like noise, quality 90."""
    generator = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(3, 12, 16, generator=generator) * 255).to(torch.uint8)
    smooth = Image.fromarray(coarse.permute(1, 2, 0).numpy()).resize((width, height), Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(smooth, noise, 0.15).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def reference_handler(network: torch.nn.Module, metadata: ModelMetadata) -> Handler:
    """input_fn + predict_fn + output_fn as commonly written, for `image/jpeg` bodies."""

    def handle(body: bytes) -> bytes:
        image = Image.open(io.BytesIO(body)).convert("RGB")  # full-size decode
        transform = transforms.Compose(  # rebuilt for every request
            [
                transforms.Resize(metadata.resize_size),
                transforms.CenterCrop(metadata.image_size),
                transforms.ToTensor(),
                transforms.Normalize(metadata.mean, metadata.std),
            ]
        )
        with torch.no_grad():
            logits = network(transform(image).unsqueeze(0))
        probabilities, indices = torch.softmax(logits, dim=1).topk(5, dim=1)
        top = [
            {"label": readable_class_name(metadata.class_names[index]), "probability": probability}
            for probability, index in zip(probabilities[0].tolist(), indices[0].tolist(), strict=True)
        ]
        return json.dumps(top).encode()

    return handle


def our_handler(
    code_dir: Path, model_dir: Path, precision: str
) -> tuple[Handler, torch.nn.Module | OnnxNetwork]:
    """The handler, and the network as model_fn prepared it for `precision` ($CLASSIFIER_QUANTIZE)."""
    handler = local_endpoint.load_handler(code_dir)
    os.environ[QUANTIZE_ENV] = precision
    model = handler.model_fn(str(model_dir))
    if isinstance(model.network, OnnxNetwork) != (precision == "int8"):
        raise SystemExit(f"model_fn did not serve {precision}; see its log line")

    def handle(body: bytes) -> bytes:
        request = handler.input_fn(body, "image/jpeg")
        body, _ = handler.output_fn(handler.predict_fn(request, model), "application/json")
        return body

    return handle, model.network


def train_artifact(workdir: Path, backbone: str, image_size: int, classes: int) -> Path:
    """SM_MODEL_DIR of train_model.py's main() on generated hues: float head on a random backbone + int8."""
    sys.path.insert(0, str(PROJECT_ROOT / "training"))
    train_model = importlib.import_module("train_model")
    data = make_dataset(
        workdir / "hues",
        num_classes=classes,
        images_per_class={"train": 12, "valid": 6, "test": 1},
        size=(160, 120),
    )
    args = train_model.get_args_parser("bench").parse_args(
        [
            *("--epochs", "6", "--batch_size", "16", "--test_batch_size", "32", "--lr", "0.05"),
            *("--backbone", backbone, "--image_size", str(image_size), "--finetune", "head"),
            *("--pretrained", "false", "--feature_cache", "true", "--quantize", "int8", "--num_workers", "0"),
            *("--data_dir", str(data), "--model_dir", str(workdir / "model")),
            *("--output_data_dir", str(workdir / "output"), "--checkpoint_dir", str(workdir / "checkpoints")),
        ]
    )
    train_model.main(args, evaluate_test=True)
    return workdir / "model"


def labelled_set(classes: int, per_class: int, size: tuple[int, int]) -> list[tuple[bytes, int]]:
    """Held-out generated images of each hue (other noise than training's), as JPEG request bodies."""
    rng, bodies = random.Random(123), []
    for label in range(classes):
        for _ in range(per_class):
            buffer = io.BytesIO()
            make_image(label / classes, size, rng).save(buffer, format="JPEG", quality=90)
            bodies.append((buffer.getvalue(), label))
    return bodies


def top1(handle: Handler, body: bytes, class_names: list[str]) -> int:
    """The index of the handler's first answer (both answer shapes carry the readable label)."""
    answer = json.loads(handle(body))
    first = answer[0] if isinstance(answer, list) else answer["predictions"][0]["top_k"][0]
    return [readable_class_name(name) for name in class_names].index(first["label"])


def network_milliseconds(
    network: torch.nn.Module | OnnxNetwork, image_size: int, ours: bool, calls: int = 20
) -> float:
    """Median time of the network alone on one image: the part no preprocessing can save."""
    batch = torch.randn(1, 3, image_size, image_size)
    if ours:
        batch = batch.contiguous(memory_format=torch.channels_last)
    context = torch.inference_mode if ours else torch.no_grad
    times = []
    with context():
        for _ in range(calls + 3):
            started = time.perf_counter()
            network(batch)
            times.append(time.perf_counter() - started)
    return statistics.median(times[3:]) * 1000


def measure(handlers: dict[str, Handler], bodies: list[bytes], passes: int) -> dict[str, list[float]]:
    """Seconds per request for each handler, after a warm-up request.

    The handlers take turns on each image, so a busy machine slows both alike.
    """
    latencies: dict[str, list[float]] = {name: [] for name in handlers}
    for handle in handlers.values():
        handle(bodies[0])
    for _ in range(passes):
        for body in bodies:
            for name, handle in handlers.items():
                started = time.perf_counter()
                handle(body)
                latencies[name].append(time.perf_counter() - started)
    return latencies


def report(name: str, latencies: list[float]) -> float:
    throughput = len(latencies) / sum(latencies)
    p90 = statistics.quantiles(latencies, n=10)[-1] if len(latencies) > 1 else latencies[0]
    print(
        f"  {name:<10} {statistics.median(latencies) * 1000:9.1f} {p90 * 1000:9.1f} "
        f"{statistics.fmean(latencies) * 1000:9.1f} {throughput:10.2f}"
    )
    return throughput


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(4032, 3024), (500, 375)],
        help="image sizes WxH: a 12 MP phone photo, and the typical dogImages picture",
    )
    parser.add_argument("--images", type=int, default=6, help="distinct images per size")
    parser.add_argument("--passes", type=int, default=2, help="times each image is sent")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--classes", type=int, default=8, help="hues in the generated labelled sets")
    parser.add_argument("--per_class", type=int, default=10, help="held-out images per hue for the accuracy")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model_config = ProjectConfig.load(PROJECT_ROOT).model
    backbone, image_size = model_config["backbone"], model_config["image_size"]
    print(
        f"{backbone}, {image_size} px; CPU, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as workdir:
        torch.manual_seed(0)
        model_dir = train_artifact(Path(workdir), backbone, image_size, args.classes)
        network, metadata = load_artifact(model_dir)
        # The code as the endpoint receives it: the SDK's repack (inference/ in code/, classifier/ in lib/).
        serving = Path(workdir) / "serving"
        serving.mkdir()
        _, code_dir = local_endpoint.prepare_model_dir(model_dir, serving, PROJECT_ROOT)
        float_handler, float_network = our_handler(code_dir, model_dir, "float")
        int8_handler, int8_network = our_handler(code_dir, model_dir, "int8")
        handlers = {
            "reference": reference_handler(network, metadata),
            "float": float_handler,
            "int8": int8_handler,
        }
        size = metadata.image_size
        print(
            f"\nnetwork alone, one image: reference {network_milliseconds(network, size, False):.1f} ms, "
            f"float {network_milliseconds(float_network, size, True):.1f} ms "
            "(BatchNorm folded, channels_last, inference_mode), "
            f"int8 {network_milliseconds(int8_network, size, True):.1f} ms (ONNX Runtime, QDQ)"
        )
        for width, height in args.sizes:
            bodies = [make_photo(width, height, seed) for seed in range(args.images)]
            megabytes = statistics.fmean(len(body) for body in bodies) / 1e6
            print(f"\n{args.images} JPEGs of {width}x{height} ({megabytes:.2f} MB on average), ", end="")
            print(f"{args.passes} passes, one image per request")
            print(f"  {'handler':<10} {'median ms':>9} {'p90 ms':>9} {'mean ms':>9} {'images/s':>10}")
            latencies = measure(handlers, bodies, args.passes)
            throughput = {name: report(name, values) for name, values in latencies.items()}
            print(
                "  throughput ratio against the reference: "
                f"float {throughput['float'] / throughput['reference']:.2f}x, "
                f"int8 {throughput['int8'] / throughput['reference']:.2f}x (goal: 3x)"
            )
        job = metadata.quantization
        print(
            f"\nin the job ({job['validation_images']} validation images): accuracy float "
            f"{job['float_accuracy']:.4f}, int8 {job['int8_accuracy']:.4f}, "
            f"top-1 agreement {job['agreement']:.4f}; size float {job['float_bytes'] / 1e6:.1f} MB, "
            f"int8 {job['int8_bytes'] / 1e6:.1f} MB; one image on the job's CPU: float "
            f"{job['float_cpu_ms']:.1f} ms, int8 {job['int8_cpu_ms']:.1f} ms"
        )
        labelled = labelled_set(args.classes, args.per_class, (500, 375))
        answers = {
            name: [top1(handle, body, metadata.class_names) for body, _ in labelled]
            for name, handle in handlers.items()
        }
        labels = [label for _, label in labelled]
        accuracy = {
            name: statistics.fmean(a == b for a, b in zip(top, labels, strict=True))
            for name, top in answers.items()
        }
        agreement = statistics.fmean(a == b for a, b in zip(answers["int8"], answers["float"], strict=True))
        print(
            f"generated labelled set ({len(labelled)} JPEGs of 500x375, {args.classes} hues): accuracy "
            + ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items())
            + f"; int8 top-1 agreement with float {agreement:.4f}"
        )


if __name__ == "__main__":
    main()
