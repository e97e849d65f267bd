"""The call list (search, cursor pages) and one call's timeline."""

from __future__ import annotations

from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import HOSTILE, signed_in


def test_call_list_search_and_escaping(console):
    """Four calls, newest first; number and outcome filters narrow them; a bad number is a 400 naming the field;
    hostile caller names come out escaped."""
    client = signed_in(console, "viewer@example.com")
    base = f"/console/accounts/{ACCOUNT_A}/calls"
    text = client.get(base).get_data(as_text=True)
    assert text.count(f'href="{base}/call-') == 4 and text.index("call-3") < text.index("call-0")
    assert HOSTILE not in text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; 2" in text
    missed = client.get(f"{base}?outcome=missed").get_data(as_text=True)
    assert "call-1" in missed and "call-3" in missed and "call-0" not in missed
    one = client.get(f"{base}?number=202+555+0122").get_data(as_text=True)
    assert "call-2" in one and "call-1" not in one
    bad = client.get(f"{base}?number=abc")
    assert bad.status_code == 400 and "number: digits only" in bad.get_data(as_text=True)
    assert client.get(f"{base}?since=yesterday").status_code == 400
    assert "Bolt caller" not in text


def test_call_list_cursor_pages(console, monkeypatch):
    """With pages of two, "Older" carries the filter and a cursor and shows the next two; a forged cursor is 400."""
    from service.console.pages import calls

    monkeypatch.setattr(calls, "PAGE_SIZE", 2)
    client = signed_in(console, "viewer@example.com")
    base = f"/console/accounts/{ACCOUNT_A}/calls"
    first = client.get(f"{base}?direction=inbound").get_data(as_text=True)
    older = first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    assert older.startswith("?direction=inbound&cursor=")
    second = client.get(base + older).get_data(as_text=True)
    assert "call-1" in second and "call-0" in second and "call-3" not in second and 'rel="next"' not in second
    assert client.get(f"{base}?cursor=forged").status_code == 400


def test_call_timeline(console):
    """A call's page shows its leg hook, its call.ended event, the rule, the delivery and its attempt, escaped;
    another account's call is 404."""
    client = signed_in(console, "viewer@example.com")
    response = client.get(f"/console/accounts/{ACCOUNT_A}/calls/call-1")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    for part in ("leg hook", "virtualpbx.channel_create", "call.ended", "attempt 1", "HTTP 500",
                 f"/console/accounts/{ACCOUNT_A}/deliveries/{console.delivery_ids['failed']}"):
        assert part in text, part
    assert HOSTILE not in text and "&lt;script&gt;" in text
    assert client.get(f"/console/accounts/{ACCOUNT_A}/calls/call-b").status_code == 404
    assert client.get(f"/console/accounts/{ACCOUNT_B}/calls/call-b").status_code == 404


def test_a_call_known_only_by_its_voicemail_is_listed(console):
    """A voicemail.new whose call has no call.ended or call.missed is a row of the list (voicemail, voicemail
    left) linking to its page, which shows the voicemail event."""
    from datetime import datetime, timezone

    from service.store.models import StoredEvent

    now = datetime.now(timezone.utc)
    with console.runtime.sessions.begin() as db:
        db.add(StoredEvent(account_id=ACCOUNT_A, key="voicemail.new:vm-9", type="voicemail.new", occurred_at=now,
                           received_at=now, data={"call_id": "vm-only", "voicemail_id": "vm-9",
                                                  "caller": {"name": "Vera", "number": "+12025550199"},
                                                  "callee": {"name": None, "number": "1000"}, "mailbox": "1000"}))
    client = signed_in(console, "viewer@example.com")
    base = f"/console/accounts/{ACCOUNT_A}/calls"
    text = client.get(base).get_data(as_text=True)
    assert text.count(f'href="{base}/call-') == 4 and text.count(f'href="{base}/vm-only"') == 1
    row = text.split(f'href="{base}/vm-only"')[1].split("</tr>")[0]
    assert "Vera" in row and "voicemail" in row and "voicemail left" in row
    assert "vm-only" in client.get(f"{base}?outcome=voicemail").get_data(as_text=True)
    page = client.get(f"{base}/vm-only")
    assert page.status_code == 200 and "voicemail.new" in page.get_data(as_text=True)
