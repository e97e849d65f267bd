"""The VirtualPBX client against the standin over real HTTP, with a real Redis."""

from __future__ import annotations

import pickle
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from integrations.base import AuthError, PermanentError, RetryableError
from integrations.ratelimit import RateLimiter
from integrations.virtualpbx import errors as E
from integrations.virtualpbx.client import Envelope, VirtualPBXClient
from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx.standin import create_app
from tests.harness import free_port


def test_api_key_auth_envelope_and_request_id(standin, make_client):
    client = make_client()
    envelope = client.request("GET", client.account_path("users"))

    assert isinstance(envelope, Envelope)
    assert envelope.status == "success" and len(envelope.data) == 3
    logged = standin.state.requests[-1]
    assert envelope.request_id == logged["request_id"] and len(logged["request_id"]) == 32
    assert logged["auth_token"] == envelope.auth_token and envelope.auth_token.count(".") == 2
    assert envelope.auth_token not in repr(envelope)
    assert envelope.tokens["consumed"] == 1 and 100 - 35 - 1 <= envelope.tokens["remaining"] <= 66
    assert standin.auth_calls() == 1


def test_user_credentials_auth(standin, make_client, namespace):
    client = make_client(api_key=None, username="ALICE@acme.test", password="Alice-secret", account_name="Acme Dental")
    assert {u["first_name"] for u in client.list_users()} == {"Alice", "Bob", "Carol"}
    assert standin.state.requests_to("/user_auth", "PUT")

    wrong = make_client(api_key=None, username="alice@acme.test", password="nope", account_name="Acme Dental",
                        namespace=f"{namespace}:wrong")
    with pytest.raises(E.Unauthorized) as caught:
        wrong.list_users()
    assert isinstance(caught.value, AuthError) and caught.value.status == 401


def test_unknown_api_key_is_an_auth_error_and_never_shows_the_key(standin, make_client):
    bogus = "f" * 64
    client = make_client(api_key=bogus)
    with pytest.raises(E.Unauthorized) as caught:
        client.list_users()
    error = caught.value
    assert error.status == 404 and error.code == "bad_identifier"
    assert bogus not in str(error) and bogus not in repr(error.data)
    assert bogus not in str(pickle.loads(pickle.dumps(error)))


def test_400_validation_error_carries_field_details(make_client):
    client = make_client()
    with pytest.raises(E.ValidationError) as caught:
        client.create_webhook({"name": "calls", "hook": "channel_create"})
    assert isinstance(caught.value, PermanentError) and caught.value.status == 400
    assert caught.value.fields == {"uri": {"required": "Field is required but missing"}}

    with pytest.raises(E.ValidationError) as caught:
        client.create_webhook({"name": "vm", "hook": "notifications", "uri": "https://example.test/h"})
    assert caught.value.fields == {"custom_data.type": {"required": "missing required modifier"}}


def test_401_reauthenticates_once_and_succeeds(standin, make_client):
    client = make_client()
    client.list_users()
    standin.state.expire_tokens()

    assert len(client.list_users()) == 3
    assert standin.auth_calls() == 2
    statuses = [r["path"] for r in standin.state.requests]
    assert statuses.count(f"/accounts/{standin.account.id}/users") == 3  # ok, 401, retried ok


def test_401_twice_raises_auth_error(standin, make_client):
    standin.state.add_fault(401, message="invalid_credentials", data={"message": "invalid credentials"},
                             path_contains="/users", times=2)
    with pytest.raises(E.Unauthorized) as caught:
        make_client().list_users()
    assert isinstance(caught.value, AuthError) and caught.value.status == 401
    assert standin.auth_calls() == 2


def test_403_for_another_accounts_resources(standin, make_client):
    other = standin.state.add_account(name="Other Co")
    client = make_client(account_id=other.id)  # our API key, their account
    with pytest.raises(E.Forbidden) as caught:
        client.list_users()
    assert isinstance(caught.value, AuthError) and caught.value.status == 403
    assert caught.value.data["message"] == "forbidden"


def test_404_bad_identifier_and_safe_id_quoting(standin, make_client):
    client = make_client()
    with pytest.raises(E.NotFound) as caught:
        client.get_user("a/b?c")
    assert caught.value.code == "bad_identifier" and caught.value.request_id
    assert caught.value.data["not_found"] == "The user a/b?c could not be found"  # one segment, intact
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            client.get_device(bad)


def test_405_falls_back_to_get_and_full_post_only_when_allowed(standin, make_client):
    client = make_client()
    path = client.account_path("vmboxes", standin.box_id, "messages", standin.message_id)
    with pytest.raises(E.MethodNotAllowed):
        client.update(path, {"folder": "saved"})

    updated = client.update(path, {"folder": "saved"}, allow_full_replace=True)

    assert updated["folder"] == "saved" and updated["caller_id_number"] == "+15553456789"
    methods = [r["method"] for r in standin.state.requests if r["path"].endswith(standin.message_id)]
    assert methods == ["PATCH", "PATCH", "GET", "POST"]
    message = client.get_vmbox_message(standin.box_id, standin.message_id)
    assert message["transcription"]["text"] == "Please call me back"


def test_patch_removes_null_keys(make_client):
    client = make_client()
    hook = client.create_webhook({"name": "n", "hook": "channel_destroy", "uri": "https://example.test/h",
                                  "custom_data": {"tenant": "t1"}})
    updated = client.update_webhook(hook["id"], {"custom_data": {"tenant": None, "k": "v"}, "retries": 3})
    assert updated["custom_data"] == {"k": "v"} and updated["retries"] == 3


@pytest.mark.parametrize(("status", "message", "data", "error_class", "kind"), [
    (409, "datastore_conflict", {}, E.Conflict, RetryableError),
    (500, "unspecified_fault", {"message": "boom"}, E.ServerError, RetryableError),
    (503, "datastore_unreachable", {}, E.ServerError, RetryableError),
    (500, "account", {"message": "service temporarily unavailable"}, E.ServerError, RetryableError),
    (402, "accept charges", {"activation_charges": 1}, E.ClientError, PermanentError),
])
def test_injected_status_maps_to_its_error_kind(standin, make_client, status, message, data, error_class, kind):
    standin.state.add_fault(status, message=message, data=data, path_contains="/devices")
    with pytest.raises(error_class) as caught:
        make_client().list_devices()
    assert isinstance(caught.value, kind) and caught.value.status == status and caught.value.code == message
    assert caught.value.request_id


def test_423_for_an_expired_account_is_permanent(standin, make_client):
    client = make_client()
    client.list_users()
    standin.account.status = "expired"
    with pytest.raises(E.Locked) as caught:
        client.list_users()
    assert isinstance(caught.value, PermanentError) and "expired" in caught.value.data["account"]


def test_sms_not_enabled_500_is_permanent_and_sms_send_works(standin, make_client):
    client = make_client()
    sent = client.send_sms("+15552221111", "wave if you received this", from_="+15551112222")
    assert sent["route_type"] == "offnet" and sent["message_id"] == standin.state.requests[-1]["request_id"]
    assert client.send_sms("102", "internal")["route_type"] == "onnet"

    standin.account.sms_enabled = False
    with pytest.raises(E.SmsNotEnabled) as caught:
        client.send_sms("+15552221111", "hello")
    assert isinstance(caught.value, PermanentError) and caught.value.status == 500
    assert caught.value.data == {"message": "sms services not enabled for account"}


def test_server_429_penalises_the_shared_bucket(standin, redis_client, namespace):
    state_options = standin.state.options
    state_options.bucket_capacity, state_options.bucket_refill = 40, 0.001  # auth (35) + 5 calls
    client = VirtualPBXClient(standin.url, account_id=standin.account.id, api_key=standin.account.api_key,
                              redis=redis_client, namespace=namespace)
    for _ in range(5):
        client.list_devices()
    with pytest.raises(E.RateLimited) as caught:
        client.list_devices()
    assert isinstance(caught.value, RetryableError) and caught.value.retry_after == 1.0
    assert caught.value.code == "too_many_requests"
    wait = RateLimiter(redis_client, namespace=namespace).acquire(client.bucket_key, 100, 10, 1)
    assert 0.5 < wait <= 1.0  # every worker of this account now pauses


def test_client_pacing_sleeps_short_waits_and_raises_long_ones(standin, redis_client, namespace):
    limiter = RateLimiter(redis_client, namespace=namespace)
    client = VirtualPBXClient(standin.url, account_id=standin.account.id, api_key=standin.account.api_key,
                              redis=redis_client, namespace=namespace)
    limiter.acquire(client.bucket_key, 100, 10, 70)  # 30 left: the 35-token auth waits ~0.5 s
    started = time.monotonic()
    client.list_users()
    assert time.monotonic() - started >= 0.4

    limiter.penalise(client.bucket_key, 0.3)
    started = time.monotonic()
    client.list_users()
    assert time.monotonic() - started >= 0.25

    before = len(standin.state.requests)
    limiter.penalise(client.bucket_key, 5.0)
    with pytest.raises(E.RateLimited) as caught:
        client.list_users()
    assert 4.0 < caught.value.retry_after <= 5.0 and caught.value.code == "paced"
    assert len(standin.state.requests) == before  # nothing was sent


def test_read_timeout_is_retryable(standin, make_client):
    client = make_client(timeout=(2.0, 0.3))
    client.list_users()
    standin.state.add_fault(500, path_contains="/devices", delay=1.0)
    started = time.monotonic()
    with pytest.raises(E.RequestTimeout) as caught:
        client.list_devices()
    assert isinstance(caught.value, RetryableError) and time.monotonic() - started < 0.9


def test_connection_refused_is_retryable(redis_client, namespace):
    client = VirtualPBXClient(f"http://127.0.0.1:{free_port()}", account_id="a" * 32, api_key="k" * 64,
                              redis=redis_client, namespace=namespace, timeout=1.0)
    with pytest.raises(E.TransportError) as caught:
        client.list_users()
    assert isinstance(caught.value, RetryableError) and "k" * 64 not in str(caught.value)


def test_non_json_answers_give_clear_errors(standin, make_client):
    client = make_client()
    standin.state.add_fault(200, path_contains="/users", raw_body="<html>captive portal</html>")
    with pytest.raises(E.MalformedResponse) as caught:
        client.list_users()
    assert "non-JSON" in str(caught.value) and "text/html" in str(caught.value)

    standin.state.add_fault(502, path_contains="/users", raw_body="<html>bad gateway</html>")
    with pytest.raises(E.ServerError) as caught:
        client.list_users()
    assert caught.value.status == 502


def test_pagination_follows_opaque_keys_verbatim_with_constant_page_size(standin, make_client):
    for n in range(8):
        standin.state.add_user(standin.account.id, first_name=f"U{n}", last_name="X", extension=f"2{n:02d}")
    client = make_client()
    pages = list(client.iter_pages(client.account_path("users"), page_size=4))

    assert [len(p.data) for p in pages] == [4, 4, 3]
    ids = [row["id"] for p in pages for row in p.data]
    assert ids == sorted(standin.account.users, reverse=True)
    listed = [r for r in standin.state.requests if r["path"].endswith("/users")]
    assert [r["query"].get("start_key") for r in listed] == [None, pages[0].next_start_key, pages[1].next_start_key]
    assert all(r["query"]["page_size"] == "4" for r in listed)
    assert pages[-1].next_start_key is None
    assert len(list(client.iter_items(client.account_path("users"), page_size=4))) == 11


def test_token_expiring_mid_pagination_is_renewed_transparently(standin, make_client):
    for n in range(9):
        standin.state.add_user(standin.account.id, first_name=f"U{n}", last_name="X", extension=f"2{n:02d}")
    client = make_client()
    seen = []
    for page in client.iter_pages(client.account_path("users"), page_size=5):
        seen.extend(row["id"] for row in page.data)
        standin.state.expire_tokens()
    assert len(seen) == len(set(seen)) == 12
    assert standin.auth_calls() == 3  # first page, then one renewal per expired token


def test_token_is_shared_through_redis_by_concurrent_clients(standin, make_client, redis_client, namespace):
    barrier = threading.Barrier(6)
    results, failures = [], []

    def work():
        client = make_client()
        barrier.wait()
        try:
            results.append(len(client.list_users()))
        except Exception as exc:  # surfaced by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == [] and results == [3] * 6
    assert standin.auth_calls() == 1
    key = make_client().token_cache_key
    assert 3200 < redis_client.pttl(key) / 1000 <= 3300  # JWT exp 3600 s, refreshed 5 min early


@pytest.mark.parametrize(("jwt", "expected_ttl"), [(True, 540), (False, 3300)])
def test_refresh_time_comes_from_the_jwt_exp_else_3600(standin, make_client, redis_client, namespace, jwt,
                                                       expected_ttl):
    standin.state.options.token_lifetime = 600
    standin.state.options.jwt_tokens = jwt
    make_client().list_users()
    ttl = redis_client.pttl(make_client().token_cache_key) / 1000
    assert expected_ttl - 5 < ttl <= expected_ttl


def test_without_redis_the_token_is_cached_in_process(standin, namespace):
    clients = [VirtualPBXClient(standin.url, account_id=standin.account.id, api_key=standin.account.api_key,
                                namespace=namespace) for _ in range(2)]
    for client in clients:
        client.list_users()
    assert standin.auth_calls() == 1


def test_cdr_range_is_checked_and_converted_to_gregorian(standin, make_client):
    client = make_client()
    now = datetime(2026, 5, 6, 8, 10, 9, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        list(client.list_cdrs(now - timedelta(days=31, seconds=1), now))
    with pytest.raises(ValueError):
        list(client.list_cdrs(now.replace(tzinfo=None) - timedelta(days=1), now.replace(tzinfo=None)))
    with pytest.raises(ValueError):
        list(client.list_cdrs(now, now - timedelta(seconds=1)))
    assert standin.state.requests_to("/cdrs") == []

    assert list(client.list_cdrs(now - timedelta(days=31), now)) == []
    query = standin.state.requests_to("/cdrs")[-1]["query"]
    assert int(query["created_to"]) == int(now.timestamp()) + GREGORIAN_UNIX_OFFSET
    assert int(query["created_to"]) - int(query["created_from"]) == 31 * 86400


def test_server_rejects_a_cdr_range_over_31_days_and_an_hour(make_client):
    client = make_client()
    with pytest.raises(E.ValidationError) as caught:
        client.request("GET", client.account_path("cdrs"), params={"created_from": 63_000_000_000,
                                                                    "created_to": 63_000_000_000 + 2_682_001})
    assert "date_range" in caught.value.fields["created_from"]


def test_cdrs_listing_legs_detail_and_csv(standin, make_client):
    from service.sandbox.virtualpbx.simulator import CallSimulator

    start = datetime(2026, 5, 6, 8, 0, tzinfo=timezone.utc)
    simulator = CallSimulator(standin.state, standin.account.id, seed=3, start=start)
    calls = [simulator.run("inbound_answered"), simulator.run("ring_group")]
    client = make_client()

    rows = list(client.list_cdrs(start, start + timedelta(hours=2), page_size=2))
    assert len(rows) == 2 + 4 and len({r["id"] for r in rows}) == 6
    legs = client.get_cdr_legs(calls[1].interaction_id)
    assert {leg["call_id"] for leg in legs} == {calls[1].a_leg.call_id, *(b.call_id for b in calls[1].b_legs)}
    detail = client.get_cdr(rows[0]["id"])
    assert detail["interaction_id"] in {c.interaction_id for c in calls} and isinstance(detail["duration_seconds"], int)
    csv_text = client.export_cdrs_csv(start, start + timedelta(hours=2), file_name="may.csv")
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("id,call_id,") and len(lines) == 7
    assert standin.state.requests[-1]["query"]["file_name"] == "may.csv"


def test_download_voicemail_audio(standin, make_client):
    audio, content_type, filename = make_client().download_vmbox_message(standin.box_id, standin.message_id,
                                                                         max_bytes=1_000_000)
    assert audio == standin.account.media[standin.message_id][0] and audio[:2] == b"\xff\xfb"
    assert content_type == "audio/mpeg"
    assert filename.startswith("+15553456789_") and filename.endswith(".mp3")


def test_download_over_the_cap_fails_without_reading_everything(standin, redis_client, namespace):
    sent = {"bytes": 0}

    def endless_audio(environ, start_response):
        if not environ["PATH_INFO"].endswith("/raw"):
            return standin_app(environ, start_response)
        start_response("200 OK", [("Content-Type", "audio/mpeg")])  # no Content-Length: chunked

        def chunks():
            for _ in range(10_000):  # 640 MB if anyone read it all
                sent["bytes"] += 65536
                yield b"\0" * 65536
        return chunks()

    standin_app = create_app(standin.state)
    server = serve_in_thread(endless_audio)
    try:
        client = VirtualPBXClient(server.url, account_id=standin.account.id, api_key=standin.account.api_key,
                                  redis=redis_client, namespace=namespace)
        with pytest.raises(E.MediaTooLarge) as caught:
            client.download_vmbox_message(standin.box_id, standin.message_id, max_bytes=300_000)
        assert isinstance(caught.value, PermanentError)
        with pytest.raises(E.MediaTooLarge):  # declared too large: refused before the body
            VirtualPBXClient(standin.url, account_id=standin.account.id, api_key=standin.account.api_key,
                             redis=redis_client, namespace=namespace).download_vmbox_message(
                standin.box_id, standin.message_id, max_bytes=100)
    finally:
        server.stop()
    assert sent["bytes"] < 20_000_000


def test_verb_tunnelling_sends_post_with_verb(standin, make_client):
    client = make_client(tunnel_verbs=True)
    hook = client.create_webhook({"name": "t", "hook": "channel_create", "uri": "https://example.test/h"})
    client.update_webhook(hook["id"], {"name": "renamed"})
    client.delete_webhook(hook["id"])
    tunnelled = [(r["http_method"], r["method"], r["query"].get("verb")) for r in standin.state.requests
                 if "/webhooks" in r["path"]]
    assert tunnelled == [("POST", "PUT", "PUT"), ("POST", "PATCH", "PATCH"), ("POST", "DELETE", "DELETE")]
    assert client.list_webhooks() == []


def test_webhook_crud_attempts_and_reenable(standin, make_client):
    client = make_client()
    hook = client.create_webhook({"name": "destroy", "hook": "channel_destroy", "uri": "https://example.test/h"})
    assert hook["http_verb"] == "post" and hook["retries"] == 2 and hook["enabled"] is True
    assert client.get_webhook(hook["id"])["uri"] == "https://example.test/h"
    assert client.list_webhook_attempts() == [] and client.list_webhook_attempts(hook["id"]) == []
    standin.account.webhooks[hook["id"]].update(enabled=False, disable_reason="too many failed attempts")
    assert client.list_webhooks()[0]["disable_reason"] == "too many failed attempts"
    client.reenable_webhooks()
    row = client.list_webhooks()[0]
    assert row["enabled"] is True and "disable_reason" not in row


ERROR_CLASSES = [E.ValidationError, E.ClientError, E.Unauthorized, E.Forbidden, E.NotFound, E.MethodNotAllowed,
                 E.Conflict, E.Locked, E.RateLimited, E.ServerError, E.SmsNotEnabled, E.TransportError,
                 E.RequestTimeout, E.MalformedResponse, E.MediaTooLarge]


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_errors_pickle_and_are_scrubbed(error_class):
    token, api_key = "eyJhbGciOi.eyJleHAiOjE.c2lnbmF0dXJl", "9" * 64
    kinds = [k for k in (RetryableError, PermanentError) if issubclass(error_class, k)]
    assert len(kinds) == 1  # exactly one kind (AuthError is a PermanentError)
    error = E.error_for_status(500, kazoo_message=f"token {token}", data={"echo": [api_key], api_key: token},
                               request_id="req-1", secrets=(token, api_key), retry_after=1.5)
    built = error_class(error.message, status=418, retry_after=1.5, code="c", request_id="req-1", data=error.data)
    clone = pickle.loads(pickle.dumps(built))
    assert type(clone) is error_class
    assert (clone.status, clone.retry_after, clone.code, clone.request_id, clone.data) == (418, 1.5, "c", "req-1",
                                                                                           built.data)
    for text in (str(built), str(clone), repr(clone.data)):
        assert token not in text and api_key not in text
