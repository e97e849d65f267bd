"""The connections page: state, write-only secrets, add and change, test, delete, role and CSRF refusals."""

from __future__ import annotations

import sqlalchemy as sa

from service.store.models import AuditEntry
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import HOSTILE, csrf_of, signed_in


def test_list_never_shows_secrets(console):
    """The connection shows as paused with its escaped reason, its token only as "set"; a viewer gets no buttons."""
    viewer = signed_in(console, "viewer@example.com")
    text = viewer.get(f"/console/accounts/{ACCOUNT_A}/connections").get_data(as_text=True)
    assert "chat" in text and "paused" in text and "bot_token" in text and ">set<" in text
    assert "xoxb-pages-tests-secret" not in text and HOSTILE not in text
    assert "Test</button>" not in text and "Resume</button>" not in text and "Add a connection" not in text
    assert viewer.get(f"/console/accounts/{ACCOUNT_A}/connections/edit?name=chat").status_code == 403


def test_change_keeps_a_blank_secret_and_audits(console):
    """An editor's change form never renders the secret; saving with it blank keeps it (the test still reaches
    the vendor with it); the change is audited with the editor."""
    client = signed_in(console, "editor@example.com")
    form = client.get(f"/console/accounts/{ACCOUNT_A}/connections/edit?name=chat")
    text = form.get_data(as_text=True)
    assert form.status_code == 200 and "xoxb-pages-tests-secret" not in text and "leave blank to keep it" in text
    assert 'placeholder="default: 10.0"' in text  # the timeout field says what blank means
    saved = client.post(f"/console/accounts/{ACCOUNT_A}/connections/chat", data={
        "csrf_token": csrf_of(form), "integration": "slack", "field.bot_token": "", "field.default_channel": "C9"})
    assert saved.status_code == 302, saved.get_data(as_text=True)
    page = client.get(saved.headers["Location"]).get_data(as_text=True)
    assert "Saved chat." in page and "C9" in page and ">set<" in page
    with console.runtime.sessions() as db:
        entry = db.scalar(sa.select(AuditEntry).where(AuditEntry.kind == "rules_applied").order_by(
            AuditEntry.id.desc()))
        assert "connection chat replaced" in entry.detail and entry.actor.startswith("user:")
        config = console.runtime.box.decrypt(db.execute(sa.text(
            "select config_encrypted from connections where name = 'chat'")).scalar())
        assert config["bot_token"] == "xoxb-pages-tests-secret"


def test_bad_settings_show_the_field(console):
    """A refused value comes back on the form with the field named; nothing changes."""
    client = signed_in(console, "editor@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/connections/edit?name=chat"))
    bad = client.post(f"/console/accounts/{ACCOUNT_A}/connections/chat", data={
        "csrf_token": token, "integration": "slack", "field.bot_token": "not-a-slack-token"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400 and "bot_token" in text and "not-a-slack-token" not in text


def test_test_button_shows_the_result(console):
    """Testing against an unreachable Slack shows a failure, scrubbed of the token."""
    client = signed_in(console, "editor@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/connections"))
    response = client.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/test", data={"csrf_token": token})
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="test-result"' in text and "Test of chat:" in text
    assert "xoxb-pages-tests-secret" not in text


def test_refusals(console):
    """Viewer POSTs are 403, another account's 404, no CSRF token 400; a connection a rule uses is not deleted."""
    viewer = signed_in(console, "viewer@example.com")
    token = csrf_of(viewer.get("/console/logout"))
    for path in ("chat/test", "chat/delete", "chat"):
        assert viewer.post(f"/console/accounts/{ACCOUNT_A}/connections/{path}",
                           data={"csrf_token": token, "integration": "slack"}).status_code == 403
    editor = signed_in(console, "editor@example.com")
    token = csrf_of(editor.get("/console/logout"))
    assert editor.post(f"/console/accounts/{ACCOUNT_B}/connections/chat/test",
                       data={"csrf_token": token}).status_code == 404
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/test").status_code == 400
    in_use = editor.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/delete", data={"csrf_token": token})
    assert in_use.status_code == 400 and "is used by" in in_use.get_data(as_text=True)
