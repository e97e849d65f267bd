"""Replaying from the pages: one delivery, an event re-planned, and "replay all matching" with its progress
fragment (what htmx polls)."""

from __future__ import annotations

import sqlalchemy as sa

from service.engine import operations
from service.store.models import AuditEntry, Delivery, ReplayJob
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import csrf_of, signed_in


def status_of(console, delivery_id: int) -> str:
    """A delivery's status now."""
    with console.runtime.sessions() as db:
        return db.get(Delivery, delivery_id).status


def test_replay_one(console):
    """An editor replays the failed delivery (pending again, audited); a succeeded one is refused with a reason;
    the viewer sees no button and gets 403; another account's delivery is 404."""
    ids = console.delivery_ids
    viewer = signed_in(console, "viewer@example.com")
    page = viewer.get(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}")
    assert "Replay</button>" not in page.get_data(as_text=True)
    assert viewer.post(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}/replay",
                       data={"csrf_token": csrf_of(viewer.get("/console/logout"))}).status_code == 403
    editor = signed_in(console, "editor@example.com")
    page = editor.get(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}")
    token = csrf_of(page)
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}/replay").status_code == 400
    assert status_of(console, ids["failed"]) == "failed"  # no CSRF token: nothing happened
    done = editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}/replay", data={"csrf_token": token})
    assert done.status_code == 302 and "replayed=1" in done.headers["Location"]
    assert "Replay requested" in editor.get(done.headers["Location"]).get_data(as_text=True)
    assert status_of(console, ids["failed"]) == "pending"
    refused = editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['succeeded']}/replay",
                          data={"csrf_token": token})
    assert refused.status_code == 400 and "this one is succeeded" in refused.get_data(as_text=True)
    assert editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['other']}/replay",
                       data={"csrf_token": token}).status_code == 404
    with console.runtime.sessions() as db:
        assert db.scalar(sa.select(AuditEntry.actor).where(AuditEntry.kind == "delivery_replayed")).startswith("user:")


def test_replay_all_matching_and_its_progress(console):
    """The button posts the page's filter; the job page polls its fragment until the job is finished."""
    editor = signed_in(console, "editor@example.com")
    log = editor.get(f"/console/accounts/{ACCOUNT_A}/deliveries?status=dead&connection=chat").get_data(as_text=True)
    assert "Replay all matching</button>" in log and '<input type="hidden" name="connection" value="chat">' in log
    started = editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/replay",
                          data={"csrf_token": csrf_of(editor.get("/console/logout")), "status": "dead",
                                "connection": "chat"})
    assert started.status_code == 302 and "/replay-jobs/" in started.headers["Location"]
    job_url = started.headers["Location"]
    page = editor.get(job_url).get_data(as_text=True)
    assert "Replay all matching" in page and f'hx-get="{job_url}"' in page and 'hx-trigger="every 1s"' in page
    fragment = editor.get(job_url, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert fragment.lstrip().startswith("<div id=\"replay-progress\"") and "<html" not in fragment
    assert "0 of 1 replayed" in fragment
    job_id = int(job_url.rsplit("/", 1)[1])
    while not operations.replay_job_batch(console.runtime, job_id).finished:  # what the worker's task does
        pass
    fragment = editor.get(job_url, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "1 of 1 replayed" in fragment and "hx-get" not in fragment  # finished: the polling stops
    assert status_of(console, console.delivery_ids["dead"]) == "pending"
    assert signed_in(console, "b-owner@example.com").get(
        job_url.replace(ACCOUNT_A, ACCOUNT_B)).status_code == 404


def test_replay_all_refusals(console):
    """No button for a status that cannot be replayed; posting one anyway is a 400 naming the field; a viewer
    gets 403."""
    editor = signed_in(console, "editor@example.com")
    assert "Replay all matching" not in editor.get(
        f"/console/accounts/{ACCOUNT_A}/deliveries?status=succeeded").get_data(as_text=True)
    token = csrf_of(editor.get("/console/logout"))
    bad = editor.post(f"/console/accounts/{ACCOUNT_A}/deliveries/replay", data={"csrf_token": token,
                                                                                "status": "succeeded"})
    assert bad.status_code == 400 and "status: only" in bad.get_data(as_text=True)
    viewer = signed_in(console, "viewer@example.com")
    assert viewer.post(f"/console/accounts/{ACCOUNT_A}/deliveries/replay",
                       data={"csrf_token": csrf_of(viewer.get("/console/logout"))}).status_code == 403
    with console.runtime.sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(ReplayJob)) == 0


def test_replan_an_event(console):
    """Re-planning a call's event with today's rules plans the "call log" action it never had (its delivery in the
    fixture is of a rule that no longer exists) and says what it did; the new delivery is listed."""
    editor = signed_in(console, "editor@example.com")
    url = f"/console/accounts/{ACCOUNT_A}/events/call.ended:call-1"
    done = editor.post(f"{url}/replan", data={"csrf_token": csrf_of(editor.get(url))})
    assert done.status_code == 302
    text = editor.get(done.headers["Location"]).get_data(as_text=True)
    assert "Re-planned with today's rules: 1 created, 0 replayed, 0 left as they were." in text
    assert "<td>call log</td>" in text
