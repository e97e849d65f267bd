"""The layout every account page shares: navigation, account switcher, CSRF for forms and htmx, static files."""

from __future__ import annotations

import pytest

from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.pages.conftest import signed_in

PAGES = ("", "calls", "deliveries", "connections", "settings")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_the_nav_and_csrf_for_htmx(console, path):
    """Each section renders with the nav (Rules links to its page), the CSRF meta and the hx-headers on body."""
    response = signed_in(console, "viewer@example.com").get(f"/console/accounts/{ACCOUNT_A}/{path}")
    text = response.get_data(as_text=True)
    assert response.status_code == 200, text
    for label, href in (("Overview", ""), ("Calls", "calls"), ("Deliveries", "deliveries"), ("Rules", "rules"),
                        ("Connections", "connections"), ("Settings", "settings")):
        assert f'<a href="/console/accounts/{ACCOUNT_A}/{href}"' in text and f">{label}</a>" in text
    assert '<meta name="csrf-token" content="' in text and "hx-headers='{\"X-CSRFToken\": \"" in text
    assert "/console/static/htmx.min.js" in text and "<script>" not in text  # no inline script (CSP)


@pytest.mark.parametrize("path", PAGES)
def test_another_accounts_pages_are_404(console, path):
    """A member of A gets 404 for every page of B and of an unknown account; an operator sees B."""
    client = signed_in(console, "owner@example.com")
    assert client.get(f"/console/accounts/{ACCOUNT_B}/{path}").status_code == 404
    assert client.get(f"/console/accounts/{'c' * 32}/{path}").status_code == 404
    assert signed_in(console, "op@example.com").get(f"/console/accounts/{ACCOUNT_B}/{path}").status_code == 200


def test_signed_out_goes_to_sign_in_and_back(console):
    """A signed-out visit to a filtered list is sent to the sign-in form with the whole URL to come back to."""
    response = console.test_client().get(f"/console/accounts/{ACCOUNT_A}/deliveries?status=failed")
    assert response.status_code == 302
    assert "/console/login?next=" in response.headers["Location"] and "status%3Dfailed" in response.headers["Location"]


def test_account_switcher(console):
    """Operators can switch to every account, members only to theirs (404 otherwise)."""
    op = signed_in(console, "op@example.com")
    page = op.get(f"/console/accounts/{ACCOUNT_A}/").get_data(as_text=True)
    assert f'<option value="{ACCOUNT_B}"' in page and "Bolt Plumbing" in page
    switched = op.get(f"/console/switch?account={ACCOUNT_B}")
    assert switched.status_code == 302 and switched.headers["Location"] == f"/console/accounts/{ACCOUNT_B}/"
    owner = signed_in(console, "owner@example.com")
    assert "Bolt Plumbing" not in owner.get(f"/console/accounts/{ACCOUNT_A}/").get_data(as_text=True)
    assert owner.get(f"/console/switch?account={ACCOUNT_B}").status_code == 404


def test_static_files_are_served_and_cacheable(console):
    """htmx, the stylesheet and the script are served from the app (no CDN), cacheable; pages are not."""
    client = console.test_client()
    htmx = client.get("/console/static/htmx.min.js")
    assert htmx.status_code == 200 and htmx.get_data(as_text=True).startswith("var htmx=function()")
    assert htmx.headers["Cache-Control"] == "max-age=3600"
    assert client.get("/console/static/console.css").status_code == 200
    assert client.get("/console/login").headers["Cache-Control"] == "no-store"


def test_switcher_is_bounded_and_keeps_the_current_account(console, monkeypatch):
    """With more accounts than the switcher shows, the current one is always among them."""
    from service.console.pages import common

    monkeypatch.setattr(common, "SWITCHER_MAX", 1)
    page = signed_in(console, "op@example.com").get(f"/console/accounts/{ACCOUNT_B}/").get_data(as_text=True)
    assert f'<option value="{ACCOUNT_B}" selected>' in page and f'<option value="{ACCOUNT_A}"' not in page
