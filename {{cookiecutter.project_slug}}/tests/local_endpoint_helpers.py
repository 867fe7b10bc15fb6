"""What the local endpoint's tests share: a served model on a thread, requests, raw bytes on a socket."""

from __future__ import annotations

import http.client
import io
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import project_module
from PIL import Image

make_image = project_module("workflow.synthetic").make_image


def encode(image: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def photo(hue: float, size: tuple[int, int] = (96, 80)) -> Image.Image:
    return make_image(hue, size, random.Random(0))


JPEG = encode(photo(0.1))


@contextmanager
def running(server) -> Iterator:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def request(
    server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str | None, bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def raw_exchange(server, request: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are (no client library to tidy them up); everything the server answers."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer
