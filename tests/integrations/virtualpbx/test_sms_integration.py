"""VirtualPBXIntegration.send_sms (Dash/Kazoo SMS) against the standin over real HTTP, with a real Redis."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from integrations.base import ActionContext, PermanentError, RetryableError
from integrations.ratelimit import RateLimiter
from integrations.virtualpbx import VirtualPBXConfig, VirtualPBXIntegration
from integrations.virtualpbx import errors as E
from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET
from integrations.virtualpbx.integration import DEDUPE_PAGE_SIZE
from tests.harness import free_port
from tests.integrations.conftest import sandbox_config

TO = "+12025550123"
SENDER = "+12025550100"


def make_ctx(standin, redis_client, namespace, *, key: str = "acc:1", attempt: int = 1,
             occurred_at: datetime | None = None, **kwargs) -> ActionContext:
    """An ActionContext as the worker builds it, sharing the test's Redis namespace."""
    occurred = occurred_at or datetime.now(timezone.utc) - timedelta(seconds=5)
    return ActionContext(account_id="acc", idempotency_key=key, connection_id="acc:pbx", attempt=attempt,
                         api_urls={"virtualpbx": standin.url}, redis=redis_client, namespace=namespace,
                         event={"type": "crm.contact", "occurred_at": occurred.isoformat()}, allow_private_urls=True,
                         **kwargs)


def integration(standin, **config) -> VirtualPBXIntegration:
    """The integration for the seeded account, authenticating with its API key unless told otherwise."""
    options = {"account_id": standin.account.id, "api_key": standin.account.api_key, "timeout": 5.0}
    options.update(config)
    return VirtualPBXIntegration(
        sandbox_config(VirtualPBXConfig, **{k: v for k, v in options.items() if v is not None}))


def sent(standin) -> list[dict]:
    """The messages the emulated account recorded, oldest first."""
    return sorted(standin.account.sms.values(), key=lambda m: m["created"])


def sms_calls(standin, method: str) -> int:
    """How many requests reached /sms with ``method``."""
    return len(standin.state.requests_to("/sms", method))


def add_listed(standin, *, to: str, body: str, age: timedelta, message_id: str) -> None:
    """Put a message into the account's MODB as if Kazoo had sent it ``age`` ago."""
    moment = datetime.now(timezone.utc) - age
    standin.account.sms[message_id] = {
        "id": message_id, "message_id": message_id, "from": SENDER, "to": to, "body": body, "route_type": "offnet",
        "created": int(moment.timestamp()) + GREGORIAN_UNIX_OFFSET, "date": format_datetime(moment, usegmt=True)}


# -- the Dash path ---------------------------------------------------------------------------------

def test_send_reaches_kazoo_with_normalised_numbers(standin, redis_client, namespace):
    result = integration(standin, default_from="+12025550100").run(
        "send_sms", {"to": "tel:(202) 555-0123", "body": "  Your table is ready\n"},
        make_ctx(standin, redis_client, namespace))
    [message] = sent(standin)
    assert (message["to"], message["from"], message["body"], message["route_type"]) == (
        TO, SENDER, "Your table is ready", "offnet")
    assert result.external_id == message["message_id"] and not result.deduplicated
    assert sms_calls(standin, "PUT") == 1 and sms_calls(standin, "GET") == 0  # a first attempt never lists


def test_from_in_params_wins_and_without_any_kazoo_picks_the_caller_id(standin, redis_client, namespace):
    pbx = integration(standin, default_from="+12025550100")
    pbx.run("send_sms", {"to": TO, "body": "a", "from": "202 555 0101"}, make_ctx(standin, redis_client, namespace))
    integration(standin).run("send_sms", {"to": TO, "body": "b"}, make_ctx(standin, redis_client, namespace))
    first, second = sent(standin)
    assert first["from"] == "+12025550101"
    assert second["from"] == standin.account.caller_id_number


def test_token_is_cached_in_redis_and_shared(standin, redis_client, namespace):
    for n in range(3):
        integration(standin).run("send_sms", {"to": TO, "body": f"n{n}"},
                                  make_ctx(standin, redis_client, namespace, key=f"k{n}"))
    assert standin.auth_calls() == 1
    # Keyed by our account ("acc", the context's) and a hash of the credential, never by the Kazoo id alone.
    [key] = [k for k in redis_client.keys(f"{namespace}:virtualpbx:token:acc:*") if not k.endswith(":lock")]
    assert redis_client.get(key)


def test_user_login_auth_mode(standin, redis_client, namespace):
    pbx = integration(standin, api_key=None, username="alice@acme.test", password="Alice-secret",
                      account_name="Acme Dental")
    assert pbx.run("send_sms", {"to": TO, "body": "hi"}, make_ctx(standin, redis_client, namespace)).external_id
    assert standin.state.requests_to("/user_auth", "PUT") and len(sent(standin)) == 1


def test_config_api_url_overrides_the_setting(standin, redis_client, namespace):
    ctx = make_ctx(standin, redis_client, namespace)
    ctx.api_urls = {"virtualpbx": f"http://127.0.0.1:{free_port()}"}
    assert integration(standin, api_url=standin.url).run("send_sms", {"to": TO, "body": "hi"}, ctx).external_id


def test_media_is_refused_on_the_dash_path(standin, redis_client, namespace):
    with pytest.raises(PermanentError) as info:
        integration(standin).run("send_sms", {"to": TO, "body": "hi", "media": ["https://x.test/a.png"]},
                                  make_ctx(standin, redis_client, namespace))
    assert info.value.code == "media_unsupported" and sms_calls(standin, "PUT") == 0


def test_body_over_700_characters_is_permanent_and_not_sent(standin, redis_client, namespace):
    with pytest.raises(PermanentError, match="limit of 700"):
        integration(standin).run("send_sms", {"to": TO, "body": "x" * 701},
                                  make_ctx(standin, redis_client, namespace))
    assert sms_calls(standin, "PUT") == 0


# -- consent and quiet hours -----------------------------------------------------------------------

def test_opted_out_number_is_never_texted(standin, redis_client, namespace):
    with pytest.raises(PermanentError) as info:
        integration(standin).run("send_sms", {"to": "(202) 555-0123", "body": "hi"},
                                  make_ctx(standin, redis_client, namespace, opted_out=lambda n: n == TO))
    assert info.value.code == "opted_out"
    assert sent(standin) == [] and standin.state.requests_to("/sms") == [] and standin.auth_calls() == 0


def test_quiet_hours_defer_without_calling_kazoo(standin, redis_client, namespace):
    now = datetime.now(timezone.utc)
    quiet = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"
    with pytest.raises(RetryableError) as info:
        integration(standin, quiet_hours=quiet).run("send_sms", {"to": TO, "body": "hi"},
                                                     make_ctx(standin, redis_client, namespace, timezone="UTC"))
    assert info.value.code == "deferred" and 3500 <= info.value.retry_after <= 3600
    assert standin.state.requests_to("/sms") == []


# -- exactly-once on retries -----------------------------------------------------------------------

def test_retry_after_a_crash_reports_the_earlier_message(standin, redis_client, namespace):
    """Attempt 1 sent, then the worker died before recording it; attempt 2 finds it instead of resending."""
    first = integration(standin).run("send_sms", {"to": TO, "body": "Reminder: 3pm"},
                                      make_ctx(standin, redis_client, namespace, key="acc:7"))
    retry = integration(standin).run("send_sms", {"to": "202-555-0123", "body": "Reminder: 3pm "},
                                      make_ctx(standin, redis_client, namespace, key="acc:7", attempt=2))
    assert len(sent(standin)) == 1
    assert retry.external_id == first.external_id and retry.deduplicated
    assert sms_calls(standin, "GET") == 1


def test_retry_after_a_crash_before_the_claim_adopts_the_message(standin, redis_client, namespace):
    """The send reached Kazoo but the worker died before claiming it: the retry adopts and claims it."""
    add_listed(standin, to=TO, body="Reminder", age=timedelta(seconds=2), message_id="m-unclaimed")
    retry = integration(standin).run("send_sms", {"to": TO, "body": "Reminder"},
                                      make_ctx(standin, redis_client, namespace, key="acc:8", attempt=2))
    assert (retry.external_id, retry.deduplicated) == ("m-unclaimed", True)
    assert len(sent(standin)) == 1


def test_retry_with_nothing_sent_before_sends(standin, redis_client, namespace):
    result = integration(standin).run("send_sms", {"to": TO, "body": "hi"},
                                       make_ctx(standin, redis_client, namespace, attempt=3))
    assert not result.deduplicated and len(sent(standin)) == 1


def test_retry_never_adopts_a_message_another_delivery_sent(standin, redis_client, namespace):
    """Two rules text the same words to one number; the second's retry must still send its own copy."""
    integration(standin).run("send_sms", {"to": TO, "body": "Thanks for calling"},
                              make_ctx(standin, redis_client, namespace, key="acc:rule-a"))
    retry = integration(standin).run("send_sms", {"to": TO, "body": "Thanks for calling"},
                                      make_ctx(standin, redis_client, namespace, key="acc:rule-b", attempt=2))
    assert not retry.deduplicated and len(sent(standin)) == 2


@pytest.mark.parametrize("listed", [
    {"to": "+12025550124", "body": "Reminder", "age": timedelta(seconds=2)},
    {"to": TO, "body": "Reminder!", "age": timedelta(seconds=2)},
    {"to": TO, "body": "Reminder", "age": timedelta(hours=2)},  # older than the event (minus 1 h slack)
], ids=["other-recipient", "other-body", "before-the-event"])
def test_retry_ignores_messages_that_are_not_this_one(standin, redis_client, namespace, listed):
    add_listed(standin, message_id="m-other", **listed)
    result = integration(standin).run("send_sms", {"to": TO, "body": "Reminder"},
                                       make_ctx(standin, redis_client, namespace, attempt=2))
    assert not result.deduplicated and result.external_id != "m-other"
    assert len(sent(standin)) == 2


def test_retry_follows_pages_to_find_the_earlier_message(standin, redis_client, namespace):
    add_listed(standin, to=TO, body="Reminder", age=timedelta(minutes=30), message_id="m-ours")
    for n in range(DEDUPE_PAGE_SIZE + 10):  # newer traffic pushes ours onto the second page
        add_listed(standin, to="+12025550124", body=f"other {n}", age=timedelta(minutes=29 - n * 0.1),
                   message_id=f"m-{n:03d}")
    result = integration(standin).run("send_sms", {"to": TO, "body": "Reminder"},
                                       make_ctx(standin, redis_client, namespace, attempt=2,
                                                occurred_at=datetime.now(timezone.utc) - timedelta(minutes=31)))
    assert (result.external_id, result.deduplicated) == ("m-ours", True)
    assert sms_calls(standin, "GET") == 2 and sms_calls(standin, "PUT") == 0


def test_retry_stops_paging_at_messages_older_than_the_window(standin, redis_client, namespace):
    for n in range(DEDUPE_PAGE_SIZE * 3):
        add_listed(standin, to="+12025550124", body=f"old {n}", age=timedelta(hours=3, minutes=n),
                   message_id=f"m-{n:03d}")
    integration(standin).run("send_sms", {"to": TO, "body": "Reminder"},
                              make_ctx(standin, redis_client, namespace, attempt=2))
    assert sms_calls(standin, "GET") == 1 and len(sent(standin)) == DEDUPE_PAGE_SIZE * 3 + 1


def test_listing_outage_on_retry_defers_instead_of_risking_a_duplicate(standin, redis_client, namespace):
    standin.state.add_fault(503, message="unavailable", path_contains="/sms", method="GET")
    with pytest.raises(RetryableError):
        integration(standin).run("send_sms", {"to": TO, "body": "hi"},
                                  make_ctx(standin, redis_client, namespace, attempt=2))
    assert sms_calls(standin, "PUT") == 0


def test_listing_refused_for_good_on_retry_falls_through_and_sends(standin, redis_client, namespace):
    standin.state.add_fault(403, message="forbidden", path_contains="/sms", method="GET")
    result = integration(standin).run("send_sms", {"to": TO, "body": "hi"},
                                       make_ctx(standin, redis_client, namespace, attempt=2))
    assert not result.deduplicated and len(sent(standin)) == 1


# -- failure table ---------------------------------------------------------------------------------

@dataclass
class Failure:
    """One row: how to break Kazoo, and what send_sms must raise."""

    expected: type  # the client's own error class
    kind: type  # the contract kind the pipeline acts on
    fault: dict | None = None  # StandinState.add_fault(**fault) on PUT /sms
    prepare: object = None  # callable(standin) for failures that are real standin behaviour
    refused: bool = False
    api_key: str | None = None
    status: int | None = None
    retry_after: float | None = None


def _disable_sms(standin):
    standin.account.sms_enabled = False


def _lock_account(standin):
    standin.account.status = "disabled"


FAILURES = {
    "timeout": Failure(E.RequestTimeout, RetryableError, {"status": 500, "delay": 1.0}),
    "refused": Failure(E.TransportError, RetryableError, refused=True),
    "401-twice": Failure(E.Unauthorized, PermanentError, {"status": 401, "message": "invalid_credentials", "times": 2},
                         status=401),
    "401-unknown-api-key": Failure(E.Unauthorized, PermanentError, api_key="f" * 64, status=404),
    "403": Failure(E.Forbidden, PermanentError, {"status": 403, "message": "forbidden"}, status=403),
    "404": Failure(E.NotFound, PermanentError, {"status": 404, "message": "bad_identifier"}, status=404),
    "400-from-forbidden": Failure(E.ValidationError, PermanentError, {
        "status": 400, "message": "validation error",
        "data": {"from": {"forbidden": {"message": "number does not belong to account"}}}}, status=400),
    "423-account-disabled": Failure(E.Locked, PermanentError, prepare=_lock_account, status=423),
    "429-with-retry-after": Failure(E.RateLimited, RetryableError, {"status": 429, "message": "too_many_requests",
                                                                   "headers": {"Retry-After": "7"}},
                                    status=429, retry_after=7.0),
    "429-without-retry-after": Failure(E.RateLimited, RetryableError, {"status": 429, "message": "too_many_requests"},
                                       status=429, retry_after=1.0),
    "500": Failure(E.ServerError, RetryableError, {"status": 500, "message": "datastore_fault"}, status=500),
    "500-sms-not-enabled": Failure(E.SmsNotEnabled, PermanentError, prepare=_disable_sms, status=500),
    "500-sms-temporarily-unavailable": Failure(E.ServerError, RetryableError, {
        "status": 500, "message": "account", "data": {"message": "service temporarily unavailable"}}, status=500),
    "503": Failure(E.ServerError, RetryableError, {"status": 503, "message": "unavailable"}, status=503),
    "502-html": Failure(E.ServerError, RetryableError, {"status": 502, "raw_body": "<html>Bad gateway</html>"},
                        status=502),
    "200-malformed": Failure(E.MalformedResponse, PermanentError, {"status": 200, "raw_body": "<html>portal</html>"},
                             status=200),
}


@pytest.mark.parametrize("row", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_table(standin, redis_client, namespace, row):
    if row.fault:
        standin.state.add_fault(path_contains="/sms", method="PUT", **row.fault)
    if row.prepare:
        row.prepare(standin)
    ctx = make_ctx(standin, redis_client, namespace)
    if row.refused:
        ctx.api_urls = {"virtualpbx": f"http://127.0.0.1:{free_port()}"}
    # A short client timeout against the 1 s standin delay keeps the timeout row fast.
    pbx = integration(standin, api_key=row.api_key or standin.account.api_key, timeout=0.3)
    with pytest.raises(Exception) as info:
        pbx.run("send_sms", {"to": TO, "body": "hello"}, ctx)

    error = info.value
    assert type(error) is row.expected, f"{type(error).__name__}: {error}"
    assert isinstance(error, row.kind)
    assert error.status == row.status
    if row.retry_after is not None:
        assert error.retry_after == row.retry_after
        # Kazoo's bucket is per account: every worker of the account holds off, not just this one.
        wait = RateLimiter(redis_client, namespace=namespace).acquire(f"virtualpbx:acc:{standin.account.id}", 100,
                                                                      10)
        assert 0 < wait <= row.retry_after
    secrets = [standin.account.api_key, "f" * 64, *standin.state.tokens]
    for secret in secrets:
        assert secret not in str(error) and secret not in repr(error.args) and secret not in repr(error.data)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.status, again.code, again.retry_after, again.data) == (
        type(error), str(error), error.status, error.code, error.retry_after, error.data)
    assert sent(standin) == []


def test_an_api_key_echoed_in_error_data_is_scrubbed(standin, redis_client, namespace):
    key = standin.account.api_key
    standin.state.add_fault(400, message="validation error", path_contains="/sms", method="PUT",
                             data={"to": {"invalid": {"message": f"rejected for key {key}"}}})
    with pytest.raises(E.ValidationError) as info:
        integration(standin).run("send_sms", {"to": TO, "body": "hi"}, make_ctx(standin, redis_client, namespace))
    assert key not in str(info.value) and key not in repr(info.value.data)


# -- config ----------------------------------------------------------------------------------------

ACCOUNT = "5a2d994fbae69b1d6b01eb9f0e7dfe62"
API_KEY = "d" * 64
PASSWORD = "correct-horse-battery"


def test_config_never_shows_secrets():
    for config in (VirtualPBXConfig(account_id=ACCOUNT, api_key=API_KEY),
                   VirtualPBXConfig(account_id=ACCOUNT, username="alice", password=PASSWORD, account_name="Acme")):
        for text in (repr(config), str(config), config.model_dump_json()):
            assert API_KEY not in text and PASSWORD not in text
    assert VirtualPBXIntegration(VirtualPBXConfig(account_id=ACCOUNT, api_key=API_KEY)).secrets() == [API_KEY]


@pytest.mark.parametrize("config", [
    {"account_id": ACCOUNT},
    {"account_id": ACCOUNT, "api_key": API_KEY, "username": "alice", "password": PASSWORD, "account_name": "Acme"},
    {"account_id": ACCOUNT, "api_key": API_KEY, "password": PASSWORD},
    {"account_id": ACCOUNT, "username": "alice", "password": PASSWORD},
    {"account_id": ACCOUNT.upper(), "api_key": API_KEY},
    {"account_id": "acme", "api_key": API_KEY},
    {"account_id": ACCOUNT, "api_key": API_KEY, "default_from": "202-555-0100"},
    {"account_id": ACCOUNT, "api_key": API_KEY, "quiet_hours": "21:00-21:00"},
    {"account_id": ACCOUNT, "api_key": API_KEY, "timeout": 120},
    {"account_id": ACCOUNT, "api_key": API_KEY, "region": "US"},
], ids=["no-auth", "both-modes", "key-and-password", "login-without-account-name", "upper-case-id", "short-id",
        "national-default-from", "empty-quiet-hours", "timeout-too-long", "unknown-key"])
def test_bad_config_is_rejected_without_echoing_secrets(config):
    with pytest.raises(ValidationError) as info:
        VirtualPBXConfig(**config)
    assert API_KEY not in str(info.value) and PASSWORD not in str(info.value)
