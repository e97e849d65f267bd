"""The hostile tenant's target: a real loopback listener that records every connection it is offered."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# What the listener answers; a test proves it never reaches a tenant by looking for this in error text.
BODY_MARKER = "LISTENER-SECRET-BODY-7f3a"


@dataclass
class Listener:
    """An HTTP server on 127.0.0.1 that counts accepted connections (even ones that never send a request)."""

    port: int
    connections: list[tuple[str, int]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def nothing_received(self) -> bool:
        """True when no socket was ever accepted."""
        return not self.connections and not self.requests


@pytest.fixture
def listener():
    """A recording loopback listener that answers every request 500 with BODY_MARKER (and a Kazoo-like token)."""
    record: Listener

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            record.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                    "body": self.rfile.read(length).decode(errors="replace") if length else ""})
            body = json.dumps({"message": BODY_MARKER, "auth_token": BODY_MARKER}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args) -> None:
            """Quiet."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request, client_address) -> bool:
            record.connections.append(client_address)
            return True

    server = Server(("127.0.0.1", 0), Handler)
    record = Listener(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield record
    server.shutdown()
    server.server_close()
