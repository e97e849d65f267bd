"""`pbxrelay secrets`: generate and rotate the encryption keys."""

from __future__ import annotations

import click

from service.cli.base import fail_on_domain_errors, main, open_runtime
from service.store import queries

# --- secrets -----------------------------------------------------------------------------------------

@main.group("secrets")
def secrets_group() -> None:
    """Encryption keys for stored credentials."""


@secrets_group.command("generate-key")
def secrets_generate() -> None:
    """Print a new Fernet key (put it first in PBXRELAY_SECRET_KEYS to rotate)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@secrets_group.command("rotate")
@fail_on_domain_errors
def secrets_rotate() -> None:
    """Re-encrypt every stored credential with the first key of PBXRELAY_SECRET_KEYS."""
    rt = open_runtime()
    with rt.sessions.begin() as session:
        rows = queries.all_connections(session)
        for row in rows:
            row.config_encrypted = rt.box.rotate(row.config_encrypted)
    click.echo(f"re-encrypted {len(rows)} connection(s) with the newest key")


if __name__ == "__main__":
    main()
