"""The local endpoint's HTTP server holds its bounds: refusals at the HTTP level, slow and idle clients,
the connection and request limits."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import project_module
from local_endpoint_helpers import JPEG, raw_exchange, request, running

local_endpoint = project_module("local.endpoint")
local_server = project_module("local.http_server")


@pytest.fixture(scope="module")
def endpoint(model_archive) -> Iterator:
    with running(local_endpoint.make_server(model_archive, port=0)) as server:
        yield server


def test_http_level_refusals(endpoint):
    assert request(endpoint, "GET", "/nowhere")[0] == 404
    status, content_type, body = request(endpoint, "GET", "/invocations")
    assert (status, content_type, json.loads(body)["status"]) == (405, "application/json", 405)
    host, port = endpoint.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest("POST", "/invocations")
        connection.endheaders()
        assert connection.getresponse().status == 411
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/invocations", "POST"),
        ("DELETE", "/invocations", "POST"),
        ("PATCH", "/invocations", "POST"),
        ("OPTIONS", "/invocations", "POST"),
        ("POST", "/ping", "GET"),
        ("PUT", "/ping", "GET"),
        ("BREW", "/ping", "GET"),
    ],
)
def test_other_methods_get_a_json_405_naming_the_allowed_one(endpoint, method, path, allowed):
    host, port = endpoint.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 405 and response.getheader("Allow") == allowed
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(body) == {"error": f"{path} answers {allowed} only, not {method}", "status": 405}
    finally:
        connection.close()


def test_head_gets_a_405_without_a_body(endpoint):
    answer = raw_exchange(endpoint, b"HEAD /ping HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and b"Allow: GET" in head and body == b""


def test_an_oversized_body_is_read_then_answered_413_without_a_broken_pipe(endpoint):
    """A client that sends all of a 7 MB photo gets the JSON 413, not a reset mid-upload."""
    host, port = endpoint.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        body = b"\xff" * (local_endpoint.MAX_REQUEST_BYTES + 1024 * 1024)
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["status"] == 413
        # The body was consumed, so the same connection goes on serving.
        connection.request("POST", "/invocations", body=JPEG, headers={"Content-Type": "image/jpeg"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_body_past_what_is_worth_reading_is_refused_from_its_length(endpoint):
    length = local_endpoint.READ_BEFORE_REFUSING_BYTES + 1
    answer = raw_exchange(
        endpoint,
        f"POST /invocations HTTP/1.1\r\nHost: local\r\nContent-Length: {length}\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "header",
    [
        "Content-Length: \u0661\u0662".encode(),  # Arabic-Indic digits: int() would take them
        "Content-Length: \u00b2".encode(),  # superscript two: str.isdigit() says yes
        b"Content-Length: +12",
        b"Content-Length: 12, 13",
        "Accept: application/json;top_k=\u00b2".encode(),
    ],
    ids=["arabic-indic-length", "superscript-length", "plus-length", "list-length", "superscript-top-k"],
)
def test_odd_digits_in_headers_get_a_400_and_the_server_goes_on(endpoint, header):
    answer = raw_exchange(
        endpoint,
        b"POST /invocations HTTP/1.1\r\nHost: local\r\nContent-Type: image/jpeg\r\n"
        + header
        + b"\r\n"
        + (b"" if header.startswith(b"Content-Length") else f"Content-Length: {len(JPEG)}\r\n".encode())
        + b"Connection: close\r\n\r\n"
        + (b"" if header.startswith(b"Content-Length") else JPEG),
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert request(endpoint, "POST", "/invocations", JPEG, {"Content-Type": "image/jpeg"})[0] == 200


@pytest.fixture(scope="module")
def impatient_endpoint(model_archive) -> Iterator:
    """An endpoint that closes a connection idle for one second."""
    with running(local_endpoint.make_server(model_archive, port=0, channel_timeout=1)) as server:
        yield server


def test_a_request_whose_body_never_arrives_is_timed_out(impatient_endpoint):
    host, port = impatient_endpoint.server_address[:2]
    with socket.create_connection((host, port), timeout=15) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: local\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
        )
        started = time.monotonic()
        assert connection.recv(1024) == b""  # closed by the server, with nothing to answer
        assert time.monotonic() - started < 10


def test_slow_senders_hold_no_thread(impatient_endpoint):
    """More stalled uploads than worker threads, and a whole request is still answered at once."""
    host, port = impatient_endpoint.server_address[:2]
    stalled = []
    try:
        for _ in range(local_endpoint.THREADS * 2):
            connection = socket.create_connection((host, port), timeout=15)
            connection.sendall(b"POST /invocations HTTP/1.1\r\nHost: local\r\nContent-Length: 5000\r\n\r\nxx")
            stalled.append(connection)
        started = time.monotonic()
        status, _, _ = request(
            impatient_endpoint, "POST", "/invocations", JPEG, {"Content-Type": "image/jpeg"}
        )
        assert status == 200 and time.monotonic() - started < 5
    finally:
        for connection in stalled:
            connection.close()


SHORT_DEADLINE_S = 3


@pytest.fixture(scope="module")
def deadline_endpoint(model_archive) -> Iterator:
    """An endpoint that gives each request 3 seconds to arrive whole; idle connections keep the default 30."""
    server = local_endpoint.make_server(model_archive, port=0, request_deadline=SHORT_DEADLINE_S)
    with running(server):
        yield server


def test_slow_clients_meet_a_deadline_and_never_keep_ping_waiting(deadline_endpoint):
    """More connections than the limit, three in four trickling a header byte every 0.3 s, the rest
    silent: /ping and a prediction are answered at once while they are connected (the oldest make room),
    each of the others is closed with a 408 at the deadline, and a keep-alive connection idle for longer
    than the deadline between two requests still serves."""
    host, port = deadline_endpoint.server_address[:2]
    slow: list[tuple[socket.socket, float]] = []
    lifetimes: dict[int, float] = {}
    answers: dict[int, bytes] = {}

    def watch(trickle: bool) -> None:
        """Note the slow connections the server has closed; send the trickling ones one more byte."""
        for index, (connection, opened) in enumerate(slow):
            if index in lifetimes:
                continue
            try:
                answer = connection.recv(4096)
            except BlockingIOError:
                if trickle and index % 4:
                    with contextlib.suppress(OSError):
                        connection.send(b"x")
                continue
            except OSError:
                answer = b""
            lifetimes[index] = time.monotonic() - opened
            answers[index] = answer

    keep_alive = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for index in range(local_endpoint.CONNECTION_LIMIT + 16):
            connection = socket.create_connection((host, port), timeout=5)
            if index % 4:
                connection.sendall(b"GET /ping HTTP/1.1\r\nHost: local\r\nX-Slow: ")
            connection.setblocking(False)
            slow.append((connection, time.monotonic()))
        started = time.monotonic()
        keep_alive.request("GET", "/ping")
        ping = keep_alive.getresponse()
        ping.read()
        keep_alive.request("POST", "/invocations", body=JPEG, headers={"Content-Type": "image/jpeg"})
        prediction = keep_alive.getresponse()
        prediction.read()
        answered_within = time.monotonic() - started
        watch(trickle=False)
        assert (ping.status, prediction.status) == (200, 200)
        assert answered_within < 2
        # Room was made by closing the oldest, one per connection past the limit (the keep-alive's too).
        evicted = sorted(lifetimes)
        assert evicted == list(range(len(slow) + 1 - local_endpoint.CONNECTION_LIMIT))
        bound = SHORT_DEADLINE_S + 2.5  # the deadline, a turn of waitress's loop (1 s), the watch's pace
        while len(lifetimes) < len(slow) and time.monotonic() - slow[-1][1] < bound + 1:
            watch(trickle=True)
            time.sleep(0.3)
        assert len(lifetimes) == len(slow), f"{len(slow) - len(lifetimes)} slow connections still open"
        timed_out = [index for index in lifetimes if index not in evicted]
        assert all(answers[index].startswith(b"HTTP/1.1 408 ") for index in timed_out)
        assert all(SHORT_DEADLINE_S - 0.1 < lifetimes[index] < bound for index in timed_out)
        # Idle for longer than the deadline since its last answer: the deadline is per request.
        keep_alive.request("GET", "/ping")
        assert keep_alive.getresponse().status == 200
    finally:
        keep_alive.close()
        for connection, _ in slow:
            connection.close()


class BlockingChain:
    """A stand-in for the handler chain whose answers wait for `release`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None):
        self.entered.set()
        self.release.wait(timeout=10)
        return local_endpoint.Answer(200, b"{}", "application/json")


def test_past_the_connection_limit_an_idle_connection_makes_room_and_a_busy_one_is_kept():
    chain = BlockingChain()
    with running(local_server.LocalEndpoint(chain, "127.0.0.1", 0, connection_limit=1)) as server:
        host, port = server.server_address[:2]
        idle = http.client.HTTPConnection(host, port, timeout=10)
        busy = http.client.HTTPConnection(host, port, timeout=10)
        try:
            idle.request("GET", "/ping")
            assert idle.getresponse().read() == b'{"status": "Healthy"}'  # then idle, kept alive
            # waitress sends the answer before it closes the request's books: until then the connection
            # still counts as busy, and a newcomer in that instant would get the 503 below.
            deadline = time.monotonic() + 10
            while any(channel.requests for channel in server.guard.channels) and time.monotonic() < deadline:
                time.sleep(0.01)
            busy.request("POST", "/invocations", body=JPEG, headers={"Content-Type": "image/jpeg"})
            assert chain.entered.wait(timeout=10)  # admitted: the idle connection made room
            assert idle.sock.recv(1024) == b""
            with socket.create_connection((host, port), timeout=10) as refused:
                answer = refused.recv(4096)  # nothing sent: answered as it is admitted
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == 503
            chain.release.set()
            assert busy.getresponse().status == 200
        finally:
            chain.release.set()
            idle.close()
            busy.close()


def test_the_request_limit_is_the_servers_own(endpoint):
    """`serve` takes the configured endpoint's limit (4 MB for a serverless one): bodies past it get a 413."""
    app = local_endpoint.EndpointApp(endpoint.chain, max_request_bytes=len(JPEG) - 1)
    statuses = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/invocations",
        "CONTENT_LENGTH": str(len(JPEG)),
        "CONTENT_TYPE": "image/jpeg",
        "wsgi.input": io.BytesIO(JPEG),
    }
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["413 Request Entity Too Large"]
    assert json.loads(body)["error"] == f"{len(JPEG)} bytes; at most {len(JPEG) - 1}"
