"""The console end to end in a real browser (issue 11's scenario), against pbxrelay running as processes and the
sandbox's Slack stand-in over HTTP. Each step leaves a screenshot (tests/browser/artifacts/journey-*.png).

sign in → invite → accept the invite → Slack connection → rule from a recipe → try it on a sample → save →
a real Kazoo hook → the message at Slack and the delivery on the Deliveries page → break the connection → the
failure → fix it → bulk replay → success.
"""

from __future__ import annotations

import copy
import re
import uuid

import pytest
import requests
from playwright.sync_api import expect

from service.sandbox.standins.slack import DEFAULT_CHANNEL_ID, DEFAULT_TOKEN
from tests.browser.conftest import screenshot, sign_in
from tests.conftest import load_fixture
from tests.harness import wait_for

pytestmark = pytest.mark.e2e

OWNER_PASSWORD = "journey owner passphrase"


def missed_call(account_id: str, caller: str) -> dict:
    """Kazoo's missed_call notification (the fixture) for this account, from ``caller``, as a call of its own."""
    payload = copy.deepcopy(load_fixture("kazoo/webhook_notifications_missed_call.json"))
    call_id = f"journey-{uuid.uuid4().hex}"
    payload.update(account_id=account_id, call_id=call_id, msg_id=uuid.uuid4().hex[:12], caller_id_number=caller,
                   caller_id_name="Pat Journey", from_user=caller)
    payload["notify"].update(call_id=call_id, caller_id_number=caller, caller_id_name="Pat Journey")
    return payload


def slack_texts(deployment, needle: str) -> list[str]:
    """Texts the Slack stand-in received in its channel that mention ``needle``."""
    return [m["text"] for m in deployment.slack.messages_in(DEFAULT_CHANNEL_ID) if needle in m.get("text", "")]


def editor_text(page) -> str:
    """The rules editor's current text."""
    return page.input_value("#rules-text")


def test_console_journey(browser, deployment):
    """The whole scenario through the console's pages; see the module docstring."""
    account = deployment.new_account("Journey Dental")
    base = f"/console/accounts/{account.account_id}/"
    owner_email = f"owner-{account.account_id[:8]}@example.com"
    caller = f"+1202555{uuid.uuid4().int % 10000:04d}"

    # 1. The operator signs in and invites the account's owner from the Settings page.
    operator = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900})
    page = operator.new_page()
    sign_in(page, deployment.operator_email)
    page.goto(base + "settings")
    page.fill("#invite-email", owner_email)
    page.select_option("#invite-role", "owner")
    page.click("#members button:has-text('Create invite link')")
    invite_url = page.inner_text("#invite-url").strip()
    assert invite_url.startswith(f"{deployment.url}/console/invite/")
    screenshot(page, "journey-01-operator-invites")
    operator.close()

    # 2. The owner accepts the invite in their own browser and lands on the account.
    context = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(invite_url)
    page.fill("#password", OWNER_PASSWORD)
    page.fill("#confirm", OWNER_PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url.endswith(base)
    screenshot(page, "journey-02-owner-joined")

    # 3. The owner adds the Slack connection on the Connections page (the token is write-only) and tests it.
    set_slack_token(page, base, DEFAULT_TOKEN, new=True)
    page.click("#connection-1 button:has-text('Test')")
    assert "Test of team-slack: works" in page.inner_text("#test-result")
    screenshot(page, "journey-03-connection")

    # 4. The rules page: a recipe fills the editor, reusing the connection.
    page.goto(base + "rules")
    page.click("#recipes li:has-text('Missed call → Slack') button")
    expect(page.locator("#rules-text")).to_have_value(re.compile("missed call to slack"))
    draft = editor_text(page)
    assert "on: call.missed" in draft and "use: team-slack" in draft and "xoxb-your-bot-token" not in draft
    assert DEFAULT_TOKEN not in draft  # the stored token is never shown back
    screenshot(page, "journey-04-recipe")
    page.fill("#rules-text", draft.replace("C0123456789", DEFAULT_CHANNEL_ID))  # the recipe's placeholder

    # 5. Try it on the bundled missed-call hook: the rendered message, without a page load or a save.
    marker = page.evaluate("window.journeyMarker = Math.random()")
    page.select_option("#try-source", "sample:missed_call")
    page.click("#try button:has-text('Try it')")
    page.wait_for_selector("#try-result .actions")
    result = page.inner_text("#try-result")
    assert "missed call to slack" in result and "Missed call from" in result and "post_message" in result
    assert page.evaluate("window.journeyMarker") == marker  # htmx swapped a fragment: same page
    screenshot(page, "journey-05-try-it")

    # A mistake first: shown at its line, nothing saved.
    page.fill("#rules-text", editor_text(page).replace("on: call.missed", "on: call.mised"))
    with page.expect_navigation():
        page.click("button:has-text('Save and apply')")
    problem = page.inner_text("#problems")
    assert "call.mised" in problem and "line" in problem and "on[0]" in problem
    screenshot(page, "journey-06-problem-at-line")
    page.fill("#rules-text", editor_text(page).replace("on: call.mised", "on: call.missed"))

    # 6. Save: applied.
    with page.expect_navigation():
        page.click("button:has-text('Save and apply')")
    assert "Saved: the rules are applied" in page.inner_text("main")
    screenshot(page, "journey-07-saved")

    # 7. A real hook at the account's hook URL (read from the Settings page, as the owner would): the message
    # reaches Slack and the delivery shows on the Deliveries page.
    page.goto(base + "settings")
    hook_url = page.input_value("#hook-virtualpbx")
    answer = requests.post(hook_url, json=missed_call(account.account_id, caller), timeout=10)
    assert answer.status_code == 200, answer.text
    texts = wait_for(lambda: slack_texts(deployment, caller[-4:]), timeout=60, message="the Slack message")
    assert len(texts) == 1 and "Missed call from Pat Journey" in texts[0]
    row = newest_delivery(page, base, "succeeded")
    assert "missed call to slack" in row and "team-slack.post_message" in row
    screenshot(page, "journey-08-delivered")
    # The stored event is now offered to "try it" too.
    page.goto(base + "rules")
    event_option = page.locator("#try-source option", has_text=f"call.missed · {caller}")
    page.select_option("#try-source", event_option.get_attribute("value"))
    page.click("#try button:has-text('Try it')")
    page.wait_for_selector("#try-result .actions")
    assert "Missed call from Pat Journey" in page.inner_text("#try-result")
    screenshot(page, "journey-08b-try-stored-event")

    # 8. Break the connection (a wrong token, through the Connections page); the next missed call fails.
    set_slack_token(page, base, "xoxb-0000-wrong-token")
    second = f"+1202556{uuid.uuid4().int % 10000:04d}"
    assert requests.post(hook_url, json=missed_call(account.account_id, second), timeout=10).status_code == 200
    row = newest_delivery(page, base, "paused")
    assert "invalid_auth" in row or "token" in row
    screenshot(page, "journey-09-failure")
    assert slack_texts(deployment, second[-4:]) == []

    # 9. Fix it: the right token again; the connection's test works.
    set_slack_token(page, base, DEFAULT_TOKEN)
    page.click("#connection-1 button:has-text('Test')")
    assert "works" in page.inner_text("#test-result")
    screenshot(page, "journey-10-fixed")

    # 10. Bulk replay of what failed, and it arrives.
    bulk_replay(page, base)
    texts = wait_for(lambda: slack_texts(deployment, second[-4:]), timeout=60, message="the replayed message")
    assert len(texts) == 1
    newest_delivery(page, base, "succeeded")
    screenshot(page, "journey-12-replayed")
    context.close()


def set_slack_token(page, base: str, token: str, *, new: bool = False) -> None:
    """Add the team-slack connection (``new``) or change its bot token, through the Connections page's form."""
    page.goto(base + "connections")
    if new:
        page.fill("#new-name", "team-slack")
        page.select_option("#new-integration", "slack")
        page.click("form:has(#new-name) button:has-text('Next')")
    else:
        page.click("#connection-1 a:has-text('Change')")
    page.fill("#field-bot_token", token)
    with page.expect_navigation():
        page.click("button:has-text('Save')")
    assert "Saved team-slack" in page.inner_text("main"), page.inner_text("main")


def newest_delivery(page, base: str, status: str) -> str:
    """The Deliveries page's newest row once it shows ``status`` (reloading while it does not); its text."""
    def row() -> str | None:
        page.goto(base + "deliveries")
        text = page.inner_text("table tr:nth-child(2)")
        return text if status in text else None
    return wait_for(row, timeout=60, interval=1, message=f"a {status} delivery on the Deliveries page")


def bulk_replay(page, base: str) -> None:
    """Replay every paused delivery from the Deliveries page (saved filter "Paused") and wait for the job to end."""
    page.goto(base + "deliveries")
    page.click("nav.chips a:has-text('Paused')")
    assert "paused" in page.inner_text("table tr:nth-child(2)")
    with page.expect_navigation():
        page.click("button:has-text('Replay all matching')")
    expect(page.locator("#replay-progress")).to_contain_text("finished", timeout=60_000)  # htmx polls it
    assert "1 of 1 replayed" in page.inner_text("#replay-progress")
    screenshot(page, "journey-11-bulk-replay")
