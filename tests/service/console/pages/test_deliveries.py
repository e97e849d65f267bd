"""The delivery log (filters, saved filters, bookmarkable query strings), a delivery with its attempts, an event."""

from __future__ import annotations

from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import HOSTILE, signed_in


def test_log_filters_and_saved_filters(console):
    """All four deliveries by default; the saved filters are plain links; status, connection and several
    statuses filter; a bad status is a 400 naming the field; hostile rule names and errors are escaped."""
    client = signed_in(console, "viewer@example.com")
    base = f"/console/accounts/{ACCOUNT_A}/deliveries"
    ids = console.delivery_ids
    text = client.get(base).get_data(as_text=True)
    for status in ("succeeded", "failed", "retrying", "dead"):
        assert f'href="{base}/{ids[status]}"' in text
    assert f'href="{base}/{ids["other"]}"' not in text
    for saved in ("failed", "retrying", "dead", "paused"):
        assert f'href="{base}?status={saved}"' in text
    assert HOSTILE not in text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; rule" in text
    failed = client.get(f"{base}?status=failed").get_data(as_text=True)
    assert f'{base}/{ids["failed"]}"' in failed and f'{base}/{ids["dead"]}"' not in failed
    assert f'href="{base}?status=failed" aria-current="page"' in failed
    both = client.get(f"{base}?status=failed&status=dead&connection=chat").get_data(as_text=True)
    assert f'{base}/{ids["failed"]}"' in both and f'{base}/{ids["dead"]}"' in both
    assert f'{base}/{ids["retrying"]}"' not in both
    assert "No deliveries match." in client.get(f"{base}?connection=nope").get_data(as_text=True)
    bad = client.get(f"{base}?status=bogus")
    assert bad.status_code == 400 and "status: &#39;bogus&#39; is not one of" in bad.get_data(as_text=True)


def test_log_time_filter_in_the_accounts_zone(console):
    """``since`` in the future (account's zone) shows nothing; in the past shows everything."""
    client = signed_in(console, "viewer@example.com")
    base = f"/console/accounts/{ACCOUNT_A}/deliveries"
    assert "No deliveries match." in client.get(f"{base}?since=2999-01-01T00:00").get_data(as_text=True)
    assert "No deliveries match." not in client.get(f"{base}?since=2020-01-01").get_data(as_text=True)
    assert client.get(f"{base}?since=2020-01-01&until=2019-01-01").status_code == 400


def test_delivery_page_with_attempts(console):
    """A delivery's page: its event link, rule, error and each attempt with status code, duration and the
    response excerpt, all escaped; another account's delivery and junk ids are 404."""
    client = signed_in(console, "viewer@example.com")
    ids = console.delivery_ids
    response = client.get(f"/console/accounts/{ACCOUNT_A}/deliveries/{ids['failed']}")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "HTTP 500" in text and "121 ms" in text and "&lt;b&gt;&lt;script&gt;" in text and HOSTILE not in text
    assert f'href="/console/accounts/{ACCOUNT_A}/events/call.ended:call-1"' in text
    for other in (ids["other"], "999999", "abc", "99999999999999999999"):
        assert client.get(f"/console/accounts/{ACCOUNT_A}/deliveries/{other}").status_code == 404
    assert client.get(f"/console/accounts/{ACCOUNT_B}/deliveries/{ids['other']}").status_code == 404


def test_event_page(console):
    """An event by key (or id) shows its data escaped and its deliveries; another account's event is 404."""
    client = signed_in(console, "viewer@example.com")
    response = client.get(f"/console/accounts/{ACCOUNT_A}/events/call.ended:call-1")
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and "call.ended" in text and HOSTILE not in text
    assert f"/console/accounts/{ACCOUNT_A}/deliveries/{console.delivery_ids['failed']}" in text
    assert client.get(f"/console/accounts/{ACCOUNT_A}/events/call.ended:call-b").status_code == 404


def test_a_delivery_that_gave_up_waiting_explains_itself(console):
    """Dead with no attempt (it waited for a rate-limit slot past the retry horizon): the page shows the engine's
    explanation and says no attempt reached the vendor, instead of a bare "dead"."""
    from datetime import datetime, timezone

    from service.store.models import Delivery

    with console.runtime.sessions.begin() as db:
        row = Delivery(account_id=ACCOUNT_A, event_key="call.ended:call-0", event_type="call.ended",
                       rule_name="call log", action_index=1, connection="chat", integration="slack",
                       action="post_message", params={"text": "x"}, status="dead", attempts=0,
                       created_at=datetime.now(timezone.utc),
                       last_error="gave up: still waiting for a rate-limit slot after 24 h")
        db.add(row)
        db.flush()
        delivery_id = row.id
    client = signed_in(console, "viewer@example.com")
    text = client.get(f"/console/accounts/{ACCOUNT_A}/deliveries/{delivery_id}").get_data(as_text=True)
    assert "<dt>Last error</dt>" in text and "gave up: still waiting for a rate-limit slot after 24 h" in text
    assert "No attempt reached the vendor: the last error above says why it stopped." in text
    assert "No attempt yet." not in text
    listed = client.get(f"/console/accounts/{ACCOUNT_A}/deliveries?status=dead").get_data(as_text=True)
    assert "gave up: still waiting for a rate-limit slot" in listed
