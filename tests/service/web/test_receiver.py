"""The receiver: token auth, exactly-200 answers, size limit, queueing and spooling (real Redis and SQL)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service.config import Settings
from service.secrets import secret_box
from service.store.models import migrate, session_factory
from service.web.app import create_app
from tests.conftest import load_fixture
from tests.harness import free_port

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"


def make_settings(tmp_path: Path, redis_url: str, namespace: str, **overrides) -> Settings:
    """Settings for one receiver under test."""
    values = dict(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                  database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", secret_keys=Fernet.generate_key().decode(),
                  max_body_bytes=4096)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def receiver(tmp_path, redis_url, namespace, redis_client):
    """A receiver app with one account; yields (client, token, settings)."""
    settings = make_settings(tmp_path, redis_url, namespace)
    migrate(settings.effective_database_url)
    with session_factory(settings.effective_database_url).begin() as session:
        token = accounts.add_account(session, ACCOUNT, name="Acme", box=secret_box(settings)).token
    app = create_app(settings, start_drainer=False)
    return app.test_client(), token, settings


def queued(redis_client, namespace) -> list[dict]:
    """The envelopes waiting on the ingest queue (kombu's JSON message bodies)."""
    messages = [json.loads(m) for m in redis_client.lrange(f"{namespace}.ingest", 0, -1)]
    import base64

    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def test_json_form_and_get_are_queued_raw(receiver, redis_client, namespace):
    """All three Kazoo delivery forms get exactly 200 and a queued envelope with the raw request."""
    client, token, _ = receiver
    body = json.dumps(load_fixture("kazoo/webhook_channel_create.json"))
    assert client.post(f"/hooks/virtualpbx/{token}", data=body, content_type="application/json").status_code == 200
    assert client.post(f"/hooks/virtualpbx/{token}", data="hook_event=channel_create&call_id=x",
                       content_type="application/x-www-form-urlencoded").status_code == 200
    assert client.get(f"/hooks/virtualpbx/{token}?hook_event=channel_answer&call_id=x",
                      headers={"X-Hook-ID": "h1", "X-Account-ID": ACCOUNT}).status_code == 200
    envelopes = sorted(queued(redis_client, namespace), key=lambda e: e["method"])
    assert [e["method"] for e in envelopes] == ["GET", "POST", "POST"]
    assert all(e["account_id"] == ACCOUNT for e in envelopes)
    assert envelopes[0]["query_string"] == "hook_event=channel_answer&call_id=x"
    assert envelopes[0]["headers"] == {"x-hook-id": "h1", "x-account-id": ACCOUNT}
    assert body in [e["body"] for e in envelopes]


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"),
    (b"\xff\xfe\x00binary", "application/octet-stream"),
    (b"", "application/json"),
    (b"[1,2,3]", "application/json"),
], ids=["broken-json", "binary", "empty", "json-array"])
def test_malformed_bodies_still_get_200_and_are_kept(receiver, redis_client, namespace, body, content_type):
    """The receiver never judges the body: it keeps it (the worker quarantines it) and answers 200."""
    client, token, _ = receiver
    response = client.post(f"/hooks/virtualpbx/{token}", data=body, content_type=content_type)
    assert response.status_code == 200
    (envelope,) = queued(redis_client, namespace)
    from service.engine import envelope_body

    assert envelope_body(envelope) == body


@pytest.mark.parametrize("token", ["wrong", "x" * 300, "%00", "../../etc/passwd"], ids=["wrong", "long", "nul", "dots"])
def test_unknown_token_is_404_and_nothing_is_stored(receiver, redis_client, namespace, token):
    """A wrong token gets 404 and leaves no trace in the queue."""
    client, _, _ = receiver
    response = client.post(f"/hooks/virtualpbx/{token}", json={"hook_event": "channel_create"})
    assert response.status_code == 404
    assert queued(redis_client, namespace) == []


def test_oversized_body_is_413(receiver, redis_client, namespace):
    """A body over max_body_bytes gets 413 and is not queued."""
    client, token, _ = receiver
    response = client.post(f"/hooks/virtualpbx/{token}", data="a=" + "x" * 5000,
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413
    assert queued(redis_client, namespace) == []


def test_oversized_query_string_is_413(receiver, redis_client, namespace):
    """A GET delivery whose query string exceeds max_body_bytes gets 413 too."""
    client, token, _ = receiver
    assert client.get(f"/hooks/virtualpbx/{token}?a={'x' * 5000}").status_code == 413
    assert client.get(f"/hooks/virtualpbx/{token}?a={'x' * 3000}").status_code == 200
    assert len(queued(redis_client, namespace)) == 1


def test_redis_down_spools_durably_and_fast(tmp_path, namespace):
    """With Redis unreachable the event is fsync'd to the spool and still answered 200, within a second."""
    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0", namespace)
    migrate(settings.effective_database_url)
    with session_factory(settings.effective_database_url).begin() as session:
        token = accounts.add_account(session, ACCOUNT, name="Acme", box=secret_box(settings)).token
    client = create_app(settings, start_drainer=False).test_client()
    started = time.monotonic()
    response = client.post(f"/hooks/virtualpbx/{token}", json={"hook_event": "channel_create", "call_id": "c1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 1.5, f"spooling took {elapsed:.2f}s"
    spooled = list((settings.var_dir / "spool").glob("*.json"))
    assert len(spooled) == 1
    assert json.loads(spooled[0].read_text())["body"] == '{"call_id": "c1", "hook_event": "channel_create"}'
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["spooling"] is True and ready.json["spooled_events"] == 1
    assert "pbxrelay_spool_events 1.0" in client.get("/metrics").text


def test_health_and_ready(receiver):
    """/healthz is always up; /readyz checks Redis and the database."""
    client, _, _ = receiver
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["redis"] == "ok" and ready.json["database"] == "ok"


def test_voicemail_links_refuse_forged_tokens_and_accounts_without_virtualpbx(receiver):
    """The media blueprint: a forged token and an account with no virtualpbx connection both get 404."""
    from service.pbx import media
    from service.runtime import Runtime

    client, _, settings = receiver
    forged = client.get("/media/voicemail/not-a-token")
    assert (forged.status_code, forged.get_json()) == (404, {"error": "unknown voicemail link"})
    link = media.voicemail_link(Runtime(settings), ACCOUNT, "box1", "msg1")
    response = client.get(link.removeprefix(settings.public_url))
    assert (response.status_code, response.get_json()) == (404, {"error": "the account has no virtualpbx connection"})


def test_each_token_opens_only_its_own_endpoint(tmp_path, redis_url, namespace, redis_client):
    """The CRM token gets 404 on the Kazoo URL and the Kazoo token 404 on the CRM URL; nothing is queued."""
    settings = make_settings(tmp_path, redis_url, namespace)
    migrate(settings.effective_database_url)
    with session_factory(settings.effective_database_url).begin() as session:
        created = accounts.add_account(session, ACCOUNT, name="Acme", box=secret_box(settings))
    client = create_app(settings, start_drainer=False).test_client()
    assert client.post(f"/hooks/virtualpbx/{created.crm_token}", json={"hook_event": "sms"}).status_code == 404
    assert client.get(f"/hooks/virtualpbx/{created.crm_token}?hook_event=sms&body=STOP").status_code == 404
    assert client.post(f"/hooks/crm/{created.token}", json={"id": "1"}).status_code == 404
    assert queued(redis_client, namespace) == []
    assert client.post(f"/hooks/virtualpbx/{created.token}", json={"hook_event": "sms"}).status_code == 200


def _apply_crm(settings: Settings, tmp_path: Path, crm: str) -> None:
    """Apply a rules file whose crm section is ``crm`` (YAML flow mapping)."""
    from service.runtime import Runtime

    rt = Runtime(settings)
    path = tmp_path / "rules.yaml"
    path.write_text(f"account: {{id: {ACCOUNT}, name: Acme, timezone: UTC}}\ncrm: {crm}\n")
    with rt.sessions.begin() as session:
        accounts.apply_rules_file(session, path, registry=rt.registry, box=rt.box)


def test_unsigned_crm_hooks_are_refused_unless_the_rules_say_signing_none(tmp_path, redis_url, namespace,
                                                                          redis_client):
    """No rules, or a crm section without a secret: 401 with the reason; `signing: none` opts in explicitly."""
    settings = make_settings(tmp_path, redis_url, namespace)
    migrate(settings.effective_database_url)
    with session_factory(settings.effective_database_url).begin() as session:
        crm_token = accounts.add_account(session, ACCOUNT, name="Acme", box=secret_box(settings)).crm_token
    client = create_app(settings, start_drainer=False).test_client()
    url = f"/hooks/crm/{crm_token}"
    refused = client.post(url, json={"id": "1"})
    assert refused.status_code == 401 and "crm.signing_secret" in refused.json["error"]
    _apply_crm(settings, tmp_path, "{event_id: id}")
    assert client.post(url, json={"id": "2"}).status_code == 401
    assert queued(redis_client, namespace) == []
    _apply_crm(settings, tmp_path, "{event_id: id, signing: none}")
    assert client.post(url, json={"id": "3"}).status_code == 200
    (envelope,) = queued(redis_client, namespace)
    assert envelope["source"] == "crm" and envelope["body"] == '{"id": "3"}'


def test_rotation_takes_effect_at_once_on_every_web_process(tmp_path, redis_url, namespace, redis_client):
    """Two receivers sharing the database and Redis: a rotated token is 404 on both on the very next request,
    though both had it in their token cache."""
    settings = make_settings(tmp_path, redis_url, namespace)
    migrate(settings.effective_database_url)
    with session_factory(settings.effective_database_url).begin() as session:
        created = accounts.add_account(session, ACCOUNT, name="Acme", box=secret_box(settings))
    _apply_crm(settings, tmp_path, "{signing: none}")
    webs = [create_app(settings, start_drainer=False).test_client() for _ in range(2)]
    for web in webs:  # both have served the current tokens, so both hold the Kazoo one in their cache
        assert web.post(f"/hooks/virtualpbx/{created.token}", json={}).status_code == 200
        assert web.post(f"/hooks/crm/{created.crm_token}", json={}).status_code == 200
        assert created.token in web.application.extensions["pbxrelay.receiver"]._tokens
    with session_factory(settings.effective_database_url).begin() as session:
        new_hook = accounts.rotate_token(session, ACCOUNT, box=secret_box(settings))
        new_crm = accounts.rotate_token(session, ACCOUNT, box=secret_box(settings), kind="crm")
    accounts.revoke_cached_tokens(redis_client, namespace)  # what `rotate-token` does after its commit
    for web in webs:
        assert web.post(f"/hooks/virtualpbx/{created.token}", json={}).status_code == 404
        assert web.post(f"/hooks/crm/{created.crm_token}", json={}).status_code == 404
        assert web.post(f"/hooks/virtualpbx/{new_hook}", json={}).status_code == 200
        assert web.post(f"/hooks/crm/{new_crm}", json={}).status_code == 200


def test_a_chunked_body_over_the_limit_is_413_not_cut(receiver, redis_client, namespace):
    """A body without Content-Length (chunked, de-chunked by the server) over max_body_bytes gets 413."""
    import io

    client, token, settings = receiver
    url = f"/hooks/virtualpbx/{token}"
    terminated = {"wsgi.input_terminated": True}
    over = b'{"hook_event": "channel_create", "x": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post(url, input_stream=io.BytesIO(over), content_type="application/json",
                           environ_overrides=terminated)
    assert response.status_code == 413
    assert queued(redis_client, namespace) == []
    exact = b"y" * settings.max_body_bytes
    assert client.post(url, input_stream=io.BytesIO(exact), content_type="application/octet-stream",
                       environ_overrides=terminated).status_code == 200
    from service.engine import envelope_body

    assert [envelope_body(e) for e in queued(redis_client, namespace)] == [exact]


def test_a_cached_token_is_checked_and_queued_in_one_step_and_spools_when_redis_goes_away(receiver, redis_client,
                                                                                         namespace):
    """A cached VirtualPBX token's epoch is checked by the push itself; when that push finds Redis away, the token is
    looked up again and the hook spooled (200), never dropped."""
    from service.redisconn import make_redis

    client, token, settings = receiver
    url = f"/hooks/virtualpbx/{token}"
    assert client.post(url, json={"n": 1}).status_code == 200  # looked up, now cached
    rec = client.application.extensions["pbxrelay.receiver"]
    assert rec.cached("virtualpbx", token) is not None
    assert client.post(url, json={"n": 2}).status_code == 200  # the one-step path
    assert sorted(json.loads(e["body"])["n"] for e in queued(redis_client, namespace)) == [1, 2]
    rec.queue._redis = make_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5, retries=0)  # the broker is away
    rec.queue._push_if = rec.queue._redis.register_script("return 1")
    assert client.post(url, json={"n": 3}).status_code == 200
    spooled = [json.loads(p.read_text()) for p in (settings.var_dir / "spool").glob("*.json")]
    assert [json.loads(e["body"])["n"] for e in spooled] == [3]
    assert len(queued(redis_client, namespace)) == 2
