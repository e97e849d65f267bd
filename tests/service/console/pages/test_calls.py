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
