"""The VirtualText stand-in itself, over real HTTP: what it reproduces of the described API."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import requests

from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.virtualtext import DEFAULT_API_KEY, DEFAULT_NUMBER, VirtualTextStandin, create_app

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "virtualtext" / "fixtures"
KEY = "pk_live_standin_test_key_0001"
TO = "+12025550123"


@pytest.fixture(scope="module")
def server(serve_standin):
    """The stand-in with default settings (demo key) on a real socket."""
    return serve_standin(VirtualTextStandin.with_defaults(), create_app)


@pytest.fixture
def base(server):
    """The stand-in's URL, reset to the demo key plus KEY, rate limit 3 per second."""
    requests.post(f"{server.url}/_standin/reset", json={"registrations": True}).raise_for_status()
    keys = [{"key": KEY, "numbers": ["+12025550111"]}, {"key": DEFAULT_API_KEY, "numbers": [DEFAULT_NUMBER]}]
    requests.post(f"{server.url}/_standin/setup", json={"keys": keys, "rate_limit": {"max": 3, "window": 1.0}}
                  ).raise_for_status()
    return server.url


def send(base: str, body, key: str = KEY, **headers) -> requests.Response:
    """POST /v1/messages with a Bearer key."""
    return requests.post(f"{base}/v1/messages", json=body, headers={"Authorization": f"Bearer {key}", **headers},
                         timeout=5)


def messages(base: str) -> list[dict]:
    """What the stand-in recorded."""
    return requests.get(f"{base}/_standin/messages", timeout=5).json()["messages"]


def test_created_answer_has_the_documented_shape(base):
    response = send(base, {"to": TO, "channel": "sms", "body": "hello", "idempotency_key": "k1"})
    assert response.status_code == 201
    doc = response.json()
    assert set(doc) == set(json.loads((FIXTURES / "message_created.json").read_text()))
    assert re.fullmatch(r"msg_[0-9a-f]{24}", doc["id"]) and doc["status"] == "queued"
    assert datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00")).tzinfo is not None
    read = requests.get(f"{base}/v1/messages/{doc['id']}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert (read["id"], read["to"], read["from"], read["body"]) == (doc["id"], TO, "+12025550111", "hello")
    assert "api_key" not in read and all("api_key" not in m for m in messages(base))


def test_same_key_same_request_replays_the_first_message(base):
    body = {"to": TO, "channel": "sms", "body": "once", "idempotency_key": "k-replay"}
    first, second = send(base, body), send(base, body)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(messages(base)) == 1


def test_same_key_different_request_is_409(base):
    send(base, {"to": TO, "channel": "sms", "body": "one", "idempotency_key": "k-c"})
    response = send(base, {"to": TO, "channel": "sms", "body": "two", "idempotency_key": "k-c"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert len(messages(base)) == 1


def test_keys_are_per_api_key(base):
    body = {"to": TO, "channel": "sms", "body": "hi", "idempotency_key": "shared"}
    assert send(base, body).status_code == 201
    assert send(base, body, key=DEFAULT_API_KEY).status_code == 201
    assert len(messages(base)) == 2


def test_without_a_key_every_request_sends(base):
    body = {"to": TO, "channel": "sms", "body": "hi"}
    send(base, body), send(base, body)
    assert len(messages(base)) == 2


@pytest.mark.parametrize("header,status,code", [
    (None, 401, "unauthorized"),
    ("Bearer ", 401, "unauthorized"),
    ("Basic " + KEY, 401, "unauthorized"),
    ("Bearer pk_live_nope", 401, "unauthorized"),
])
def test_auth(base, header, status, code):
    headers = {"Authorization": header} if header else {}
    response = requests.post(f"{base}/v1/messages", json={"to": TO, "body": "x"}, headers=headers)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_disabled_key_is_403(server, base):
    requests.post(f"{base}/_standin/setup", json={"keys": [{"key": KEY, "disabled": True}]}).raise_for_status()
    assert send(base, {"to": TO, "body": "x"}).status_code == 403


VALIDATION = {
    "to-not-e164": ({"to": "202-555-0123", "body": "x"}, ["to"]),
    "no-body": ({"to": TO}, ["body"]),
    "blank-body": ({"to": TO, "body": "  "}, ["body"]),
    "body-too-long": ({"to": TO, "body": "x" * 1601}, ["body"]),
    "bad-channel": ({"to": TO, "body": "x", "channel": "fax"}, ["channel"]),
    "from-not-on-account": ({"to": TO, "body": "x", "from": DEFAULT_NUMBER}, ["from"]),
    "media-on-sms": ({"to": TO, "body": "x", "media": ["https://x.test/a.png"]}, ["media"]),
    "media-not-urls": ({"to": TO, "body": "x", "channel": "mms", "media": ["file:///etc/passwd"]}, ["media"]),
    "several": ({"to": "", "channel": "fax"}, ["to", "channel", "body"]),
}


@pytest.mark.parametrize("body,fields", list(VALIDATION.values()), ids=list(VALIDATION))
def test_validation_is_422_with_field_details(base, body, fields):
    response = send(base, body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert [d["field"] for d in error["details"]] == fields
    assert messages(base) == []


def test_a_body_that_is_not_an_object_is_400(base):
    response = requests.post(f"{base}/v1/messages", data="nope", headers={"Authorization": f"Bearer {KEY}",
                                                                          "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_mms_with_media_is_accepted(base):
    assert send(base, {"to": TO, "body": "map", "channel": "mms", "media": ["https://x.test/a.png"]}).status_code == 201


def test_unknown_or_foreign_message_is_404(base):
    created = send(base, {"to": TO, "body": "mine"}).json()
    other = requests.get(f"{base}/v1/messages/{created['id']}", headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert requests.get(f"{base}/v1/messages/msg_nope", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_rate_limit_is_per_key_with_an_integer_retry_after(base):
    statuses = [send(base, {"to": TO, "body": f"{n}"}).status_code for n in range(4)]
    assert statuses == [201, 201, 201, 429]
    limited = send(base, {"to": TO, "body": "again"})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json()["error"]["code"] == "rate_limited"
    assert send(base, {"to": TO, "body": "other key"}, key=DEFAULT_API_KEY).status_code == 201


def test_faults_are_consumed_in_order_and_commit_sends(base):
    requests.post(f"{base}/_standin/faults", json=[{"status": 500}, {"status": 502, "body": "<html>x", "commit": True},
                                                   {"status": 429, "retry_after": 4}]).raise_for_status()
    first = send(base, {"to": TO, "body": "a"})
    second = send(base, {"to": TO, "body": "b"})
    third = send(base, {"to": TO, "body": "c"})
    assert (first.status_code, first.json()["error"]["code"]) == (500, "internal_error")
    assert (second.status_code, second.text) == (502, "<html>x")
    assert (third.status_code, third.headers["Retry-After"]) == (429, "4")
    assert [m["body"] for m in messages(base)] == ["b"]  # only the committed one was sent
    assert send(base, {"to": TO, "body": "d"}).status_code == 201


def test_bad_fault_queue_is_400(base):
    assert requests.post(f"{base}/_standin/faults", json={"faults": "nope"}).status_code == 400


def test_reset_forgets_messages_and_idempotency(base):
    body = {"to": TO, "body": "x", "idempotency_key": "k"}
    send(base, body)
    requests.post(f"{base}/_standin/reset", json={}).raise_for_status()
    assert messages(base) == []
    assert "Idempotent-Replayed" not in send(base, body).headers
    requests.post(f"{base}/_standin/reset", json={"registrations": True}).raise_for_status()
    assert send(base, body).status_code == 401


def test_create_app_without_arguments_has_a_ready_demo_key():
    fresh = serve_in_thread(create_app())
    try:
        response = send(fresh.url, {"to": TO, "body": "demo"}, key=DEFAULT_API_KEY)
        assert response.status_code == 201
        assert messages(fresh.url)[0]["from"] == DEFAULT_NUMBER
    finally:
        fresh.stop()


def test_state_object_is_shared_with_the_app():
    state = VirtualTextStandin(rate_limit_max=None)
    app = create_app(state)
    assert app.extensions["virtualtext_standin"] is state
    state.add_key(KEY, [DEFAULT_NUMBER])
    client = app.test_client()
    for n in range(20):  # no rate limit when disabled
        assert client.post("/v1/messages", json={"to": TO, "body": f"{n}"},
                           headers={"Authorization": f"Bearer {KEY}"}).status_code == 201
    assert len(state.sent()) == 20
