"""`pbxrelay accounts`: add, list, connect to VirtualPBX, rotate the hook token, export, delete, revoke links."""

from __future__ import annotations

import json

import click

from service import accounts, engine
from service.cli.base import fail_on_domain_errors, main, open_runtime
from service.store import queries
from service.web.receiver import TOKEN_CACHE_SECONDS

# --- accounts ----------------------------------------------------------------------------------------

@main.group("accounts")
def accounts_group() -> None:
    """Add, list, connect, export and delete accounts."""


@accounts_group.command("add")
@click.argument("account_id")
@click.option("--name", required=True, help="The business name.")
@click.option("--timezone", "tz", default="UTC", show_default=True, help="IANA time zone, e.g. America/New_York.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@fail_on_domain_errors
def accounts_add(account_id: str, name: str, tz: str, as_json: bool) -> None:
    """Add an account and print its VirtualPBX hook URL and its CRM hook URL (two different tokens)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        created = accounts.add_account(session, account_id, name=name, timezone=tz, box=rt.box)
    url = accounts.hook_url(rt.settings.public_url, created.token)
    crm_url = accounts.hook_url(rt.settings.public_url, created.crm_token, "crm")
    if as_json:
        click.echo(json.dumps({"account_id": account_id, "name": name, "timezone": tz, "hook_url": url,
                               "crm_hook_url": crm_url}))
    else:
        click.echo(f"account {account_id} ({name}) added.\nPoint its VirtualPBX webhooks at:\n  {url}\n"
                   f"and its CRM's webhooks (the rules file's crm: section) at:\n  {crm_url}")


@accounts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def accounts_list(as_json: bool) -> None:
    """List accounts (hook tokens are never shown again)."""
    rt = open_runtime()
    with rt.sessions() as session:
        rows = queries.accounts_with_rules_version(session)
    for account, version in rows:
        if as_json:
            click.echo(json.dumps({"account_id": account.id, "name": account.name, "timezone": account.timezone,
                                   "rules_version": version}))
        else:
            click.echo(f"{account.id}  {account.name}  {account.timezone}  rules v{version or '-'}")


@accounts_group.command("connect")
@click.argument("account_id")
@fail_on_domain_errors
def accounts_connect(account_id: str) -> None:
    """Register, idempotently, the VirtualPBX webhooks the account's rules need (via its virtualpbx connection)."""
    from integrations.base import IntegrationError

    rt = open_runtime()
    try:
        report = engine.connect_account(rt, account_id)
    except IntegrationError as exc:
        raise click.ClickException(f"VirtualPBX refused: {exc}") from None
    for label, hooks in (("created", report.created), ("updated", report.updated),
                         ("unchanged", report.unchanged), ("deleted", report.deleted),
                         ("re-enabled", report.reenabled)):
        for hook in hooks:
            click.echo(f"{label:<10} {hook.name}  ({hook.hook_id})")
    click.echo(f"hooks deliver {report.body_format}"
               + (" (this cluster rejected format: json)" if report.format_rejected else ""))


@accounts_group.command("link-subaccount")
@click.argument("account_id")
@click.argument("sub_account_id")
@fail_on_domain_errors
def accounts_link(account_id: str, sub_account_id: str) -> None:
    """Let ACCOUNT_ID's connections act for the Kazoo sub-account SUB_ACCOUNT_ID (operator only)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        accounts.link_sub_account(session, account_id, sub_account_id)
    click.echo(f"account {account_id} may now name sub-account {sub_account_id} in its connections")


@accounts_group.command("unlink-subaccount")
@click.argument("account_id")
@click.argument("sub_account_id")
@fail_on_domain_errors
def accounts_unlink(account_id: str, sub_account_id: str) -> None:
    """Remove a sub-account link (connections already applied keep working until the rules are re-applied)."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        removed = accounts.unlink_sub_account(session, account_id, sub_account_id)
    click.echo(f"unlinked {sub_account_id} from {account_id}" if removed else "there was no such link")


@accounts_group.command("rotate-token")
@click.argument("account_id")
@click.option("--crm", "crm", is_flag=True, help="Rotate the CRM hook's token instead of the VirtualPBX one.")
@fail_on_domain_errors
def accounts_rotate(account_id: str, crm: bool) -> None:
    """Issue a new VirtualPBX hook URL (or, with --crm, CRM hook URL); the old one stops working at once."""
    kind = "crm" if crm else "virtualpbx"
    rt = open_runtime()
    try:  # receivers cache tokens under an epoch in Redis: without it, the old token could outlive the command
        rt.redis.ping()
    except Exception as exc:
        raise click.ClickException(f"Redis does not answer ({type(exc).__name__}): nothing rotated; running "
                                   "receivers could keep accepting the old token; try again when it does") from None
    with rt.sessions.begin() as session:
        token = accounts.rotate_token(session, account_id, box=rt.box, kind=kind)
    try:
        accounts.revoke_cached_tokens(rt.redis, rt.settings.namespace)
    except Exception as exc:
        click.echo(f"warning: rotated, but Redis failed ({type(exc).__name__}): receivers may accept the old "
                   f"token for up to {TOKEN_CACHE_SECONDS:.0f} more seconds", err=True)
    click.echo(accounts.hook_url(rt.settings.public_url, token, kind))
    if not crm:
        click.echo(f"re-register it with VirtualPBX: pbxrelay accounts connect {account_id}", err=True)


@accounts_group.command("export")
@click.argument("account_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (mode 0600) instead of standard output.")
@fail_on_domain_errors
def accounts_export(account_id: str, output: str | None) -> None:
    """Print everything stored about an account as JSON (credentials masked as stored:; hook tokens left out)."""
    from service import tenant_data
    from service.datafiles import private_file

    rt = open_runtime()
    pieces = tenant_data.export_account(rt, account_id)
    first = next(pieces)  # raises for an unknown account before anything is written
    if output is None:
        click.echo(first, nl=False)
        for piece in pieces:
            click.echo(piece, nl=False)
        return
    with open(private_file(output), "w") as handle:
        handle.write(first)
        for piece in pieces:
            handle.write(piece)


@accounts_group.command("delete")
@click.argument("account_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@fail_on_domain_errors
def accounts_delete(account_id: str, yes: bool) -> None:
    """Delete an account and everything of it: rows in every table, Redis keys, spool entries, voicemail links."""
    from service import tenant_data

    accounts.validate_account_id(account_id)
    if not yes:
        click.confirm(f"Delete account {account_id} and all of its data? This cannot be undone", abort=True)
    rt = open_runtime()
    result = tenant_data.delete_account(rt, account_id)
    if not result.found_anything:
        raise click.ClickException(f"nothing stored for account {account_id}")
    rows = ", ".join(f"{n} {table}" for table, n in sorted(result.rows.items()) if n)
    click.echo(f"account {account_id} deleted: {rows or 'no rows'}; {result.redis_keys} Redis key(s); "
               f"{result.spool_entries} spooled hook(s); its voicemail links no longer open.")


@accounts_group.command("revoke-links")
@click.argument("account_id")
@fail_on_domain_errors
def accounts_revoke_links(account_id: str) -> None:
    """Make every voicemail link issued so far for an account stop working (410)."""
    from service.pbx import media

    rt = open_runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
    media.revoke_links(rt, account_id)
    click.echo(f"voicemail links of {account_id} issued until now are revoked")
