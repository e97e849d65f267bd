"""Each console page in a real browser against pbxrelay running as processes: an account with rules, a few missed
calls posted to its real hook URL and delivered to the Slack stand-in; every page renders (desktop and phone
widths) and leaves a screenshot in tests/browser/artifacts/pages-*.png."""

from __future__ import annotations

import uuid

import pytest
import requests

from service.sandbox.standins.slack import DEFAULT_CHANNEL_ID, DEFAULT_TOKEN
from tests.browser.conftest import screenshot, sign_in
from tests.browser.test_console_journey import missed_call
from tests.harness import wait_for

pytestmark = pytest.mark.e2e
PHONE = {"width": 390, "height": 844}
RULES = """
account: {{id: {account_id}, name: Pages Dental, timezone: America/New_York}}
connections:
  chat: {{integration: slack, bot_token: {token}}}
rules:
  - name: missed <b>to</b> slack
    on: call.missed
    do:
      - use: chat
        action: post_message
        with: {{channel: {channel}, text: "Missed call from {{{{ caller.number }}}}"}}
"""


@pytest.fixture(scope="module")
def account(deployment, tmp_path_factory):
    """An account with rules, three missed calls delivered to Slack; its id and the callers' numbers."""
    created = deployment.new_account("Pages Dental")
    rules = tmp_path_factory.mktemp("pages") / "rules.yaml"
    rules.write_text(RULES.format(account_id=created.account_id, token=DEFAULT_TOKEN, channel=DEFAULT_CHANNEL_ID))
    deployment.svc.cli("rules", "apply", str(rules))
    callers = [f"+1202557{uuid.uuid4().int % 10000:04d}" for _ in range(3)]
    for caller in callers:
        payload = missed_call(created.account_id, caller)
        payload["caller_id_name"] = payload["notify"]["caller_id_name"] = '<img src=x onerror="window.pwned=1">'
        assert requests.post(created.hook_url, json=payload, timeout=10).status_code == 200
    wait_for(lambda: [d for d in deployment.svc.deliveries(created.account_id) if d["status"] == "succeeded"][2:],
             timeout=60, message="three delivered missed calls")
    return created.account_id, callers


@pytest.fixture
def operator(page, deployment):
    """A browser page signed in as the operator."""
    sign_in(page, deployment.operator_email)
    return page


def visit(page, path: str, heading: str, shot: str) -> str:
    """Open ``path``, check its heading and that no injected script ran; screenshot desktop and phone widths."""
    response = page.goto(path)
    assert response.status == 200, page.inner_text("main")
    assert page.locator("h1").first.inner_text().startswith(heading)
    assert page.evaluate("window.pwned") is None
    screenshot(page, f"pages-{shot}")
    page.set_viewport_size(PHONE)
    # On a phone the page fits its width: nothing but tables (which scroll in their box) is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    screenshot(page, f"pages-{shot}-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    return page.inner_text("main")


def test_overview(operator, account):
    """The overview: today's calls (the fixture's calls happened on another day), the missed-call rate, chat's
    deliveries made today, the hooks with when the notifications hook last arrived."""
    account_id, _ = account
    text = visit(operator, f"/console/accounts/{account_id}/", "Pages Dental", "overview")
    assert "Calls today" in text and "Missed-call rate" in text and "virtualpbx.notifications" in text
    assert operator.locator("main table a:has-text('chat')").count() == 1


def test_calls_and_a_call(operator, account):
    """The call list shows the three missed calls; searching by number finds one; its page has the timeline."""
    account_id, callers = account
    text = visit(operator, f"/console/accounts/{account_id}/calls", "Calls", "calls")
    assert all(c in text for c in callers) and '<img src=x onerror="window.pwned=1">' in text
    operator.fill("#f-number", callers[0][-7:])
    operator.click("button:has-text('Search')")
    assert callers[0] in operator.inner_text("main") and callers[1] not in operator.inner_text("main")
    operator.click("main table a >> nth=0")
    text = visit(operator, operator.url.replace(operator.url.split("/console")[0], ""), "Call", "call")
    assert "call.missed" in text and "missed <b>to</b> slack" in text and "attempt 1" in text


def test_deliveries_and_a_delivery(operator, account):
    """The log lists the succeeded deliveries; the saved filter "Failed" shows none; a delivery shows its attempt."""
    account_id, _ = account
    text = visit(operator, f"/console/accounts/{account_id}/deliveries", "Deliveries", "deliveries")
    assert text.count("succeeded") >= 3 and "missed <b>to</b> slack" in text
    operator.click("nav.chips a:has-text('Failed')")
    assert "status=failed" in operator.url and "No deliveries match." in operator.inner_text("main")
    operator.goto(f"/console/accounts/{account_id}/deliveries")
    operator.click("main table a >> nth=0")
    text = visit(operator, operator.url.replace(operator.url.split("/console")[0], ""), "Delivery", "delivery")
    assert "#1" in text and "succeeded" in text and DEFAULT_TOKEN not in operator.content()


def test_connections(operator, account):
    """Connections show chat with its token only as set; the test button reaches the Slack stand-in."""
    account_id, _ = account
    text = visit(operator, f"/console/accounts/{account_id}/connections", "Connections", "connections")
    assert "chat" in text and "set" in text and DEFAULT_TOKEN not in operator.content()
    operator.click("button:has-text('Test')")
    assert "Test of chat: works" in operator.inner_text("#test-result")
    screenshot(operator, "pages-connections-tested")
    operator.click("a:has-text('Change')")
    assert operator.input_value("#field-bot_token") == "" and DEFAULT_TOKEN not in operator.content()
    screenshot(operator, "pages-connection-edit")


def test_settings(operator, account):
    """Settings shows both hook URLs with copy buttons, members, API keys, export and delete."""
    account_id, _ = account
    text = visit(operator, f"/console/accounts/{account_id}/settings", "Settings", "settings")
    assert operator.input_value("#hook-virtualpbx").startswith("http") and "Delete the account" in text
    assert operator.locator("button[data-copy=hook-crm]").count() == 1


def save_token(page, account_id: str, token: str) -> None:
    """Change chat's bot token through the connection form."""
    page.goto(f"/console/accounts/{account_id}/connections/edit?name=chat")
    page.fill("#field-bot_token", token)
    with page.expect_navigation():
        page.click("button:has-text('Save')")
    assert "Saved chat." in page.inner_text("main")


def test_replay_all_matching_polls_its_progress(operator, account, deployment):
    """A wrong token keeps a missed call's delivery; with the token fixed, "Replay all matching" on the Paused
    filter starts a job whose progress htmx polls in place until it is finished, and the message reaches Slack."""
    account_id, _ = account
    save_token(operator, account_id, "xoxb-0000-wrong")
    caller = f"+1202558{uuid.uuid4().int % 10000:04d}"
    operator.goto(f"/console/accounts/{account_id}/settings")
    hook_url = operator.input_value("#hook-virtualpbx")
    assert requests.post(hook_url, json=missed_call(account_id, caller), timeout=10).status_code == 200
    wait_for(lambda: [d for d in deployment.svc.deliveries(account_id) if d["status"] == "paused"],
             timeout=60, message="the delivery kept by the wrong token")
    save_token(operator, account_id, DEFAULT_TOKEN)
    operator.goto(f"/console/accounts/{account_id}/deliveries")
    operator.click("nav.chips a:has-text('Paused')")
    assert "paused" in operator.inner_text("main table")
    screenshot(operator, "pages-deliveries-paused")
    with operator.expect_navigation():
        operator.click("button:has-text('Replay all matching')")
    assert "/replay-jobs/" in operator.url
    marker = operator.evaluate("window.pagesMarker = Math.random()")
    screenshot(operator, "pages-replay-job-running")
    operator.wait_for_selector("#replay-progress:has-text('finished')", timeout=60_000)
    assert operator.evaluate("window.pagesMarker") == marker  # htmx swapped the fragment: no reload
    assert "1 of 1 replayed" in operator.inner_text("#replay-progress")
    screenshot(operator, "pages-replay-job-finished")
    wait_for(lambda: [m for m in deployment.slack.messages_in(DEFAULT_CHANNEL_ID) if caller in m.get("text", "")],
             timeout=60, message="the replayed message at Slack")
