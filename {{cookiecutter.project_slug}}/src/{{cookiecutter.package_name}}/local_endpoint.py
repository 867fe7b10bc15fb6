"""A local stand-in for the SageMaker endpoint: the serving container's HTTP contract on localhost.

`serve` unpacks model.tar.gz the way the container does, imports `code/inference.py` from it (or
the project's inference/ sources when the archive has none, as after `train --local`) and answers
`GET /ping` and `POST /invocations` with that file's `model_fn`, `input_fn`, `predict_fn` and
`output_fn`, mapping errors to status codes as the sagemaker-inference toolkit does. What works
here works on the endpoint, before paying for one. Standard library HTTP only.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import logging
import mimetypes
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import ProjectConfig
from .sources import stage_sources

logger = logging.getLogger(__name__)

HANDLER_FILENAME = "inference.py"
CODE_DIRNAME = "code"
JSON_TYPE = "application/json"
# SageMaker real-time endpoints refuse larger payloads, so the local one does too.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# As in sagemaker_inference: the default Accept, and the types decoded to str before input_fn.
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
UTF8_TYPES = ("application/json", "text/csv")
# What invoke_local sends as Content-Type; other files go as octet-stream, which the handler sniffs.
NAMED_IMAGE_TYPES = ("image/jpeg", "image/png")

_handler_ids = itertools.count()


class LocalEndpointError(Exception):
    """The local endpoint could not be reached or answered with an error status."""


# --- the model directory, as the container sees it ------------------------------------------------


def _extract_archive(archive: Path, destination: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
            return
        # Python < 3.10.12 has no extraction filters: allow plain files and folders inside destination.
        root = destination.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise LocalEndpointError(f"{archive} holds {member.name!r}, which is not a plain file in it")
        tar.extractall(destination)


def prepare_model_dir(
    model_data: Path, workdir: Path, project_root: Path | None = None
) -> tuple[Path, Path]:
    """Lay out the model as the container does; returns (model_dir, code_dir).

    `model_data` is a model.tar.gz or a folder holding model.pth + metadata.json. Without a
    `code/` folder in it, the project's inference sources are staged, as PyTorchModel would repack them.
    """
    model_data = Path(model_data)
    if model_data.is_dir():
        model_dir = model_data
        code_dir = model_dir / CODE_DIRNAME
        staged_code_dir = workdir / CODE_DIRNAME  # never write into the user's folder
    elif model_data.is_file():
        model_dir = workdir / "model"
        model_dir.mkdir(parents=True)
        try:
            _extract_archive(model_data, model_dir)
        except tarfile.TarError as error:
            raise LocalEndpointError(f"{model_data} is not a model.tar.gz: {error}") from None
        code_dir = staged_code_dir = model_dir / CODE_DIRNAME
    else:
        raise LocalEndpointError(f"{model_data} does not exist")
    if not (code_dir / HANDLER_FILENAME).is_file():
        root = ProjectConfig.load(project_root).root
        logger.info("%s has no %s/; serving %s/inference", model_data, CODE_DIRNAME, root)
        code_dir = stage_sources(root, "inference", staged_code_dir)
    return model_dir, code_dir


def load_handler(code_dir: Path) -> ModuleType:
    """Import `code_dir/inference.py` by path, with `code_dir` first on the import path as in the container.

    Each call gives a fresh module object, so a test or a second server never reuses another's handler.
    """
    path = Path(code_dir) / HANDLER_FILENAME
    if not path.is_file():
        raise LocalEndpointError(f"no handler at {path}")
    name = f"_endpoint_handler_{next(_handler_ids)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the module look themselves up here
    sys.path.insert(0, str(code_dir))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(code_dir))
    return module


def _toolkit_error_types(handler: ModuleType) -> tuple[type[BaseException], ...]:
    """The exception classes whose `status_code` reaches the client; everything else is a 500."""
    types: list[type[BaseException]] = []
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError

        types.append(BaseInferenceToolkitError)
    except ImportError:
        pass
    # The handler's stand-in for that class, when it runs without sagemaker-inference.
    fallback = getattr(handler, "BaseInferenceToolkitError", None)
    if isinstance(fallback, type) and issubclass(fallback, BaseException):
        types.append(fallback)
    return tuple(types)


def _bind_handler(function: Callable[..., Any], num_args: int) -> Callable[..., Any]:
    """`function` as the toolkit calls it: given a trailing context argument if it takes `num_args` + 1.

    Bound once per server, so a request does not inspect the signature again.
    """
    if len(inspect.signature(function).parameters) == num_args + 1:
        return lambda *args: function(*args, None)
    return function


# --- the server -------------------------------------------------------------------------------------


class LocalEndpoint(ThreadingHTTPServer):
    """A threaded HTTP server answering /ping and /invocations with one loaded handler module."""

    daemon_threads = True
    request_queue_size = 64  # many clients connecting at once must not be refused

    def __init__(
        self, address: tuple[str, int], handler: ModuleType, model: Any, workdir: Path | None = None
    ) -> None:
        # Set before binding: a failed bind calls server_close(), which reads _workdir.
        self.handler = handler
        self.model = model
        self._workdir = workdir
        self._error_types = _toolkit_error_types(handler)
        self._input_fn = _bind_handler(handler.input_fn, 2)
        self._predict_fn = _bind_handler(handler.predict_fn, 2)
        self._output_fn = _bind_handler(handler.output_fn, 2)
        super().__init__(address, _RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[int, bytes, str]:
        """One request through input_fn -> predict_fn -> output_fn; returns (status, body, content type).

        Mirrors sagemaker_inference.transformer.Transformer.transform, except that an error's body is
        its message alone (the container appends a traceback; here it goes to the log).
        """
        if not accept or accept == "*/*":
            accept = os.environ.get(DEFAULT_ACCEPT_ENV, JSON_TYPE)
        try:
            data: bytes | str = body.decode("utf-8") if content_type in UTF8_TYPES else body
            request = self._input_fn(data, content_type)
            prediction = self._predict_fn(request, self.model)
            result = self._output_fn(prediction, accept)
        except self._error_types as error:
            logger.info("%s %s", error.status_code, error.message)
            return error.status_code, str(error.message).encode("utf-8"), JSON_TYPE
        except Exception as error:
            logger.exception("the handler failed")
            message = json.dumps({"error": str(error) or type(error).__name__, "status": 500})
            return 500, message.encode("utf-8"), JSON_TYPE
        response, response_type = result if isinstance(result, tuple) else (result, accept)
        if isinstance(response, str):
            response = response.encode("utf-8")
        return 200, bytes(response), response_type


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalEndpoint
    server_version = "LocalEndpoint/1"

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/ping":
            self._send(HTTPStatus.OK, b'{"status": "Healthy"}')
        elif path == "/invocations":
            self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, "POST to /invocations")
        else:
            self._send_error(HTTPStatus.NOT_FOUND, "only GET /ping and POST /invocations exist")

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/invocations":
            self._send_error(HTTPStatus.NOT_FOUND, "only GET /ping and POST /invocations exist")
            return
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self._send_error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
            return
        if not raw_length.isdigit():
            self._send_error(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
            return
        length = int(raw_length)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True  # the unread body must not be parsed as the next request
            self._send_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes; at most {MAX_REQUEST_BYTES}"
            )
            return
        body = self.rfile.read(length)
        if len(body) < length:
            return  # the client hung up mid-body
        status, payload, content_type = self.server.invoke(
            body, self.headers.get("Content-Type"), self.headers.get("Accept")
        )
        self._send(status, payload, content_type)

    def _send(self, status: int, payload: bytes, content_type: str = JSON_TYPE) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(self, status: HTTPStatus, reason: str) -> None:
        self._send(status, json.dumps({"error": reason, "status": int(status)}).encode("utf-8"))

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def make_server(
    model_data: Path, host: str = "127.0.0.1", port: int = 8080, project_root: Path | None = None
) -> LocalEndpoint:
    """Unpack, load the handler and the model, and bind (port 0: any free port; see `.url`).

    The caller runs `serve_forever()` (on a thread, in tests) and `shutdown()` + `server_close()`.
    """
    workdir = Path(tempfile.mkdtemp(prefix="local-endpoint-"))
    try:
        model_dir, code_dir = prepare_model_dir(Path(model_data), workdir, project_root)
        handler = load_handler(code_dir)
        model = _bind_handler(handler.model_fn, 1)(str(model_dir))
        try:
            return LocalEndpoint((host, port), handler, model, workdir)
        except OSError as error:  # port taken, address not on this machine, ...
            raise LocalEndpointError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def serve(
    model_data: Path, host: str = "127.0.0.1", port: int = 8080, project_root: Path | None = None
) -> None:
    """Serve `model_data` until Ctrl+C: GET /ping and POST /invocations, as the SageMaker container does."""
    server = make_server(model_data, host, port, project_root)
    print(f"Serving {model_data} at {server.url}/invocations (Ctrl+C to stop)", flush=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # `kill` and `docker stop` send SIGTERM: leave through the same cleanup as Ctrl+C
        previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


# --- the client -------------------------------------------------------------------------------------


def _invocations_url(url: str) -> str:
    """`http://127.0.0.1:8080` -> `http://127.0.0.1:8080/invocations`; a full URL is kept."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


def image_content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed if guessed in NAMED_IMAGE_TYPES else "application/octet-stream"


def _error_reason(error: urllib.error.HTTPError) -> str:
    first_line = error.read().decode("utf-8", "replace").partition("\n")[0]
    try:
        return str(json.loads(first_line)["error"])
    except (ValueError, KeyError, TypeError):
        return first_line or str(error.reason)


def invoke_local(url: str, images: Sequence[Path], top_k: int = 5, timeout: float = 60.0) -> list[dict]:
    """POST each image's raw bytes to the endpoint at `url`; one result per image, in order.

    Each result is `{"image": "<path>", "top_k": [{"label", "class_name", "index", "probability"}, ...]}`.
    Raises LocalEndpointError when the endpoint cannot be reached or refuses an image.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    endpoint = _invocations_url(url)
    # Never send localhost traffic through an HTTP proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    results = []
    for image in map(Path, images):
        request = urllib.request.Request(
            endpoint,
            data=image.read_bytes(),
            method="POST",
            headers={"Content-Type": image_content_type(image), "Accept": f"{JSON_TYPE};top_k={top_k}"},
        )
        try:
            with opener.open(request, timeout=timeout) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise LocalEndpointError(f"{image}: HTTP {error.code}: {_error_reason(error)}") from None
        except urllib.error.URLError as error:
            reason = f"cannot reach {endpoint} ({error.reason}); is `serve` running?"
            raise LocalEndpointError(reason) from None
        results.append({"image": str(image), "top_k": document["predictions"][0]["top_k"]})
    return results
