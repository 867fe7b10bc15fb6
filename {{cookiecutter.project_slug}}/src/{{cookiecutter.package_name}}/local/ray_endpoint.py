"""The Ray Serve endpoint on this machine: the package `deploy` ships, run as the container runs it.

The container's entry point puts the model folder and its code/ on PYTHONPATH, starts Ray and runs
`serve run /opt/ml/model/config.yaml`. Here the package is laid out in a temporary folder, Ray is
started in this process (one CPU unless asked for more) with the same PYTHONPATH for its workers,
and Ray's own `serve run` command runs a copy of config.yaml that adds the host and port: the
application then answers GET /ping and POST /invocations there itself (the container's adapter,
AWS's code, is not run; it forwards /invocations to the application's route and answers /ping from
Ray's health check).

Ray is imported by these functions only: it is the `ray` extra, and slow to import.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import extras
from ..aws import ray_package
from ..config import ProjectConfig
from .endpoint import LocalEndpointError, invoke_local, prepare_model_dir

# Loading the model (model_fn) and starting the replica; Ray itself takes some 10 s before that.
READY_TIMEOUT_S = 180
# The application's name in config.yaml.
APPLICATION = "classifier"


@dataclass(frozen=True)
class RayEndpoint:
    """A running Ray Serve endpoint: its URL, and predictions from it."""

    url: str
    package_dir: Path

    def predict(self, images: Sequence[Path], top_k: int = 5) -> list[dict]:
        return invoke_local(self.url, images, top_k=top_k, wait_ready=0)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def package_folder(model_data: Path, workdir: Path, project_root: Path | None = None) -> Path:
    """The model folder as the container holds it, from a model.tar.gz as training writes it (or as
    `deploy` repacks it for TorchServe: its code/ is replaced by the project's)."""
    config = ProjectConfig.load(project_root)
    model_data = Path(model_data)
    if not model_data.is_file():
        raise LocalEndpointError(f"{model_data} is not a model.tar.gz")
    try:
        with tarfile.open(model_data) as tar:
            repacked = any(Path(name).parts[-1:] == ("inference.py",) for name in tar.getnames())
    except tarfile.TarError as error:
        raise LocalEndpointError(f"{model_data} is not a model.tar.gz: {error}") from None
    trained = model_data
    if repacked:
        model_dir, _ = prepare_model_dir(model_data, workdir / "unpacked", project_root)
        trained = workdir / "trained.tar.gz"
        with tarfile.open(trained, "w:gz", compresslevel=1) as tar:
            for path in sorted(model_dir.iterdir()):
                if path.name != "code" and path.name not in ray_package.PACKAGE_FILES:
                    tar.add(path, arcname=path.name)
    return ray_package.lay_out(config, trained, workdir / "model")


def _local_config(package_dir: Path, host: str, port: int) -> Path:
    import yaml

    document = yaml.safe_load((package_dir / "config.yaml").read_text())
    document["http_options"] = {"host": host, "port": port}
    path = package_dir.parent / "local-config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _wait_until_running(deadline: float) -> None:
    from ray import serve

    while True:
        application = serve.status().applications.get(APPLICATION)
        status = str(getattr(application, "status", ""))
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            raise LocalEndpointError(f"Ray Serve could not start the application: {application.message}")
        if time.monotonic() > deadline:
            raise LocalEndpointError(f"Ray Serve did not start the application in {READY_TIMEOUT_S} s")
        time.sleep(0.5)


@contextmanager
def running_ray_endpoint(
    model_data: Path,
    project_root: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    num_cpus: int = 1,
) -> Iterator[RayEndpoint]:
    """Serve `model_data` under Ray Serve for the `with` block (port None: a free one)."""
    extras.require("ray", "serve --server ray_serve")
    extras.require("local", "serve --server ray_serve")
    import ray
    from ray import serve
    from ray.serve.scripts import run as serve_run

    if ray.is_initialized():
        raise LocalEndpointError("Ray is already running in this process; one Ray endpoint at a time")
    workdir = Path(tempfile.mkdtemp(prefix="ray-endpoint-"))
    try:
        package_dir = package_folder(model_data, workdir, project_root)
        port = port or free_port(host)
        config = _local_config(package_dir, host, port)
        # What the container's entry point exports before `ray start`; Ray's workers inherit it.
        inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
        path = os.pathsep.join([str(package_dir), str(package_dir / "code"), *inherited])
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            namespace="serve",
            runtime_env={"env_vars": {"PYTHONPATH": path, "SM_MODEL_DIR": str(package_dir)}},
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            serve_run.main(
                [str(config), "--non-blocking", "--app-dir", str(package_dir)], standalone_mode=False
            )
            _wait_until_running(time.monotonic() + READY_TIMEOUT_S)
            yield RayEndpoint(f"http://{host}:{port}", package_dir)
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def serve(
    model_data: Path, host: str = "127.0.0.1", port: int = 8080, project_root: Path | None = None
) -> None:
    """Serve `model_data` under Ray Serve until Ctrl+C; one line once it answers."""
    with running_ray_endpoint(model_data, project_root, host, port) as endpoint:
        print(
            f"Ready: serving {model_data} under Ray Serve at {endpoint.url}/invocations "
            f"(GET {endpoint.url}/ping; Ctrl+C to stop)",
            flush=True,
        )
        stopped = threading.Event()
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:  # `kill` sends SIGTERM: leave through the same cleanup as Ctrl+C
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
