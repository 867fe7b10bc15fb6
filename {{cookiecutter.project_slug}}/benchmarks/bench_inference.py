"""Per-image latency and throughput of inference.py against a reference-style handler.

The reference is how endpoint handlers are commonly written (the course project's among them):
the whole JPEG decoded at full size, the torchvision transform built for every request, and the
network called under `torch.no_grad()` instead of `torch.inference_mode()`. Both run the same
network (the configured backbone, random weights) on the same images, one request per image,
sequentially, on the CPU.

    python benchmarks/bench_inference.py                   # phone photos and dataset-sized images
    python benchmarks/bench_inference.py --sizes 4032x3024 --images 16 --passes 3
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
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
local_endpoint = importlib.import_module(f"{PACKAGE}.local_endpoint")
ProjectConfig = importlib.import_module(f"{PACKAGE}.config").ProjectConfig

from classifier.artifact import ModelMetadata, readable_class_name, save_artifact  # noqa: E402
from classifier.backbones import build_model  # noqa: E402

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


def our_handler(code_dir: Path, model_dir: Path) -> tuple[Handler, torch.nn.Module]:
    """The handler, and the network as model_fn prepared it."""
    handler = local_endpoint.load_handler(code_dir)
    model = handler.model_fn(str(model_dir))

    def handle(body: bytes) -> bytes:
        request = handler.input_fn(body, "image/jpeg")
        body, _ = handler.output_fn(handler.predict_fn(request, model), "application/json")
        return body

    return handle, model.network


def network_milliseconds(network: torch.nn.Module, image_size: int, ours: bool, calls: int = 20) -> float:
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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model_config = ProjectConfig.load(PROJECT_ROOT).model
    class_names = [f"{index + 1:03d}.Breed_{index + 1}" for index in range(model_config["num_classes"])]
    metadata = ModelMetadata(
        backbone=model_config["backbone"],
        num_classes=model_config["num_classes"],
        class_names=class_names,
        image_size=model_config["image_size"],
    )
    torch.manual_seed(0)
    network = build_model(metadata.backbone, metadata.num_classes, pretrained=False, finetune="full").eval()
    print(
        f"{metadata.backbone}, {metadata.num_classes} classes, {metadata.image_size} px; CPU, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = Path(workdir) / "model"
        save_artifact(model_dir, network, metadata)
        # The code as the endpoint receives it: the SDK's repack (inference/ in code/, classifier/ in lib/).
        serving = Path(workdir) / "serving"
        serving.mkdir()
        _, code_dir = local_endpoint.prepare_model_dir(model_dir, serving, PROJECT_ROOT)
        ours, served_network = our_handler(code_dir, model_dir)
        handlers = {"reference": reference_handler(network, metadata), "ours": ours}
        size = metadata.image_size
        print(
            f"network alone, one image: reference {network_milliseconds(network, size, False):.1f} ms, "
            f"ours {network_milliseconds(served_network, size, True):.1f} ms "
            "(BatchNorm folded, channels_last, inference_mode)"
        )
        for width, height in args.sizes:
            bodies = [make_photo(width, height, seed) for seed in range(args.images)]
            megabytes = statistics.fmean(len(body) for body in bodies) / 1e6
            print(f"\n{args.images} JPEGs of {width}x{height} ({megabytes:.2f} MB on average), ", end="")
            print(f"{args.passes} passes, one image per request")
            print(f"  {'handler':<10} {'median ms':>9} {'p90 ms':>9} {'mean ms':>9} {'images/s':>10}")
            latencies = measure(handlers, bodies, args.passes)
            throughput = {name: report(name, values) for name, values in latencies.items()}
            ratio = throughput["ours"] / throughput["reference"]
            print(f"  throughput ratio (ours / reference): {ratio:.2f}x")


if __name__ == "__main__":
    main()
