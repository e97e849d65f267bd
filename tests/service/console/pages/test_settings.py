"""The settings page: account settings, hook URLs (owners only), rotate, register hooks, members, invites,
API keys, export, delete with typed confirmation."""

from __future__ import annotations

import json
import re

import sqlalchemy as sa

from service.store.models import Account, AuditEntry
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import csrf_of, signed_in

HOOK_URL = re.compile(r'value="(https://relay\.example\.com/hooks/virtualpbx/[^"]+)"')


def test_owner_sees_hook_urls_and_viewer_does_not(console):
    """Owners see both hook URLs with copy buttons and every form; viewers see neither URLs nor forms."""
    owner = signed_in(console, "owner@example.com").get(f"/console/accounts/{ACCOUNT_A}/settings").get_data(
        as_text=True)
    assert HOOK_URL.search(owner) and "https://relay.example.com/hooks/crm/" in owner
    assert 'data-copy="hook-virtualpbx"' in owner and "Register hooks with VirtualPBX" in owner
    assert "Delete this account" in owner and "Create API key" in owner and "Create invite link" in owner
    viewer = signed_in(console, "viewer@example.com").get(f"/console/accounts/{ACCOUNT_A}/settings").get_data(
        as_text=True)
    assert "/hooks/virtualpbx/" not in viewer and "<form method=\"post\"" not in viewer
    assert "viewer@example.com" in viewer  # members are listed for everyone


def test_rotate_token_changes_the_url(console):
    """Rotating gives a new URL, audited; an editor may not rotate (403)."""
    client = signed_in(console, "owner@example.com")
    page = client.get(f"/console/accounts/{ACCOUNT_A}/settings")
    before = HOOK_URL.search(page.get_data(as_text=True)).group(1)
    rotated = client.post(f"/console/accounts/{ACCOUNT_A}/hooks/virtualpbx/rotate", data={"csrf_token": csrf_of(page)})
    after = HOOK_URL.search(rotated.get_data(as_text=True)).group(1)
    assert rotated.status_code == 200 and after != before and "the old one no longer works" in rotated.get_data(
        as_text=True)
    editor = signed_in(console, "editor@example.com")
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/hooks/virtualpbx/rotate",
                       data={"csrf_token": csrf_of(editor.get("/console/logout"))}).status_code == 403
    with console.runtime.sessions() as db:
        assert db.scalar(sa.select(AuditEntry.actor).where(AuditEntry.kind == "token_rotated")).startswith("user:")


def test_register_hooks_without_a_virtualpbx_connection_says_so(console):
    """Registering needs a virtualpbx connection: the page says so (400) instead of failing."""
    client = signed_in(console, "owner@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/settings"))
    response = client.post(f"/console/accounts/{ACCOUNT_A}/hooks/connect", data={"csrf_token": token})
    assert response.status_code == 400 and "has no virtualpbx connection" in response.get_data(as_text=True)


def test_account_settings_and_retention(console):
    """Name, zone and retention are saved through the rules; a bad retention names the field."""
    client = signed_in(console, "owner@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/settings"))
    url = f"/console/accounts/{ACCOUNT_A}/settings"
    bad = client.post(url, data={"csrf_token": token, "name": "Acme", "timezone": "UTC", "retention_days": "-3"})
    assert bad.status_code == 400 and "retention_days:" in bad.get_data(as_text=True)
    ok = client.post(url, data={"csrf_token": token, "name": "Acme Dental & Co", "timezone": "Europe/Paris",
                                "retention_days": "30"})
    assert ok.status_code == 200 and "Settings saved." in ok.get_data(as_text=True)
    with console.runtime.sessions() as db:
        account = db.get(Account, ACCOUNT_A)
        assert (account.name, account.timezone) == ("Acme Dental & Co", "Europe/Paris")
    assert 'value="30"' in client.get(url).get_data(as_text=True)


def test_members_invites_and_keys(console):
    """An owner invites (link shown once, pending listed), changes a role, and creates a key shown once."""
    client = signed_in(console, "owner@example.com")
    url = f"/console/accounts/{ACCOUNT_A}/settings"
    token = csrf_of(client.get(url))
    invited = client.post(f"/console/accounts/{ACCOUNT_A}/invites",
                          data={"csrf_token": token, "email": "new@example.com", "role": "viewer"})
    assert "https://relay.example.com/console/invite/" in invited.get_data(as_text=True)
    page = client.get(url).get_data(as_text=True)
    assert "new@example.com as viewer" in page and "/console/invite/" not in page
    viewer_id = re.search(r'/members/(\d+)"[^>]*>\s*<input[^>]*>\s*<label class="sr" for="role-\d+">Role of '
                          r'viewer@example.com', page).group(1)
    changed = client.post(f"/console/accounts/{ACCOUNT_A}/members/{viewer_id}",
                          data={"csrf_token": token, "role": "editor"})
    assert changed.status_code == 302
    assert signed_in(console, "viewer@example.com").get(
        f"/console/accounts/{ACCOUNT_A}/connections/edit?name=chat").status_code == 200  # an editor now
    key = client.post(f"/console/accounts/{ACCOUNT_A}/api-keys", data={"csrf_token": token, "name": "zapier",
                                                                       "scope": "read"}).get_data(as_text=True)
    secret = re.search(r"pbx_[A-Za-z0-9_-]{43}", key).group(0)
    assert secret not in client.get(url).get_data(as_text=True)
    assert client.post(f"/console/accounts/{ACCOUNT_B}/api-keys",
                       data={"csrf_token": token, "name": "x", "scope": "read"}).status_code == 404


def test_export_downloads_json_without_secrets(console):
    """The export is a JSON attachment of the account, credentials masked; viewers get 403."""
    response = signed_in(console, "owner@example.com").get(f"/console/accounts/{ACCOUNT_A}/export")
    assert response.status_code == 200 and "attachment" in response.headers["Content-Disposition"]
    body = response.get_data(as_text=True)
    assert json.loads(body)["account"]["id"] == ACCOUNT_A and "xoxb-pages-tests-secret" not in body
    assert signed_in(console, "viewer@example.com").get(f"/console/accounts/{ACCOUNT_A}/export").status_code == 403


def test_delete_needs_the_typed_name(console):
    """A wrong name deletes nothing (400); the exact name deletes the account, audited with no account."""
    client = signed_in(console, "owner@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/settings"))
    url = f"/console/accounts/{ACCOUNT_A}/delete"
    wrong = client.post(url, data={"csrf_token": token, "confirm": "acme dental"})
    assert wrong.status_code == 400 and "confirm: type the account" in wrong.get_data(as_text=True)
    assert client.post(url, data={"confirm": "Acme Dental"}).status_code == 400  # no CSRF token
    assert signed_in(console, "editor@example.com").post(url, data={
        "csrf_token": csrf_of(signed_in(console, "editor@example.com").get("/console/logout")),
        "confirm": "Acme Dental"}).status_code in (400, 403)
    done = client.post(url, data={"csrf_token": token, "confirm": "Acme Dental"})
    assert done.status_code == 302 and done.headers["Location"] == "/console/"
    with console.runtime.sessions() as db:
        assert db.get(Account, ACCOUNT_A) is None
        entry = db.scalar(sa.select(AuditEntry).where(AuditEntry.kind == "account_deleted"))
        assert entry.account_id is None and ACCOUNT_A in entry.detail and entry.actor.startswith("user:")
