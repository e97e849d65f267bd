"""A tenant's data is theirs: export, delete (checked against every table and every Redis key) and retention."""

from __future__ import annotations

import fnmatch
import json
import os
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from integrations.base import RetryableError
from integrations.google_sheets.integration import _Keys
from service import accounts, crm, engine, tenant_data
from service.config import Settings, get_settings
from service.console import apikeys, invites, users
from service.engine import planning
from service.pbx import media
from service.rules import RulesError, load_rules
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from service.store.models import AuditEntry, Delivery, QuarantinedDelivery, ReplayJob, StoredEvent, migrate, utcnow
from service.web.receiver import make_envelope
from service.web.spool import Spool
from tests.conftest import FIXTURES

GONE = "91eb05e5c68d7ca05e7618b6821d2d16"
KEPT = "5d3c0b1a2e4f60718293a4b5c6d7e8f9"
SLACK_TOKENS = {GONE: "xoxb-gone-account-token", KEPT: "xoxb-kept-account-token"}
PBX_KEYS = {GONE: "pbx-api-key-of-the-gone-account", KEPT: "pbx-api-key-of-the-kept-account"}
SHEETS = {GONE: "1GoneSheetAbcdefgh", KEPT: "1KeptSheetAbcdefgh"}


@pytest.fixture(scope="module")
def slack():
    """A Slack stand-in that knows both accounts' bot tokens."""
    state = SlackStandin(rate_limit_max=None)
    for token in SLACK_TOKENS.values():
        state.add_token(token)
    state.add_channel("C1", "calls")
    server = serve_in_thread(slack_app(state))
    state.api_url = f"{server.url}/api/"
    yield state
    server.stop()


@pytest.fixture(scope="module")
def sa_key() -> str:
    """A usable service-account private key (PEM); nothing here talks to Google."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def rules_text(account_id: str, sa_key: str, retention: int | None = None) -> str:
    """A rules file using Slack, VirtualPBX and Google Sheets connections."""
    credentials = json.dumps({"type": "service_account",
                              "client_email": f"sa-{account_id[:6]}@p.iam.gserviceaccount.com",
                              "private_key": sa_key, "token_uri": "https://oauth2.googleapis.com/token"})
    return json.dumps({
        "account": {"id": account_id, "name": f"Acct {account_id[:4]}", "timezone": "UTC",
                    **({"retention_days": retention} if retention else {})},
        "connections": {
            "chat": {"integration": "slack", "bot_token": SLACK_TOKENS[account_id]},
            "pbx": {"integration": "virtualpbx", "account_id": account_id, "api_key": PBX_KEYS[account_id]},
            "log": {"integration": "google_sheets", "spreadsheet_id": SHEETS[account_id], "credentials": credentials},
        },
        "rules": [{"name": "parked", "on": "virtualpbx.parking",
                   "do": [{"use": "chat", "action": "post_message",
                           "with": {"channel": "C1", "text": "parked {{ call_id }}"}}]}],
    })


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, slack, database_url, sa_key):
    """A Runtime (SQLite and PostgreSQL) with two accounts, each with the same kinds of connections and rules."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode(), slack_api_url=slack.api_url,
                        allow_private_urls=True)
    migrate(database_url)
    runtime = Runtime(settings)
    for account_id in (GONE, KEPT):
        with runtime.sessions.begin() as session:
            accounts.add_account(session, account_id, name="x", box=runtime.box)
            accounts.apply_rules(session, rules_text(account_id, sa_key), filename="rules.yaml", base_dir=tmp_path,
                                 registry=runtime.registry, box=runtime.box, account_id=account_id,
                                 supplied_by="operator", allow_private_urls=True)
    planning._RULES_CACHE.clear()
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def envelope(account_id: str, fixture: str, **changes) -> dict:
    """A received Kazoo hook from tests/fixtures/kazoo, as the receiver queues it, naming ``account_id``."""
    payload = json.loads((FIXTURES / "kazoo" / fixture).read_text())
    payload.update(changes, account_id=account_id)
    return make_envelope(source="virtualpbx", account_id=account_id, method="POST", content_type="application/json",
                         query_string="", body=json.dumps(payload).encode(), headers={})


def fill(rt, account_id: str) -> None:
    """Give the account data everywhere: hooks through the engine, a delivery run, quarantine, opt-out, audit,
    Redis state (call window, buckets, token cache, auth failures, sheet records), a spooled hook."""
    ns = rt.settings.namespace
    assert engine.ingest(rt, envelope(account_id, "webhook_channel_create.json")).status == "accepted"
    parked = engine.ingest(rt, envelope(account_id, "webhook_parking_park_parked.json", call_id=f"park-{account_id}"))
    for _ in range(20):
        try:
            assert engine.execute_delivery(rt, parked.deliveries[0]) == "succeeded"
            break
        except RetryableError as exc:  # paced by the shared Slack bucket: not an attempt
            time.sleep(exc.retry_after)
    bad = make_envelope(source="virtualpbx", account_id=account_id, method="POST", content_type="application/json",
                        query_string="", body=b"{not json", headers={})
    assert engine.ingest(rt, bad).status == "quarantined"
    with rt.sessions.begin() as session:
        crm.add_opt_out(session, account_id, "+15553456789", "sms:stop")
        accounts.link_sub_account(session, account_id, "5" * 32)
        # The console's rows: a member (users are shared across accounts; their membership is the account's),
        # an invite and an API key.
        member = users.create_user(session, f"owner-{account_id[:6]}@example.test", "a long enough password",
                                   is_operator=False, actor="test")
        users.set_role(session, account_id, member, "owner", actor="test")
        invites.create_invite(session, account_id, f"new-{account_id[:6]}@example.test", "viewer", actor="test")
        apikeys.create_api_key(session, account_id, "ci", "read", actor="test")
        session.add(AuditEntry(account_id=account_id, kind="connected", detail="hooks registered"))
        session.add(ReplayJob(account_id=account_id, filter={"status": ["failed"]}, actor="test"))
    rt.redis.incr(f"{ns}:authfail:{account_id}:chat")
    rt.redis.set(f"{ns}:virtualpbx:token:{account_id}", "a-kazoo-session-jwt")
    rt.redis.set(f"{ns}:virtualpbx:sms-claim:{account_id}:m1", "claim")
    rt.limiter.acquire(f"virtualpbx:{account_id}", 100, 10)
    keys = _Keys.of(SimpleNamespace(namespace=ns, account_id=account_id), sheet_of(rt, account_id)._key_hash,
                    SHEETS[account_id], "Sheet1")
    rt.redis.set(keys.key("done", "call-1"), json.dumps({"row": 2}))
    rt.redis.set(keys.key("idcol"), 12)
    Spool(rt.settings.var_dir / "spool", max_events=100).put(envelope(account_id, "webhook_channel_create.json"))


def sheet_of(rt, account_id: str):
    """The account's Google Sheets integration, as its stored connection configures it."""
    sheets = rt.registry["google_sheets"]
    with rt.sessions() as session:
        config = accounts.connection_config(session, rt.box, account_id, "log")[1]
    return sheets(sheets.Config.model_validate(config, context={"allow_private_urls": True}))


def all_rows(rt) -> dict[str, set[tuple]]:
    """Every row of every table in the database (reflected: tables the models do not know are included)."""
    engine_ = rt.sessions.kw["bind"]
    metadata = sa.MetaData()
    metadata.reflect(engine_)
    with engine_.connect() as conn:
        return {name: {tuple(_hashable(v) for v in row) for row in conn.execute(sa.select(table))}
                for name, table in metadata.tables.items()}


def _hashable(value):
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else value


def mentions(row: tuple, account_id: str) -> bool:
    """Whether any value of the row names the account (JSON columns and text included)."""
    return any(account_id in str(v) for v in row)


def all_keys(rt) -> set[str]:
    """Every Redis key of this test's namespace."""
    return set(rt.redis.scan_iter(f"{rt.settings.namespace}:*", count=1000))


def test_deleting_an_account_leaves_nothing_of_it_and_everything_of_the_other(rt):
    """After `accounts delete`, no table row, Redis key or spool entry names the account; the other is untouched."""
    fill(rt, GONE)
    fill(rt, KEPT)
    sheet_patterns = sheet_of(rt, GONE).redis_key_patterns(rt.settings.namespace, GONE)
    rows_before, keys_before = all_rows(rt), all_keys(rt)
    tables_with_account = {t.name for t in tenant_data.account_tables()}
    assert {"connections", "rulesets", "events", "deliveries", "quarantine", "opt_outs",
            "audit_log"} <= tables_with_account
    for name in tables_with_account:
        assert any(mentions(r, GONE) for r in rows_before[name]), f"the test gave {GONE} no {name} rows"
        assert any(mentions(r, KEPT) for r in rows_before[name]), f"the test gave {KEPT} no {name} rows"
    gone_keys = {k for k in keys_before if GONE in k or any(fnmatch.fnmatchcase(k, p) for p in sheet_patterns)}
    assert {k.split(":")[1] for k in gone_keys} >= {"call", "authfail", "virtualpbx", "bucket", "gsheets"}
    link = media.voicemail_link(rt, GONE, "box", "msg")

    result = tenant_data.delete_account(rt, GONE)

    rows_after, keys_after = all_rows(rt), all_keys(rt)
    for name, rows in rows_after.items():  # every table, with or without an account_id column
        assert not [r for r in rows if mentions(r, GONE)], f"{name} still holds rows of the deleted account"
        assert rows == {r for r in rows_before[name] if not mentions(r, GONE)}, f"{name}: other rows changed"
    assert keys_after == keys_before - gone_keys
    assert not [k for k in keys_after if GONE in k]
    spool = Spool(rt.settings.var_dir / "spool", max_events=100)
    assert [json.loads(p.read_bytes())["account_id"] for p in spool.pending()] == [KEPT]
    with pytest.raises(media.LinkError) as gone:
        media.read_link(rt, link.rsplit("/", 1)[1])
    assert gone.value.gone
    assert result.rows["accounts"] == 1 and result.rows["events"] == 3 and result.spool_entries == 1
    assert result.redis_keys == len(gone_keys)
    again = tenant_data.delete_account(rt, GONE)
    assert not again.found_anything, "a second delete finds nothing left"


def test_a_sheet_shared_with_another_account_keeps_its_keys(rt, sa_key, tmp_path):
    """Two accounts writing one worksheet with one key file have separate keys; deleting one keeps the other's."""
    with rt.sessions.begin() as session:  # KEPT now writes to GONE's sheet with GONE's service account
        text = rules_text(KEPT, sa_key).replace(SHEETS[KEPT], SHEETS[GONE]).replace(f"sa-{KEPT[:6]}", f"sa-{GONE[:6]}")
        accounts.apply_rules(session, text, filename="r.yaml", base_dir=tmp_path, registry=rt.registry, box=rt.box,
                             account_id=KEPT, supplied_by="operator", allow_private_urls=True)
    fill(rt, GONE)
    fill(rt, KEPT)
    before = {k for k in all_keys(rt) if ":gsheets:" in k}
    gone_patterns = sheet_of(rt, GONE).redis_key_patterns(rt.settings.namespace, GONE)
    gone = {k for k in before if any(fnmatch.fnmatchcase(k, p) for p in gone_patterns)}
    assert gone and gone < before
    tenant_data.delete_account(rt, GONE)
    assert {k for k in all_keys(rt) if ":gsheets:" in k} == before - gone, "only GONE's worksheet keys went"


def test_export_holds_every_row_of_the_account_and_no_secret(rt, monkeypatch):
    """The export is JSON with every table's rows of that account, read page by page; credentials and tokens masked."""
    fill(rt, GONE)
    fill(rt, KEPT)
    monkeypatch.setattr(tenant_data, "PAGE_ROWS", 2)  # several pages per table
    text = "".join(tenant_data.export_account(rt, GONE))
    doc = json.loads(text)
    assert doc["format"] == tenant_data.EXPORT_FORMAT and doc["account"]["id"] == GONE
    rows = all_rows(rt)
    for table in tenant_data.account_tables():
        expected = [r for r in rows[table.name] if mentions(r, GONE)]
        assert len(doc[table.name]) == len(expected) > 0, table.name
        assert all(r["account_id"] == GONE for r in doc[table.name])
    assert len(doc["events"]) > 2, "paging was exercised"
    connections = {c["name"]: c["config"] for c in doc["connections"]}
    assert connections["chat"]["bot_token"] == "stored:" and connections["pbx"]["api_key"] == "stored:"
    assert connections["log"]["credentials"] == "stored:" and connections["log"]["spreadsheet_id"] == SHEETS[GONE]
    assert "stored:" in doc["rulesets"][0]["source"]
    for secret in (SLACK_TOKENS[GONE], PBX_KEYS[GONE], "PRIVATE KEY", "hook_token", KEPT):
        assert secret not in text
    with rt.sessions() as session:
        account = accounts.get_account(session, GONE)
        assert account.hook_token_hash not in text
        assert accounts.hook_token(account, rt.box) not in text


def test_the_cli_exports_to_a_private_file_and_deletes_only_with_confirmation(rt, tmp_path, monkeypatch):
    """`accounts export -o` writes a 0600 file; `accounts delete` asks first, `--yes` does not; unknown ids fail."""
    from service.cli import main

    fill(rt, GONE)
    settings = rt.settings
    for name in ("var_dir", "redis_url", "namespace", "database_url", "slack_api_url"):
        monkeypatch.setenv(f"PBXRELAY_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("PBXRELAY_SECRET_KEYS", settings.secret_keys.get_secret_value())
    get_settings.cache_clear()
    previous_umask = os.umask(0o022)  # the CLI sets 0077 for the process: give it back afterwards
    runner = CliRunner()
    out = tmp_path / "export.json"
    result = runner.invoke(main, ["accounts", "export", GONE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600 and json.loads(out.read_text())["account"]["id"] == GONE
    assert runner.invoke(main, ["accounts", "export", "0" * 32]).exit_code == 1
    refused = runner.invoke(main, ["accounts", "delete", GONE], input="n\n")
    assert refused.exit_code == 1
    with rt.sessions() as session:
        assert accounts.get_account(session, GONE)
    done = runner.invoke(main, ["accounts", "delete", GONE, "--yes"])
    assert done.exit_code == 0 and "deleted" in done.output, done.output
    assert runner.invoke(main, ["accounts", "delete", GONE, "--yes"]).exit_code == 1
    bad = runner.invoke(main, ["accounts", "delete", "not-an-id", "--yes"])
    assert bad.exit_code == 1 and "invalid account id" in bad.output
    get_settings.cache_clear()
    os.umask(previous_umask)


# ------------------------------------------------------------------------------------------------ retention

def age(rt, model, column, account_id: str, days: float) -> None:
    """Make every row of ``model`` of the account ``days`` old."""
    with rt.sessions.begin() as session:
        session.execute(sa.update(model).where(model.account_id == account_id).values(
            {column: utcnow() - timedelta(days=days)}))


def count(rt, model, account_id: str, *where) -> int:
    """Rows of ``model`` for the account."""
    with rt.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model).where(model.account_id == account_id,
                                                                                   *where))


def test_retention_purges_old_finished_rows_per_account_and_keeps_what_is_still_needed(rt, sa_key, tmp_path):
    """Past 30 days (or the account's own retention_days) events, finished deliveries and quarantine go;
    unfinished deliveries and the events they wait for stay; younger rows stay."""
    fill(rt, GONE)
    fill(rt, KEPT)
    waiting = engine.ingest(rt, envelope(GONE, "webhook_parking_park_parked.json", call_id="still-pending"))
    assert waiting.deliveries
    with rt.sessions.begin() as session:  # KEPT keeps its data for 90 days
        accounts.apply_rules(session, rules_text(KEPT, sa_key, retention=90), filename="r.yaml", base_dir=tmp_path,
                             registry=rt.registry, box=rt.box, account_id=KEPT, supplied_by="operator",
                             allow_private_urls=True)
    for account_id in (GONE, KEPT):
        age(rt, StoredEvent, "received_at", account_id, 31)
        age(rt, Delivery, "updated_at", account_id, 31)
        age(rt, QuarantinedDelivery, "received_at", account_id, 31)
    kept_before = {m: count(rt, m, KEPT) for m in (StoredEvent, Delivery, QuarantinedDelivery)}
    assert tenant_data.retention_days(rt, GONE) == 30 and tenant_data.retention_days(rt, KEPT) == 90

    totals = tenant_data.purge_expired(rt)

    assert count(rt, QuarantinedDelivery, GONE) == 0
    assert count(rt, Delivery, GONE) == 1 and count(rt, Delivery, GONE, Delivery.status == "pending") == 1
    with rt.sessions() as session:
        events = list(session.scalars(sa.select(StoredEvent.key).where(StoredEvent.account_id == GONE)))
        pending_key = session.get(Delivery, waiting.deliveries[0]).event_key
    assert events == [pending_key], "only the event a pending delivery waits for is left"
    assert {m: count(rt, m, KEPT) for m in kept_before} == kept_before
    assert totals["quarantine"] == 1 and totals["deliveries"] == 1
    assert tenant_data.purge_expired(rt) == {"deliveries": 0, "events": 0, "quarantine": 0}


def test_purge_works_in_bounded_batches(rt, monkeypatch):
    """Each batch is its own transaction of at most PURGE_BATCH_ROWS; one run stops after PURGE_MAX_BATCHES."""
    fill(rt, GONE)
    age(rt, StoredEvent, "received_at", GONE, 40)
    total = count(rt, StoredEvent, GONE)
    assert total == 3
    monkeypatch.setattr(tenant_data, "PURGE_BATCH_ROWS", 1)
    first = tenant_data.purge_account(rt, GONE, utcnow(), max_batches=2)
    assert first["events"] == 2 and count(rt, StoredEvent, GONE) == 1
    tenant_data.purge_account(rt, GONE, utcnow(), max_batches=None)
    assert count(rt, StoredEvent, GONE) == 0


@pytest.mark.parametrize("value", [0, 3651, "30", True])
def test_retention_days_out_of_bounds_is_refused_naming_the_field(value):
    """account.retention_days must be a whole number of days in 1..3650."""
    doc = {"account": {"id": GONE, "name": "A", "timezone": "UTC", "retention_days": value}, "rules": []}
    with pytest.raises(RulesError) as caught:
        load_rules(json.dumps(doc), filename="r.yaml", registry={})
    assert "retention_days" in str(caught.value)


def test_an_account_whose_rules_no_longer_load_keeps_its_data_and_the_others_are_purged(rt):
    """Its own retention cannot be read, so nothing of it is purged; the purge goes on with the other accounts."""
    from service.store.models import RuleSet

    fill(rt, GONE)
    fill(rt, KEPT)
    for account_id in (GONE, KEPT):
        age(rt, QuarantinedDelivery, "received_at", account_id, 400)
    with rt.sessions.begin() as session:
        ruleset = session.get(RuleSet, GONE)
        ruleset.source, ruleset.version = ruleset.source.replace("integration: slack", "integration: retired"), 99
    assert tenant_data.purge_expired(rt)["quarantine"] == 1
    assert count(rt, QuarantinedDelivery, GONE) == 1 and count(rt, QuarantinedDelivery, KEPT) == 0
