"""VirtualTextIntegration against the VirtualText stand-in over real HTTP, with the real Redis rate limiter."""

from __future__ import annotations

import json
import pickle
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from integrations.base import ActionContext, AuthError, PermanentError, RetryableError
from integrations.virtualtext import VirtualTextConfig, VirtualTextIntegration
from service.sandbox.standins.virtualtext import VirtualTextStandin, create_app
from tests.integrations.conftest import sandbox_config

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "virtualtext" / "fixtures"
KEY = "pk_live_test_5ecretKeyValue123"
NUMBER, OTHER_NUMBER = "+12025550100", "+12025550101"
CONNECTION = "acc:texts"
TO = "+12025550123"


def fixture(name: str):
    """A JSON body from integrations/virtualtext/fixtures."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def _server(serve_standin):
    """One stand-in server per module."""
    return serve_standin(VirtualTextStandin(), create_app)


@pytest.fixture
def vt(_server):
    """The stand-in, reset: one key with two numbers, rate limit 10 per second."""
    state = _server.state
    state.reset(registrations=True)
    state.rate_limit_max, state.rate_limit_window = 10, 1.0
    state.add_key(KEY, [NUMBER, OTHER_NUMBER])
    return _server


@pytest.fixture
def make_ctx(vt, action_context):
    """Build an ActionContext as the worker does; paced=False keeps ActionContext's no-op pacing."""
    def build(*, key: str = "acc:1", attempt: int = 1, **kwargs) -> ActionContext:
        return action_context(account_id="acc", idempotency_key=key, connection_id=CONNECTION, attempt=attempt,
                              api_urls={"virtualtext": vt.url}, **kwargs)
    return build


def integration(**config) -> VirtualTextIntegration:
    """The integration with the test key."""
    return VirtualTextIntegration(sandbox_config(VirtualTextConfig, api_key=config.pop("api_key", KEY), **config))


def free_port_url() -> str:
    """A URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- happy paths -----------------------------------------------------------------------------------

def test_send_records_one_message_with_normalised_numbers_and_the_idempotency_key(vt, make_ctx):
    result = integration().run("send_sms", {"to": "(202) 555-0123", "body": "  Your table is ready \n"},
                               make_ctx(key="acc:42"))
    [message] = vt.state.sent()
    assert result.external_id == message["id"] and message["id"].startswith("msg_")
    assert not result.deduplicated
    assert (message["to"], message["from"], message["body"], message["channel"]) == (
        TO, NUMBER, "Your table is ready", "sms")
    assert message["idempotency_key"] == "acc:42"


def test_sender_from_params_or_connection_and_mms_media(vt, make_ctx):
    integration(from_number=OTHER_NUMBER).run("send_sms", {"to": TO, "body": "a"}, make_ctx(key="a"))
    integration().run("send_sms", {"to": TO, "body": "b", "from": "202.555.0101",
                                   "media": ["https://cdn.example.com/map.png"]}, make_ctx(key="b"))
    first, second = vt.state.sent()
    assert first["from"] == OTHER_NUMBER
    assert (second["from"], second["channel"], second["media"]) == (OTHER_NUMBER, "mms",
                                                                    ["https://cdn.example.com/map.png"])


def test_config_api_url_overrides_the_setting(vt, make_ctx):
    ctx = make_ctx(paced=False)
    ctx.api_urls = {"virtualtext": free_port_url()}
    assert integration(api_url=vt.url + "/").run("send_sms", {"to": TO, "body": "hi"}, ctx).external_id


# -- exactly-once ----------------------------------------------------------------------------------

def test_retry_after_a_crash_sends_once(vt, make_ctx):
    """The first attempt's message went out but the worker died before recording it; the retry replays it."""
    first = integration().run("send_sms", {"to": TO, "body": "Reminder: 3pm"}, make_ctx(key="acc:7"))
    retry = integration().run("send_sms", {"to": TO, "body": "Reminder: 3pm"},
                              make_ctx(key="acc:7", attempt=2))
    assert len(vt.state.sent()) == 1
    assert retry.external_id == first.external_id
    assert retry.deduplicated and not first.deduplicated


def test_retry_after_a_lost_answer_sends_once(vt, make_ctx):
    """VirtualText sent the message but the answer was a 502: the retry gets the same message back."""
    vt.state.push_faults([{"status": 502, "body": "<html>Bad gateway</html>", "commit": True}])
    with pytest.raises(RetryableError):
        integration().run("send_sms", {"to": TO, "body": "Reminder"}, make_ctx(key="acc:8"))
    retry = integration().run("send_sms", {"to": TO, "body": "Reminder"}, make_ctx(key="acc:8",
                                                                                    attempt=2))
    [message] = vt.state.sent()
    assert retry.external_id == message["id"] and retry.deduplicated


def test_different_keys_send_separately(vt, make_ctx):
    for key in ("acc:1", "acc:2"):
        integration().run("send_sms", {"to": TO, "body": "same text"}, make_ctx(key=key))
    assert len(vt.state.sent()) == 2


def test_same_key_different_body_is_a_permanent_conflict(vt, make_ctx):
    integration().run("send_sms", {"to": TO, "body": "first"}, make_ctx(key="acc:9"))
    with pytest.raises(PermanentError) as info:
        integration().run("send_sms", {"to": TO, "body": "second"}, make_ctx(key="acc:9", attempt=2))
    assert (type(info.value), info.value.status, info.value.code) == (PermanentError, 409, "idempotency_conflict")
    assert len(vt.state.sent()) == 1


# -- consent and quiet hours -----------------------------------------------------------------------

def test_opted_out_number_is_never_texted(vt, make_ctx):
    with pytest.raises(PermanentError) as info:
        integration().run("send_sms", {"to": "202-555-0123", "body": "hi"},
                          make_ctx(opted_out=lambda number: number == TO))
    assert info.value.code == "opted_out"
    assert vt.state.sent() == [] and vt.state.calls == []


def test_quiet_hours_defer_without_calling_virtualtext(vt, make_ctx):
    # Quiet from an hour ago to an hour from now (UTC account), whenever the test runs.
    now = datetime.now(timezone.utc)
    quiet = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"
    with pytest.raises(RetryableError) as info:
        integration(quiet_hours=quiet).run("send_sms", {"to": TO, "body": "hi"}, make_ctx(timezone="UTC"))
    assert info.value.code == "deferred" and 3500 <= info.value.retry_after <= 3600
    assert vt.state.calls == []


# -- rate limits -----------------------------------------------------------------------------------

def test_429_shuts_the_shared_bucket_for_retry_after(vt, make_ctx):
    vt.state.push_faults([{"status": 429, "retry_after": 7, "body": fixture("error_rate_limited.json")}])
    with pytest.raises(RetryableError):
        integration().run("send_sms", {"to": TO, "body": "hi"}, make_ctx())
    with pytest.raises(RetryableError) as info:  # another worker, same connection: held off, no request
        integration().run("send_sms", {"to": TO, "body": "hi"}, make_ctx(key="acc:other"))
    assert info.value.code == "paced" and 6 < info.value.retry_after <= 7
    assert len(vt.state.calls) == 1


def test_pacing_is_shared_across_workers_per_connection(vt, make_ctx):
    codes = []
    for n in range(7):
        try:
            integration().run("send_sms", {"to": TO, "body": f"n{n}"}, make_ctx(key=f"acc:{n}"))
            codes.append("sent")
        except RetryableError as exc:
            codes.append(exc.code)
    assert codes[:5] == ["sent"] * 5 and "paced" in codes[5:]
    assert len(vt.state.sent()) == codes.count("sent")


# -- failure table ---------------------------------------------------------------------------------

@dataclass
class Failure:
    """One row: how to break VirtualText, and what the integration must raise."""

    expected: type
    faults: tuple = ()
    prepare: object = None  # callable(state) for failures that are real stand-in behaviour
    key: str = KEY
    params: dict | None = None
    refused: bool = False
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None
    mentions: str = ""


# The timeout row answers (too late) with an error rather than sending, so nothing lands in a later test.
LATE = ({"delay": 1.0, "status": 500},)
ECHO = f"<html>proxy error for Authorization: Bearer {KEY}</html>"

FAILURES = {
    "timeout": Failure(RetryableError, LATE, code="timeout"),
    "refused": Failure(RetryableError, refused=True, code="network"),
    "400-unreadable": Failure(PermanentError, ({"status": 400, "body": {"error": {"code": "invalid_json",
                                                                               "message": "bad JSON"}}},),
                              status=400, code="invalid_json"),
    "400-textable-errors": Failure(PermanentError, ({"status": 400, "body": fixture("textable_errors.json")},),
                                   status=400, code="http_400", mentions="must be a valid phone number"),
    "401-unknown-key": Failure(AuthError, key="pk_live_unknown_key_999", status=401, code="unauthorized"),
    "401-echoing-the-key": Failure(AuthError, ({"status": 401, "body": {"error": {
        "code": "unauthorized", "message": f"bad key {KEY}"}}},), status=401, code="unauthorized"),
    "403-disabled-key": Failure(AuthError, prepare=lambda s: s.disable_key(KEY), status=403, code="forbidden"),
    "403-html": Failure(AuthError, ({"status": 403, "body": "<html>Forbidden</html>"},), status=403,
                        code="http_403"),
    "404": Failure(PermanentError, ({"status": 404, "body": {"error": {"code": "not_found", "message": "no route"}}},),
                   status=404, code="not_found"),
    "409-conflict": Failure(PermanentError, ({"status": 409, "body": fixture("error_idempotency_conflict.json")},),
                            status=409, code="idempotency_conflict"),
    "422-from-not-on-account": Failure(PermanentError, params={"to": TO, "body": "hi", "from": "+12025550199"},
                                       status=422, code="validation_failed", mentions="from: is not a number"),
    "422-fixture-details": Failure(PermanentError, ({"status": 422, "body": fixture("error_validation.json")},),
                                   status=422, code="validation_failed", mentions="to: must be an E.164"),
    "429-retry-after": Failure(RetryableError, ({"status": 429, "retry_after": 7,
                                                 "body": fixture("error_rate_limited.json")},),
                               status=429, retry_after=7.0, code="rate_limited"),
    "429-retry-after-http-date": Failure(RetryableError, ({"status": 429, "headers": {
        "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}},), status=429, retry_after=5.0, code="rate_limited"),
    "429-no-retry-after": Failure(RetryableError, ({"status": 429},), status=429, retry_after=5.0,
                                  code="rate_limited"),
    "429-real-rate-limit": Failure(RetryableError, prepare=lambda s: setattr(s, "rate_limit_max", 0), status=429,
                                   code="rate_limited"),
    "500": Failure(RetryableError, ({"status": 500},), status=500, code="internal_error"),
    "503-html": Failure(RetryableError, ({"status": 503, "body": "<html>Service Unavailable</html>"},), status=503,
                        code="http_503"),
    "502-malformed-echo": Failure(RetryableError, ({"status": 502, "body": ECHO},), status=502, code="http_502"),
    "201-malformed": Failure(RetryableError, ({"status": 201, "body": ECHO},), status=201,
                             code="malformed_response"),
    "200-json-without-id": Failure(RetryableError, ({"status": 200, "body": {"status": "queued"}},), status=200,
                                   code="malformed_response"),
    "302-redirect": Failure(PermanentError, ({"status": 302, "body": "", "headers": {"Location": "/login"}},),
                            status=302, code="http_302"),
}


@pytest.mark.parametrize("row", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_table(vt, limiter, row, make_ctx):
    vt.state.push_faults(list(row.faults))
    if row.prepare:
        row.prepare(vt.state)
    ctx = make_ctx()
    if row.refused:
        ctx.api_urls = {"virtualtext": free_port_url()}
    # A short client timeout against the 1 s stand-in delay keeps the timeout row fast.
    with pytest.raises(Exception) as info:
        integration(api_key=row.key, timeout=0.3).run("send_sms", row.params or {"to": TO, "body": "hello"}, ctx)

    error = info.value
    assert type(error) is row.expected, f"{type(error).__name__}: {error}"
    assert (error.status, error.code) == (row.status, row.code), str(error)
    if row.retry_after is not None:
        assert error.retry_after == row.retry_after
    if row.code == "rate_limited":
        assert error.retry_after >= 1
        assert 0 < limiter.acquire(f"virtualtext:{CONNECTION}", 5.0, 1.0) <= error.retry_after
    assert row.mentions in str(error)
    for secret in (KEY, row.key, "5ecretKeyValue"):
        assert secret not in str(error) and secret not in repr(error.args), str(error)
    assert str(error).startswith("virtualtext POST /v1/messages: ")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.status, again.code, again.retry_after) == (
        type(error), str(error), error.status, error.code, error.retry_after)
    assert vt.state.sent() == []


# -- config ----------------------------------------------------------------------------------------

def test_config_never_shows_secrets():
    config = VirtualTextConfig(api_key=KEY, quiet_hours="21:00-08:00")
    assert KEY not in repr(config) and KEY not in str(config) and KEY not in config.model_dump_json()
    assert integration().secrets() == [KEY]


@pytest.mark.parametrize("config", [
    {"api_key": "pk live with spaces 123"},
    {"api_key": "short"},
    {"api_key": KEY, "from_number": "202-555-0100"},
    {"api_key": KEY, "quiet_hours": "9pm-8am"},
    {"api_key": KEY, "timeout": 0},
    {"api_key": KEY, "surprise": True},
    {},
])
def test_bad_config_is_rejected_without_echoing_secrets(config):
    with pytest.raises(ValidationError) as info:
        VirtualTextConfig(**config)
    assert "pk live with spaces" not in str(info.value) and KEY not in str(info.value)


def test_unknown_action_and_bad_params_are_permanent(vt, make_ctx):
    with pytest.raises(PermanentError, match="has no action"):
        integration().run("send_fax", {}, make_ctx(paced=False))
    with pytest.raises(PermanentError, match="invalid parameters"):
        integration().run("send_sms", {"to": TO}, make_ctx(paced=False))
    assert vt.state.calls == []
