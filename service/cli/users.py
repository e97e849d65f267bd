"""`pbxrelay users`: the first operator, invite links, listing, signing a user out everywhere, disabling."""

from __future__ import annotations

import functools
import sys

import click
import sqlalchemy as sa

from service.cli.base import main, open_runtime
from service.console import invites, sessions, users
from service.console.audit import CLI_ACTOR
from service.console.errors import ConsoleError


def fail_on_console_errors(fn):
    """Turn a ConsoleError (bad email, weak password, unknown account, ...) into a clear message and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConsoleError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


@main.group("users")
def users_group() -> None:
    """Console users: operators, invites to accounts, sign-out."""


@users_group.command("add")
@click.argument("email")
@click.option("--operator", is_flag=True, help="An operator of the hosting company (acts in every account).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@fail_on_console_errors
def users_add(email: str, operator: bool, password_stdin: bool) -> None:
    """Create an operator (account members join through `pbxrelay users invite`)."""
    if not operator:
        raise click.UsageError("only operators are added directly: give --operator, or invite members with "
                               "`pbxrelay users invite ACCOUNT_ID EMAIL --role ROLE`")
    users.normalize_email(email)  # a typo fails before the password is asked for
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    rt = open_runtime()
    with rt.sessions.begin() as session:
        user = users.create_user(session, email, password, is_operator=True, actor=CLI_ACTOR)
        address = user.email
    click.echo(f"operator {address} added; sign in at {rt.settings.public_url}/console/login")


@users_group.command("invite")
@click.argument("account_id")
@click.argument("email")
@click.option("--role", type=click.Choice(["owner", "editor", "viewer"]), required=True,
              help="owner: everything in the account; editor: rules and connections; viewer: read only.")
@click.option("--hours", type=click.IntRange(1, 24 * 30), default=invites.INVITE_HOURS, show_default=True,
              help="How long the link works.")
@fail_on_console_errors
def users_invite(account_id: str, email: str, role: str, hours: int) -> None:
    """Print a single-use invite link that makes EMAIL a member of ACCOUNT_ID."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        token = invites.create_invite(session, account_id, email, role, actor=CLI_ACTOR, hours=hours)
    click.echo(invites.invite_url(rt.settings.public_url, token))


@users_group.command("list")
def users_list() -> None:
    """List users with their operator flag and memberships."""
    from service.store.access import Membership, User

    rt = open_runtime()
    with rt.sessions() as session:
        roles: dict[int, list[str]] = {}
        for user_id, account_id, role in session.execute(sa.select(Membership.user_id, Membership.account_id,
                                                                   Membership.role)):
            roles.setdefault(user_id, []).append(f"{account_id}:{role}")
        for user in session.scalars(sa.select(User).order_by(User.email)):
            flags = ["operator"] if user.is_operator else []
            if user.disabled_at:
                flags.append("disabled")
            click.echo(f"{user.email}  {' '.join(flags) or '-'}  {' '.join(roles.get(user.id, [])) or '-'}")


@users_group.command("sign-out")
@click.argument("email")
@fail_on_console_errors
def users_sign_out(email: str) -> None:
    """End every console session of a user (for a lost phone or a leaving employee)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        user = users.find_user(session, email)
        if user is None:
            raise ConsoleError(f"email: no user {email}")
        count = sessions.revoke_all_sessions(session, user.id, actor=CLI_ACTOR)
    click.echo(f"ended {count} session(s) of {email}")


@users_group.command("disable")
@click.argument("email")
@fail_on_console_errors
def users_disable(email: str) -> None:
    """Stop a user signing in and end their sessions (memberships are kept for the record)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        user = users.find_user(session, email)
        if user is None:
            raise ConsoleError(f"email: no user {email}")
        users.disable_user(session, user, actor=CLI_ACTOR)
        count = sessions.revoke_all_sessions(session, user.id, actor=CLI_ACTOR)
    click.echo(f"{email} disabled; ended {count} session(s)")
