"""Voicemail links: their own key, short-lived, revocable, and streamed from the local VirtualPBX in constant memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, tenant_data
from service.config import Settings
from service.pbx import media
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx import standin
from service.store.models import Account, migrate
from service.web.app import create_app

ACCOUNT = standin.DEMO_ACCOUNT_ID
BIG = 50 * 1024 * 1024


@pytest.fixture
def world(tmp_path, redis_url, namespace, redis_client):
    """The sandbox VirtualPBX holding one 50 MB voicemail, an account reaching it, and the receiver app."""
    state = standin.demo_state()
    box_id = next(iter(state.accounts[ACCOUNT].vmboxes))
    message = state.add_message(ACCOUNT, box_id, caller_id_number="+15553456789", caller_id_name="Pat",
                                call_id="big-vm", length_ms=1000, audio=bytes(BIG))
    small = state.add_message(ACCOUNT, box_id, caller_id_number="+15553456789", caller_id_name="Pat",
                              call_id="small-vm", length_ms=1000)
    server = serve_in_thread(standin.create_app(state))
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", secret_keys=Fernet.generate_key().decode(),
                        virtualpbx_api_url=server.url, public_url="https://relay.example.test",
                        allow_private_urls=True)
    migrate(settings.effective_database_url)
    rt = Runtime(settings)
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
account: {{id: {ACCOUNT}, name: Demo, timezone: UTC}}
connections:
  pbx: {{integration: virtualpbx, account_id: {ACCOUNT}, api_key: {standin.DEMO_API_KEY}}}
rules: []
""")
    with rt.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Demo", box=rt.box)
        accounts.apply_rules_file(session, rules, registry=rt.registry, box=rt.box)
    app = create_app(settings, start_drainer=False)
    rt.small_message = small["media_id"]
    yield rt, app.test_client(), box_id, message["media_id"]
    server.stop()
    rt.sessions.kw["bind"].dispose()


def path_of(link: str) -> str:
    """The path part of a link on relay.example.test."""
    return link.removeprefix("https://relay.example.test")


def rss_bytes() -> int:
    """This process's resident set size now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def test_a_large_voicemail_is_streamed_in_constant_memory(world):
    """50 MB go through the link while this process's RSS grows by far less than the recording."""
    rt, client, box_id, message_id = world
    link = path_of(media.voicemail_link(rt, ACCOUNT, box_id, message_id))
    baseline = rss_bytes()  # before the request: the test client reads the first piece of the body at once
    response = client.get(link, buffered=False)
    peak = rss_bytes()
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(BIG)
    assert response.headers["Cache-Control"] == "no-store"
    received = 0
    for chunk in response.response:
        received += len(chunk)
        peak = max(peak, rss_bytes())
    response.close()
    growth = peak - baseline
    print(f"streamed {received / 2**20:.0f} MiB; peak RSS growth {growth / 2**20:.1f} MiB")
    assert received == BIG
    assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB while streaming a {BIG / 2**20:.0f} MiB recording"


def test_links_are_sealed_with_their_own_key_not_the_credentials_key(world, tmp_path):
    """A token sealed with the credentials' key is unknown (404); the generated link key file is 0600."""
    rt, client, box_id, message_id = world
    now = time.time()
    forged = rt.box.encrypt({"a": ACCOUNT, "b": box_id, "m": message_id, "iat": now, "exp": now + 3600})
    assert client.get(f"/media/voicemail/{forged}").status_code == 404
    assert client.get("/media/voicemail/not-a-token").status_code == 404
    key_file = tmp_path / "var" / "media-link.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() not in rt.settings.secret_keys.get_secret_value()


def test_an_expired_link_is_gone(world):
    """Past its expiry a link answers 410; links live PBXRELAY_MEDIA_LINK_TTL_SECONDS (6 h by default)."""
    rt, client, box_id, message_id = world
    now = time.time()
    expired = rt.link_box.encrypt({"a": ACCOUNT, "b": box_id, "m": message_id, "iat": now - 7200, "exp": now - 1})
    answer = client.get(f"/media/voicemail/{expired}")
    assert answer.status_code == 410 and "expired" in answer.get_json()["error"]
    assert rt.settings.media_link_ttl_seconds == 6 * 3600
    issued = rt.link_box.decrypt(path_of(media.voicemail_link(rt, ACCOUNT, box_id, message_id)).rsplit("/", 1)[1])
    assert issued["exp"] - issued["iat"] == pytest.approx(6 * 3600)


def test_revoked_links_are_gone_and_new_ones_work(world):
    """revoke_links stops every link issued before it (410); a link made afterwards opens."""
    rt, client, box_id, message_id = world
    small = rt.small_message
    old = path_of(media.voicemail_link(rt, ACCOUNT, box_id, small))
    assert client.get(old).status_code == 200
    media.revoke_links(rt, ACCOUNT)
    answer = client.get(old)
    assert answer.status_code == 410 and "revoked" in answer.get_json()["error"]
    fresh = path_of(media.voicemail_link(rt, ACCOUNT, box_id, small))
    assert client.get(fresh).status_code == 200


def test_links_of_a_deleted_account_are_gone_even_once_it_is_added_again(world):
    """accounts delete revokes its links; re-adding the same account id does not bring them back."""
    rt, client, box_id, message_id = world
    link = path_of(media.voicemail_link(rt, ACCOUNT, box_id, message_id))
    tenant_data.delete_account(rt, ACCOUNT)
    assert client.get(link).status_code == 410
    time.sleep(0.01)
    with rt.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Demo again", box=rt.box)
    with rt.sessions() as session:
        assert session.scalars(sa.select(Account.id)).all() == [ACCOUNT]
    answer = client.get(link)
    assert answer.status_code == 410 and "no longer exists" in answer.get_json()["error"]

