"""The ``pbxrelay`` command group and what every command module shares (settings, runtime, error mapping)."""

from __future__ import annotations

import logging
import os

import click

from service import accounts, queue
from service.config import Settings, get_settings
from service.datafiles import restrict_umask
from service.logcaps import cap_sdk_loggers


def load_settings() -> Settings:
    """The settings, or a clear error naming the bad variable."""
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: name the bad variable, never echo secrets
        raise click.ClickException(f"invalid configuration: {exc}") from None


def open_runtime():
    """A Runtime on a migrated database."""
    from service.runtime import Runtime
    from service.store.models import migrate

    settings = load_settings()
    migrate(settings.effective_database_url)
    return Runtime(settings)


def fail_on_domain_errors(fn):
    """Turn expected operator errors into a clear message and exit code 1 (no traceback)."""
    import functools

    from service.rules import RulesError
    from service.secrets import SecretsError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (accounts.AccountError, RulesError, SecretsError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


@click.group()
def main() -> None:
    """pbxrelay: VirtualPBX webhooks in, per-account rules, Slack/Trello/Sheets/SMS out."""
    restrict_umask()  # the database, spool, keys and beat's schedule: this user's alone, in every child too
    logging.basicConfig(level=os.environ.get("PBXRELAY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cap_sdk_loggers()


def delivery_doc(d) -> dict:
    """A delivery row as the CLI prints it."""
    return {"id": d.id, "account_id": d.account_id, "event": d.event_type, "event_key": d.event_key,
            "rule": d.rule_name, "action": f"{d.connection}.{d.action}", "status": d.status,
            "attempts": d.attempts, "external_id": d.external_id, "error": d.last_error,
            "updated_at": d.updated_at.isoformat()}


def enqueue_actions(ids: list[int]) -> None:
    """Send one action task per delivery id to the workers."""
    queue.TaskQueue(load_settings()).send_actions(ids)
