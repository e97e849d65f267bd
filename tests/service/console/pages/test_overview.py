"""The overview: today's calls by hour and outcome (SVG), missed-call rate, deliveries per connection, hooks,
paused connections with Resume."""

from __future__ import annotations

import sqlalchemy as sa

from service.store.models import AuditEntry, Connection, Delivery
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import HOSTILE, csrf_of, signed_in


def test_overview_shows_the_day(console):
    """Four calls today: an SVG stacked chart, 75% missed (3 of 4 inbound not answered), chat's deliveries,
    the hooks table, and the paused connection with its (escaped) reason."""
    text = signed_in(console, "viewer@example.com").get(f"/console/accounts/{ACCOUNT_A}/").get_data(as_text=True)
    assert '<svg viewBox="0 0 720 220" role="img" aria-label="Calls today by hour and outcome">' in text
    assert '<svg viewBox="0 0 360 180" role="img"' in text  # the same chart drawn for a phone's width
    # One rect per (hour, outcome) in each drawing: 3 outcomes, and the 40 minutes of calls may span two hours.
    assert text.count("<rect ") in (6, 8)
    assert ">75%<" in text and "3 of 4 inbound calls" in text
    assert f'href="/console/accounts/{ACCOUNT_A}/deliveries?connection=chat"' in text
    assert "virtualpbx.channel_create" in text
    assert "Paused connections" in text and HOSTILE not in text and "&lt;script&gt;" in text
    assert "Resume</button>" not in text  # a viewer sees no write buttons


def test_resume_from_the_overview(console):
    """An editor resumes the paused connection: its paused deliveries go back to pending, audited with the actor."""
    with console.runtime.sessions.begin() as db:
        db.execute(sa.update(Delivery).where(Delivery.id == console.delivery_ids["dead"]).values(status="paused"))
    client = signed_in(console, "editor@example.com")
    page = client.get(f"/console/accounts/{ACCOUNT_A}/")
    assert "Resume</button>" in page.get_data(as_text=True)
    response = client.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/resume",
                           data={"csrf_token": csrf_of(page), "next": f"/console/accounts/{ACCOUNT_A}/"})
    assert response.status_code == 302 and response.headers["Location"] == f"/console/accounts/{ACCOUNT_A}/"
    with console.runtime.sessions() as db:
        assert db.scalar(sa.select(Connection.paused_reason).where(Connection.name == "chat")) is None
        assert db.get(Delivery, console.delivery_ids["dead"]).status == "pending"
        entry = db.scalar(sa.select(AuditEntry).where(AuditEntry.kind == "connection_resumed"))
        assert entry.actor.startswith("user:") and entry.account_id == ACCOUNT_A


def test_resume_refusals(console):
    """A viewer's POST is 403, another account's 404, a missing token 400; nothing is resumed."""
    viewer = signed_in(console, "viewer@example.com")
    token = csrf_of(viewer.get("/console/logout"))
    assert viewer.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/resume",
                       data={"csrf_token": token}).status_code == 403
    editor = signed_in(console, "editor@example.com")
    token = csrf_of(editor.get("/console/logout"))
    assert editor.post(f"/console/accounts/{ACCOUNT_B}/connections/chat/resume",
                       data={"csrf_token": token}).status_code == 404
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/connections/chat/resume").status_code == 400
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/connections/nope/resume",
                       data={"csrf_token": token}).status_code == 404
    with console.runtime.sessions() as db:
        assert db.scalar(sa.select(Connection.paused_reason).where(Connection.name == "chat"))
