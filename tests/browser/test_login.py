"""The existing sign-in and invite pages in a real browser, against the service running as processes."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot, sign_in

pytestmark = pytest.mark.e2e


def test_operator_signs_in_and_sees_accounts(page, deployment):
    """A wrong password is refused on the page; the right one lands on the accounts list naming the account."""
    account = deployment.new_account("Browser Dental")
    page.goto("/console/")
    assert "/console/login" in page.url  # signed out: sent to the form
    page.fill("#email", deployment.operator_email)
    page.fill("#password", "not the password at all")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "Wrong email or password."
    screenshot(page, "login-01-wrong-password")
    sign_in(page, deployment.operator_email)
    assert page.url.endswith("/console/")
    assert "You are an operator" in page.inner_text("main")
    page.click("text=Browser Dental")
    assert page.url.endswith(f"/console/accounts/{account.account_id}/")
    assert page.locator("h1").inner_text() == "Browser Dental"
    screenshot(page, "login-02-account")


def test_invited_editor_joins_and_lands_on_the_account(page, deployment):
    """An invite link opens a join form; differing passwords are refused; matching ones sign the new editor in."""
    account = deployment.new_account("Invite Plumbing")
    email = f"editor-{account.account_id[:8]}@example.com"
    link = deployment.invite(account.account_id, email, "editor")
    page.goto(link)
    assert page.locator("h1").inner_text() == "Join Invite Plumbing"
    assert email in page.inner_text("main") and "editor" in page.inner_text("main")
    screenshot(page, "invite-01-form")
    page.fill("#password", "a long enough passphrase")
    page.fill("#confirm", "a different passphrase!")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "The two passwords differ."
    page.fill("#password", "a long enough passphrase")
    page.fill("#confirm", "a long enough passphrase")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url.endswith(f"/console/accounts/{account.account_id}/")
    assert "Your role: editor" in page.inner_text("main")
    screenshot(page, "invite-02-joined")
    # The link worked once: opened again it is refused.
    page.goto(link)
    assert page.locator("h1").inner_text() == "Invite"
    # And the new member can sign in again with the password they chose.
    page.context.clear_cookies()
    sign_in(page, email, "a long enough passphrase")
    assert "Invite Plumbing" in page.inner_text("main")
