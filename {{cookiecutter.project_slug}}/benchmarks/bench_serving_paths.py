"""Start-up, memory and per-request latency of each serving path, on the same model and images.

Both paths serve the same package's inference.py on this machine: "torchserve" is `serve`'s stand-in
for the PyTorch image (the toolkit's Transformer behind waitress), "ray_serve" is the package `deploy`
ships for AWS's Ray Serve container, run under Ray Serve (one replica, one CPU) as that container runs
it. The network is the configured backbone with random weights (nothing is downloaded) at the
configured image size. Memory is the resident set of every process the path started (unique pages,
from psutil), after the requests.

    python benchmarks/bench_serving_paths.py                # both paths, 30 requests each
    python benchmarks/bench_serving_paths.py --servers ray_serve --requests 100
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import io
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
import torch

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)]
PACKAGE = tomllib.loads((PROJECT_ROOT / "config.toml").read_text(encoding="utf-8"))["project"]["package"]
local_endpoint = importlib.import_module(f"{PACKAGE}.local.endpoint")
ProjectConfig = importlib.import_module(f"{PACKAGE}.config").ProjectConfig
make_image = importlib.import_module(f"{PACKAGE}.workflow.synthetic").make_image

from classifier.artifact import ModelMetadata, save_artifact  # noqa: E402
from classifier.backbones import build_model  # noqa: E402

CLASSES = [f"{n:03d}.class_{n}" for n in range(1, 11)]


def trained_model(config, folder: Path) -> Path:
    """model.tar.gz as training writes it: the configured backbone, random weights, ten classes."""
    model = config.model
    torch.manual_seed(0)
    network = build_model(model["backbone"], len(CLASSES), pretrained=False, finetune="full")
    metadata = ModelMetadata(
        backbone=model["backbone"],
        num_classes=len(CLASSES),
        class_names=CLASSES,
        image_size=model["image_size"],
    )
    save_artifact(folder / "model", network, metadata)
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted((folder / "model").iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def photo(size: tuple[int, int], seed: int) -> bytes:
    buffer = io.BytesIO()
    make_image(random.Random(seed).random(), size, random.Random(seed)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def post(url: str, body: bytes) -> float:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        start = time.perf_counter()
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200, response.status
        return elapsed
    finally:
        connection.close()


def unique_memory_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile holds nothing
            total += process.memory_full_info().uss
    return total / 1e6


def measure(server: str, archive: Path, bodies: list[bytes], requests: int) -> dict[str, float]:
    me = psutil.Process()
    before_children = {child.pid for child in me.children(recursive=True)}
    baseline = unique_memory_mb([me])
    start = time.perf_counter()
    if server == "ray_serve":
        context = importlib.import_module(f"{PACKAGE}.local.ray_endpoint").running_ray_endpoint(
            archive, PROJECT_ROOT
        )
    else:
        context = local_endpoint.running_endpoint(archive, PROJECT_ROOT)
    with context as endpoint:
        ready = time.perf_counter() - start
        post(endpoint.url, bodies[0])  # the first request pays for lazy imports and allocator growth
        latencies = [post(endpoint.url, bodies[n % len(bodies)]) for n in range(requests)]
        started = [c for c in me.children(recursive=True) if c.pid not in before_children]
        memory = unique_memory_mb([me, *started]) - baseline
    latencies.sort()
    return {
        "ready_s": ready,
        "memory_mb": memory,
        "processes": 1 + len(started),
        "median_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=["torchserve", "ray_serve"])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", default="500x375", help="JPEG width x height (the dataset's photos)")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    config = ProjectConfig.load(PROJECT_ROOT)
    torch.set_num_threads(1)  # both paths on one core: Ray's replica has one CPU (ray_serve/config.yaml)
    with tempfile.TemporaryDirectory() as scratch:
        archive = trained_model(config, Path(scratch))
        bodies = [photo((width, height), seed) for seed in range(8)]
        print(f"{config.model['backbone']} at {config.model['image_size']} px, {args.size} JPEGs, one core")
        print(f"{'server':<12}{'ready s':>9}{'memory MB':>11}{'procs':>7}{'median ms':>11}{'p90 ms':>9}")
        for server in args.servers:
            figures = measure(server, archive, bodies, args.requests)
            print(
                f"{server:<12}{figures['ready_s']:>9.1f}{figures['memory_mb']:>11.0f}{figures['processes']:>7}"
                f"{figures['median_ms']:>11.1f}{figures['p90_ms']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
