"""Fixtures for the VirtualPBX tests: a seeded standin and a webhook receiver, both on real sockets."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request

from integrations.virtualpbx.client import VirtualPBXClient
from service.sandbox.standins.base import RunningServer, serve_in_thread
from service.sandbox.virtualpbx.standin import create_app
from service.sandbox.virtualpbx.state import Account, StandinOptions, StandinState


@dataclass
class RunningStandin:
    """A running standin, its state and the seeded account."""

    state: StandinState
    server: RunningServer
    account: Account
    box_id: str
    message_id: str

    @property
    def url(self) -> str:
        """Base URL of the standin."""
        return self.server.url

    def auth_calls(self) -> int:
        """How many times a client authenticated."""
        return len(self.state.requests_to("/api_auth")) + len(self.state.requests_to("/user_auth"))


def seed_account(state: StandinState) -> tuple[Account, str, str]:
    """An account with three users (one with a password), a phone each and a voicemail box with a message."""
    account = state.add_account(name="Acme Dental")
    for first, last, extension in (("Alice", "Reception", "101"), ("Bob", "Billing", "102"),
                                   ("Carol", "Clinic", "103")):
        user = state.add_user(account.id, first_name=first, last_name=last, extension=extension,
                              username=f"{first}@Acme.test", password=f"{first}-secret")
        state.add_device(account.id, owner_id=user["id"], name=f"{first} desk")
    owner = next(iter(account.users))
    box = state.add_vmbox(account.id, owner_id=owner, mailbox="101", name="Reception", timezone_name="America/New_York")
    message = state.add_message(account.id, box["id"], caller_id_number="+15553456789", caller_id_name="Pat Patient",
                                call_id="vm-call-1", length_ms=4580, transcription="Please call me back")
    return account, box["id"], message["media_id"]


@pytest.fixture
def standin_options() -> StandinOptions:
    """Options of the standin under test; override in a module or test to change them."""
    return StandinOptions()


@pytest.fixture
def standin(standin_options):
    """A seeded standin served on a free local port."""
    state = StandinState(standin_options)
    account, box_id, message_id = seed_account(state)
    server = serve_in_thread(create_app(state))
    yield RunningStandin(state=state, server=server, account=account, box_id=box_id, message_id=message_id)
    server.stop()


@pytest.fixture
def make_client(standin, redis_client, namespace):
    """Build clients of the seeded account sharing the test's Redis namespace (override kwargs freely)."""

    def build(**kwargs: Any) -> VirtualPBXClient:
        options: dict[str, Any] = {"account_id": standin.account.id, "api_key": standin.account.api_key,
                                   "redis": redis_client, "namespace": namespace, "timeout": 5.0}
        options.update(kwargs)
        return VirtualPBXClient(standin.url, **options)

    return build


@dataclass
class Receiver:
    """A webhook receiver on a real socket that records every request and answers ``status``."""

    server: RunningServer
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    on_request: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Where hooks should point."""
        return self.server.url + "/hooks/kazoo"


@pytest.fixture
def receiver():
    """A running webhook receiver."""
    app = Flask("test_receiver")
    holder: dict[str, Receiver] = {}

    @app.route("/hooks/kazoo", methods=["GET", "POST", "PUT"])
    def hook():
        recv = holder["r"]
        entry = {"method": request.method, "query": request.query_string.decode(), "headers": dict(request.headers),
                 "body": request.get_data(as_text=True), "content_type": request.content_type}
        if recv.on_request:
            entry["observed"] = recv.on_request(entry)
        with recv.lock:
            recv.received.append(entry)
        return "ok", recv.status

    recv = Receiver(server=serve_in_thread(app))
    holder["r"] = recv
    yield recv
    recv.server.stop()
