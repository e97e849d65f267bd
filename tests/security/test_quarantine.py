"""Every input path ends kept or quarantined on SQLite and PostgreSQL (finding 9 of "A hard tenant boundary"):
NUL bytes, invalid UTF-8 and JSON "\\u0000" must neither raise DataError nor vanish."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, engine
from service.config import Settings
from service.engine import planning
from service.runtime import Runtime
from service.store.models import QuarantinedDelivery, StoredEvent, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES
from tests.harness import Service

ACCOUNT = "d0000000000000000000000000000009"


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, database_url):
    """A Runtime on a migrated database (SQLite and PostgreSQL) with one account and no rules."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode(), allow_private_urls=True)
    migrate(database_url)
    runtime = Runtime(settings)
    with runtime.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Bytes", box=runtime.box)
    planning._RULES_CACHE.clear()
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def envelope(body: bytes, content_type: str = "application/json") -> dict:
    """A receiver envelope for ``body`` (base64 in the envelope when it is not UTF-8, as the receiver does)."""
    return make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST", content_type=content_type,
                         query_string="", body=body, headers={})


def quarantined(rt) -> list[QuarantinedDelivery]:
    """The account's quarantine rows, oldest first."""
    with rt.sessions() as session:
        return session.scalars(sa.select(QuarantinedDelivery).order_by(QuarantinedDelivery.id)).all()


@pytest.mark.parametrize("body", [
    b'{"hook_event": "channel_create", "call_id": "a\x00b"',  # a raw NUL (and cut short): malformed
    b'\x00\x01\x02 not json at all \xff\xfe',  # NUL and invalid UTF-8
    b'{"hook_event": "channel_create", "call_id": "caf\xe9"}',  # Latin-1, not UTF-8
    b'call_id=a%00b&hook_event=%FF%00',  # a form body whose values decode to NUL and invalid UTF-8
], ids=["nul-json", "nul-and-invalid-utf8", "latin1-json", "form-nul"])
def test_bodies_with_nul_or_invalid_utf8_are_kept_byte_for_byte(rt, body):
    """Whatever the bytes, the delivery is stored or quarantined, and a quarantined body is the exact bytes."""
    content_type = "application/x-www-form-urlencoded" if body.startswith(b"call_id=") else "application/json"
    outcome = engine.ingest(rt, envelope(body, content_type))
    assert outcome.status in ("accepted", "quarantined")
    rows = quarantined(rt)
    if outcome.status == "quarantined":
        assert [row.body for row in rows] == [body]
        assert "\x00" not in rows[0].reason
    else:
        with rt.sessions() as session:
            assert session.scalars(sa.select(sa.func.count()).select_from(StoredEvent)).one() >= 1


def test_json_with_an_escaped_nul_is_stored_with_the_nul_escaped(rt):
    """A valid hook whose JSON strings hold "\\u0000" is stored (PostgreSQL refuses NUL in text and jsonb);
    the NUL is shown as the four characters \\x00, and a second copy is quarantined as a duplicate."""
    payload = json.loads((FIXTURES / "kazoo/webhook_channel_create.json").read_text())
    payload["call_id"] = "nul\u0000call"
    payload["caller_id_name"] = "Bob\u0000"
    payload["custom_channel_vars"] = {"k\u0000": "v\u0000"}
    body = json.dumps(payload).encode()
    assert b"\\u0000" in body
    outcome = engine.ingest(rt, envelope(body))
    assert outcome.status == "accepted"
    with rt.sessions() as session:
        hook = session.scalars(sa.select(StoredEvent).where(StoredEvent.type == "virtualpbx.channel_create")).one()
        assert "nul\\x00call" in hook.key
        stored = json.dumps(hook.data)
        assert "\\u0000" not in stored and "Bob\\\\x00" in stored
    assert engine.ingest(rt, envelope(body)).status == "duplicate"
    assert [row.body for row in quarantined(rt)] == [body]


def test_the_cli_shows_quarantined_bytes_readably(rt, tmp_path, redis_url):
    """`pbxrelay quarantine --json` prints the body as text: UTF-8 as is, NUL and other bytes as escapes."""
    engine.ingest(rt, envelope(b'\x00caf\xc3\xa9 \xff'))
    svc = Service(tmp_path, redis_url=redis_url, namespace=rt.settings.namespace,
                  database_url=rt.settings.effective_database_url)
    assert [row["body"] for row in svc.quarantine(ACCOUNT)] == ["\\x00caf\u00e9 \\xff"]
