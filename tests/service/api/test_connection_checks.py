"""POST .../connections/{name}/test against the real stand-ins over real HTTP: one harmless vendor call per
integration, its verdict, no secret in the answer; and POST .../connect registering hooks with VirtualPBX."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from service.sandbox.standins import google_sheets, slack, trello, virtualtext
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx import standin as pbx_standin
from service.sandbox.virtualpbx.state import StandinState
from tests.service.api.conftest import ACCOUNT_A
from tests.service.api.test_access import A, assert_problem

SHEET_ID = "1ApiConnectionCheckSheet000000000000000000"
PBX_KEY = "f" * 64
SECRET_KEYS = {"bot_token", "webhook_url", "token", "api_key", "credentials", "password"}


@pytest.fixture(autouse=True)
def _direct_connections(monkeypatch):
    """Talk to the local stand-ins directly, whatever proxy the environment names."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def vendors():
    """Every stand-in on its own socket, for the module: (states, urls)."""
    sheets = google_sheets.SheetsStandin()
    sheets.add_spreadsheet(SHEET_ID, title="Call log", sheets=["Sheet1"])
    pbx = StandinState()
    pbx.add_account(account_id=ACCOUNT_A, name="Acme Dental", api_key=PBX_KEY)
    states = {"slack": slack.SlackStandin.with_defaults(), "trello": trello.TrelloStandin.with_defaults(),
              "virtualtext": virtualtext.VirtualTextStandin.with_defaults(), "sheets": sheets, "pbx": pbx}
    apps = {"slack": slack.create_app, "trello": trello.create_app, "virtualtext": virtualtext.create_app,
            "sheets": google_sheets.create_app, "pbx": pbx_standin.create_app}
    servers = {name: serve_in_thread(apps[name](state)) for name, state in states.items()}
    yield states, {name: server.url for name, server in servers.items()}
    for server in servers.values():
        server.stop()


def check(api, name: str, integration: str, settings: dict) -> dict:
    """Store a connection through the API, test it, and return the verdict (after checking no secret leaked)."""
    writer = api.client("write")
    stored = writer.put(f"{A}/connections/{name}", json={"integration": integration, "settings": settings})
    assert stored.status_code in (200, 201), stored.get_data(as_text=True)
    response = writer.post(f"{A}/connections/{name}/test")
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    for key in SECRET_KEYS & set(settings):
        shown = settings[key].rsplit("/", 1)[-1]  # a webhook URL's secret is its last part
        assert shown not in text
    return response.get_json()


def test_slack_bot_token_and_webhook(api, vendors):
    states, urls = vendors
    ok = check(api, "chat", "slack", {"bot_token": slack.DEFAULT_TOKEN, "api_url": urls["slack"] + "/api/"})
    assert ok["ok"] and "Stand-in" in ok["detail"]
    assert states["slack"].calls_to("auth.test") >= 1
    bad = check(api, "chat", "slack", {"bot_token": "xoxb-not-a-known-token", "api_url": urls["slack"] + "/api/"})
    assert not bad["ok"] and "invalid_auth" in bad["detail"] and "xoxb-not" not in bad["detail"]

    before = len(states["slack"].messages)
    hook = check(api, "hook", "slack", {"webhook_url": f"{urls['slack']}/services/{slack.DEFAULT_WEBHOOK_PATH}"})
    assert hook["ok"], hook
    assert len(states["slack"].messages) == before  # nothing was posted
    gone = check(api, "hook", "slack", {"webhook_url": f"{urls['slack']}/services/T0/B0/revokedsecret"})
    assert not gone["ok"] and "no_service" in gone["detail"] and "revokedsecret" not in gone["detail"]


def test_trello_member_lookup(api, vendors):
    _states, urls = vendors
    ok = check(api, "cards", "trello", {"api_key": trello.DEFAULT_KEY, "token": trello.DEFAULT_TOKEN,
                                        "api_url": urls["trello"]})
    assert ok["ok"] and trello.DEFAULT_MEMBER in ok["detail"]
    bad = check(api, "cards", "trello", {"api_key": trello.DEFAULT_KEY, "token": "ATTAnope" + "1" * 56,
                                         "api_url": urls["trello"]})
    assert not bad["ok"] and "ATTAnope" not in bad["detail"]


def test_google_sheets_metadata(api, vendors):
    states, urls = vendors
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    shared = google_sheets.service_account_json(states["sheets"], key, urls["sheets"] + "/token", share=[SHEET_ID])
    ok = check(api, "log", "google_sheets", {"credentials": shared, "spreadsheet_id": SHEET_ID,
                                             "api_url": urls["sheets"]})
    assert ok["ok"] and "Call log" in ok["detail"], ok
    private_key = json.loads(shared)["private_key"]
    assert private_key not in json.dumps(api.client("write").get(f"{A}/connections/log").get_json())
    missing = check(api, "log", "google_sheets", {"credentials": shared, "spreadsheet_id": SHEET_ID,
                                                  "worksheet": "Calls", "api_url": urls["sheets"]})
    assert not missing["ok"] and "Calls" in missing["detail"]
    unshared = google_sheets.service_account_json(states["sheets"], key, urls["sheets"] + "/token")
    refused = check(api, "log", "google_sheets", {"credentials": unshared, "spreadsheet_id": SHEET_ID,
                                                  "api_url": urls["sheets"]})
    assert not refused["ok"]


def test_virtualtext_read_only_call(api, vendors):
    states, urls = vendors
    ok = check(api, "sms", "virtualtext", {"api_key": virtualtext.DEFAULT_API_KEY, "api_url": urls["virtualtext"]})
    assert ok["ok"] and states["virtualtext"].sent() == []
    bad = check(api, "sms", "virtualtext", {"api_key": "pk_live_wrong_key_123", "api_url": urls["virtualtext"]})
    assert not bad["ok"] and "pk_live_wrong" not in bad["detail"]


def test_virtualpbx_account_read_and_connect(api, vendors):
    states, urls = vendors
    settings = {"account_id": ACCOUNT_A, "api_key": PBX_KEY, "api_url": urls["pbx"]}
    ok = check(api, "pbx", "virtualpbx", settings)
    assert ok["ok"] and "Acme Dental" in ok["detail"]
    owner = api.client("owner")
    connected = owner.post(f"{A}/connect")
    assert connected.status_code == 200, connected.get_data(as_text=True)
    assert connected.get_json()["created"] and states["pbx"].accounts[ACCOUNT_A].webhooks
    again = owner.post(f"{A}/connect").get_json()
    assert again["created"] == [] and again["unchanged"]
    bad = check(api, "pbx", "virtualpbx", {**settings, "api_key": "e" * 64})
    assert not bad["ok"] and "e" * 64 not in bad["detail"]


def test_a_foreign_kazoo_account_is_refused_when_stored(api, vendors):
    _states, urls = vendors
    refused = assert_problem(api.client("write").put(f"{A}/connections/pbx", json={
        "integration": "virtualpbx", "settings": {"account_id": "c" * 32, "api_key": PBX_KEY,
                                                  "api_url": urls["pbx"]}}), 422)
    assert "connections.pbx.account_id" in [e["field"] for e in refused["errors"]]


def test_resume_a_paused_connection(api):
    from service.store.models import Connection

    with api.rt.sessions.begin() as db:
        row = db.query(Connection).filter_by(account_id=ACCOUNT_A, name="team-slack").one()
        row.paused_reason = "invalid_auth"
    assert api.client("write").get(A).get_json()["paused_connections"] == ["team-slack"]
    resumed = api.client("write").post(f"{A}/connections/team-slack/resume")
    assert resumed.get_json() == {"name": "team-slack", "replayed": 0}
    assert api.client("write").get(f"{A}/connections/team-slack").get_json()["paused_reason"] is None
    assert_problem(api.client("write").post(f"{A}/connections/nothing/resume"), 404)
