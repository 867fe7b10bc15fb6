"""The endpoint on AWS's Ray Serve container: its package, its image, its deploy, and the same answers.

The slow tests run the package `deploy` ships under Ray Serve on this machine, as the container runs
it (`serve run config.yaml` with the model folder and code/ on PYTHONPATH; one Ray instance, one CPU,
for the module), and send it the payloads the TorchServe path is tested with: each answer must be
the one the TorchServe stand-in (the toolkit's Transformer over the same inference.py) gives.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from click.testing import CliRunner
from conftest import PROJECT_ROOT, SERVED_CLASS_NAMES, project_module
from hostile_images import repeated_scans
from launch_helpers import archive_names, copy_project, model_archive, only, s3_object
from PIL import Image
from test_endpoint_bounds import HOSTILE_DECODES, PEAK_BYTES_PER_DECODED_PIXEL, json_batch, saved, webp_6000

ray_package = project_module("aws.ray_package")
schema = project_module("config.schema")
aws_tables = project_module("config.aws_tables")
local_endpoint = project_module("local.endpoint")
launcher = project_module("workflow.launcher")
dryrun = project_module("aws.offline")
payload = project_module("workflow.payload")
open_session = project_module("aws.session").open_session
ProjectConfig = project_module("config").ProjectConfig


def encode(image: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


JPEG = encode(Image.radial_gradient("L").convert("RGB").resize((96, 80)))
PNG = encode(Image.linear_gradient("L").convert("RGB").resize((64, 48)), "PNG")


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, model_artifact_dir) -> Path:
    """model.tar.gz as training writes it: model.pth + metadata.json at the root."""
    path = tmp_path_factory.mktemp("trained") / "model.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for file in sorted(model_artifact_dir.iterdir()):
            tar.add(file, arcname=file.name)
    return path


# --- the package, the image, the config ------------------------------------------------------------


@pytest.mark.slow  # the SDK's repack and a gzip of the network: some 6 s
def test_the_package_is_the_torchserve_one_plus_what_the_ray_container_reads(
    project_config, trained_model, model_archive, tmp_path
):
    package = ray_package.build_package(project_config, trained_model, tmp_path / "model.tar.gz")
    names = archive_names(package)
    torchserve = archive_names(model_archive) - {""}  # the SDK archives its root folder as "./"
    # The same model files and the same code/ as TorchServe's, so both servers run the same inference.py.
    assert torchserve <= names
    added = {name.split("/")[0] if "/" in name else name for name in names - torchserve}
    assert added == {"config.yaml", "deployment.py", "code"}
    assert all(name.startswith("code/lib/sagemaker_inference") for name in names - torchserve if "/" in name)
    assert {
        "code/lib/sagemaker_inference/errors.py",
        "code/lib/sagemaker_inference/content_types.py",
    } <= names
    assert not any("__pycache__" in name for name in names)
    with tarfile.open(package) as tar:
        config = yaml.safe_load(tar.extractfile("config.yaml"))
        shipped = tar.extractfile("code/inference.py").read()
    assert shipped == (PROJECT_ROOT / "inference" / "inference.py").read_bytes()
    [application] = config["applications"]
    assert (application["import_path"], application["route_prefix"]) == ("deployment:app", "/")
    [deployment] = application["deployments"]
    assert deployment["max_ongoing_requests"] == 1  # inference.py's per-request bounds bound a replica
    assert deployment["max_queued_requests"] > 0  # and the queue in front of it is bounded too
    assert not (tmp_path / "model.tar.gz.partial").exists()


def test_the_request_limit_is_sagemakers_real_time_one():
    text = (PROJECT_ROOT / "ray_serve" / "deployment.py").read_text()
    [limit] = re.findall(r"^MAX_REQUEST_BYTES = (.+)$", text, re.MULTILINE)
    assert eval(limit, {}) == payload.REALTIME_BODY_LIMIT  # a literal product of integers


@pytest.mark.parametrize(
    ("region", "instance_type", "expected"),
    [
        (
            "us-east-1",
            "ml.m5.xlarge",
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
        ),
        (
            "eu-west-1",
            "ml.g5.xlarge",
            "763104351884.dkr.ecr.eu-west-1.amazonaws.com/ray:serve-ml-sagemaker-cuda-v1.4",
        ),
        ("af-south-1", None, "626614931356.dkr.ecr.af-south-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4"),
        (
            "cn-north-1",
            "ml.p3.2xlarge",
            "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/ray:serve-ml-sagemaker-cuda-v1.4",
        ),
    ],
)
def test_the_image_is_aws_ray_serve_one_for_the_region_and_processor(
    project_config, region, instance_type, expected
):
    if project_config.section("images")["inference"]["image_uri"]:
        pytest.skip("this render names its own inference image")
    uri = ray_package.image_uri(project_config, region, instance_type)
    assert uri == expected
    assert aws_tables.IMAGE_URI_RE.match(uri)
    gpu = instance_type is not None and instance_type.startswith(("ml.g", "ml.p"))
    assert ray_package.inference_ami_version(instance_type) == (
        ray_package.GPU_INFERENCE_AMI if gpu else None
    )


def test_a_region_without_the_image_is_named(project_config):
    if project_config.section("images")["inference"]["image_uri"]:
        pytest.skip("this render names its own inference image")
    with pytest.raises(ValueError, match="no Ray Serve image in xx-nowhere-1"):
        ray_package.image_uri(project_config, "xx-nowhere-1", "ml.m5.large")


def with_endpoint(project_config, **endpoint) -> dict:
    document = json.loads(json.dumps(project_config.data))
    document.setdefault("endpoint", {}).update(endpoint)
    return document


def test_the_server_is_one_of_two_and_ray_serve_is_refused_serverless(project_config):
    assert project_config.settings.endpoint.server in aws_tables.ENDPOINT_SERVERS
    assert not schema.validate(with_endpoint(project_config, server="ray_serve", serverless=False))
    [problem] = schema.validate(with_endpoint(project_config, server="tgi"))
    assert "torchserve" in problem.text() and "ray_serve" in problem.text()
    [problem] = schema.validate(with_endpoint(project_config, server="ray_serve", serverless=True))
    assert "[endpoint] serverless = false" in problem.text()


def test_serve_refuses_an_unknown_server_in_one_line(model_archive):
    cli = project_module("cli")
    result = CliRunner().invoke(cli.main, ["serve", "--model-data", str(model_archive), "--server", "tgi"])
    assert result.exit_code == 2
    assert "'tgi' is not one of 'torchserve', 'ray_serve'" in result.output


def test_deploy_dry_run_ships_the_ray_package_in_a_plain_model(project_root, tmp_path):
    root = copy_project(project_root, tmp_path / "project")
    text = (root / "config.toml").read_text()
    (root / "config.toml").write_text(text.replace('server = "torchserve"', 'server = "ray_serve"', 1))
    config = ProjectConfig.load(root)
    assert config.settings.endpoint.server == "ray_serve"
    if config.settings.endpoint.serverless:
        pytest.skip("this render's endpoint is serverless, which ray_serve refuses")
    out = tmp_path / "dry-deploy"
    with open_session(config, dry_run=True, folder=out) as session:
        deployment = launcher.deploy(config, session, model_archive(tmp_path / "model.tar.gz"))
    calls = dryrun.load_requests(out / "aws")
    container = only(calls, "CreateModel")["PrimaryContainer"]
    instance_type = config.section("instances")["endpoint"]["type"]
    region = container["Image"].split(".")[3]  # <account>.dkr.ecr.<region>.amazonaws.com/...
    assert container["Image"] == ray_package.image_uri(config, region, instance_type)
    assert "SAGEMAKER_PROGRAM" not in container.get("Environment", {})  # no TorchServe repack
    names = archive_names(s3_object(out / "aws", container["ModelDataUrl"]))
    assert {
        "config.yaml",
        "deployment.py",
        "model.pth",
        "code/inference.py",
        "code/protocol.py",
        "code/lib/classifier/__init__.py",
    } <= names
    variant = only(calls, "CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == instance_type
    assert variant.get("InferenceAmiVersion") == ray_package.inference_ami_version(instance_type)
    assert deployment.repacked_model_data == container["ModelDataUrl"]


def test_preflight_checks_the_ray_image_and_drops_the_pytorch_inference_images_end_of_patching(
    project_root, tmp_path
):
    root = copy_project(project_root, tmp_path / "project")
    text = (root / "config.toml").read_text()
    (root / "config.toml").write_text(text.replace('server = "torchserve"', 'server = "ray_serve"', 1))
    config = ProjectConfig.load(root)
    if config.settings.endpoint.serverless:
        pytest.skip("this render's endpoint is serverless, which ray_serve refuses")
    preflight, support = project_module("checks.preflight"), project_module("aws.image_support")
    (check,) = preflight.image_checks(config, "eu-west-1", "deploy")
    instance_type = config.section("instances")["endpoint"]["type"]
    assert (check.status, check.detail) == ("pass", ray_package.image_uri(config, "eu-west-1", instance_type))
    subjects = [entry.subject for entry in support.relevant_dates(config, datetime.date(2026, 12, 1))]
    assert not any("inference image" in subject for subject in subjects), subjects


# --- the same answers as the TorchServe path, under Ray ------------------------------------------


@pytest.fixture(scope="module")
def ray_endpoint(trained_model, project_root) -> Iterator:
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    local_ray = project_module("local.ray_endpoint")
    with local_ray.running_ray_endpoint(trained_model, project_root, num_cpus=1) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def torchserve_chain(model_archive, tmp_path_factory):
    """inference.py behind the toolkit's Transformer, as the local TorchServe stand-in serves it."""
    workdir = tmp_path_factory.mktemp("torchserve")
    model_dir, code_dir = local_endpoint.prepare_model_dir(model_archive, workdir)
    return local_endpoint.HandlerChain(local_endpoint.load_handler(code_dir), model_dir)


def exchange(url: str, method: str, path: str, body=None, headers: dict | None = None, chunked: bool = False):
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def same_answer(torchserve, ray) -> None:
    """Same status and type; the same JSON (probabilities to float rounding) or the same logits."""
    assert (ray[0], ray[1]) == (torchserve.status, torchserve.content_type), (ray, torchserve)
    if ray[1] == "application/x-npy":
        expected, got = (np.load(io.BytesIO(body)) for body in (torchserve.body, ray[2]))
        np.testing.assert_allclose(got, expected, atol=1e-5)
        return
    expected, got = json.loads(torchserve.body), json.loads(ray[2])
    if ray[0] != 200:
        assert got == expected
        return
    for mine, theirs in zip(got["predictions"], expected["predictions"], strict=True):
        assert [e["class_name"] for e in mine["top_k"]] == [e["class_name"] for e in theirs["top_k"]]
        assert {e["class_name"] for e in mine["top_k"]} <= set(SERVED_CLASS_NAMES)
        probabilities = [[e["probability"] for e in answer["top_k"]] for answer in (mine, theirs)]
        assert probabilities[0] == pytest.approx(probabilities[1], abs=1e-5)


PAYLOADS = [
    ("jpeg", JPEG, {"Content-Type": "image/jpeg"}),
    ("png-octet-stream", PNG, {"Content-Type": "application/octet-stream"}),
    (
        "json-batch-top-2",
        json_batch([JPEG, PNG]).replace(b"}", b', "top_k": 2}'),
        {"Content-Type": "application/json"},
    ),
    ("npy", JPEG, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}),
    ("any-accept", JPEG, {"Content-Type": "image/jpeg", "Accept": "*/*"}),
    ("accept-top-k", JPEG, {"Content-Type": "image/jpeg", "Accept": "application/json;top_k=1"}),
    ("truncated-jpeg", JPEG[: len(JPEG) // 2], {"Content-Type": "image/jpeg"}),
    ("empty", b"", {"Content-Type": "image/jpeg"}),
    ("text-plain", JPEG, {"Content-Type": "text/plain"}),
    ("accept-csv", JPEG, {"Content-Type": "image/jpeg", "Accept": "text/csv"}),
    ("bad-accept", JPEG, {"Content-Type": "image/jpeg", "Accept": "application/json;q=2"}),
    ("bad-json", b'{"images": [', {"Content-Type": "application/json"}),
    ("17-images", json.dumps({"images": ["x"] * 17}).encode(), {"Content-Type": "application/json"}),
    ("unknown-key", b'{"pictures": []}', {"Content-Type": "application/json"}),
    ("bomb-header", saved(Image.new("1", (9000, 9000)), "PNG"), {"Content-Type": "image/png"}),
] + [(name, make, {"Content-Type": content_type}) for name, make, content_type, _ in HOSTILE_DECODES]


@pytest.mark.slow  # Ray's start-up: some 30 s and 1.5 GB, once for the module
@pytest.mark.parametrize(
    ("body", "headers"), [case[1:] for case in PAYLOADS], ids=[case[0] for case in PAYLOADS]
)
def test_ray_serve_answers_what_the_torchserve_path_answers(ray_endpoint, torchserve_chain, body, headers):
    body = body() if callable(body) else body
    expected = torchserve_chain.invoke(body, headers.get("Content-Type"), headers.get("Accept"))
    same_answer(expected, exchange(ray_endpoint.url, "POST", "/invocations", body, headers))
    if expected.status >= 400:  # and the replica goes on serving
        assert exchange(ray_endpoint.url, "POST", "/", JPEG, {"Content-Type": "image/jpeg"})[0] == 200


@pytest.mark.slow
def test_ray_serve_answers_sagemakers_routes_and_bounds_the_body(ray_endpoint, tmp_path):
    url = ray_endpoint.url
    assert exchange(url, "GET", "/ping")[0] == 200
    assert exchange(url, "GET", "/invocations")[0] == 405
    assert exchange(url, "POST", "/ping")[0] == 405
    status, content_type, body = exchange(url, "GET", "/nothing")
    assert (status, content_type, json.loads(body)["status"]) == (404, "application/json", 404)
    limit = payload.REALTIME_BODY_LIMIT
    status, _, body = exchange(
        url, "POST", "/invocations", b"\0" * (limit + 1), {"Content-Type": "image/jpeg"}
    )
    assert (status, json.loads(body)) == (
        413,
        {"error": f"{limit + 1} bytes; at most {limit}", "status": 413},
    )
    # A body without a length (chunked) could be of any size: refused before it is read, as locally.
    headers = {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}
    assert exchange(url, "POST", "/invocations", iter([JPEG]), headers, chunked=True)[0] == 411
    # The client `predict --local` uses works against it unchanged.
    image = tmp_path / "photo.jpg"
    image.write_bytes(JPEG)
    [result] = ray_endpoint.predict([image], top_k=2)
    assert len(result["top_k"]) == 2


def replica() -> psutil.Process:
    """The replica's worker process among this test's own (Ray names it by its deployment)."""
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("ServeReplica:classifier:Classifier" in part for part in process.cmdline()):
                return process
    pytest.fail("no Ray Serve replica among this process's children")


def resident(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


@pytest.mark.slow
def test_the_costliest_request_accepted_is_answered_by_the_replica_within_the_memory_bound(
    ray_endpoint, torchserve_chain
):
    """Just under both request bounds (test_endpoint_bounds.py measures it in the TorchServe path's
    handler): the replica answers it as that path does, and its resident set grows no more than the
    bound there, one 36-megapixel WebP decode at a time."""
    jpeg = repeated_scans(Image.new("RGB", (4000, 3000), "olive"), 90)
    body = json_batch([webp_6000(), webp_6000(), jpeg])
    pid = replica().pid
    try:  # Linux resets the high-water mark on writing 5 to clear_refs
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/<pid>/clear_refs to measure the replica's peak")
    before = resident(pid, "VmRSS:")
    answer = exchange(ray_endpoint.url, "POST", "/invocations", body, {"Content-Type": "application/json"})
    peak = resident(pid, "VmHWM:") - before
    print(f"the replica's peak over its resident set: {peak / 1e6:.0f} MB")
    same_answer(torchserve_chain.invoke(body, "application/json", None), answer)
    assert peak < PEAK_BYTES_PER_DECODED_PIXEL["WEBP"] * 36_000_000, f"{peak / 1e6:.0f} MB"
