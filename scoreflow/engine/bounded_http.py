"""A threading HTTP server whose cost per client is bounded: one thread per open connection, at
most `max_connections` of them, each closed after `idle_timeout` seconds without a byte.

    accept --under the bound--> a handler thread; socket timeout = idle_timeout, so a client
                                that stops sending (or reading) mid-request loses the thread
           --at the bound-----> 503 + Retry-After written by the accept thread itself (no new
                                thread); the socket lingers, drained, until the client closes
                                it or LINGER_S pass

Why linger instead of closing at once: closing a socket with unread request bytes makes the
kernel send a reset, which can destroy the 503 before the client reads it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import deque
from http.server import ThreadingHTTPServer

LINGER_S = 2.0  # how long a refused socket waits for its client to read the 503 and close


class BoundedHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: a burst of concurrent connects is not dropped

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int, idle_timeout: float,
                 busy_body: bytes):
        """Bind `address` (OSError when taken); `busy_body` is the JSON of the 503 refusal."""
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.connections: set[socket.socket] = set()  # sockets with a handler thread
        self._refused: deque[tuple[socket.socket, float]] = deque()  # (socket, close-by time)
        self._busy = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(busy_body), busy_body))
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address) -> None:
        """On the accept thread: start a handler thread, or refuse at the bound."""
        if len(self.connections) >= self.max_connections:
            return self._refuse(request)
        request.settimeout(self.idle_timeout)
        self.connections.add(request)  # counted here, not in the thread: a burst cannot overshoot
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def _refuse(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.send(self._busy)  # a few hundred bytes into a fresh socket's buffer: never blocks
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._refused.append((sock, time.monotonic() + LINGER_S))
        if len(self._refused) > self.max_connections:  # a flood: the oldest refusals go at once
            self._refused.popleft()[0].close()

    def service_actions(self) -> None:
        """Between accepts (at least every poll interval): close the refused sockets whose client
        has closed or whose time is up."""
        now = time.monotonic()
        for item in list(self._refused):
            if item[1] < now or _peer_closed(item[0]):
                self._refused.remove(item)
                item[0].close()

    def close_connections(self) -> None:
        """Shut every open connection down (their handler threads then end) and drop refused ones."""
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        while self._refused:
            self._refused.popleft()[0].close()


def _peer_closed(sock: socket.socket) -> bool:
    """Read and drop what a refused client sent (a bounded amount per call); True once it has
    closed the connection or it failed."""
    try:
        for _ in range(16):
            if not sock.recv(1 << 16):
                return True
    except BlockingIOError:
        pass
    except OSError:
        return True
    return False
