"""What every vendor stand-in shares: serving a WSGI app on a real local socket (for tests, the sandbox
and benches), the fault queue tests fill, applying a fault to a request, and the /_standin/ control routes."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, make_server

JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

Fault = dict[str, Any]


@dataclass
class RunningServer:
    """A stand-in served in a background thread; ``url`` has no trailing slash."""

    server: BaseWSGIServer
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve ``app`` (threaded) on host:port (0 = a free port) and return once it accepts connections."""
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"standin:{server.server_port}", daemon=True)
    thread.start()
    return RunningServer(server=server, thread=thread, url=f"http://{host}:{server.server_port}")


class FaultQueue:
    """Faults queued by tests, each consumed by one vendor request, oldest first; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()

    def push(self, faults: Iterable[Fault]) -> None:
        """Queue copies of ``faults``, in order."""
        with self._lock:
            self._faults.extend(dict(f) for f in faults)

    def pop(self, matches: Callable[[Fault], bool] | None = None) -> Fault | None:
        """Remove and return the oldest fault ``matches`` accepts (any fault when None), else None."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if matches is None or matches(fault):
                    del self._faults[index]
                    return fault
        return None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  content_type: str = JSON_TYPE) -> Response:
    """``body`` as a JSON response."""
    return Response(json.dumps(body), status=status, headers=dict(headers or {}), content_type=content_type)


def request_arguments() -> dict[str, Any] | None:
    """The request's query arguments plus its JSON or form body (None when the JSON is not an object)."""
    args: dict[str, Any] = dict(request.args)
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return None
        args.update(body)
    else:
        args.update(request.form)
    return args


def answer_with_fault(fault: Fault | None, handle: Callable[[], Response],
                      respond: Callable[[Fault], Response]) -> Response:
    """Answer a vendor request under ``fault``: delay first, then the real ``handle()``, or the fault's own
    answer ``respond(fault)`` when it sets a status or body (after running ``handle()`` when it says commit)."""
    if fault is None:
        return handle()
    if fault.get("delay"):
        time.sleep(float(fault["delay"]))  # outside any lock: other requests keep flowing
    if "status" not in fault and "body" not in fault:
        return handle()
    if fault.get("commit"):
        handle()  # the effect happens, the client just never hears about it
    return respond(fault)


def fault_response(fault: Fault, default_body: Callable[[int], Any], *, json_type: str = JSON_TYPE,
                   text_type: str = HTML_TYPE) -> Response:
    """The answer ``fault`` asks for: its status (200), headers, ``retry_after`` as Retry-After, and its body
    (else ``default_body(status)``), sent as JSON when a dict or list, else as text."""
    status = int(fault.get("status", 200))
    headers = dict(fault.get("headers") or {})
    if "retry_after" in fault:
        headers["Retry-After"] = str(fault["retry_after"])
    body = fault.get("body")
    if body is None:
        body = default_body(status)
    if isinstance(body, (dict, list)):
        return json_response(body, status, headers, json_type)
    return Response(str(body), status=status, headers=headers, content_type=text_type)


def add_control_routes(app: Flask, state: Any, *, error_body: Callable[[str], Any] = lambda message: {"error": message},
                       answer_fields: Mapping[str, Any] | None = None, json_type: str = JSON_TYPE) -> None:
    """Register ``POST /_standin/faults`` and ``POST /_standin/reset`` on ``app`` for ``state``."""
    # ``state`` needs push_faults(list), a ``faults`` FaultQueue and reset(registrations=bool).

    @app.post("/_standin/faults")
    def faults() -> Response:
        body = request.get_json(force=True, silent=True)
        queue = body.get("faults") if isinstance(body, dict) else body
        if not isinstance(queue, list) or not all(isinstance(f, dict) for f in queue):
            return json_response(error_body("expected a list of fault objects"), 400, content_type=json_type)
        state.push_faults(queue)
        return json_response({**(answer_fields or {}), "queued": len(state.faults)}, content_type=json_type)

    @app.post("/_standin/reset")
    def reset() -> Response:
        body = request.get_json(force=True, silent=True)
        state.reset(registrations=isinstance(body, dict) and body.get("registrations") is True)
        return json_response({"ok": True}, content_type=json_type)


def set_rate_limit(state: Any, setup: Mapping[str, Any]) -> None:
    """Apply a setup body's ``rate_limit`` block ``{"max", "window"}`` (null: no limit) to ``state``, if present."""
    if "rate_limit" in setup:
        limit = setup["rate_limit"] or {}
        with state.lock:
            state.rate_limit_max = limit.get("max")
            state.rate_limit_window = float(limit.get("window", 1.0))
