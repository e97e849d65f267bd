"""The rules page in a real browser: a viewer reads only; history shows a version's changes; rollback applies an
old version again."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from service.sandbox.standins.slack import DEFAULT_CHANNEL_ID, DEFAULT_TOKEN
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.e2e


def rules_for(account_id: str, text: str) -> str:
    """A one-rule Slack file for the account whose message is ``text``."""
    return (f"account: {{id: {account_id}, name: History Dental, timezone: America/New_York}}\n"
            f"connections:\n  team-slack: {{integration: slack, bot_token: {DEFAULT_TOKEN}}}\n"
            "rules:\n  - name: missed\n    on: call.missed\n    do:\n      - use: team-slack\n"
            f"        action: post_message\n        with: {{channel: {DEFAULT_CHANNEL_ID}, text: \"{text}\"}}\n")


def save(page, text: str) -> None:
    """Put ``text`` in the editor and save it."""
    page.fill("#rules-text", text)
    with page.expect_navigation():
        page.click("button:has-text('Save and apply')")
    assert "Saved" in page.inner_text("main"), page.inner_text("main")


def test_history_diff_and_rollback(operator_page, deployment):
    """Two saves make two versions; version 2's page shows the changed line; rolling back to 1 makes version 3."""
    page = operator_page
    account = deployment.new_account("History Dental")
    rules = f"/console/accounts/{account.account_id}/rules"
    page.goto(rules)
    save(page, rules_for(account.account_id, "First wording {{ caller.number }}"))
    save(page, rules_for(account.account_id, "Second wording {{ caller.number }}"))
    page.click("#history a:has-text('version 2')")
    expect(page.locator("pre.diff .del")).to_contain_text("First wording")
    expect(page.locator("pre.diff .add")).to_contain_text("Second wording")
    screenshot(page, "rules-history-diff")
    page.goto(rules)
    with page.expect_navigation():
        page.click("#history tr:has-text('version 1') button:has-text('Roll back to this')")
    assert "Rolled back: version 1 is applied again as version 3" in page.inner_text("main")
    expect(page.locator("#rules-text")).to_have_value(re.compile("First wording"))
    screenshot(page, "rules-rolled-back")


def test_viewer_reads_the_rules_only(page, deployment):
    """An invited viewer sees the rules read-only: no save, no recipes, but can try them."""
    account = deployment.new_account("Viewer Dental")
    email = f"viewer-{account.account_id[:8]}@example.com"
    page.goto(deployment.invite(account.account_id, email, "viewer"))
    page.fill("#password", "viewer passphrase ok")
    page.fill("#confirm", "viewer passphrase ok")
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.goto(f"/console/accounts/{account.account_id}/rules")
    assert page.locator("#rules-text").get_attribute("readonly") is not None
    assert page.locator("button:has-text('Save and apply')").count() == 0
    assert page.locator("#recipes").count() == 0
    page.click("#try button:has-text('Try it')")
    expect(page.locator("#try-result")).to_contain_text("No rule matched")
    screenshot(page, "rules-viewer")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: editor and panels stack
    screenshot(page, "rules-viewer-phone")
