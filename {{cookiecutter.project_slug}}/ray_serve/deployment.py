"""inference.py as a Ray Serve application, for AWS's Ray Serve container for SageMaker.

The container extracts model.tar.gz to /opt/ml/model, puts /opt/ml/model and /opt/ml/model/code on
PYTHONPATH and runs `serve run /opt/ml/model/config.yaml`, which imports `deployment:app` from here.
Its adapter answers SageMaker's GET /ping itself (from Ray's /-/healthz) and forwards POST /invocations
to POST / here with the Content-Type and Accept headers. The same four functions as on the PyTorch
(TorchServe) image do the work: `model_fn` once per replica, then `input_fn`, `predict_fn` and
`output_fn` per request; `code/inference.py` is the same file the TorchServe package carries.

Answers are those of the TorchServe endpoint: a handler error (a `BaseInferenceToolkitError`, as
inference.py's `RequestError` is) keeps its status and its one-line JSON message; anything else is
a 500 with the same JSON shape and its traceback in the log. A body over SageMaker's real-time limit
is refused from its Content-Length before it is read; a replica answers one request at a time
(config.yaml), so inference.py's per-request bounds bound the replica.

GET /ping and POST /invocations are answered here too, so the application serves SageMaker's routes
directly where no adapter stands in front of it (`serve --server ray_serve` on this machine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from http import HTTPStatus
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

# The container puts code/ on PYTHONPATH; say it here too, for a run without its entry point.
CODE_DIR = Path(__file__).resolve().parent / "code"
if str(CODE_DIR) not in sys.path:
    sys.path.insert(0, str(CODE_DIR))

from sagemaker_inference.errors import BaseInferenceToolkitError  # noqa: E402

import inference  # noqa: E402  (code/inference.py, which puts code/lib on the path)

logger = logging.getLogger("ray.serve")

MODEL_DIR = os.environ.get("SM_MODEL_DIR") or str(Path(__file__).resolve().parent)
JSON_TYPE = "application/json"
# SageMaker refuses larger real-time invocations before they reach the container; a request that
# reaches the application another way is refused the same.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# What the toolkit answers when the client asks for any type (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT).
DEFAULT_ACCEPT = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or JSON_TYPE
# The adapter forwards invocations to the route prefix; a direct client uses SageMaker's paths.
INVOCATION_PATHS = ("/", "/invocations")


def json_answer(status: int, reason: str) -> Response:
    body = json.dumps({"error": reason, "status": status})
    return Response(body, status_code=status, media_type=JSON_TYPE)


def error_answer(error: BaseInferenceToolkitError) -> Response:
    """The handler's own message when it is the one-line JSON inference.py writes, else wrapped in it."""
    message = str(error.message).partition("\n")[0]
    try:
        document = json.loads(message)
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return Response(message, status_code=error.status_code, media_type=JSON_TYPE)
    return json_answer(error.status_code, message or HTTPStatus(error.status_code).phrase)


def invoke(model: object, body: bytes, content_type: str | None, accept: str | None) -> Response:
    """input_fn -> predict_fn -> output_fn, with the toolkit Transformer's default Accept and errors."""
    if not accept or accept == "*/*":
        accept = DEFAULT_ACCEPT
    try:
        request = inference.input_fn(body, content_type)
        prediction = inference.predict_fn(request, model)
        answer, answer_type = inference.output_fn(prediction, accept)
    except BaseInferenceToolkitError as error:
        response = error_answer(error)
        logger.info("%d %s", error.status_code, bytes(response.body).decode("utf-8", "replace"))
        return response
    except Exception as error:
        logger.exception("the handler failed")
        return json_answer(500, str(error) or type(error).__name__)
    return Response(answer, status_code=200, media_type=answer_type)


@serve.deployment
class Classifier:
    """One replica: the model loaded once, requests answered one at a time (config.yaml)."""

    def __init__(self) -> None:
        self.model = inference.model_fn(MODEL_DIR)

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if path == "/ping":
            if method != "GET":
                return json_answer(405, f"/ping answers GET only, not {method}")
            return Response(b'{"status": "Healthy"}', media_type=JSON_TYPE)
        if path not in INVOCATION_PATHS:
            return json_answer(404, "only GET /ping and POST /invocations exist")
        if method != "POST":
            return json_answer(405, f"{path} answers POST only, not {method}")
        length = request.headers.get("content-length", "")
        if not length.isascii() or not length.isdigit():
            return json_answer(411, "send a Content-Length header")
        if int(length) > MAX_REQUEST_BYTES:
            return json_answer(413, f"{int(length)} bytes; at most {MAX_REQUEST_BYTES}")
        body = await request.body()
        content_type, accept = request.headers.get("content-type"), request.headers.get("accept")
        # The handler holds the CPU for up to seconds; off the replica's event loop, health checks go on.
        return await asyncio.to_thread(invoke, self.model, body, content_type, accept)


app = Classifier.bind()
