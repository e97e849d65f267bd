"""The receiver's gunicorn worker: gthread, except that a thread is given only a complete request.

Stock gthread hands a connection to a thread at its first byte, and the thread then blocks until the
request is in: a few clients dribbling a request line (slowloris) hold every thread and /healthz
hangs, and nothing bounds how long they may take. This worker reads, without blocking, in the event
loop: the request head (line within LINE_LIMIT, head within HEAD_LIMIT, complete within HEAD_TIMEOUT
of the connection's first wait), then the body (a Content-Length body, or a chunked one up to its
last chunk, within BODY_TIMEOUT). A client too slow or too large gets 408/413/414/431 and is closed; a
waiting client costs a poller entry and its buffer, never a thread. Bodies are buffered up to the
largest a route takes (the API's rules files, about 1 MiB), those larger than a hook within a budget
per worker (503 past it). It is the same buffering nginx
does in front of it in docker-compose.yml; this one protects a receiver run without a proxy.
"""

from __future__ import annotations

import errno
import re
import selectors
import time
from dataclasses import dataclass, field
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# Kazoo's longest GET delivery (missed_call, payload in the query string) is about 5 KB: a 16 KB line
# keeps a margin, and caps what an endless request line can make a worker hold.
LINE_LIMIT = 16 * 1024
HEAD_LIMIT = 32 * 1024  # request line plus headers
HEAD_TIMEOUT = 10.0  # seconds, from the start of a connection's wait for its next request
BODY_TIMEOUT = 20.0  # seconds, after the head, for the whole body
# Chunk framing adds bytes to a chunked body; past this much more than the limit, the app answers 413.
CHUNK_FRAMING_SLACK = 16 * 1024
# Bytes of bodies larger than a hook's (API uploads, by their declared length; a chunked body counts as
# the largest allowed) that one worker may be buffering at once. Past it such a request gets 503 at once:
# many large uploads cost memory up to this bound, never a thread. Bodies up to a hook's size are not
# counted, so uploads never crowd out Kazoo's hooks (worker_connections bounds those).
LARGE_BODY_BUDGET = 32 * 1024 * 1024
_CHUNKED = -1  # body length of a chunked request: complete at its last chunk
_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)


def _response(status: str) -> bytes:
    """A minimal closing HTTP/1.1 response with an empty body."""
    return f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode()


@dataclass
class _Waiting:
    """A connection whose request is being read in the event loop."""

    conn: TConn
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    body_end: int | None = None  # index in buf where the request ends (_CHUNKED: at the last chunk)
    head_end: int = 0
    limit: int = 0  # the largest body its route takes
    budgeted: int = 0  # bytes of the worker's LARGE_BODY_BUDGET this body holds


class BufferingThreadWorker(ThreadWorker):
    """gthread whose threads only ever serve requests already fully received (see the module docstring)."""

    #: The largest body any route takes, and a hook's; set on the subclass that ``worker_class`` makes.
    max_body_bytes = 256 * 1024
    hook_body_bytes = 256 * 1024

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting: dict[TConn, _Waiting] = {}
        self._budget_used = 0

    def accept(self, listener):
        """Accept a connection and wait for its request in the event loop, not in a thread."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._wait_for_request(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection starts its next request: read it in the event loop too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_request(conn)

    def murder_pending(self):
        """Close connections whose request did not arrive in time (408), then gthread's own sweep."""
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            self._refuse(waiting, "408 Request Timeout")
        super().murder_pending()

    def _wait_for_request(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        waiting = _Waiting(conn, time.monotonic() + HEAD_TIMEOUT)
        self._waiting[conn] = waiting
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, waiting))

    def _on_readable(self, waiting: _Waiting, _sock) -> None:
        try:
            data = waiting.conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(waiting)
            self.nr_conns -= 1
            waiting.conn.close()
            return
        waiting.buf += data
        verdict = self._judge(waiting)
        if verdict == "complete":
            self._hand_over(waiting)
        elif verdict:
            self._refuse(waiting, verdict)

    def _judge(self, waiting: _Waiting) -> str | None:
        """'complete', a refusal status, or None to keep reading."""
        buf = waiting.buf
        if waiting.body_end is None:
            line_end = buf.find(b"\r\n", 0, LINE_LIMIT + 2)
            if line_end < 0 and len(buf) > LINE_LIMIT:
                return "414 URI Too Long"
            head_end = buf.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4)
            if head_end < 0:
                return "431 Request Header Fields Too Large" if len(buf) > HEAD_LIMIT else None
            waiting.head_end = head_end + 4
            head = bytes(buf[:head_end + 2])
            length = self._body_length(head)
            if length is None:
                return "complete"  # let the app answer 400 for a length it cannot read
            waiting.limit = self._limit_for(head)
            if length > waiting.limit:
                # Refused here, not by the app: after answering, gunicorn's thread would read (and discard)
                # the whole declared body at the client's pace before it could close the connection.
                return "413 Content Too Large"
            waiting.body_end = _CHUNKED if length == _CHUNKED else waiting.head_end + length
            waiting.deadline = time.monotonic() + BODY_TIMEOUT
            size = waiting.limit + CHUNK_FRAMING_SLACK if length == _CHUNKED else length
            if waiting.limit > self.hook_body_bytes and size > self.hook_body_bytes:
                if self._budget_used + size > LARGE_BODY_BUDGET:
                    return "503 Service Unavailable"
                waiting.budgeted = size
                self._budget_used += size
        if waiting.body_end == _CHUNKED:
            body = len(buf) - waiting.head_end
            ended = buf.endswith(b"\r\n0\r\n\r\n") or (body == 5 and buf.endswith(b"0\r\n\r\n"))
            return "complete" if ended or body > waiting.limit + CHUNK_FRAMING_SLACK else None
        return "complete" if len(buf) >= waiting.body_end else None

    def _body_length(self, head: bytes) -> int | None:
        """The declared body length (_CHUNKED for a chunked body), or None when it cannot be read."""
        if any(b"chunked" in value.lower() for value in _ENCODING.findall(head)):
            return _CHUNKED
        lengths = _LENGTH.findall(head)
        if not lengths:
            return 0
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            return None
        return int(lengths[0])

    def _limit_for(self, head: bytes) -> int:
        """The largest body the request's route takes: a hook's under /hooks/, the API's elsewhere."""
        target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        return self.hook_body_bytes if target.startswith(b"/hooks/") else self.max_body_bytes

    def _hand_over(self, waiting: _Waiting) -> None:
        """Give a thread the request, its bytes already read (the parser reads them before the socket)."""
        self._forget(waiting)
        conn = waiting.conn
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(bytes(waiting.buf))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _refuse(self, waiting: _Waiting, status: str) -> None:
        self._forget(waiting)
        try:
            waiting.conn.sock.send(_response(status))
        except OSError:
            pass  # the client is gone or not reading: closing is all that is left
        self.nr_conns -= 1
        waiting.conn.close()

    def _forget(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.conn]
        self._budget_used -= waiting.budgeted
        waiting.budgeted = 0
        try:
            self.poller.unregister(waiting.conn.sock)
        except (KeyError, ValueError, OSError):
            pass  # already unregistered


def worker_class(max_body_bytes: int, hook_body_bytes: int) -> type[BufferingThreadWorker]:
    """The worker class for an app whose largest body (of any route) and largest hook are these long."""
    return type("PbxrelayWorker", (BufferingThreadWorker,),
                {"max_body_bytes": max(max_body_bytes, hook_body_bytes), "hook_body_bytes": hook_body_bytes})
