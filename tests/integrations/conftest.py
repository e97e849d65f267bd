"""Fixtures shared by the integration tests: direct connections, stand-ins on real sockets, paced contexts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
from pydantic import BaseModel

from integrations.base import ActionContext
from integrations.ratelimit import RateLimiter
from service.sandbox.standins.base import RunningServer, serve_in_thread


@pytest.fixture(autouse=True)
def _direct_connections(monkeypatch):
    """requests and slack_sdk honour HTTP(S)_PROXY (sdks.md §3): talk to the local stand-ins directly."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@dataclass
class ServedStandin:
    """A stand-in served on a real socket: its state and base URL (no trailing slash)."""

    state: Any
    url: str


@pytest.fixture(scope="module")
def serve_standin() -> Callable[..., ServedStandin]:
    """``serve_standin(state, create_app)`` serves ``create_app(state)`` until the module ends."""
    # One server per module, not per test: stopping a werkzeug server costs its poll interval.
    running: list[RunningServer] = []

    def serve(state, create_app) -> ServedStandin:
        running.append(serve_in_thread(create_app(state)))
        return ServedStandin(state, running[-1].url)

    yield serve
    for server in running:
        server.stop()


@pytest.fixture
def limiter(redis_client, namespace) -> RateLimiter:
    """The shared cross-worker limiter on the test Redis, under this test's namespace."""
    return RateLimiter(redis_client, namespace=namespace)


def sandbox_config(model: type[BaseModel], **values: Any) -> BaseModel:
    """A connection Config validated as the sandbox operator's (private URLs allowed: stand-ins are on 127.0.0.1)."""
    return model.model_validate(values, context={"allow_private_urls": True})


@pytest.fixture
def action_context(request) -> Callable[..., ActionContext]:
    """Build an ActionContext as a sandbox worker does (private URLs allowed), paced by ``limiter``.

    paced=False keeps the no-op pacing.
    """
    def build(*, paced: bool = True, **fields) -> ActionContext:
        if paced:  # asked for lazily, so unpaced tests never touch Redis
            limiter = request.getfixturevalue("limiter")
            fields.update(acquire=limiter.acquire, penalise=limiter.penalise)
        fields.setdefault("allow_private_urls", True)
        return ActionContext(**fields)
    return build
