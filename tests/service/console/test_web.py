"""The console pages over HTTP (Flask test client, real Redis, SQLite and PostgreSQL): sign-in, CSRF, limits,
invites, session expiry and revocation, and role checks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service.config import Settings
from service.console import invites, users
from service.console.audit import CLI_ACTOR, audit_entries
from service.store.access import ConsoleSession, Invite, User
from service.store.models import session_factory, utcnow
from service.web.app import create_app
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B, PASSWORD

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture
def console(tmp_path, database_url, sessions_for, redis_url, namespace, redis_client):
    """An app on a database with accounts A and B and users: an operator, and owner/editor/viewer of A."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode())
    with sessions_for.begin() as db:
        users.create_user(db, "op@example.com", PASSWORD, is_operator=True, actor=CLI_ACTOR)
        for role in ("owner", "editor", "viewer"):
            user = users.create_user(db, f"{role}@example.com", PASSWORD, is_operator=False, actor=CLI_ACTOR)
            users.set_role(db, ACCOUNT_A, user, role, actor=CLI_ACTOR)
    app = create_app(settings, start_drainer=False)
    app.settings = settings
    return app


def csrf_of(response) -> str:
    """The CSRF token in a rendered form."""
    return CSRF.search(response.get_data(as_text=True)).group(1)


def sign_in(client, email: str, password: str = PASSWORD):
    """Load the sign-in form and post it; returns the POST's response."""
    token = csrf_of(client.get("/console/login"))
    return client.post("/console/login", data={"email": email, "password": password, "csrf_token": token})


def signed_in(app, email: str):
    """A test client signed in as ``email``."""
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def session_rows(url: str) -> list[ConsoleSession]:
    """Every stored console session."""
    with session_factory(url).begin() as db:
        return list(db.scalars(sa.select(ConsoleSession)))


def test_sign_in_and_out(console):
    """Signed out pages go to the sign-in form; a good password gets an HttpOnly, Lax session; signing out ends it."""
    client = console.test_client()
    first = client.get("/console/")
    assert first.status_code == 302 and first.headers["Location"].endswith("/console/login?next=/console/")
    response = sign_in(client, "OWNER@example.com")
    assert response.status_code == 302 and response.headers["Location"] == "/console/"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("pbxrelay_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    home = client.get("/console/")
    assert home.status_code == 200 and "Acme Dental" in home.get_data(as_text=True)
    assert "Bolt Plumbing" not in home.get_data(as_text=True)
    assert home.headers["Cache-Control"] == "no-store" and home.headers["Referrer-Policy"] == "no-referrer"
    session_value = client.get_cookie("pbxrelay_session").value
    out = client.post("/console/logout", data={"csrf_token": csrf_of(client.get("/console/logout"))})
    assert out.status_code == 302 and client.get_cookie("pbxrelay_session") is None
    # The old cookie value is dead on the server, not just forgotten by this browser.
    client.set_cookie("pbxrelay_session", session_value)
    assert client.get("/console/").status_code == 302


def test_wrong_password_and_unknown_email_look_the_same(console):
    """A wrong password and an unknown email get the same status and words (no user enumeration)."""
    wrong = sign_in(console.test_client(), "owner@example.com", "not the password")
    unknown = sign_in(console.test_client(), "nobody@example.com", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    for response in (wrong, unknown):
        assert "Wrong email or password." in response.get_data(as_text=True)
        assert not any(c.startswith("pbxrelay_session=") for c in response.headers.getlist("Set-Cookie"))


def test_operator_sees_every_account_and_members_only_theirs(console):
    """The home page lists every account for an operator; a member of A gets 404 for B, and for unknown ids."""
    op = signed_in(console, "op@example.com")
    text = op.get("/console/").get_data(as_text=True)
    assert "Acme Dental" in text and "Bolt Plumbing" in text
    assert op.get(f"/console/accounts/{ACCOUNT_B}/").status_code == 200
    owner = signed_in(console, "owner@example.com")
    assert owner.get(f"/console/accounts/{ACCOUNT_A}/").status_code == 200
    assert owner.get(f"/console/accounts/{ACCOUNT_B}/").status_code == 404
    assert owner.get(f"/console/accounts/{'c' * 32}/").status_code == 404


@pytest.mark.parametrize("role, status", [("viewer", 403), ("editor", 403), ("owner", 200)])
def test_only_owners_manage_members_and_keys(console, role, status):
    """Viewers and editors cannot invite or create API keys (403); in another account everyone gets 404."""
    client = signed_in(console, f"{role}@example.com")
    token = csrf_of(client.get("/console/logout"))
    invite = client.post(f"/console/accounts/{ACCOUNT_A}/invites",
                         data={"email": "new@example.com", "role": "viewer", "csrf_token": token})
    key = client.post(f"/console/accounts/{ACCOUNT_A}/api-keys",
                      data={"name": "zapier", "scope": "write", "csrf_token": token})
    assert (invite.status_code, key.status_code) == (status, status)
    for path in ("invites", "api-keys"):
        assert client.post(f"/console/accounts/{ACCOUNT_B}/{path}", data={"csrf_token": token}).status_code == 404
    with session_factory(console.settings.database_url)() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Invite)) == (1 if role == "owner" else 0)


def test_an_api_key_is_shown_once(console):
    """A new key's secret is on the page that created it, and never on the account page again."""
    client = signed_in(console, "owner@example.com")
    token = csrf_of(client.get(f"/console/accounts/{ACCOUNT_A}/settings"))
    created = client.post(f"/console/accounts/{ACCOUNT_A}/api-keys",
                          data={"name": "zapier", "scope": "read", "csrf_token": token}).get_data(as_text=True)
    secret = re.search(r"pbx_[A-Za-z0-9_-]{43}", created).group(0)
    later = client.get(f"/console/accounts/{ACCOUNT_A}/settings").get_data(as_text=True)
    assert secret not in later and secret[:12] in later
    bad = client.post(f"/console/accounts/{ACCOUNT_A}/api-keys", data={"name": "", "scope": "read",
                                                                      "csrf_token": token})
    assert bad.status_code == 400 and "name: an API key needs a name" in bad.get_data(as_text=True)


def test_forms_without_a_valid_csrf_token_are_refused(console):
    """Missing, wrong or another session's token: 400, nothing done; the X-CSRFToken header (htmx) works."""
    client = signed_in(console, "owner@example.com")
    other = signed_in(console, "viewer@example.com")
    foreign = csrf_of(other.get("/console/logout"))
    data = {"email": "new@example.com", "role": "viewer"}
    url = f"/console/accounts/{ACCOUNT_A}/invites"
    assert client.post(url, data=data).status_code == 400
    assert client.post(url, data={**data, "csrf_token": "0" * 64}).status_code == 400
    assert client.post(url, data={**data, "csrf_token": foreign}).status_code == 400
    assert client.post("/console/logout", data={"csrf_token": foreign}).status_code == 400
    assert client.get("/console/").status_code == 200  # still signed in
    anonymous = console.test_client()
    assert anonymous.post("/console/login",
                          data={"email": "owner@example.com", "password": PASSWORD}).status_code == 400
    own = csrf_of(client.get("/console/logout"))
    assert client.post(url, data=data, headers={"X-CSRFToken": own}).status_code == 200


def test_sign_in_is_rate_limited_per_email(console):
    """After five failures the email is blocked, even with the right password, and an unknown email alike."""
    client = console.test_client()
    for _ in range(5):
        assert sign_in(client, "owner@example.com", "not the password").status_code == 401
        assert sign_in(client, "ghost@example.com", "not the password").status_code == 401
    blocked = sign_in(client, "owner@example.com")
    ghost = sign_in(client, "ghost@example.com")
    assert blocked.status_code == ghost.status_code == 429
    assert "Too many failed sign-ins. Try again in 15 minutes." in blocked.get_data(as_text=True)
    assert sign_in(client, "editor@example.com").status_code == 302  # other emails are unaffected


def test_invite_link_works_once(console):
    """An invite sets the password and signs the person in to its account; the link then answers 410."""
    with session_factory(console.settings.database_url).begin() as db:
        token = invites.create_invite(db, ACCOUNT_A, "new@example.com", "editor", actor=CLI_ACTOR)
    client = console.test_client()
    page = client.get(f"/console/invite/{token}")
    assert page.status_code == 200 and "Join Acme Dental" in page.get_data(as_text=True)
    form = {"csrf_token": csrf_of(page), "password": PASSWORD, "confirm": PASSWORD + "x"}
    differ = client.post(f"/console/invite/{token}", data=form)
    assert differ.status_code == 400 and "The two passwords differ." in differ.get_data(as_text=True)
    short = client.post(f"/console/invite/{token}", data={**form, "password": "short", "confirm": "short"})
    assert short.status_code == 400 and "password: must be at least 12 characters" in short.get_data(as_text=True)
    accepted = client.post(f"/console/invite/{token}", data={**form, "confirm": PASSWORD})
    assert accepted.status_code == 302 and accepted.headers["Location"] == f"/console/accounts/{ACCOUNT_A}/"
    assert "Your role: <strong>editor</strong>" in client.get(accepted.headers["Location"]).get_data(as_text=True)
    again = console.test_client().get(f"/console/invite/{token}")
    assert again.status_code == 410 and "has been used already" in again.get_data(as_text=True)
    assert signed_in(console, "new@example.com").get(f"/console/accounts/{ACCOUNT_B}/").status_code == 404


def test_expired_invite_is_refused(console):
    """An invite past its expiry answers 410 and creates nobody."""
    url = console.settings.database_url
    with session_factory(url).begin() as db:
        token = invites.create_invite(db, ACCOUNT_A, "new@example.com", "viewer", actor=CLI_ACTOR)
        db.flush()
        db.scalar(sa.select(Invite)).expires_at = utcnow() - timedelta(minutes=1)
    client = console.test_client()
    assert "has expired" in client.get(f"/console/invite/{token}").get_data(as_text=True)
    csrf_token = csrf_of(client.get("/console/login"))
    posted = client.post(f"/console/invite/{token}", data={"csrf_token": csrf_token, "password": PASSWORD,
                                                           "confirm": PASSWORD})
    assert posted.status_code == 410
    with session_factory(url)() as db:
        assert db.scalar(sa.select(User).where(User.email == "new@example.com")) is None


@pytest.mark.parametrize("column, age", [("last_seen_at", timedelta(hours=2, seconds=1)),
                                         ("expires_at", timedelta(seconds=-1))])
def test_sessions_expire_idle_and_absolute(console, column, age):
    """A session idle longer than the idle timeout, or past its absolute expiry, sends the browser to sign in."""
    client = signed_in(console, "owner@example.com")
    assert client.get("/console/").status_code == 200
    with session_factory(console.settings.database_url).begin() as db:
        row = db.scalar(sa.select(ConsoleSession))
        setattr(row, column, utcnow() - age if column == "last_seen_at" else utcnow() + age)
    assert client.get("/console/").status_code == 302


def test_sign_out_everywhere(console):
    """Signing out everywhere ends the user's sessions in every browser, and nobody else's."""
    laptop, phone = signed_in(console, "owner@example.com"), signed_in(console, "owner@example.com")
    colleague = signed_in(console, "editor@example.com")
    token = csrf_of(phone.get("/console/logout"))
    assert phone.post("/console/logout", data={"csrf_token": token, "everywhere": "1"}).status_code == 302
    assert laptop.get("/console/").status_code == 302 and phone.get("/console/").status_code == 302
    assert colleague.get("/console/").status_code == 200
    assert sum(row.revoked_at is None for row in session_rows(console.settings.database_url)) == 1
    with session_factory(console.settings.database_url)() as db:
        entry = audit_entries(db, None, limit=1)[0]
    assert entry.kind == "signed_out_everywhere" and entry.actor.startswith("user:") and "2 session(s)" in entry.detail


def test_signing_in_again_ends_the_previous_session_of_that_browser(console):
    """A new sign-in in the same browser revokes the session it replaces (no stale sessions left behind)."""
    client = signed_in(console, "owner@example.com")
    assert sign_in(client, "editor@example.com").status_code == 302
    assert [row.revoked_at is None for row in session_rows(console.settings.database_url)].count(True) == 1


def test_next_only_leads_back_into_the_console(console):
    """?next= pointing off-site is ignored (no open redirect)."""
    for target in ("https://evil.example/", "//evil.example/console/", "/console/accounts/x/"):
        client = console.test_client()
        token = csrf_of(client.get("/console/login"))
        response = client.post("/console/login", data={"email": "owner@example.com", "password": PASSWORD,
                                                       "csrf_token": token, "next": target})
        expected = target if target.startswith("/console/") else "/console/"
        assert response.headers["Location"] == expected


def test_https_public_url_makes_cookies_secure(console, tmp_path, database_url):
    """Behind an https public URL the session cookie is Secure, HttpOnly, Lax, with the __Host- prefix."""
    settings = console.settings.model_copy(update={"public_url": "https://relay.example"})
    client = create_app(settings, start_drainer=False).test_client()
    response = sign_in(client, "owner@example.com")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-pbxrelay_session="))
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"))
