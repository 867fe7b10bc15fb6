"""A local stand-in for the SageMaker endpoint: the serving container's HTTP contract on localhost.

`serve` unpacks model.tar.gz the way the container does, imports `code/inference.py` from it (or
the project's inference/ sources when the archive has none, as after `train --local`) and answers
`GET /ping` and `POST /invocations`. Each request goes through the sagemaker-inference toolkit's
own `Transformer`, built as the PyTorch serving container's `HandlerService` builds it, so the
default Accept, the calls of `model_fn`, `input_fn`, `predict_fn` and `output_fn` and the mapping of
errors to status codes are the toolkit's, not a copy. What works here works on the endpoint, before
paying for one.

HTTP is waitress's (a pure-Python WSGI server, no C extension, any OS), in `local_server`, which
`serve` alone imports (waitress is in the `local` extra). waitress reads each request whole before a
worker thread sees it, so a slow or stalled sender holds no thread; a connection idle for
`channel_timeout` seconds is closed; and its parser refuses malformed headers (a Content-Length in
non-ASCII digits) with a 400 instead of crashing a thread. Slow clients cost connections instead,
which waitress bounds only by inactivity: `local_server` adds a deadline per request and makes room
for new connections past the limit.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import extras
from ..aws import sdk
from ..config import ProjectConfig
from ..workflow import payload

if TYPE_CHECKING:
    from .http_server import LocalEndpoint

logger = logging.getLogger(__name__)

HANDLER_FILENAME = "inference.py"
CODE_DIRNAME = "code"
JSON_TYPE = "application/json"
# SageMaker real-time endpoints refuse larger payloads, so the local one does too (`serve` takes the
# configured endpoint's limit: 4 MB for a serverless one).
MAX_REQUEST_BYTES = payload.REALTIME_BODY_LIMIT
# Bodies up to this size are read and then refused with the endpoint's JSON 413, so the client
# gets its answer instead of a reset connection while it is still sending. Larger ones waitress
# refuses from the Content-Length alone, and closes. Bodies past 512 KB wait in a temporary file,
# not in memory.
READ_BEFORE_REFUSING_BYTES = 4 * MAX_REQUEST_BYTES
# A connection with nothing sent or answered for this long is closed (a request whose body never
# arrives among them); a request being answered is never cut. Checked every CLEANUP_INTERVAL_S.
CHANNEL_TIMEOUT_S = 30
CLEANUP_INTERVAL_S = 2
# A request's headers and body must have arrived whole this long after its first byte (after the
# connection opened, for its first request), however steadily they trickle in: else a 408 and the
# connection is closed. 6 MB in 20 s is 2.4 Mbit/s. Checked at least once a second.
REQUEST_DEADLINE_S = 20
# Requests answered at once; more wait in waitress's queue.
THREADS = 4
# Open connections. A new one past the limit closes the connection that has waited longest on its
# client (an idle keep-alive or a request still arriving), or is refused with a 503 when every one
# has a request in progress; the listen backlog is never left to fill behind slow clients.
CONNECTION_LIMIT = 64
# What invoke_local sends as Content-Type, by file suffix; other files go as octet-stream, which
# the handler sniffs.
IMAGE_TYPES_BY_SUFFIX = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
ROUTES = {"/ping": "GET", "/invocations": "POST"}
# The most of an answer the client reads: a JSON top-k of every class is a few KB per hundred classes.
ANSWER_LIMIT = 1024 * 1024

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


def prepare_model_dir(model_data: Path, workdir: Path, project_root: Path | None = None) -> tuple[Path, Path]:
    """Lay out the model as the container does; returns (model_dir, code_dir).

    `model_data` is a model.tar.gz or a folder holding model.pth + metadata.json. Without a `code/`
    folder in it, it is repacked with the project's inference sources by the SDK's own `repack_model`,
    exactly as PyTorchModel repacks it for the endpoint (inference/ in code/, classifier/ in code/lib/).
    """
    model_data = Path(model_data)
    if model_data.is_dir():
        if (model_data / CODE_DIRNAME / HANDLER_FILENAME).is_file():
            return model_data, model_data / CODE_DIRNAME
        # Never write into the user's folder: pack it, then repack the archive below.
        archive = workdir / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(model_data.iterdir()):
                tar.add(path, arcname=path.name)
        model_data = archive
    elif not model_data.is_file():
        raise LocalEndpointError(f"{model_data} does not exist")
    model_dir = workdir / "model"
    model_dir.mkdir(parents=True)
    try:
        _extract_archive(model_data, model_dir)
    except tarfile.TarError as error:
        raise LocalEndpointError(f"{model_data} is not a model.tar.gz: {error}") from None
    if not (model_dir / CODE_DIRNAME / HANDLER_FILENAME).is_file():
        # As PyTorchModel repacks it for the endpoint: the SDK's own repack_model, on this disk.
        config = ProjectConfig.load(project_root)
        logger.info(
            "%s has no %s/; serving %s with the SDK's repack", model_data, CODE_DIRNAME, config.inference_dir
        )
        shutil.rmtree(model_dir)
        model_dir.mkdir()
        repacked = sdk.sagemaker_api(config).repack_model_locally(
            config, model_data, workdir / "repacked.tar.gz"
        )
        _extract_archive(repacked, model_dir)
    return model_dir, model_dir / CODE_DIRNAME


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


# --- inference.py behind the toolkit's Transformer -------------------------------------------------


class _RequestProcessor:
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class _Context:
    """The part of TorchServe's `ts.context.Context` that the toolkit reads and writes, one per request."""

    def __init__(self, model_dir: Path, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": 0, "batch_size": 1}
        self.request_processor = [_RequestProcessor(headers)]
        self.status_code = HTTPStatus.OK.value
        self.content_type: str | None = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status_code = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str


_user_module_lock = threading.Lock()


@contextmanager
def _importable_as(name: str, module: ModuleType) -> Iterator[None]:
    """`import name` gives `module` meanwhile.

    The Transformer finds the handler by module name (SAGEMAKER_PROGRAM, default inference.py), as
    the container's worker does with code/ on its path. Here one process may serve several models
    (tests do), each handler loaded under a name of its own, so the name points at the right one
    for the moment the Transformer looks.
    """
    with _user_module_lock:
        previous = sys.modules.get(name)
        sys.modules[name] = module
        try:
            yield
        finally:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


class HandlerChain:
    """A loaded `inference.py` behind the toolkit's Transformer, as the PyTorch serving container runs it."""

    def __init__(self, handler: ModuleType, model_dir: Path) -> None:
        # Imported here, not at the top: `predict --local` imports this module for its client and
        # must not pay for torch, which the PyTorch handler imports.
        from sagemaker_inference.environment import Environment
        from sagemaker_inference.transformer import Transformer
        from sagemaker_pytorch_serving_container.default_pytorch_inference_handler import (
            DefaultPytorchInferenceHandler,
        )

        self.handler = handler
        self.model_dir = Path(model_dir)
        # What sagemaker_pytorch_serving_container.handler_service.HandlerService builds; its
        # initialize() only adds code/ to PYTHONPATH for the model server's worker processes.
        self._transformer = Transformer(default_inference_handler=DefaultPytorchInferenceHandler())
        with _importable_as(Environment().module_name, handler):
            self._transformer.validate_and_initialize(
                model_dir=str(self.model_dir), context=_Context(self.model_dir, {})
            )

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> Answer:
        """One request through `Transformer.transform`; an error's answer is its one-line JSON message.

        The container sends the toolkit's message followed by a traceback; here the traceback goes
        to the log, and a 500's plain message is wrapped in the same JSON shape as a 4xx's.
        """
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        context = _Context(self.model_dir, headers)
        # TorchServe hands the body over as a bytearray (the toolkit sets decode_input_request=false).
        [result] = self._transformer.transform([{"body": bytearray(body)}], context)
        payload = result.encode("utf-8") if isinstance(result, str) else bytes(result)
        if context.status_code < 400:
            return Answer(context.status_code, payload, context.content_type or JSON_TYPE)
        return _error_answer(context.status_code, payload.decode("utf-8", "replace"))


def _error_answer(status: int, text: str) -> Answer:
    """The toolkit's error text (message, newline, traceback) as the endpoint's JSON error."""
    message, separator, trace = text.partition("\nTraceback (most recent call last):")
    if not separator:
        message = text.partition("\n")[0]
    if status >= 500:
        logger.error("the handler failed (%d): %s%s", status, message, separator + trace)
    else:
        logger.info("%d %s", status, message)
    try:
        document = json.loads(message)
    except ValueError:
        document = None
    if not (isinstance(document, dict) and "error" in document):
        document = {"error": message or HTTPStatus(status).phrase, "status": status}
    return Answer(status, json.dumps(document).encode("utf-8"), JSON_TYPE)


# --- HTTP ---------------------------------------------------------------------------------------------


def _json_error(status: int, reason: str) -> Answer:
    return Answer(status, json.dumps({"error": reason, "status": status}).encode("utf-8"), JSON_TYPE)


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class EndpointApp:
    """The WSGI application: /ping and /invocations, everything else a JSON 404 or 405."""

    def __init__(self, chain: HandlerChain, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.chain = chain
        self.max_request_bytes = max_request_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer, extra_headers = self._answer(environ)
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
        start_response(status_line(answer.status), headers + extra_headers)
        # HTTP: a HEAD answer has the headers of the GET one and no body (waitress would send it).
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [answer.body]

    def _answer(self, environ: dict[str, Any]) -> tuple[Answer, list[tuple[str, str]]]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        allowed = ROUTES.get(path)
        if allowed is None:
            return _json_error(404, "only GET /ping and POST /invocations exist"), []
        if method != allowed:
            return _json_error(405, f"{path} answers {allowed} only, not {method}"), [("Allow", allowed)]
        if path == "/ping":
            return Answer(200, b'{"status": "Healthy"}', JSON_TYPE), []
        # waitress has checked that Content-Length is ASCII digits, and sets it for chunked bodies.
        raw_length = environ.get("CONTENT_LENGTH") or ""
        if not raw_length:
            return _json_error(411, "send a Content-Length header"), []
        length = int(raw_length)
        if length > self.max_request_bytes:
            # waitress has read the body already, so the client is answered, not cut off.
            return _json_error(413, f"{length} bytes; at most {self.max_request_bytes}"), []
        body = environ["wsgi.input"].read(length)
        answer = self.chain.invoke(body, environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"))
        return answer, []


def make_server(
    model_data: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    project_root: Path | None = None,
    channel_timeout: int = CHANNEL_TIMEOUT_S,
    request_deadline: float = REQUEST_DEADLINE_S,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> LocalEndpoint:
    """Unpack, load the handler and the model, and listen (port 0: any free port; see `.url`).

    The caller runs `serve_forever()` (on a thread, in tests) and `shutdown()` + `server_close()`.
    """
    extras.require("local", "serve")
    # waitress (the `local` extra) is imported by the server alone: `predict --local`, the client,
    # works after `pip install -e .`.
    from .http_server import LocalEndpoint

    workdir = Path(tempfile.mkdtemp(prefix="local-endpoint-"))
    try:
        model_dir, code_dir = prepare_model_dir(Path(model_data), workdir, project_root)
        chain = HandlerChain(load_handler(code_dir), model_dir)
        try:
            return LocalEndpoint(
                chain,
                host,
                port,
                workdir,
                channel_timeout=channel_timeout,
                request_deadline=request_deadline,
                max_request_bytes=max_request_bytes,
            )
        except OSError as error:  # port taken, address not on this machine, ...
            raise LocalEndpointError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def serve(
    model_data: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    project_root: Path | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> None:
    """Serve `model_data` until Ctrl+C: GET /ping and POST /invocations, as the SageMaker container does.

    Prints one line once the model is loaded and the port listens: from then on requests are answered.
    """
    server = make_server(model_data, host, port, project_root, max_request_bytes=max_request_bytes)
    print(
        f"Ready: serving {model_data} at {server.url}/invocations (GET {server.url}/ping; Ctrl+C to stop)",
        flush=True,
    )
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


@dataclass(frozen=True)
class RunningEndpoint:
    """A local endpoint started by `running_endpoint`: its URL, and predictions from it."""

    url: str
    max_request_bytes: int = MAX_REQUEST_BYTES

    def predict(self, images: Sequence[Path], top_k: int = 5) -> list[dict]:
        # Listening before the `with` block starts: no need to wait for it.
        return invoke_local(self.url, images, top_k=top_k, wait_ready=0, body_limit=self.max_request_bytes)


@contextmanager
def running_endpoint(model_data: Path, project_root: Path | None = None) -> Iterator[RunningEndpoint]:
    """Serve `model_data` on a free localhost port for the `with` block (the notebook's dry run uses it)."""
    server = make_server(model_data, port=0, project_root=project_root)
    thread = threading.Thread(target=server.serve_forever, name="local-endpoint", daemon=True)
    thread.start()
    try:
        yield RunningEndpoint(server.url, server.max_request_bytes)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- the client -------------------------------------------------------------------------------------


def _invocations_url(url: str) -> str:
    """`http://127.0.0.1:8080` -> `http://127.0.0.1:8080/invocations`; a full URL is kept."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


def image_content_type(path: Path) -> str:
    """The Content-Type the endpoint knows for this file's suffix, else octet-stream (sniffed there)."""
    return IMAGE_TYPES_BY_SUFFIX.get(Path(path).suffix.lower(), "application/octet-stream")


def _error_reason(error: urllib.error.HTTPError) -> str:
    first_line = error.read(ANSWER_LIMIT).decode("utf-8", "replace").partition("\n")[0]
    try:
        return str(json.loads(first_line)["error"])
    except (ValueError, KeyError, TypeError):
        return first_line or str(error.reason)


def wait_until_ready(url: str, opener: urllib.request.OpenerDirector, wait: float) -> None:
    """Poll `GET /ping` for up to `wait` seconds: `serve ... &` followed at once by `predict --local`
    would otherwise meet a server still loading its model ("Connection refused"). Raises
    LocalEndpointError when nothing answers by then, before any image is read."""
    parts = urllib.parse.urlsplit(url)
    ping = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/ping", "", ""))
    deadline = time.monotonic() + wait
    while True:
        try:
            with opener.open(ping, timeout=max(deadline - time.monotonic(), 0.1)):
                return
        except urllib.error.HTTPError:
            return  # something answers there; the request itself then says what is wrong
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() >= deadline:
                reason = getattr(error, "reason", None) or error
                raise LocalEndpointError(f"cannot reach {ping} ({reason}); is `serve` running?") from None
            time.sleep(0.25)


def invoke_local(
    url: str,
    images: Sequence[Path],
    top_k: int = 5,
    timeout: float = 60.0,
    wait_ready: float = 10.0,
    body_limit: int = MAX_REQUEST_BYTES,
) -> list[dict]:
    """POST each image's bytes to the endpoint at `url`; one result per image, in order.

    Each result is `{"image": "<path>", "top_k": [{"label", "class_name", "index", "probability"}, ...]}`,
    with a "note" when the image was shrunk to fit `body_limit` (as `predict` does for the SageMaker
    endpoint: `payload`). Every file is checked first, then the server (waiting up to `wait_ready`
    seconds for one still starting), and only then is an image read. Raises LocalEndpointError when
    an image cannot be sent, the endpoint cannot be reached or it refuses an image.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    images = [Path(image) for image in images]
    try:
        payload.check_image_files(images, body_limit)
    except payload.ImageFileError as error:
        raise LocalEndpointError(str(error)) from None
    endpoint = _invocations_url(url)
    # Never send localhost traffic through an HTTP proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    if wait_ready > 0:
        wait_until_ready(endpoint, opener, wait_ready)
    results = []
    for image in images:
        try:
            body, content_type, note = payload.request_body(image, image_content_type(image), body_limit)
        except payload.ImageFileError as error:
            raise LocalEndpointError(str(error)) from None
        request = urllib.request.Request(
            endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": content_type, "Accept": f"{JSON_TYPE};top_k={top_k}"},
        )
        try:
            with opener.open(request, timeout=timeout) as response:
                answer = response.read(ANSWER_LIMIT + 1)
            if len(answer) > ANSWER_LIMIT:
                raise LocalEndpointError(
                    f"{image}: the answer is over {ANSWER_LIMIT} bytes; is {url} `serve`?"
                )
            document = json.loads(answer)
        except urllib.error.HTTPError as error:
            raise LocalEndpointError(f"{image}: HTTP {error.code}: {_error_reason(error)}") from None
        except urllib.error.URLError as error:
            reason = f"cannot reach {endpoint} ({error.reason}); is `serve` running?"
            raise LocalEndpointError(reason) from None
        result = {"image": str(image), "top_k": document["predictions"][0]["top_k"]}
        if note:
            result["note"] = note
        results.append(result)
    return results
