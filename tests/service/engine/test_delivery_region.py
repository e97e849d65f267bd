"""The region bug: an action run in a process that never planned for the account still uses the account's region.

A prefork child that never loaded an account's rules used to build the action context with region "US"
(the region came from a per-process rules cache), so a GB local number in an SMS action was misread.
The action here runs in a fresh interpreter, as a worker child would, against the VirtualText stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, engine
from service.config import Settings
from service.runtime import Runtime
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.virtualtext import VirtualTextStandin, create_app
from service.store.models import Delivery, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES

ACCOUNT = "4b0f6e2d9c8a4e1f8b7a6c5d4e3f2a1b"
API_KEY = "pk_live_region_test_0000000001"
SENDER = "+442079460000"
GB_LOCAL = "020 7946 0018"

# What a worker child does for an action task: settings from the environment, a runtime, one delivery.
CHILD = """
import sys
from service import engine
from service.config import Settings
from service.runtime import Runtime
print(engine.execute_delivery(Runtime(Settings(_env_file=None)), int(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def virtualtext():
    """A VirtualText stand-in that knows one key with a GB sending number."""
    state = VirtualTextStandin(rate_limit_max=None)
    state.add_key(API_KEY, [SENDER])
    server = serve_in_thread(create_app(state))
    yield state, server.url
    server.stop()


@pytest.fixture
def planned(tmp_path, redis_url, namespace, redis_client, database_url, virtualtext):
    """A GB account whose rule texts a GB local number on each parking hook; one hook ingested here.

    Returns the planned delivery id and the environment a fresh worker process reads its settings from."""
    state, url = virtualtext
    state.reset()
    env = {"PBXRELAY_VAR_DIR": str(tmp_path / "var"), "PBXRELAY_REDIS_URL": redis_url,
           "PBXRELAY_NAMESPACE": namespace, "PBXRELAY_DATABASE_URL": database_url,
           "PBXRELAY_SECRET_KEYS": Fernet.generate_key().decode(), "PBXRELAY_VIRTUALTEXT_API_URL": url,
           "PBXRELAY_ALLOW_PRIVATE_URLS": "true"}
    migrate(database_url)
    rt = Runtime(Settings(_env_file=None, **{k[len("PBXRELAY_"):].lower(): v for k, v in env.items()}))
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
account: {{id: {ACCOUNT}, name: London Dental, timezone: Europe/London, region: GB}}
connections:
  texts: {{integration: virtualtext, api_key: {API_KEY}, from_number: "{SENDER}"}}
rules:
  - name: text the practice
    on: virtualpbx.parking
    do:
      - {{use: texts, action: send_sms, with: {{to: "{GB_LOCAL}", body: "call parked"}}}}
""")
    with rt.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="London Dental", box=rt.box)
        accounts.apply_rules_file(session, rules, registry=rt.registry, box=rt.box)
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST", content_type="application/json",
                             query_string="", body=json.dumps(payload).encode(), headers={})
    outcome = engine.ingest(rt, envelope)
    assert outcome.status == "accepted" and len(outcome.deliveries) == 1
    yield rt, outcome.deliveries[0], env
    rt.sessions.kw["bind"].dispose()


def test_an_action_in_a_fresh_process_texts_the_gb_number_as_e164(planned, virtualtext):
    rt, delivery_id, env = planned
    state, _ = virtualtext
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PBXRELAY_")} | env
    run = subprocess.run([sys.executable, "-c", CHILD, str(delivery_id)], env=child_env, capture_output=True,
                         text=True, timeout=120)
    with rt.sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        status, error = delivery.status, delivery.last_error
    assert run.returncode == 0, f"{status}: {error}\n{run.stderr[-2000:]}"
    assert run.stdout.strip() == status == "succeeded"
    assert [m["to"] for m in state.sent()] == ["+442079460018"]
    with rt.sessions() as session:
        assert session.scalars(sa.select(Delivery.status)).all() == ["succeeded"]
