"""A hostile tenant against the engine, on real Redis, real SQL (SQLite and PostgreSQL) and real sockets.

Each test reproduces one finding of issue 10 ("A hard tenant boundary") and shows it closed: the
tenant's input is refused with an error naming the field, a real loopback listener receives nothing,
and the other account's rows, connections and cached VirtualPBX token are unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet
from pydantic import ValidationError

from integrations.base import ActionContext, IntegrationError, PermanentError, RetryableError
from integrations.google_sheets import GoogleSheetsConfig, GoogleSheetsIntegration
from integrations.ratelimit import RateLimiter
from integrations.virtualpbx import VirtualPBXConfig, VirtualPBXIntegration
from service import accounts, engine
from service.config import Settings
from service.engine import planning
from service.pbx import media
from service.rules import templating
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.google_sheets import SheetsStandin, new_service_account
from service.sandbox.standins.google_sheets import create_app as create_sheets_app
from service.sandbox.virtualpbx import standin
from service.store.models import Connection, Delivery, RuleSet, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES
from tests.security.conftest import BODY_MARKER

VICTIM = "91eb05e5c68d7ca05e7618b6821d2d16"
ATTACKER = "a77ac4e2a77ac4e2a77ac4e2a77ac4e2"
SUB_ACCOUNT = "50b50b50b50b50b50b50b50b50b50b50"  # a Kazoo sub-account the operator links to the victim
KEYS = Fernet.generate_key().decode()
VICTIM_VT_KEY = "vt_live_victim_key_0123456789"
VICTIM_PBX_KEY = "victim-pbx-api-key-0123456789abcdef"
PHONE = "+14155552671"


@pytest.fixture
def make_rt(tmp_path, redis_url, namespace, redis_client, database_url):
    """Runtimes on one migrated database (SQLite, then PostgreSQL); production settings unless overridden."""
    migrate(database_url)
    made: list[Runtime] = []

    def build(**overrides) -> Runtime:
        settings = Settings(**{"var_dir": tmp_path / "var", "redis_url": redis_url, "namespace": namespace,
                               "database_url": database_url, "secret_keys": KEYS, "allow_private_urls": False,
                               **overrides})
        made.append(Runtime(settings))
        planning._RULES_CACHE.clear()
        return made[-1]

    yield build
    for rt in made:
        rt.sessions.kw["bind"].dispose()


def dump(doc: dict) -> str:
    """A rules file as a tenant would upload it."""
    return yaml.safe_dump(doc, sort_keys=False)


def rules_doc(account_id: str, connections: dict, *, rules: list | None = None) -> dict:
    """A rules file for ``account_id`` with these connections and, by default, one SMS rule on parking hooks."""
    first = next(iter(connections))
    return {"account": {"id": account_id, "name": "Acme", "timezone": "UTC"}, "connections": connections,
            "rules": rules if rules is not None else [
                {"name": "texts", "on": "virtualpbx.parking",
                 "do": [{"use": first, "action": "send_sms", "with": {"to": PHONE, "body": "parked"}}]}]}


def tenant_apply(rt: Runtime, doc: dict | str, tmp_path: Path, *, account_id: str | None = ATTACKER,
                 env_prefix: str | None = None):
    """Apply a tenant's rules text through the API function, as the console will."""
    with rt.sessions.begin() as session:
        return accounts.apply_rules(session, doc if isinstance(doc, str) else dump(doc), account_id=account_id,
                                    filename="tenant.yaml", base_dir=tmp_path, registry=rt.registry, box=rt.box,
                                    supplied_by="tenant", allow_private_urls=rt.settings.allow_private_urls,
                                    tenant_env_prefix=env_prefix)


def operator_apply(rt: Runtime, doc: dict, tmp_path: Path, *, account_id: str | None = None):
    """Apply rules as the operator's `rules apply FILE [--account ID]` does."""
    path = tmp_path / f"operator-{time.monotonic_ns()}.yaml"
    path.write_text(dump(doc))
    with rt.sessions.begin() as session:
        ruleset = accounts.apply_rules_file(session, path, registry=rt.registry, box=rt.box, account_id=account_id,
                                            allow_private_urls=rt.settings.allow_private_urls)
    planning._RULES_CACHE.clear()
    return ruleset


def add_accounts(rt: Runtime, *ids: str) -> None:
    """Create the accounts (victim and attacker are both paying tenants of this instance)."""
    with rt.sessions.begin() as session:
        for account_id in ids:
            accounts.add_account(session, account_id, name=f"tenant {account_id[:4]}", box=rt.box)


def snapshot(rt: Runtime, account_id: str) -> dict:
    """Everything stored about an account's rules and connections, secrets decrypted, for before/after compares."""
    with rt.sessions() as session:
        rows = session.scalars(sa.select(Connection).where(Connection.account_id == account_id)
                               .order_by(Connection.name)).all()
        ruleset = session.get(RuleSet, account_id)
        return {"connections": [(r.name, r.integration, rt.box.decrypt(r.config_encrypted), r.paused_reason)
                                for r in rows],
                "ruleset": (ruleset.version, ruleset.source, ruleset.supplied_by) if ruleset else None}


def ingest_parking(rt: Runtime, account_id: str) -> list[int]:
    """One parking hook for the account through the engine; the deliveries it planned."""
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    payload["call_id"] = f"call-{time.monotonic_ns()}"
    envelope = make_envelope(source="virtualpbx", account_id=account_id, method="POST",
                             content_type="application/json", query_string="", body=json.dumps(payload).encode(),
                             headers={})
    outcome = engine.ingest(rt, envelope)
    assert outcome.status == "accepted"
    return outcome.deliveries


def run_delivery(rt: Runtime, delivery_id: int) -> Delivery:
    """Run one delivery to its end as a worker would (pacing waited out) and return the row."""
    for _ in range(20):
        try:
            engine.execute_delivery(rt, delivery_id)
            break
        except RetryableError as exc:
            if exc.code != "paced":
                break
            time.sleep(exc.retry_after)
        except PermanentError:
            break
    with rt.sessions() as session:
        return session.get(Delivery, delivery_id)


# --- finding 3: SSRF ---------------------------------------------------------------------------------

def hostile_urls(port: int) -> list[str]:
    """Where a tenant would aim our workers: this host, metadata, other schemes, parser tricks."""
    return [f"http://127.0.0.1:{port}/x", f"https://127.0.0.1:{port}/x", "http://169.254.169.254/latest/meta-data/",
            f"gopher://127.0.0.1:{port}/_INFO", f"https://api.virtualpbx.com#@127.0.0.1:{port}/",
            f"https://api.virtualpbx.com/?@127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://[::1]:{port}/",
            f"http://2130706433:{port}/", f"https://user:pw@127.0.0.1:{port}/", f"http://127.1:{port}/"]


def url_carriers(url: str, sheets_state: SheetsStandin) -> dict[str, tuple[dict, str]]:
    """Every place a rules file names a URL: connection -> (its settings, the field the error must name)."""
    return {
        "texts": ({"integration": "virtualtext", "api_key": "vt_live_attacker_key", "api_url": url}, "api_url"),
        "board": ({"integration": "trello", "api_key": "attackerkey123", "token": "attackertoken123", "api_url": url},
                  "api_url"),
        "pbx": ({"integration": "virtualpbx", "account_id": ATTACKER, "api_key": "k" * 32, "api_url": url},
                "api_url"),
        "chat": ({"integration": "slack", "bot_token": "xoxb-attacker", "api_url": url}, "api_url"),
        "hook": ({"integration": "slack", "webhook_url": url}, "webhook_url"),
        "sheet": ({"integration": "google_sheets", "spreadsheet_id": "1AttackerSheet000000", "api_url": url,
                   "credentials": new_service_account(sheets_state, "https://oauth2.googleapis.com/token")},
                  "api_url"),
        "sheet-token": ({"integration": "google_sheets", "spreadsheet_id": "1AttackerSheet000000",
                         "credentials": new_service_account(sheets_state, url)}, "credentials.token_uri"),
    }


def test_tenant_urls_aimed_at_this_network_are_refused_and_the_listener_gets_nothing(make_rt, tmp_path, listener):
    """Finding 3: api_url, webhook_url and token_uri pointing here, at metadata, or via gopher/#/? are refused."""
    rt = make_rt()
    add_accounts(rt, VICTIM, ATTACKER)
    sheets_state = SheetsStandin.with_defaults()
    tried = 0
    for url in hostile_urls(listener.port):
        for name, (settings, field) in url_carriers(url, sheets_state).items():
            rules = [] if settings["integration"] in ("trello", "slack", "google_sheets") else None
            with pytest.raises(accounts.AccountError) as refused:
                tenant_apply(rt, rules_doc(ATTACKER, {name: settings}, rules=rules), tmp_path)
            message = str(refused.value)
            assert f"connections.{name}" in message and field in message, (url, message)
            assert ":pw@" not in message  # userinfo is never echoed
            tried += 1
    assert tried == 77
    assert snapshot(rt, ATTACKER) == {"connections": [], "ruleset": None}
    assert listener.nothing_received()


def test_a_private_url_stored_earlier_is_refused_at_delivery_without_echoing_the_body(make_rt, tmp_path, listener):
    """Finding 3 at run time: a config stored while private URLs were open is checked again before any request."""
    sandbox = make_rt(allow_private_urls=True)
    add_accounts(sandbox, ATTACKER)
    operator_apply(sandbox, rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "vt_live_key_1",
                                                           "api_url": f"{listener.url}/anything"}}), tmp_path)
    rt = make_rt()  # the operator closed private URLs; the stored connection still names the listener
    [delivery_id] = ingest_parking(rt, ATTACKER)
    row = run_delivery(rt, delivery_id)
    assert row.status == "failed"
    assert "api_url" in row.last_error and "scheme http is not allowed" in row.last_error
    assert BODY_MARKER not in row.last_error
    assert listener.nothing_received()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_url_reaching_loopback_is_refused_at_connect_time(make_rt, tmp_path, listener, host):
    """Finding 3, second layer: at connect time (after DNS) the guard refuses loopback for any URL, the operator's."""
    rt = make_rt(virtualtext_api_url=f"http://{host}:{listener.port}")  # never statically checked: a setting
    add_accounts(rt, ATTACKER)
    operator_apply(rt, rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "vt_live_key_1"}}),
                   tmp_path)
    [delivery_id] = ingest_parking(rt, ATTACKER)
    row = run_delivery(rt, delivery_id)
    assert row.status == "failed" and row.last_error.startswith(
        f"UnsafeURL: api_url: host {host} is a "), row.last_error
    assert BODY_MARKER not in row.last_error
    assert listener.nothing_received()


# --- finding 1: the master key leaves ------------------------------------------------------------------

def test_a_tenant_file_reading_the_secret_keys_is_refused_naming_the_field(make_rt, tmp_path, listener, monkeypatch):
    """Finding 1: env:PBXRELAY_SECRET_KEYS (the issue's exact file) never resolves; nothing is stored or sent."""
    monkeypatch.setenv("PBXRELAY_SECRET_KEYS", KEYS)
    rt = make_rt(allow_private_urls=True)  # even with the listener reachable by URL
    add_accounts(rt, ATTACKER)
    doc = rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "env:PBXRELAY_SECRET_KEYS",
                                         "api_url": f"{listener.url}/x"}})
    with pytest.raises(accounts.AccountError) as refused:
        tenant_apply(rt, doc, tmp_path)
    assert "connections.texts.api_key: env:PBXRELAY_SECRET_KEYS is refused" in str(refused.value)
    assert KEYS not in str(refused.value)
    # Not even the operator may hand the service's own settings to a connection.
    with pytest.raises(accounts.AccountError, match=r"connections\.texts\.api_key: env:PBXRELAY_SECRET_KEYS"):
        operator_apply(rt, doc, tmp_path)
    # Nor through an operator-allowed prefix that happens to cover it.
    with pytest.raises(accounts.AccountError, match="PBXRELAY_"):
        tenant_apply(rt, doc, tmp_path, env_prefix="P")
    with pytest.raises(ValidationError, match="tenant_env_prefix"):
        Settings(tenant_env_prefix="PBXRELAY_")
    assert snapshot(rt, ATTACKER) == {"connections": [], "ruleset": None}
    assert listener.nothing_received()


def test_env_and_file_references_are_the_operators_alone(make_rt, tmp_path, monkeypatch):
    """Finding 1: any env: or file: from a tenant is refused, naming the field; an allowed prefix opens env: only."""
    monkeypatch.setenv("SHARED_VT_KEY", "vt_live_shared_key_1")
    monkeypatch.setenv("TENANT_SHARED_VT_KEY", "vt_live_shared_key_2")
    (tmp_path / "key.txt").write_text("vt_live_from_a_file")
    rt = make_rt()
    add_accounts(rt, ATTACKER)
    cases = {"env:SHARED_VT_KEY": "env: references are the operator's alone",
             "file:key.txt": "file: references are the operator's alone",
             "file:../../etc/passwd": "file: references are the operator's alone"}
    for reference, expected in cases.items():
        doc = rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": reference}})
        with pytest.raises(accounts.AccountError) as refused:
            tenant_apply(rt, doc, tmp_path)
        assert f"connections.texts.api_key: {expected}" in str(refused.value)
    crm = rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "vt_live_literal_1"}})
    crm["crm"] = {"fields": {"phone": "phone"}, "signing_secret": "env:SHARED_VT_KEY"}
    with pytest.raises(accounts.AccountError, match=r"crm\.signing_secret: env: references are the operator's"):
        tenant_apply(rt, crm, tmp_path)
    assert snapshot(rt, ATTACKER) == {"connections": [], "ruleset": None}
    # The operator may open a prefix to tenants; names outside it stay closed.
    with pytest.raises(accounts.AccountError, match="only names starting with TENANT_SHARED_"):
        tenant_apply(rt, rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "env:SHARED_VT_KEY"}}),
                     tmp_path, env_prefix="TENANT_SHARED_")
    tenant_apply(rt, rules_doc(ATTACKER, {"texts": {"integration": "virtualtext",
                                                     "api_key": "env:TENANT_SHARED_VT_KEY"}}),
                 tmp_path, env_prefix="TENANT_SHARED_")
    stored = snapshot(rt, ATTACKER)
    assert stored["connections"][0][2]["api_key"] == "vt_live_shared_key_2" and stored["ruleset"][2] == "tenant"


# --- finding 4: a file naming another account ------------------------------------------------------------

def victim_rules() -> dict:
    """The victim's own rules: an SMS connection and its VirtualPBX connection."""
    return rules_doc(VICTIM, {"texts": {"integration": "virtualtext", "api_key": VICTIM_VT_KEY},
                              "pbx": {"integration": "virtualpbx", "account_id": VICTIM, "api_key": VICTIM_PBX_KEY}})


def test_a_file_naming_another_account_is_refused_and_changes_nothing(make_rt, tmp_path, listener):
    """Finding 4: account.id must be the account applied to; the victim's connections are neither read nor deleted."""
    rt = make_rt(allow_private_urls=True)
    add_accounts(rt, VICTIM, ATTACKER)
    operator_apply(rt, victim_rules(), tmp_path)
    before = snapshot(rt, VICTIM)
    takeover = rules_doc(VICTIM, {"texts": {"integration": "virtualtext", "api_key": "stored:",
                                            "api_url": f"{listener.url}/steal"}})
    with pytest.raises(accounts.AccountError) as refused:
        tenant_apply(rt, takeover, tmp_path, account_id=ATTACKER)
    assert f"account.id: the file is for account {VICTIM}, but it is being applied to account {ATTACKER}" in str(
        refused.value)
    with pytest.raises(accounts.AccountError, match="account_id is required"):
        tenant_apply(rt, takeover, tmp_path, account_id=None)
    with pytest.raises(accounts.AccountError, match="account.id: the file is for account"):
        operator_apply(rt, takeover, tmp_path, account_id=ATTACKER)  # `rules apply --account ATTACKER FILE`
    assert snapshot(rt, VICTIM) == before
    assert snapshot(rt, ATTACKER) == {"connections": [], "ruleset": None}
    ingest_parking(rt, VICTIM)  # the victim's rules still plan against the victim's own connection
    assert listener.nothing_received()


def test_stored_is_refused_when_the_url_or_the_account_changes(make_rt, tmp_path):
    """Finding 4: `stored:` keeps a secret only for the same URL and account; linked sub-accounts are the operator's."""
    rt = make_rt()
    add_accounts(rt, VICTIM)
    operator_apply(rt, victim_rules(), tmp_path)
    before = snapshot(rt, VICTIM)
    with rt.sessions.begin() as session:
        accounts.link_sub_account(session, VICTIM, SUB_ACCOUNT)
    moved = rules_doc(VICTIM, {"texts": {"integration": "virtualtext", "api_key": "stored:",
                                         "api_url": "https://api.virtualpbx.com/elsewhere"},
                               "pbx": {"integration": "virtualpbx", "account_id": SUB_ACCOUNT, "api_key": "stored:"}})
    with pytest.raises(accounts.AccountError) as refused:
        tenant_apply(rt, moved, tmp_path, account_id=VICTIM)
    assert "connections.texts.api_url: changes while a secret is kept with stored:" in str(refused.value)
    assert "connections.pbx.account_id: changes while a secret is kept with stored:" in str(refused.value)
    retyped = rules_doc(VICTIM, {"texts": {"integration": "virtualpbx", "account_id": VICTIM, "api_key": "stored:"}})
    with pytest.raises(accounts.AccountError, match="connections.texts.integration: changes from virtualtext"):
        tenant_apply(rt, retyped, tmp_path, account_id=VICTIM)
    assert snapshot(rt, VICTIM) == before
    # With the secret given again, the linked sub-account is fine; an unlinked one is not.
    unlinked = "0" * 31 + "1"
    with pytest.raises(accounts.AccountError, match=f"connections.pbx.account_id: {unlinked} is neither this account"):
        tenant_apply(rt, rules_doc(VICTIM, {"pbx": {"integration": "virtualpbx", "account_id": unlinked,
                                                    "api_key": "new-key-0123456789"}}), tmp_path, account_id=VICTIM)
    tenant_apply(rt, rules_doc(VICTIM, {"pbx": {"integration": "virtualpbx", "account_id": SUB_ACCOUNT,
                                                "api_key": "new-key-0123456789"}}), tmp_path, account_id=VICTIM)
    assert snapshot(rt, VICTIM)["connections"][0][2]["account_id"] == SUB_ACCOUNT


# --- finding 2: another account's VirtualPBX session ---------------------------------------------------------

@pytest.fixture
def pbx_standin():
    """The sandbox VirtualPBX on a real socket, with its demo account (the victim here)."""
    state = standin.demo_state()
    server = serve_in_thread(standin.create_app(state))
    yield state, server.url
    server.stop()


def test_the_victims_virtualpbx_token_is_never_served_to_another_account(make_rt, tmp_path, listener, pbx_standin):
    """Finding 2: a connection naming the victim's Kazoo id gets neither the victim's cached token nor its bucket."""
    state, pbx_url = pbx_standin
    victim = standin.DEMO_ACCOUNT_ID
    rt = make_rt(allow_private_urls=True, virtualpbx_api_url=pbx_url)  # the standin listens on 127.0.0.1
    add_accounts(rt, victim, ATTACKER)
    operator_apply(rt, rules_doc(victim, {"pbx": {"integration": "virtualpbx", "account_id": victim,
                                                  "api_key": standin.DEMO_API_KEY}}), tmp_path)
    assert media.pbx_client(rt, victim).list_users()  # the victim's session token is now cached
    victim_tokens = list(state.tokens)
    assert victim_tokens
    # The cached token is sealed: Redis never holds it in the clear, and the key is the victim's own.
    keys = [k for k in rt.redis.keys(f"{rt.settings.namespace}:virtualpbx:token:*") if not k.endswith(":lock")]
    assert len(keys) == 1 and keys[0].startswith(f"{rt.settings.namespace}:virtualpbx:token:{victim}:")
    assert not any(token in rt.redis.get(keys[0]) for token in victim_tokens)

    # The attack as a tenant would upload it today: refused, naming the field.
    attack = {"pbx": {"integration": "virtualpbx", "account_id": victim, "api_key": "attacker-key-0123456789",
                      "api_url": listener.url}}
    with pytest.raises(accounts.AccountError, match=f"connections.pbx.account_id: {victim} is neither this account"):
        tenant_apply(rt, rules_doc(ATTACKER, attack), tmp_path)

    # The same connection stored before accounts were bound: refused again before any request.
    operator_apply(rt, rules_doc(ATTACKER, {"pbx": {"integration": "virtualpbx", "account_id": ATTACKER,
                                                    "api_key": "attacker-key-0123456789",
                                                    "api_url": listener.url}}), tmp_path)
    with rt.sessions.begin() as session:
        row = session.scalars(sa.select(Connection).where(Connection.account_id == ATTACKER)).one()
        row.config_encrypted = rt.box.encrypt({**rt.box.decrypt(row.config_encrypted), "account_id": victim})
    [delivery_id] = ingest_parking(rt, ATTACKER)
    failed = run_delivery(rt, delivery_id)
    assert failed.status == "failed" and f"account_id {victim} is neither account {ATTACKER}" in failed.last_error
    assert listener.nothing_received()

    # And below the binding, in the client: our account keys the cache, so the victim's token is not found.
    config = VirtualPBXConfig.model_validate({"account_id": victim, "api_key": "attacker-key-0123456789",
                                              "api_url": listener.url}, context={"allow_private_urls": True})
    client = VirtualPBXIntegration(config).client(api_urls={}, redis=rt.redis, namespace=rt.settings.namespace,
                                                  owner=ATTACKER, allow_private=True, seal=rt.box.seal,
                                                  unseal=rt.box.unseal)
    with pytest.raises(IntegrationError):  # the listener answers 500
        client.list_users()
    assert [r["path"] for r in listener.requests] == ["/v2/api_auth"]  # it had to authenticate on its own
    sent = json.dumps(listener.requests)
    assert not any(token in sent for token in victim_tokens) and standin.DEMO_API_KEY not in sent
    assert client.bucket_key != media.pbx_client(rt, victim).bucket_key


# --- finding 10 (part): passwords in URL userinfo ------------------------------------------------------------

def test_rules_export_masks_passwords_in_url_userinfo(make_rt, tmp_path):
    """Finding 10: a URL password in an applied rule set (stored before the guard refused userinfo) is masked."""
    rt = make_rt()
    add_accounts(rt, VICTIM)
    operator_apply(rt, victim_rules(), tmp_path)
    with rt.sessions.begin() as session:
        ruleset = session.get(RuleSet, VICTIM)
        doc = yaml.safe_load(ruleset.source)
        doc["connections"]["texts"]["api_url"] = "https://alice:hunter2-secret@api.virtualpbx.com/v1"
        doc["connections"]["pbx"]["api_url"] = "https://bob:p%40ss:word@public-api.virtualpbx.com:8443"
        ruleset.source = yaml.safe_dump(doc, sort_keys=False)
    with rt.sessions() as session:
        exported = accounts.export_rules(session, VICTIM)
    assert "https://alice:***@api.virtualpbx.com/v1" in exported
    assert "https://bob:***@public-api.virtualpbx.com:8443" in exported
    assert "hunter2" not in exported and "word@" not in exported and "p%40ss" not in exported
    assert VICTIM_VT_KEY not in exported and VICTIM_PBX_KEY not in exported
    assert accounts.mask_url_passwords({"a": ["https://u:pw@h", "https://u@h", "plain:x@y"]}) == {
        "a": ["https://u:***@h", "https://u@h", "plain:x@y"]}


# --- finding 2, Google Sheets: a copied client_email shares nothing with its owner --------------------------

def test_a_key_file_copying_anothers_client_email_shares_neither_queue_nor_buckets(redis_client, namespace):
    """Finding 2 for Sheets: a tenant's key file naming the victim's service account and spreadsheet (with its own
    private key) neither drains the victim's buckets nor queues rows the victim's credentials would write."""
    state = SheetsStandin.with_defaults()
    server = serve_in_thread(create_sheets_app(state))
    try:
        sheet = "1StandinCallLog0000000000000000000000000000"
        victim_key = new_service_account(state, f"{server.url}/token", share=[sheet])
        forged = json.loads(victim_key)
        forged["private_key"] = json.loads(new_service_account(SheetsStandin(), "https://x.invalid"))["private_key"]
        limiter = RateLimiter(redis_client, namespace=namespace)

        def run(key_text: str, account_id: str, call_id: str):
            config = GoogleSheetsConfig.model_validate({"credentials": key_text, "spreadsheet_id": sheet},
                                                       context={"allow_private_urls": True})
            ctx = ActionContext(account_id=account_id, idempotency_key=f"{account_id}:{call_id}",
                                connection_id=f"{account_id}:sheet", api_urls={"google_sheets": server.url},
                                redis=redis_client, namespace=namespace, acquire=limiter.acquire,
                                penalise=limiter.penalise, allow_private_urls=True,
                                event={"type": "call.ended", "data": {"call_id": call_id, "duration": 5}})
            return GoogleSheetsIntegration(config).run("append_row", {"columns": ["call_id", "duration"]}, ctx)

        with pytest.raises(IntegrationError):  # Google (the stand-in) refuses the forged key
            run(json.dumps(forged), ATTACKER, "attacker-call")
        # The victim, right after: not paced by the attacker's use of "its" sheet and service account.
        assert run(victim_key, VICTIM, "victim-call").external_id
        assert [row[0] for row in state.rows(sheet)] == ["call_id", "victim-call"]
    finally:
        server.stop()


# --- finding 1, the rest of a rules file: nothing else reads the server ----------------------------------------

def test_nothing_else_in_a_rules_file_reads_the_server(make_rt, tmp_path):
    """Even the operator's file: cannot leave the rules directory (symlinks resolved), and templates have no loader,
    no environment and no attribute escapes: a tenant's template reads the event, never the server."""
    rt = make_rt()
    add_accounts(rt, ATTACKER)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (tmp_path / "outside.txt").write_text("vt_live_outside_the_dir")
    (rules_dir / "link.txt").symlink_to(tmp_path / "outside.txt")
    doc = rules_doc(ATTACKER, {"texts": {"integration": "virtualtext", "api_key": "file:link.txt"}})
    path = rules_dir / "rules.yaml"
    path.write_text(dump(doc))
    with rt.sessions.begin() as session, pytest.raises(accounts.AccountError,
                                                       match="connections.texts.api_key: file 'link.txt' is outside"):
        accounts.apply_rules_file(session, path, registry=rt.registry, box=rt.box)
    for source in ("{% include '/etc/passwd' %}", "{% extends '/etc/hostname' %}", "{% import 'os' as os %}",
                   "{{ self.__class__ }}", "{{ cycler.__init__.__globals__ }}", "{{ ''.__class__.__mro__ }}",
                   "{{ config }}", "{{ environ }}", "{{ lipsum(5) }}"):
        with pytest.raises(templating.TemplateError):
            templating.render_template(source, {})
