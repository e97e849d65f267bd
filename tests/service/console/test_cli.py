"""`pbxrelay users` as an operator runs it: the first operator, invite links, list, sign-out (real processes)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from service.store.models import AuditEntry, session_factory
from tests.harness import Service

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def cli(tmp_path_factory, redis_url):
    """A deployment's CLI (no processes started) with one account."""
    svc = Service(tmp_path_factory.mktemp("users"), redis_url=redis_url, namespace=f"u{uuid.uuid4().hex[:8]}")
    svc.cli("migrate")
    svc.add_account(ACCOUNT)
    return svc


def test_first_operator_from_stdin_then_invite(cli):
    """users add --operator reads the password from stdin without echoing it; invite prints a console link."""
    added = cli.cli("users", "add", "Op@Example.com", "--operator", "--password-stdin", input=PASSWORD + "\n")
    assert "operator op@example.com added" in added.stdout and PASSWORD not in added.stdout + added.stderr
    again = cli.cli("users", "add", "op@example.com", "--operator", "--password-stdin", input=PASSWORD + "\n",
                    check=False)
    assert again.returncode == 1 and "email: a user op@example.com exists already" in again.stderr
    url = cli.cli("users", "invite", ACCOUNT, "owner@example.com", "--role", "owner").stdout.strip()
    assert url.startswith(f"{cli.url}/console/invite/") and len(url.rsplit("/", 1)[1]) >= 43
    listed = cli.cli("users", "list").stdout
    assert "op@example.com  operator  -" in listed
    with session_factory(cli.env["PBXRELAY_DATABASE_URL"])() as db:
        kinds = {(e.kind, e.actor) for e in db.scalars(sa.select(AuditEntry))}
    assert {("operator_added", "operator-cli"), ("member_invited", "operator-cli")} <= kinds


@pytest.mark.parametrize("args, stdin, code, message", [
    (["users", "add", "x@example.com", "--password-stdin"], "", 2, "only operators are added directly"),
    (["users", "add", "not-an-email", "--operator", "--password-stdin"], PASSWORD, 1, "email: 'not-an-email'"),
    (["users", "add", "x@example.com", "--operator", "--password-stdin"], "short\n", 1,
     "password: must be at least 12 characters"),
    (["users", "invite", ACCOUNT, "x@example.com"], None, 2, "Missing option '--role'"),
    (["users", "invite", ACCOUNT, "x@example.com", "--role", "boss"], None, 2, "'boss' is not one of"),
    (["users", "invite", "c" * 32, "x@example.com", "--role", "viewer"], None, 1, "account_id: no account"),
    (["users", "sign-out", "nobody@example.com"], None, 1, "email: no user nobody@example.com"),
], ids=["not-operator", "bad-email", "short-password", "no-role", "bad-role", "unknown-account", "unknown-user"])
def test_bad_input_gives_a_clear_error(cli, args, stdin, code, message):
    """Each bad invocation exits non-zero naming the field, with no traceback."""
    result = cli.cli(*args, check=False, input=stdin)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_sign_out_a_user_everywhere(cli):
    """users sign-out ends every live session of that user and says how many."""
    from service.console import sessions, users

    cli.cli("users", "add", "second@example.com", "--operator", "--password-stdin", input=PASSWORD + "\n")
    factory = session_factory(cli.env["PBXRELAY_DATABASE_URL"])
    with factory.begin() as db:
        user = users.find_user(db, "second@example.com")
        tokens = [sessions.create_session(db, user, absolute_seconds=3600) for _ in range(2)]
    assert "ended 2 session(s) of second@example.com" in cli.cli("users", "sign-out", "second@example.com").stdout
    with factory.begin() as db:
        assert all(sessions.load_session(db, token, idle_seconds=600) is None for token in tokens)


def test_disable_a_user(cli):
    """users disable stops the password working and ends the user's sessions."""
    from service.console import sessions, users

    cli.cli("users", "add", "leaver@example.com", "--operator", "--password-stdin", input=PASSWORD + "\n")
    factory = session_factory(cli.env["PBXRELAY_DATABASE_URL"])
    with factory.begin() as db:
        token = sessions.create_session(db, users.find_user(db, "leaver@example.com"), absolute_seconds=3600)
    assert "leaver@example.com disabled; ended 1 session(s)" in cli.cli("users", "disable", "leaver@example.com").stdout
    with factory.begin() as db:
        assert sessions.load_session(db, token, idle_seconds=600) is None
        assert users.authenticate(db, "leaver@example.com", PASSWORD) is None
    assert "leaver@example.com  operator disabled" in cli.cli("users", "list").stdout
