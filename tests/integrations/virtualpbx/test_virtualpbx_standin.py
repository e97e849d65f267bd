"""The standin's own surface: Kazoo details the client does not exercise, /_standin control, the sandbox."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from integrations.virtualpbx.client import VirtualPBXClient
from integrations.virtualpbx.errors import ServerError
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx.standin import DEMO_ACCOUNT_ID, DEMO_API_KEY, create_app
from service.sandbox.virtualpbx.state import StandinState


def test_kazoo_envelopes_request_id_echo_and_error_shape(standin):
    auth = requests.put(f"{standin.url}/v2/api_auth", json={"data": {"api_key": standin.account.api_key}},
                        headers={"X-Request-ID": "trace-123"}, timeout=5)
    assert auth.status_code == 201 and auth.headers["x-request-id"] == "trace-123"
    body = auth.json()
    assert body["request_id"] == "trace-123" and body["data"]["account_id"] == standin.account.id
    token = body["auth_token"]

    checked = requests.get(f"{standin.url}/v2/token_auth", headers={"X-Auth-Token": token}, timeout=5).json()
    assert checked["data"]["account_id"] == standin.account.id

    path = f"{standin.url}/v2/accounts/{standin.account.id}/cdrs/somecdr"
    refused = requests.patch(path, json={"data": {}}, headers={"X-Auth-Token": token}, timeout=5)
    assert refused.status_code == 405
    assert {k: refused.json()[k] for k in ("error", "message", "status")} == {
        "error": "405", "message": "invalid_method", "status": "error"}

    requests.delete(f"{standin.url}/v2/token_auth", headers={"X-Auth-Token": token}, timeout=5)
    revoked = requests.get(f"{standin.url}/v2/token_auth", headers={"X-Auth-Token": token}, timeout=5)
    assert revoked.status_code == 401 and revoked.json()["message"] == "invalid_credentials"


def test_accept_csv_tunnelled_in_the_query(standin):
    token = requests.put(f"{standin.url}/v2/api_auth", json={"data": {"api_key": standin.account.api_key}},
                         timeout=5).json()["auth_token"]
    answer = requests.get(f"{standin.url}/v2/accounts/{standin.account.id}/cdrs", params={"accept": "csv"},
                          headers={"X-Auth-Token": token}, timeout=5)
    assert answer.headers["Content-Type"].startswith("text/csv") and answer.text.startswith("id,call_id,")


def test_control_surface_seeds_simulates_and_injects_faults(receiver):
    server = serve_in_thread(create_app(StandinState()))
    try:
        account_id, api_key = "c" * 32, "d" * 64
        seeded = requests.post(f"{server.url}/_standin/seed", timeout=5, json={"accounts": [{
            "id": account_id, "name": "Seeded", "api_key": api_key,
            "users": [{"id": "u1" * 16, "first_name": "Ann", "last_name": "A", "extension": "201"},
                      {"id": "u2" * 16, "first_name": "Ben", "last_name": "B", "extension": "202"}],
            "devices": [{"owner_id": "u1" * 16, "name": "ann"}, {"owner_id": "u2" * 16, "name": "ben"}],
            "vmboxes": [{"mailbox": "201", "name": "Ann VM", "owner_id": "u1" * 16}],
            "webhooks": [{"name": "all", "hook": "all", "uri": receiver.url, "format": "json"}]}]}).json()
        assert seeded["accounts"][account_id]["users"] == 2

        simulated = requests.post(f"{server.url}/_standin/simulate", timeout=10,
                                  json={"account_id": account_id, "scenario": "voicemail", "seed": 4}).json()
        assert simulated["calls"][0]["voicemail_id"] and len(receiver.received) == simulated["calls"][0]["events"]

        requests.post(f"{server.url}/_standin/faults", json={"status": 503, "message": "datastore_unreachable",
                                                               "path_contains": "/users"}, timeout=5)
        client = VirtualPBXClient(server.url, account_id=account_id, api_key=api_key)
        with pytest.raises(ServerError):
            client.list_users()
        assert len(client.list_users()) == 2
        assert requests.post(f"{server.url}/_standin/expire_tokens", timeout=5).json()["expired"] == 1
        state = requests.get(f"{server.url}/_standin/state", timeout=5).json()
        assert state["accounts"][account_id]["messages"] == 1 and state["pending_faults"] == 0
    finally:
        server.stop()


def test_sandbox_command_prints_its_credentials_and_serves_them(tmp_path):
    """`pbxrelay sandbox` serves the seeded VirtualPBX, prints what it accepts and writes sandbox.env."""
    env = {**os.environ, "PBXRELAY_VAR_DIR": str(tmp_path)}
    # Port 0: every stand-in on a free port (a fixed first port could collide with a busy next one).
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "sandbox", "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        banner = [process.stdout.readline() for _ in range(2)]
        assert DEMO_ACCOUNT_ID in banner[1] and DEMO_API_KEY in banner[1]
        base = re.search(r"(http://127\.0\.0\.1:\d+)/v2", banner[1]).group(1)
        client = VirtualPBXClient(base, account_id=DEMO_ACCOUNT_ID, api_key=DEMO_API_KEY)
        assert len(client.list_vmboxes()) == 1 and len(client.list_devices()) == 3
        written = (tmp_path / "sandbox.env").read_text()
        assert "PBXRELAY_VIRTUALPBX_API_URL=" in written and DEMO_API_KEY in written
    finally:
        process.terminate()
        process.wait(timeout=10)
