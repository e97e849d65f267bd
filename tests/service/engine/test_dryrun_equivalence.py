"""`rules test` (the dry run) and production derive the same call events from the same hooks.

Production: each payload through engine.ingest on a real Runtime (Redis correlation window, SQL events
table), then engine.finalize_call for every call an outcome named (after the settle window, here: after
the last hook). Dry run: engine.derive_events on the same payloads. Compared: the (type, key, data) of
every stored call-level event against the derived ones, for every Kazoo webhook fixture and for every
order (with and without duplicates) of the four channel hooks that form one bridged inbound call.
"""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, engine
from service.config import Settings
from service.runtime import Runtime
from service.store.models import StoredEvent, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES

KAZOO = FIXTURES / "kazoo"
WEBHOOKS = sorted(path.name for path in KAZOO.glob("webhook_*.json"))
CHANNEL_LEGS = ["webhook_channel_create.json", "webhook_channel_answer.json", "webhook_channel_bridge.json",
                "webhook_channel_destroy.json"]


def _scenarios() -> dict[str, list[str]]:
    """Named lists of fixture files, each played as one account's hooks in that order."""
    scenarios = {f"alone:{name}": [name] for name in WEBHOOKS}
    scenarios["all fixtures in file order"] = list(WEBHOOKS)
    for order in itertools.permutations(CHANNEL_LEGS):
        names = [name.removeprefix("webhook_channel_").removesuffix(".json") for name in order]
        scenarios["legs:" + ",".join(names)] = list(order)
        # Kazoo re-sends: the first leg again at the end, the last one twice in a row.
        scenarios["legs+dups:" + ",".join(names)] = [*order, order[-1], order[0]]
    return scenarios


SCENARIOS = _scenarios()


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, database_url):
    """A Runtime on a migrated database (SQLite and PostgreSQL) and the real Redis correlation window."""
    settings = Settings(_env_file=None, var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=database_url, secret_keys=Fernet.generate_key().decode())
    migrate(database_url)
    runtime = Runtime(settings)
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def _payloads(names: list[str]) -> list[dict]:
    return [json.loads((KAZOO / name).read_text()) for name in names]


def _production(rt: Runtime, account_id: str, payloads: list[dict]) -> set[tuple[str, str, str]]:
    """Ingest each payload as the receiver queues it, finalise the named calls, read the stored call events."""
    to_finalize: list[str] = []
    for payload in payloads:
        envelope = make_envelope(source="virtualpbx", account_id=account_id, method="POST",
                                 content_type="application/json", query_string="",
                                 body=json.dumps(payload).encode(), headers={})
        outcome = engine.ingest(rt, envelope)
        assert outcome.status in ("accepted", "duplicate"), outcome
        if outcome.finalize_call and outcome.finalize_call not in to_finalize:
            to_finalize.append(outcome.finalize_call)
    for call_key in to_finalize:  # the settle window has passed
        engine.finalize_call(rt, account_id, call_key)
    with rt.sessions() as session:
        rows = session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == account_id,
                                                            ~StoredEvent.type.startswith("virtualpbx."))).all()
        return {(row.type, row.key, _canonical(row.data)) for row in rows}


def _dry_run(account_id: str, payloads: list[dict]) -> set[tuple[str, str, str]]:
    _, derived = engine.derive_events(account_id, payloads)
    return {(event.type, event.key, _canonical(event.data)) for event in derived}


def _canonical(data) -> str:
    """JSON text with sorted keys: stored data comes back from a JSON column, derived data is Python."""
    return json.dumps(json.loads(json.dumps(data, default=str)), sort_keys=True)


def test_dry_run_and_production_give_the_same_call_events(rt):
    differences = {}
    produced = {}
    for name, files in SCENARIOS.items():
        account_id = uuid.uuid4().hex
        with rt.sessions.begin() as session:
            accounts.add_account(session, account_id, name=name[:60], box=rt.box)
        payloads = _payloads(files)
        production, dry = _production(rt, account_id, payloads), _dry_run(account_id, payloads)
        produced[name] = {event_type for event_type, _, _ in production}
        if production != dry:
            differences[name] = {"only in production": sorted(production - dry),
                                 "only in dry run": sorted(dry - production)}
    assert differences == {}
    # Not vacuous: the bridged call gives its whole life in every order, the missed-call notice its call.missed.
    for name, types in produced.items():
        if name.startswith("legs"):
            assert types == {"call.started", "call.answered", "call.ended"}, (name, types)
    assert "call.missed" in produced["alone:webhook_notifications_missed_call.json"]
    assert "voicemail.new" in produced["alone:webhook_notifications_voicemail_new.json"]
