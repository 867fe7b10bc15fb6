"""Peak memory and CPU time of each endpoint request, measured in a process of its own (run by
test_endpoint_bounds.py).

    python endpoint_memory_probe.py PACKAGE CODE_DIR MODEL_DIR

Loads CODE_DIR/inference.py behind the toolkit's Transformer (the local endpoint's `HandlerChain`),
with the network swapped for a stand-in of a few parameters: the network's own activations are
its business; this measures what the request handling around it adds. Then reads one request per
line on stdin, {"content_type": ..., "accept": ..., "body": "<base64>"}, and answers one line per
request on stdout, {"status": 200, "peak_bytes": ..., "seconds": ..., "cpu_seconds": ...}.

The peak is the resident set's high-water mark during the request above the resident set before
it: Linux resets the mark on writing 5 to /proc/self/clear_refs. Tensors, PIL images and numpy
arrays are allocated outside Python's allocator, so tracemalloc would not see them; run with
MALLOC_MMAP_THRESHOLD_ fixed, so that large buffers are mapped and returned, not reused unseen.
The CPU time is the process's (all threads, user and system) during the request: what a request
takes from the worker whatever else the machine is doing, unlike the wall-clock `seconds`.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
import time
from pathlib import Path

import torch


def status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    return status_bytes("VmHWM:")


class StandIn(torch.nn.Module):
    """(images, 3, S, S) -> (images, classes), reading every pixel, keeping nothing."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3)))


def main(package: str, code_dir: str, model_dir: str) -> None:
    torch.set_num_threads(1)  # one allocation arena: the figure does not depend on the core count
    local_endpoint = importlib.import_module(f"{package}.local.endpoint")
    handler = local_endpoint.load_handler(Path(code_dir))
    load = handler.model_fn

    def model_fn(model_dir: str):
        model = load(model_dir)
        model.network = StandIn(len(model.labels))
        return model

    handler.model_fn = model_fn
    chain = local_endpoint.HandlerChain(handler, Path(model_dir))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        body = base64.b64decode(request["body"])
        before = reset_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        answer = chain.invoke(body, request.get("content_type"), request.get("accept"))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = status_bytes("VmHWM:") - before
        reply = {"status": answer.status, "peak_bytes": peak, "seconds": seconds, "cpu_seconds": cpu_seconds}
        if answer.status >= 400:
            reply["error"] = answer.body.decode("utf-8", "replace")[:300]
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
