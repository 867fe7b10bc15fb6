"""The local endpoint's HTTP server: waitress, guarded against slow clients.

Imported only by `serve` (through `local_endpoint.make_server`): waitress is in the `local` extra, and
`predict --local`, the client in `local_endpoint`, must work after `pip install -e .`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.trigger import trigger

from .endpoint import (
    CHANNEL_TIMEOUT_S,
    CLEANUP_INTERVAL_S,
    CONNECTION_LIMIT,
    JSON_TYPE,
    MAX_REQUEST_BYTES,
    READ_BEFORE_REFUSING_BYTES,
    REQUEST_DEADLINE_S,
    THREADS,
    EndpointApp,
    HandlerChain,
    status_line,
)


class _ConnectionGuard:
    """The server's connections against slow clients, kept on waitress's loop thread.

    waitress closes a connection only after `channel_timeout` seconds with nothing received or sent,
    so a client trickling one byte every few seconds keeps it as long as it likes; and at its
    `connection_limit` waitress stops accepting, which leaves /ping in the listen backlog behind such
    clients (70 of them kept /ping unanswered for as long as they lasted). waitress has no setting for
    either, so: each request must arrive whole by a deadline (`_GuardedChannel.readable`), and a
    connection past `connection_limit` is admitted by closing the one that has waited longest on its
    client, or refused with a 503 when every connection has a request in progress.
    """

    def __init__(self, request_deadline: float, connection_limit: int) -> None:
        self.request_deadline = request_deadline
        self.connection_limit = connection_limit
        self.channels: set[_GuardedChannel] = set()

    def admit(self, channel: _GuardedChannel) -> None:
        self.channels.add(channel)
        if len(self.channels) <= self.connection_limit:
            return
        waiting = [other for other in self.channels if other is not channel and not other.requests]
        if waiting:
            # An idle keep-alive is closed without an answer, as HTTP lets a server close one.
            min(waiting, key=_GuardedChannel.waiting_since).handle_close()
        else:
            channel.answer_and_close(
                503, f"all {self.connection_limit} connections have a request in progress"
            )
            channel.handle_close()


class _GuardedChannel(HTTPChannel):
    """waitress's connection, with a deadline for each request to arrive whole (see `_ConnectionGuard`)."""

    def __init__(
        self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None, *, guard: _ConnectionGuard
    ) -> None:
        self._guard = guard
        # The first request's clock starts when the connection opens: a silent client is a slow one.
        self._deadline: float | None = time.time() + guard.request_deadline
        super().__init__(server, sock, addr, adj, map)
        guard.admit(self)

    def waiting_since(self) -> float:
        """Since when this connection has waited on its client: its request's start, or its last activity."""
        if self._deadline is not None:
            return self._deadline - self._guard.request_deadline
        return self.last_activity

    def received(self, data: bytes) -> bool:
        arriving = self.request
        accepted = super().received(data)
        if self.request is None:
            self._deadline = None  # nothing partial: idle until the next request's first byte
        elif self.request is not arriving and (arriving is not None or self._deadline is None):
            self._deadline = time.time() + self._guard.request_deadline
        return accepted

    def readable(self) -> bool:
        # waitress asks every connection this on each turn of its loop (at least once a second).
        if self._deadline is not None and not self.requests and time.time() > self._deadline:
            deadline = self._guard.request_deadline
            self.answer_and_close(408, f"the request did not arrive whole within {deadline:g} s")
            return False
        return super().readable()

    def answer_and_close(self, status: int, reason: str) -> None:
        """A one-line JSON error if the socket takes it at once (it is never waited for), then close."""
        body = json.dumps({"error": reason, "status": status}).encode("utf-8")
        head = (
            f"HTTP/1.1 {status_line(status)}\r\nContent-Type: {JSON_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            self.socket.send(head.encode("ascii") + body)
        self.will_close = True  # waitress closes it on its next turn

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        self._guard.channels.discard(self)


class LocalEndpoint:
    """A waitress server answering /ping and /invocations with one `HandlerChain`.

    `serve_forever()` runs it (on a thread, in tests); `shutdown()` stops it from any thread and
    `server_close()` removes the unpacked model.
    """

    def __init__(
        self,
        chain: HandlerChain,
        host: str,
        port: int,
        workdir: Path | None = None,
        channel_timeout: int = CHANNEL_TIMEOUT_S,
        threads: int = THREADS,
        request_deadline: float = REQUEST_DEADLINE_S,
        connection_limit: int = CONNECTION_LIMIT,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.chain = chain
        self.max_request_bytes = max_request_bytes
        self._workdir = workdir
        self._map: dict[int, Any] = {}
        self._stopped = threading.Event()
        self._stopped.set()  # until serve_forever runs
        self._server = waitress.create_server(
            EndpointApp(chain, max_request_bytes),
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            channel_timeout=channel_timeout,
            cleanup_interval=min(CLEANUP_INTERVAL_S, channel_timeout),
            max_request_body_size=READ_BEFORE_REFUSING_BYTES,
            # waitress stops accepting at its own limit, which also counts its listening sockets and
            # wake-up pipes (two or three per address); the guard keeps connections to
            # `connection_limit` and decides who goes, so this is only a backstop.
            connection_limit=connection_limit + 16,
            asyncore_use_poll=True,  # select() cannot watch descriptors numbered past 1023
            clear_untrusted_proxy_headers=True,
        )
        # The open connections and their deadlines (read on the loop thread; tests read it to wait).
        self.guard = _ConnectionGuard(request_deadline, connection_limit)
        guarded_channel = functools.partial(_GuardedChannel, guard=self.guard)
        for listener in list(self._map.values()):
            if isinstance(listener, BaseWSGIServer):  # create_server made one per listening address
                listener.channel_class = guarded_channel
        # Runs thunks on the server's own loop thread: the only safe place to close its sockets.
        self._trigger = trigger(self._map)

    @property
    def handler(self) -> ModuleType:
        return self.chain.handler

    @property
    def server_address(self) -> tuple[str, int]:
        listening = getattr(self._server, "effective_listen", None)
        if listening:
            host, port = listening[0][:2]
            return str(host), int(port)
        return str(self._server.effective_host), int(self._server.effective_port)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            self._server.run()
        finally:
            self._server.task_dispatcher.shutdown(timeout=5)
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Close every socket on the loop thread, then wait for `serve_forever` to return."""
        if not self._map:
            return
        self._trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        if self._map and self._stopped.is_set():  # never served: nothing else will close them
            wasyncore.close_all(self._map)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
