"""API fixtures: an app on a migrated database with accounts A and B, people in each role, and API keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service.config import Settings
from service.console import apikeys, users
from service.console.audit import CLI_ACTOR
from service.engine import planning
from service.runtime import Runtime
from service.store.models import migrate
from service.web.app import create_app
from tests.conftest import database_url_for
from tests.service.console.conftest import PASSWORD, fast_hashing  # noqa: F401 - a fixture used here

ACCOUNT_A = "a" * 32
ACCOUNT_B = "b" * 32
RULES_A = f"""
account: {{id: {ACCOUNT_A}, name: Acme Dental, timezone: America/New_York}}
connections:
  team-slack: {{integration: slack, bot_token: xoxb-1-secret-token-value, api_url: "http://127.0.0.1:9/api/"}}
  spare: {{integration: slack, webhook_url: "http://127.0.0.1:9/services/T1/B1/hooksecretvalue"}}
rules:
  - name: missed calls
    on: call.missed
    do:
      - use: team-slack
        action: post_message
        with: {{channel: C0STANDIN1, text: "Missed call from {{{{ caller.number }}}}"}}
"""
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@dataclass
class Api:
    """The app, its runtime (same keys: same database and encryption), and who can call it."""

    app: object
    settings: Settings
    rt: Runtime
    keys: dict[str, str] = field(default_factory=dict)  # "read", "write" (account A), "b_write" (account B)

    def client(self, who: str | None):
        """A test client calling as ``who``: an API key name, a role of account A ("owner", ...), or None."""
        client = self.app.test_client()
        if who in self.keys:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.keys[who]}"
        elif who is not None:
            token = CSRF.search(client.get("/console/login").get_data(as_text=True)).group(1)
            response = client.post("/console/login", data={"email": f"{who}@example.com", "password": PASSWORD,
                                                           "csrf_token": token})
            assert response.status_code == 302, response.get_data(as_text=True)
            page = client.get("/console/logout").get_data(as_text=True)
            client.environ_base["HTTP_X_CSRFTOKEN"] = CSRF.search(page).group(1)
        return client


def build_api(tmp_path: Path, database_url: str, redis_url: str, namespace: str) -> Api:
    """An app whose account A has rules (two Slack connections), and people and keys for A and B."""
    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=database_url, secret_keys=Fernet.generate_key().decode(),
                        allow_private_urls=True)
    migrate(database_url)
    planning._RULES_CACHE.clear()  # rules are cached by account and version: every test's database starts at 1
    rt = Runtime(settings)
    api = Api(app=create_app(settings, start_drainer=False), settings=settings, rt=rt)
    with rt.sessions.begin() as db:
        accounts.add_account(db, ACCOUNT_A, name="Acme Dental", box=rt.box)
        accounts.add_account(db, ACCOUNT_B, name="Bolt Plumbing", box=rt.box)
        accounts.apply_rules(db, RULES_A, account_id=ACCOUNT_A, filename="a.yaml", base_dir=tmp_path,
                             registry=rt.registry, box=rt.box, supplied_by="operator", allow_private_urls=True)
        users.create_user(db, "op@example.com", PASSWORD, is_operator=True, actor=CLI_ACTOR)
        for role in ("owner", "editor", "viewer"):
            user = users.create_user(db, f"{role}@example.com", PASSWORD, is_operator=False, actor=CLI_ACTOR)
            users.set_role(db, ACCOUNT_A, user, role, actor=CLI_ACTOR)
        other = users.create_user(db, "other@example.com", PASSWORD, is_operator=False, actor=CLI_ACTOR)
        users.set_role(db, ACCOUNT_B, other, "owner", actor=CLI_ACTOR)
        for name, account_id, scope in (("read", ACCOUNT_A, "read"), ("write", ACCOUNT_A, "write"),
                                        ("b_write", ACCOUNT_B, "write")):
            api.keys[name] = apikeys.create_api_key(db, account_id, name, scope, actor=CLI_ACTOR).secret
    return api


@pytest.fixture
def api(request, tmp_path, redis_url, namespace, redis_client, fast_hashing) -> Api:  # noqa: F811
    """The API on SQLite."""
    return build_api(tmp_path, database_url_for(request, tmp_path, "sqlite"), redis_url, namespace)


@pytest.fixture
def api_on(tmp_path, database_url, redis_url, namespace, redis_client, fast_hashing) -> Api:  # noqa: F811
    """The API on SQLite and on PostgreSQL (storage-heavy tests: lists and pages)."""
    return build_api(tmp_path, database_url, redis_url, namespace)
