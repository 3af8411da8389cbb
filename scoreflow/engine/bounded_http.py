"""A threading HTTP server whose cost per client is bounded: one thread per open connection, at
most `max_connections` of them, each closed after `idle_timeout` seconds without a byte, and a
request head that takes more than `header_timeout` seconds in all answered 408 and closed.

    accept --under the bound--> a handler thread; socket timeout = idle_timeout, so a client
                                that stops sending (or reading) mid-request loses the thread;
                                while a head is read (HeadClock), each read waits at most what
                                is left of header_timeout from the head's first byte, so one
                                that trickles a byte at a time loses it too
           --at the bound-----> 503 + Retry-After written by the accept thread itself (no new
                                thread); the socket lingers, drained, until the client closes
                                it or LINGER_S pass

Why linger instead of closing at once: closing a socket with unread request bytes makes the
kernel send a reset, which destroys a reply the client has received but not read yet. A
handler's connection lingers the same way (its thread reads and drops) after its last reply.

    stop: close_connections(grace) --SHUT_RD--> handlers waiting for a request end; one busy
          with a request may finish its reply --after grace: `closing`, SHUT_RDWR--> the rest
          give up; each thread is joined (a daemon thread left inside native code when the
          interpreter exits can abort the process)
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import threading
import time
from collections import deque
from http.server import HTTPServer

LINGER_S = 2.0  # how long a closed connection waits for its client to read the last reply and close
MAX_TIMEOUT_S = 86_400.0  # idle and header timeouts at most (a day): a finite socket timeout, not "forever"
MAX_CONNECTIONS = 4096  # one thread each


class HeadTimeout(Exception):
    """A request head was not complete header_timeout seconds after its first byte."""


class HeadClock(io.RawIOBase):
    """The reads of one connection: each waits at most idle_timeout for a byte and, between
    `start_head()` and `end_head()`, at most what is left of header_timeout from the first byte
    that arrives (HeadTimeout when that runs out)."""

    def __init__(self, sock: socket.socket, idle_timeout: float, header_timeout: float):
        super().__init__()
        self.sock, self.idle_timeout, self.header_timeout = sock, idle_timeout, header_timeout
        self._in_head, self._deadline = False, None

    def readable(self) -> bool:
        return True

    def start_head(self) -> None:
        self._in_head, self._deadline = True, None

    def end_head(self) -> None:
        self._in_head, self._deadline = False, None
        self.sock.settimeout(self.idle_timeout)

    def readinto(self, buffer) -> int:
        left = math.inf if self._deadline is None else self._deadline - time.monotonic()
        if left <= 0:
            raise HeadTimeout
        self.sock.settimeout(min(self.idle_timeout, left))
        try:
            n = self.sock.recv_into(buffer)
        except TimeoutError:
            if left < self.idle_timeout:
                raise HeadTimeout from None
            raise
        if self._in_head and self._deadline is None and n:
            self._deadline = time.monotonic() + self.header_timeout
        return n


class BoundedHTTPServer(HTTPServer):
    request_queue_size = 256  # listen backlog: a burst of concurrent connects is not dropped

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int, idle_timeout: float,
                 header_timeout: float, busy_body: bytes):
        """Bind `address` (OSError when taken); `busy_body` is the JSON of the 503 refusal."""
        self.max_connections, self.idle_timeout, self.header_timeout = max_connections, idle_timeout, header_timeout
        self.connections: dict[socket.socket, threading.Thread] = {}  # sockets with a handler thread
        self.closing = False  # set by close_connections once the grace has passed: handlers give up
        self._refused: deque[tuple[socket.socket, float]] = deque()  # (socket, close-by time)
        self._busy = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(busy_body), busy_body))
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address) -> None:
        """On the accept thread: start a handler thread, or refuse at the bound."""
        if len(self.connections) >= self.max_connections:
            return self._refuse(request)
        request.settimeout(self.idle_timeout)
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address), daemon=True,
                                  name="scoreflow-http-connection")
        self.connections[request] = thread  # counted here, not in the thread: a burst cannot overshoot
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def reader(self, sock: socket.socket) -> io.BufferedReader:
        """What a handler reads its connection through: HeadClock under a buffer."""
        return io.BufferedReader(HeadClock(sock, self.idle_timeout, self.header_timeout))

    def shutdown_request(self, request: socket.socket) -> None:
        """On the handler thread, after its last reply: our side ends (FIN), the client's unread
        bytes are drained until it closes or LINGER_S pass, then the slot is free."""
        deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):  # TimeoutError included
            request.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(1 << 16):
                    break
        request.close()
        self.connections.pop(request, None)

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

    def close_connections(self, grace_s: float) -> None:
        """Stop reading every open connection, wait up to grace_s for their handlers, then make
        the rest give up (`closing`, both directions shut) and wait up to grace_s more; drop the
        refused sockets. Call it after shutdown(): no connection arrives meanwhile."""
        self._shutdown_all(socket.SHUT_RD)
        self._join_handlers(grace_s)
        self.closing = True
        self._shutdown_all(socket.SHUT_RDWR)
        self._join_handlers(grace_s)
        while self._refused:
            self._refused.popleft()[0].close()

    def _shutdown_all(self, how: int) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(how)

    def _join_handlers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self.connections.values()):
            thread.join(max(0.0, deadline - time.monotonic()))


def check_bounds(max_connections: int, idle_timeout: float, header_timeout: float) -> None:
    """ValueError naming the bound a server setting is outside."""
    if not 1 <= max_connections <= MAX_CONNECTIONS:
        raise ValueError(f"max_connections={max_connections} is out of range: pass 1 to {MAX_CONNECTIONS} "
                         "(one thread each)")
    for name, value in (("idle_timeout", idle_timeout), ("header_timeout", header_timeout)):
        if not 0 < value <= MAX_TIMEOUT_S:  # also refuses NaN
            raise ValueError(f"{name}={value} is out of range: pass a number of seconds in (0, {MAX_TIMEOUT_S:g}]")


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
