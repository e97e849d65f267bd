"""`pbxrelay rules`: apply, export and dry-run an account's rules file."""

from __future__ import annotations

import json
from pathlib import Path

import click
import sqlalchemy as sa

from service import accounts, engine
from service.cli.base import fail_on_domain_errors, main, open_runtime
from service.pbx.payloads import MalformedPayload, parse_delivery
from service.store.models import Account

# --- rules -------------------------------------------------------------------------------------------

@main.group("rules")
def rules_group() -> None:
    """Apply, export and dry-run rules files."""


@rules_group.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--account", "account_id", default=None,
              help="The account the file is applied to; refused when the file's account.id differs "
                   "(default: the file's account.id).")
@fail_on_domain_errors
def rules_apply(file: Path, account_id: str | None) -> None:
    """Validate and apply a rules file atomically (all or nothing), as operator-supplied rules."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        # Accounts older than 0003r get their CRM token on the first apply with a crm: section; say its URL then.
        had_crm_token = set(session.scalars(sa.select(Account.id).where(Account.crm_token_hash.is_not(None))))
        ruleset = accounts.apply_rules_file(session, file, registry=rt.registry, box=rt.box, account_id=account_id,
                                            allow_private_urls=rt.settings.allow_private_urls)
        account = session.get(Account, ruleset.account_id)
        click.echo(f"applied {file} to account {ruleset.account_id} (version {ruleset.version})")
        if account.crm_unsigned:
            click.echo("warning: crm.signing is none: anyone who learns the CRM hook URL can post CRM events "
                       "(and so send texts); prefer crm.signing_secret", err=True)
        elif account.crm_token_hash is not None and account.crm_secret_encrypted is None:
            click.echo("warning: the CRM hook refuses every request (401): the crm section sets neither "
                       "signing_secret nor signing: none", err=True)
        if account.crm_token_hash is not None and account.id not in had_crm_token:
            crm_url = accounts.hook_url(rt.settings.public_url, accounts.hook_token(account, rt.box, "crm"), "crm")
            click.echo(f"the account's CRM hook URL (new): {crm_url}")


@rules_group.command("export")
@click.argument("account_id")
@fail_on_domain_errors
def rules_export(account_id: str) -> None:
    """Print the applied rules file; secrets appear as `stored:`."""
    rt = open_runtime()
    with rt.sessions() as session:
        click.echo(accounts.export_rules(session, account_id), nl=False)


@rules_group.command("test")
@click.argument("account_id")
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@fail_on_domain_errors
def rules_test(account_id: str, event_file: Path) -> None:
    """Dry run one hook (a JSON or form body) or a call's hooks in order (a JSON list): no side effect."""
    rt = open_runtime()
    body = event_file.read_bytes()
    try:
        if body.lstrip()[:1] == b"[":
            payloads = json.loads(body)
            if not payloads or not all(isinstance(p, dict) for p in payloads):
                raise MalformedPayload("a list of hooks must hold one or more JSON objects")
        else:
            payloads = [parse_delivery(method="POST", content_type="" if body.lstrip()[:1] == b"{" else
                                       "application/x-www-form-urlencoded", body=body, query_string="")]
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{event_file}: invalid JSON: {exc}") from None
    except MalformedPayload as exc:
        raise click.ClickException(f"{event_file}: {exc}") from None
    click.echo(json.dumps(engine.dry_run(rt, account_id, payloads), indent=2, default=str))
