"""The local endpoint: the serving container's HTTP contract on localhost, with the same handler."""

from __future__ import annotations

import io
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import PACKAGE, SERVED_CLASS_NAMES, project_module
from local_endpoint_helpers import JPEG, photo, request, running
from PIL import Image

from classifier.artifact import readable_class_name

local_endpoint = project_module("local.endpoint")
launcher = project_module("workflow.launcher")
payload = project_module("workflow.payload")
make_image = project_module("workflow.synthetic").make_image


@pytest.fixture(scope="module")
def endpoint(model_archive) -> Iterator:
    with running(local_endpoint.make_server(model_archive, port=0)) as server:
        yield server


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A JPEG, a PNG and a JPEG with no telling extension (sent as octet-stream, sniffed)."""
    folder = tmp_path_factory.mktemp("to-predict")
    paths = [folder / "first.jpg", folder / "second.png", folder / "third.upload"]
    for hue, path, image_format in zip((0.1, 0.5, 0.8), paths, ("JPEG", "PNG", "JPEG"), strict=True):
        photo(hue).save(path, format=image_format)
    return paths


def test_ping_says_healthy(endpoint):
    assert request(endpoint, "GET", "/ping")[0] == 200


def test_invoke_local_returns_top_k_breeds_per_image(endpoint, images):
    results = local_endpoint.invoke_local(endpoint.url, images, top_k=2)
    assert [result["image"] for result in results] == [str(path) for path in images]
    for result in results:
        assert len(result["top_k"]) == 2
        assert {entry["class_name"] for entry in result["top_k"]} <= set(SERVED_CLASS_NAMES)
        assert all(entry["label"] == readable_class_name(entry["class_name"]) for entry in result["top_k"])
    assert local_endpoint.image_content_type(images[2]) == "application/octet-stream"


def test_twenty_parallel_requests_all_succeed_and_agree(endpoint, images):
    expected = local_endpoint.invoke_local(endpoint.url, images, top_k=3)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda n: local_endpoint.invoke_local(endpoint.url, [images[n % 3]], 3), range(20))
        )
    for n, [answer] in enumerate(answers):
        reference = expected[n % 3]["top_k"]
        assert [entry["index"] for entry in answer["top_k"]] == [entry["index"] for entry in reference]
        assert [entry["probability"] for entry in answer["top_k"]] == pytest.approx(
            [entry["probability"] for entry in reference], abs=1e-5
        )


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "image/jpeg"}, JPEG[: len(JPEG) // 2], 400),
        ({"Content-Type": "image/jpeg"}, b"", 400),
        ({"Content-Type": "text/plain"}, JPEG, 415),
        ({"Content-Type": "image/jpeg", "Accept": "text/csv"}, JPEG, 406),
        ({"Content-Type": "application/json"}, b'{"images": [', 400),
        ({"Content-Type": "application/json"}, json.dumps({"images": ["x"] * 17}).encode(), 413),
        # As in the container: inference.py keeps the toolkit from decoding the body first (a 500 then).
        ({"Content-Type": "application/json"}, b'{"images": ["\xff"]}', 400),
        ({"Content-Type": "text/csv"}, b"\xff,1", 415),
    ],
    ids=[
        "truncated-jpeg",
        "empty",
        "text-plain",
        "accept-csv",
        "bad-json",
        "17-images",
        "json-not-utf8",
        "csv-not-utf8",
    ],
)
def test_handler_errors_map_to_status_codes_with_a_json_message(endpoint, headers, body, status):
    got_status, content_type, payload = request(endpoint, "POST", "/invocations", body, headers)
    assert got_status == status
    assert content_type == "application/json"
    assert json.loads(payload)["status"] == status
    assert request(endpoint, "POST", "/invocations", JPEG, {"Content-Type": "image/jpeg"})[0] == 200


def test_npy_and_default_accept(endpoint):
    status, content_type, _ = request(
        endpoint, "POST", "/invocations", JPEG, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}
    )
    assert (status, content_type) == (200, "application/x-npy")
    status, content_type, body = request(
        endpoint, "POST", "/invocations", JPEG, {"Content-Type": "image/jpeg", "Accept": "*/*"}
    )
    assert (status, content_type) == (200, "application/json")
    assert len(json.loads(body)["predictions"][0]["top_k"]) == len(SERVED_CLASS_NAMES)


def test_serve_says_when_it_is_ready_and_where(model_archive, project_root):
    """`serve` prints its URL once it answers; SIGTERM stops it cleanly."""
    code = (
        "import sys; from pathlib import Path; "
        f"from {project_module('local.endpoint').__name__} import serve; "
        "serve(Path(sys.argv[1]), port=0, project_root=Path(sys.argv[2]))"
    )
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(project_root / "src"), str(project_root)]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(model_archive), str(project_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        line = process.stdout.readline() if ready else ""
        match = re.search(r"Ready: serving .* at (http://127\.0\.0\.1:\d+)/invocations", line)
        assert match, f"no ready line, got {line!r}"
        with urllib.request.urlopen(match[1] + "/ping", timeout=10) as response:  # answered at once
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_invoke_local_reports_refused_images_and_unreachable_endpoints(endpoint, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text")
    with pytest.raises(local_endpoint.LocalEndpointError, match=r"notes\.jpg: HTTP 400: .*not an image"):
        local_endpoint.invoke_local(endpoint.url, [not_an_image])
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(local_endpoint.LocalEndpointError, match="is `serve` running"):
        local_endpoint.invoke_local(closed_url, [not_an_image], wait_ready=0.5)


def test_predict_asks_the_server_before_reading_any_image(tmp_path, monkeypatch):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)

    def read(*args, **kwargs):
        raise AssertionError("an image was read before the server answered")

    monkeypatch.setattr(payload, "request_body", read)
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(local_endpoint.LocalEndpointError, match=r"cannot reach .*/ping .*is `serve` running"):
        local_endpoint.invoke_local(closed_url, [photo], wait_ready=0.5)
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def large_photo(tmp_path_factory) -> Path:
    """A 22 MB JPEG of 12 megapixels: a phone photo's pixels at their most expensive (noise, quality 100)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("large") / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=100)
    assert 20 * 2**20 < path.stat().st_size < payload.MAX_PHOTO_BYTES
    return path


SHRINK_PROBE = """
import json, sys, time
from pathlib import Path
from PIL import Image
from PACKAGE.workflow.payload import REALTIME_BODY_LIMIT, request_body

def high_water_mark():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

Image.init()
with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
    clear_refs.write("5")  # the high-water mark starts again from here
before, cpu = high_water_mark(), time.process_time()
body, _, _ = request_body(Path(sys.argv[1]), "image/jpeg", REALTIME_BODY_LIMIT)
cpu = time.process_time() - cpu
print(json.dumps(dict(peak_bytes=high_water_mark() - before, cpu_s=cpu, sent=len(body))))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures with Linux's /proc")
def test_shrinking_a_large_photo_is_bounded_in_time_and_memory(large_photo, project_root):
    """Measured in a process of its own, with large buffers mapped and returned rather than reused unseen:
    the photo is decoded once (a JPEG at reduced scale where that is enough), never held as file bytes."""
    code = SHRINK_PROBE.replace("PACKAGE", PACKAGE)
    environment = {**os.environ, "PYTHONPATH": str(project_root / "src"), "MALLOC_MMAP_THRESHOLD_": "65536"}
    completed = subprocess.run(
        [sys.executable, "-c", code, str(large_photo)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(completed.stdout)
    decoded_bytes = 4000 * 3000 * 3
    assert figures["sent"] <= payload.REALTIME_BODY_LIMIT
    assert figures["peak_bytes"] < 4 * decoded_bytes, figures
    assert figures["cpu_s"] < 5, figures


def predict_both_ways(endpoint, config, image: Path, dry_run_dir: Path) -> tuple[Any, Any, list[dict]]:
    """`image` to the local endpoint and to a SageMaker endpoint in a dry run: each target's result or
    error, and the InvokeEndpoint requests the dry run captured."""
    session_module = project_module("aws.session")
    try:
        [local] = local_endpoint.invoke_local(
            endpoint.url, [image], top_k=1, body_limit=payload.body_limit(config)
        )
    except local_endpoint.LocalEndpointError as error:
        local = error
    with session_module.open_session(config, dry_run=True, folder=dry_run_dir) as session:
        try:
            [remote] = launcher.predict(config, session, [image], endpoint_name="demo", top_k=1)
        except launcher.LaunchError as error:
            remote = error
        calls = session.offline.calls
        invocations = [call["params"] for call in calls if call["operation"] == "InvokeEndpoint"]
    return local, remote, invocations


def test_a_photo_over_the_limit_is_shrunk_the_same_way_for_both_targets(
    endpoint, project_config, large_photo, tmp_path
):
    local, remote, [invocation] = predict_both_ways(endpoint, project_config, large_photo, tmp_path)
    limit = payload.body_limit(project_config)
    assert len(local["top_k"]) == 1 and remote["status"] == "captured, not run"
    match = re.fullmatch(
        rf"22\.\d MB is over the endpoint's {limit / 2**20:.1f} MB request limit: "
        r"sent as a (\d+)x(\d+) JPEG of ([\d.]+) MB \(shrunk on this machine\)",
        local["note"],
    )
    assert match and remote["note"] == local["note"]
    width, height = int(match[1]), int(match[2])
    assert width / height == pytest.approx(4000 / 3000, rel=0.01)
    assert min(width, height) >= payload.MIN_SHRUNK_SIDE
    assert invocation["ContentType"] == "image/jpeg"
    sent = int(re.fullmatch(r"<(\d+) bytes>", invocation["Body"])[1])
    assert sent <= limit and f"{sent / 2**20:.1f} MB" == f"{match[3]} MB"


def test_a_file_over_the_limit_that_is_no_image_is_the_same_one_line_error_for_both_targets(
    endpoint, project_config, tmp_path
):
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(random.Random(0).randbytes(7 * 2**20))
    local, remote, invocations = predict_both_ways(endpoint, project_config, noise, tmp_path / "dry")
    assert isinstance(local, local_endpoint.LocalEndpointError) and isinstance(remote, launcher.LaunchError)
    assert str(local) == str(remote) and "\n" not in str(local)
    assert str(local).startswith(f"{noise} is 7.0 MB, over the endpoint's") and "not an image" in str(local)
    assert invocations == []


def test_predict_waits_for_a_server_still_starting(model_archive, project_root, images):
    """`serve ... &` then `predict --local` at once: the prediction waits for the server, not 'refused'."""
    with socket.socket() as probe:  # a free port, taken by the server a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = threading.Event()

    def serve_later() -> None:
        time.sleep(1.5)
        server = local_endpoint.make_server(model_archive, port=port, project_root=project_root)
        holder.append(server)
        started.set()
        server.serve_forever()

    holder: list = []
    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    try:
        [result] = local_endpoint.invoke_local(f"http://127.0.0.1:{port}", images[:1], top_k=1, wait_ready=20)
        assert started.is_set() and len(result["top_k"]) == 1
    finally:
        started.wait(30)
        for server in holder:
            server.shutdown()
            server.server_close()
        thread.join(timeout=10)


def test_archive_without_code_serves_the_project_sources(tmp_path, model_artifact_dir, project_root, images):
    """`train --local` writes model.tar.gz with the artifact only: it is repacked as PyTorchModel does."""
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in model_artifact_dir.iterdir():
            tar.add(path, arcname=path.name)
    with running(local_endpoint.make_server(archive, port=0, project_root=project_root)) as server:
        code_dir = Path(server.handler.__file__).parent
        assert code_dir.name == "code" and (code_dir / "lib" / "classifier" / "artifact.py").is_file()
        [result] = local_endpoint.invoke_local(server.url, images[:1], top_k=1)
        assert len(result["top_k"]) == 1


def test_model_folder_is_served_without_writing_into_it(model_artifact_dir, project_root, images):
    before = sorted(path.name for path in model_artifact_dir.iterdir())
    with running(local_endpoint.make_server(model_artifact_dir, port=0, project_root=project_root)) as server:
        assert len(local_endpoint.invoke_local(server.url, images[:1])) == 1
    assert sorted(path.name for path in model_artifact_dir.iterdir()) == before


def test_archive_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(local_endpoint.LocalEndpointError, match="not a model.tar.gz"):
        local_endpoint.prepare_model_dir(archive, workdir)
    assert not (tmp_path / "escaped.txt").exists() and not (workdir / "escaped.txt").exists()


def test_taken_port_is_a_one_line_error(endpoint, model_artifact_dir, project_root):
    taken_port = endpoint.server_address[1]
    with pytest.raises(local_endpoint.LocalEndpointError, match=f"cannot listen on 127.0.0.1:{taken_port}"):
        local_endpoint.make_server(model_artifact_dir, port=taken_port, project_root=project_root)


def test_running_endpoint_serves_for_the_with_block_only(model_archive, project_root, images):
    with local_endpoint.running_endpoint(model_archive, project_root) as local:
        [result] = local.predict(images[:1], top_k=2)
        assert len(result["top_k"]) == 2
    with pytest.raises(local_endpoint.LocalEndpointError, match="is `serve` running"):
        local.predict(images[:1])
