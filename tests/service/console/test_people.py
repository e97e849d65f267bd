"""Users, memberships, sessions, invites, API keys, require() and the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.console import access, apikeys, invites, sessions, users
from service.console.audit import CLI_ACTOR, audit, audit_entries
from service.console.errors import ConsoleError, Forbidden, NotFound
from service.events import aware
from service.store.access import ApiKey, ConsoleSession, Invite, User
from service.store.models import AuditEntry, hash_token, utcnow
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B, PASSWORD


def make_user(factory, email="ann@example.com", *, operator=False, account=None, role=None) -> int:
    """A user (optionally a member of ``account`` with ``role``); returns its id."""
    with factory.begin() as db:
        user = users.create_user(db, email, PASSWORD, is_operator=operator, actor=CLI_ACTOR)
        if account:
            users.set_role(db, account, user, role, actor=CLI_ACTOR)
        return user.id


# --- users ---------------------------------------------------------------------------------------------

def test_email_is_unique_whatever_its_case(sessions_for):
    """A second user with the same email in other case is refused, naming the email field."""
    make_user(sessions_for, "Ann@Example.com")
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="^email: a user ann@example.com exists"):
        users.create_user(db, "ANN@example.COM", PASSWORD, is_operator=False, actor=CLI_ACTOR)
    with sessions_for() as db:
        assert db.scalars(sa.select(User.email)).all() == ["ann@example.com"]


def test_the_unique_index_holds_even_past_the_check(sessions_for):
    """The database itself refuses a duplicate email (two requests racing past the Python check)."""
    make_user(sessions_for)
    with pytest.raises(sa.exc.IntegrityError), sessions_for.begin() as db:
        db.add(User(email="ann@example.com", password_hash="x", is_operator=False))


@pytest.mark.parametrize("email", ["", "ann", "ann@", "a b@example.com", "x" * 320 + "@example.com"])
def test_bad_emails_are_refused(sessions_for, email):
    """Malformed addresses are a ConsoleError naming the email field."""
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="^email:"):
        users.create_user(db, email, PASSWORD, is_operator=False, actor=CLI_ACTOR)


def test_authenticate(sessions_for):
    """The right password signs in (case-insensitive email) and records the time; wrong, unknown and disabled do not."""
    user_id = make_user(sessions_for)
    with sessions_for.begin() as db:
        assert users.authenticate(db, "ANN@example.com", "wrong password here") is None
        assert users.authenticate(db, "nobody@example.com", PASSWORD) is None
        assert users.authenticate(db, "not an email", PASSWORD) is None
        signed = users.authenticate(db, "ANN@example.com", PASSWORD)
        assert signed is not None and signed.id == user_id and signed.last_login_at is not None
        users.disable_user(db, signed, actor=CLI_ACTOR)
    with sessions_for.begin() as db:
        assert users.authenticate(db, "ann@example.com", PASSWORD) is None


def test_sign_in_upgrades_an_old_hash(sessions_for, monkeypatch):
    """A hash made with older parameters is replaced at the next good sign-in."""
    from service.console import passwords

    make_user(sessions_for)
    monkeypatch.setattr(passwords, "N", 2**11)
    with sessions_for.begin() as db:
        users.authenticate(db, "ann@example.com", PASSWORD)
    with sessions_for() as db:
        assert db.scalar(sa.select(User.password_hash)).startswith("scrypt$2048,")


def test_roles_and_the_last_owner(sessions_for):
    """set_role adds or changes a membership; the last owner cannot be demoted or removed; members lists them."""
    owner = make_user(sessions_for, "owner@example.com", account=ACCOUNT_A, role="owner")
    viewer = make_user(sessions_for, "viewer@example.com", account=ACCOUNT_A, role="viewer")
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="^role: the account's last owner"):
        users.set_role(db, ACCOUNT_A, db.get(User, owner), "editor", actor=CLI_ACTOR)
    with sessions_for.begin() as db:
        users.set_role(db, ACCOUNT_A, db.get(User, viewer), "owner", actor=CLI_ACTOR)
        users.set_role(db, ACCOUNT_A, db.get(User, owner), "editor", actor=CLI_ACTOR)
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="last owner"):
        users.remove_member(db, ACCOUNT_A, viewer, actor=CLI_ACTOR)
    with sessions_for.begin() as db:
        users.remove_member(db, ACCOUNT_A, owner, actor=CLI_ACTOR)
        with pytest.raises(NotFound):
            users.remove_member(db, ACCOUNT_A, owner, actor=CLI_ACTOR)
    with sessions_for() as db:
        assert [(u.email, role) for u, role in users.members(db, ACCOUNT_A)] == [("viewer@example.com", "owner")]
        assert users.members(db, ACCOUNT_B) == []


@pytest.mark.parametrize("account, role, message",
                         [(ACCOUNT_A, "admin", "^role:"), ("c" * 32, "viewer", "^account_id:")])
def test_set_role_refuses_bad_input(sessions_for, account, role, message):
    """An unknown role or account is a ConsoleError naming the field."""
    user_id = make_user(sessions_for)
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match=message):
        users.set_role(db, account, db.get(User, user_id), role, actor=CLI_ACTOR)


# --- require -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role, allowed", [
    ("viewer", {"read"}),
    ("editor", {"read", "write_rules", "write_connections", "replay"}),
    ("owner", set(access.ACTIONS)),
])
def test_require_by_role(sessions_for, role, allowed):
    """Each role may do exactly its actions in its account (Forbidden otherwise) and nothing in another (NotFound)."""
    user_id = make_user(sessions_for, account=ACCOUNT_A, role=role)
    with sessions_for() as db:
        principal = access.principal_for_user(db, db.get(User, user_id))
    for action in access.ACTIONS:
        if action in allowed:
            assert access.require(principal, ACCOUNT_A, action) == role
        else:
            with pytest.raises(Forbidden):
                access.require(principal, ACCOUNT_A, action)
        with pytest.raises(NotFound):
            access.require(principal, ACCOUNT_B, action)


def test_operators_act_everywhere_and_see_every_account(sessions_for):
    """An operator may do every action in every account; members see only their accounts."""
    operator = make_user(sessions_for, "op@example.com", operator=True)
    member = make_user(sessions_for, "ann@example.com", account=ACCOUNT_B, role="viewer")
    with sessions_for() as db:
        op = access.principal_for_user(db, db.get(User, operator))
        ann = access.principal_for_user(db, db.get(User, member))
        for account in (ACCOUNT_A, ACCOUNT_B):
            for action in access.ACTIONS:
                assert access.require(op, account, action) == "owner"
        assert [a.id for a in access.reachable_accounts(db, op)] == [ACCOUNT_A, ACCOUNT_B]
        assert [a.id for a in access.reachable_accounts(db, ann)] == [ACCOUNT_B]


def test_require_refuses_nobody_and_unknown_actions():
    """No principal is NotFound; a misspelt action is a programming error, not a silent allow."""
    with pytest.raises(NotFound):
        access.require(None, ACCOUNT_A, "read")
    with pytest.raises(ValueError, match="^action: unknown action 'raed'"):
        access.require(access.Principal(kind="user", id=1, name="x", is_operator=True), ACCOUNT_A, "raed")


# --- sessions ------------------------------------------------------------------------------------------

def test_sessions_expire_when_idle_or_old_and_can_be_revoked(sessions_for):
    """A session lives until idle or absolute expiry or revocation; only its hash is stored."""
    user_id = make_user(sessions_for)
    with sessions_for.begin() as db:
        user = db.get(User, user_id)
        live, idle, old, revoked = (sessions.create_session(db, user, absolute_seconds=3600) for _ in range(4))
        assert db.get(ConsoleSession, live) is None  # the cookie value is not the key
    with sessions_for.begin() as db:
        rows = {row.id: row for row in db.scalars(sa.select(ConsoleSession))}
        rows[hash_token(idle)].last_seen_at = utcnow() - timedelta(seconds=601)
        rows[hash_token(old)].expires_at = utcnow() - timedelta(seconds=1)
        sessions.revoke_session(db, revoked)
    with sessions_for.begin() as db:
        found = sessions.load_session(db, live, idle_seconds=600)
        assert found is not None and found[1].id == user_id
        for token in (idle, old, revoked, "made-up", None):
            assert sessions.load_session(db, token, idle_seconds=600) is None


def test_sign_out_everywhere_and_disabling_end_sessions(sessions_for):
    """revoke_all_sessions ends every live session of the user; a disabled user's sessions stop working."""
    ann, bob = make_user(sessions_for, "ann@example.com"), make_user(sessions_for, "bob@example.com")
    with sessions_for.begin() as db:
        tokens = [sessions.create_session(db, db.get(User, ann), absolute_seconds=3600) for _ in range(3)]
        bobs = sessions.create_session(db, db.get(User, bob), absolute_seconds=3600)
    with sessions_for.begin() as db:
        assert sessions.revoke_all_sessions(db, ann, actor=f"user:{ann}") == 3
        assert audit_entries(db, None, limit=1)[0].actor == f"user:{ann}"
    with sessions_for.begin() as db:
        assert all(sessions.load_session(db, t, idle_seconds=600) is None for t in tokens)
        assert sessions.load_session(db, bobs, idle_seconds=600) is not None
        users.disable_user(db, db.get(User, bob), actor=CLI_ACTOR)
    with sessions_for.begin() as db:
        assert sessions.load_session(db, bobs, idle_seconds=600) is None


def test_last_seen_is_written_at_most_once_a_minute(sessions_for):
    """Loading a session touches last_seen_at only when it is a minute old (cheap on busy pages)."""
    user_id = make_user(sessions_for)
    with sessions_for.begin() as db:
        token = sessions.create_session(db, db.get(User, user_id), absolute_seconds=3600)
    with sessions_for.begin() as db:
        row, _ = sessions.load_session(db, token, idle_seconds=600)
        assert not db.dirty
        row.last_seen_at = utcnow() - timedelta(seconds=61)
    with sessions_for.begin() as db:
        row, _ = sessions.load_session(db, token, idle_seconds=600)
        assert (utcnow() - aware(row.last_seen_at)).total_seconds() < 5


# --- invites -------------------------------------------------------------------------------------------

def test_invite_creates_the_user_and_membership_once(sessions_for):
    """Accepting sets the password and the role; the link then refuses a second use; only its hash is stored."""
    with sessions_for.begin() as db:
        token = invites.create_invite(db, ACCOUNT_A, "New@Example.com", "editor", actor=CLI_ACTOR)
        assert db.scalar(sa.select(Invite.token_hash)) != token
    assert invites.invite_url("https://relay.example/", token) == f"https://relay.example/console/invite/{token}"
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="^password: must be at least"):
        invites.accept_invite(db, token, "short")
    with sessions_for.begin() as db:
        user = invites.accept_invite(db, token, PASSWORD)
        assert user.email == "new@example.com"
        assert access.principal_for_user(db, user).roles == {ACCOUNT_A: "editor"}
    with sessions_for.begin() as db:
        with pytest.raises(invites.InviteError, match="used already"):
            invites.accept_invite(db, token, PASSWORD)
        assert users.authenticate(db, "new@example.com", PASSWORD) is not None


def test_invite_for_an_existing_user_needs_their_password(sessions_for):
    """Holding a link for an existing user's email is not enough: their own password is required; no password change."""
    user_id = make_user(sessions_for, account=ACCOUNT_A, role="viewer")
    with sessions_for.begin() as db:
        token = invites.create_invite(db, ACCOUNT_B, "ann@example.com", "owner", actor=CLI_ACTOR)
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match="^password: wrong password"):
        invites.accept_invite(db, token, "attacker's new password")
    with sessions_for.begin() as db:
        assert invites.accept_invite(db, token, PASSWORD).id == user_id
        assert access.principal_for_user(db, db.get(User, user_id)).roles == {ACCOUNT_A: "viewer", ACCOUNT_B: "owner"}


def test_invites_expire_and_unknown_links_are_refused(sessions_for):
    """An expired invite or a made-up token cannot be used, with a message that says which."""
    with sessions_for.begin() as db:
        token = invites.create_invite(db, ACCOUNT_A, "new@example.com", "viewer", actor=CLI_ACTOR, hours=1)
    with sessions_for.begin() as db:
        db.scalar(sa.select(Invite)).expires_at = utcnow() - timedelta(seconds=1)
    with sessions_for.begin() as db:
        with pytest.raises(invites.InviteError, match="expired"):
            invites.accept_invite(db, token, PASSWORD)
        with pytest.raises(invites.InviteError, match="not valid"):
            invites.find_invite(db, "made-up")
        assert users.find_user(db, "new@example.com") is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(account_id=ACCOUNT_A, email="x", role="viewer"), "^email:"),
    (dict(account_id=ACCOUNT_A, email="x@example.com", role="boss"), "^role:"),
    (dict(account_id="c" * 32, email="x@example.com", role="viewer"), "^account_id:"),
    (dict(account_id=ACCOUNT_A, email="x@example.com", role="viewer", hours=0), "^hours:"),
])
def test_create_invite_refuses_bad_input(sessions_for, kwargs, message):
    """Each bad field is named in the error and nothing is stored."""
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match=message):
        invites.create_invite(db, actor=CLI_ACTOR, **kwargs)
    with sessions_for() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Invite)) == 0


# --- API keys ------------------------------------------------------------------------------------------

def test_api_key_lifecycle(sessions_for):
    """A key authenticates as its account with its scope's role until revoked; only hash and prefix are stored."""
    with sessions_for.begin() as db:
        write = apikeys.create_api_key(db, ACCOUNT_A, " zapier ", "write", actor="user:1")
        read = apikeys.create_api_key(db, ACCOUNT_A, "dashboard", "read", actor="user:1")
        stored = db.get(ApiKey, write.key.id)
        assert stored.name == "zapier" and write.secret.startswith(stored.prefix) and len(stored.prefix) == 12
        assert write.secret not in (stored.key_hash, stored.prefix)
    with sessions_for.begin() as db:
        principal = apikeys.authenticate_api_key(db, f"Bearer {write.secret}")
        assert principal.actor == f"api_key:{write.key.id}" and not principal.is_operator
        assert access.require(principal, ACCOUNT_A, "write_rules") == "editor"
        with pytest.raises(Forbidden):
            access.require(principal, ACCOUNT_A, "manage_api_keys")
        with pytest.raises(NotFound):
            access.require(principal, ACCOUNT_B, "read")
        reader = apikeys.authenticate_api_key(db, f"bearer {read.secret}")
        with pytest.raises(Forbidden):
            access.require(reader, ACCOUNT_A, "write_rules")
        assert db.get(ApiKey, write.key.id).last_used_at is not None
    with sessions_for.begin() as db:
        apikeys.revoke_api_key(db, ACCOUNT_A, write.key.id, actor="user:1")
    with sessions_for.begin() as db:
        assert apikeys.authenticate_api_key(db, f"Bearer {write.secret}") is None
        assert apikeys.authenticate_api_key(db, f"Bearer {read.secret}") is not None
        assert [k.name for k in apikeys.list_api_keys(db, ACCOUNT_A)] == ["dashboard", "zapier"]


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer pbx_unknown", "Token pbx_x"])
def test_api_key_bad_headers_are_no_principal(sessions_for, header):
    """Missing, malformed and unknown headers authenticate nobody."""
    with sessions_for.begin() as db:
        assert apikeys.authenticate_api_key(db, header) is None


def test_api_key_last_used_is_written_at_most_once_a_minute(sessions_for):
    """A second use within the minute does not write; one after a minute does."""
    with sessions_for.begin() as db:
        new = apikeys.create_api_key(db, ACCOUNT_A, "k", "read", actor="user:1")
    with sessions_for.begin() as db:
        apikeys.authenticate_api_key(db, f"Bearer {new.secret}")
    with sessions_for.begin() as db:
        apikeys.authenticate_api_key(db, f"Bearer {new.secret}")
        assert not db.dirty
        db.get(ApiKey, new.key.id).last_used_at = utcnow() - timedelta(seconds=61)
    with sessions_for.begin() as db:
        apikeys.authenticate_api_key(db, f"Bearer {new.secret}")
        assert db.dirty


def test_another_accounts_key_cannot_be_revoked(sessions_for):
    """Revoking with the wrong account id is NotFound and leaves the key working."""
    with sessions_for.begin() as db:
        new = apikeys.create_api_key(db, ACCOUNT_A, "k", "read", actor="user:1")
    with sessions_for.begin() as db, pytest.raises(NotFound):
        apikeys.revoke_api_key(db, ACCOUNT_B, new.key.id, actor="user:2")
    with sessions_for.begin() as db:
        assert apikeys.authenticate_api_key(db, f"Bearer {new.secret}") is not None


@pytest.mark.parametrize("name, scope, message", [("", "read", "^name:"), ("k", "admin", "^scope:")])
def test_create_api_key_refuses_bad_input(sessions_for, name, scope, message):
    """A missing name or unknown scope is refused, naming the field."""
    with sessions_for.begin() as db, pytest.raises(ConsoleError, match=message):
        apikeys.create_api_key(db, ACCOUNT_A, name, scope, actor="user:1")


# --- audit ---------------------------------------------------------------------------------------------

def test_changes_are_audited_with_their_actor(sessions_for):
    """Console changes land in the audit log with who made them; service entries default to "service"."""
    user_id = make_user(sessions_for, "op@example.com", operator=True)
    with sessions_for.begin() as db:
        token = invites.create_invite(db, ACCOUNT_A, "new@example.com", "owner", actor=f"user:{user_id}")
        new = invites.accept_invite(db, token, PASSWORD)
        apikeys.create_api_key(db, ACCOUNT_A, "k", "read", actor=f"user:{new.id}")
        db.add(AuditEntry(account_id=ACCOUNT_A, kind="reconciled", detail="by the scheduler"))
    with sessions_for() as db:
        got = [(e.kind, e.actor) for e in reversed(audit_entries(db, ACCOUNT_A))]
        assert got == [("member_invited", f"user:{user_id}"), ("member_role", f"user:{new.id}"),
                       ("invite_accepted", f"user:{new.id}"), ("api_key_created", f"user:{new.id}"),
                       ("reconciled", "service")]
        assert [(e.kind, e.actor) for e in audit_entries(db, None)] == [("user_added", f"user:{user_id}"),
                                                                         ("operator_added", CLI_ACTOR)]
        with pytest.raises(ValueError, match="^actor:"):
            audit(db, ACCOUNT_A, "x", "y", "")
