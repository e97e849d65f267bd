"""Who may call what: API keys (read scope GET only, revoked = 401), sessions (CSRF header for changes),
roles (viewer cannot write: 403) and tenancy (another account's objects: 404), on every endpoint."""

from __future__ import annotations

import pytest

from service.console import apikeys
from service.console.audit import CLI_ACTOR
from tests.service.api.conftest import ACCOUNT_A, ACCOUNT_B

A = f"/api/v1/accounts/{ACCOUNT_A}"
YAML = {"content_type": "text/yaml"}
WRITES = [
    ("patch", A, {"json": {"name": "Renamed"}}),
    ("post", f"{A}/rotate-token", {"json": {"kind": "crm"}}),
    ("post", f"{A}/connect", {}),
    ("put", f"{A}/connections/new-hook", {"json": {"integration": "slack", "settings": {
        "webhook_url": "http://127.0.0.1:9/services/T/B/x"}}}),
    ("delete", f"{A}/connections/spare", {}),
    ("post", f"{A}/connections/team-slack/test", {}),
    ("post", f"{A}/connections/team-slack/resume", {}),
    ("put", f"{A}/rules", {"data": f"account: {{id: {ACCOUNT_A}, name: X, timezone: UTC}}", **YAML}),
    ("post", f"{A}/invites", {"json": {"email": "new@example.com", "role": "viewer"}}),
    ("patch", f"{A}/members/1", {"json": {"role": "editor"}}),
    ("delete", f"{A}/members/1", {}),
    ("post", f"{A}/api-keys", {"json": {"name": "ci", "scope": "read"}}),
    ("delete", f"{A}/api-keys/1", {}),
    ("post", f"{A}/opt-outs", {"json": {"number": "+15551234567"}}),
    ("delete", f"{A}/opt-outs/+15551234567", {}),
    ("post", f"{A}/quarantine/1/reingest", {}),
    ("post", f"{A}/deliveries/1/replay", {}),
    ("post", f"{A}/events/call.missed:x/replan", {}),
    ("post", f"{A}/replays", {"json": {"status": "dead"}}),
    ("post", f"{A}/rules/versions/1/rollback", {}),
    ("delete", A, {"json": {"confirm": ACCOUNT_A}}),
]
READS = [f"{A}", f"{A}/connections", f"{A}/connections/team-slack", f"{A}/rules", f"{A}/members",
         f"{A}/opt-outs", f"{A}/quarantine", f"{A}/dead-letters", f"{A}/events", f"{A}/calls", f"{A}/deliveries",
         f"{A}/rules/versions", f"{A}/rules/versions/1"]
OWNER_READS = [f"{A}/api-keys", f"{A}/invites", f"{A}/export"]


def call(client, method: str, path: str, kwargs: dict):
    """Send one request."""
    return getattr(client, method)(path, **kwargs)


def assert_problem(response, status: int) -> dict:
    """The response is a problem+json with this status; its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"]
    return body


@pytest.mark.parametrize(("method", "path", "kwargs"), WRITES, ids=[f"{m} {p[len(A):]}" for m, p, _ in WRITES])
def test_every_change_is_refused_to_viewers_read_keys_and_other_accounts(api, method, path, kwargs):
    assert_problem(call(api.client("viewer"), method, path, kwargs), 403)
    body = assert_problem(call(api.client("read"), method, path, kwargs), 403)
    assert "read-only" in body["detail"]
    assert_problem(call(api.client("b_write"), method, path, kwargs), 404)
    assert_problem(call(api.client("other"), method, path, kwargs), 404)
    assert_problem(call(api.client(None), method, path, kwargs), 401)


@pytest.mark.parametrize("path", READS + OWNER_READS)
def test_reads_are_for_members_only(api, path):
    allowed = api.client("owner").get(path)
    assert allowed.status_code == 200, allowed.get_data(as_text=True)
    assert_problem(api.client("other").get(path), 404)
    assert_problem(api.client("b_write").get(path), 404)
    assert_problem(api.client(None).get(path), 401)
    if path in OWNER_READS:
        assert_problem(api.client("viewer").get(path), 403)
        assert_problem(api.client("read").get(path), 403)
    else:
        assert api.client("viewer").get(path).status_code == 200
        assert api.client("read").get(path).status_code == 200


def test_an_account_that_does_not_exist_looks_like_another_tenants(api):
    assert_problem(api.client("owner").get(f"/api/v1/accounts/{'c' * 32}"), 404)
    assert_problem(api.client("owner").get(f"/api/v1/accounts/{ACCOUNT_B}"), 404)
    assert api.client("op").get(f"/api/v1/accounts/{ACCOUNT_B}").status_code == 200  # operators see all


def test_accounts_lists_what_the_caller_can_see(api):
    names = {who: [a["id"] for a in api.client(who).get("/api/v1/accounts").get_json()["items"]]
             for who in ("owner", "other", "read", "b_write", "op")}
    assert names == {"owner": [ACCOUNT_A], "other": [ACCOUNT_B], "read": [ACCOUNT_A], "b_write": [ACCOUNT_B],
                     "op": [ACCOUNT_A, ACCOUNT_B]}
    assert api.client("read").get("/api/v1/accounts").get_json()["items"][0]["role"] == "viewer"


def test_unknown_and_revoked_keys_are_401_and_use_is_recorded(api):
    client = api.app.test_client()
    for header in ("Bearer pbx_nonsense", "Bearer " + api.keys["read"][:-2], "Basic abc", "Bearer"):
        response = client.get("/api/v1/accounts", headers={"Authorization": header})
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.client("read").get(A).status_code == 200
    with api.rt.sessions.begin() as db:
        key = next(k for k in apikeys.list_api_keys(db, ACCOUNT_A) if k.name == "read")
        assert key.last_used_at is not None
        apikeys.revoke_api_key(db, ACCOUNT_A, key.id, actor=CLI_ACTOR)
    assert_problem(api.client("read").get(A), 401)


def test_a_session_needs_the_csrf_header_for_changes_but_not_for_reads(api):
    client = api.client("owner")
    good = client.environ_base.pop("HTTP_X_CSRFTOKEN")
    assert client.get(A).status_code == 200
    body = assert_problem(client.patch(A, json={"name": "Renamed"}), 403)
    assert "X-CSRFToken" in body["detail"]
    assert_problem(client.patch(A, json={"name": "Renamed"}, headers={"X-CSRFToken": "0" * 64}), 403)
    # A token from another session is useless here.
    stranger = api.client("editor").environ_base["HTTP_X_CSRFTOKEN"]
    assert_problem(client.patch(A, json={"name": "Renamed"}, headers={"X-CSRFToken": stranger}), 403)
    response = client.patch(A, json={"name": "Renamed"}, headers={"X-CSRFToken": good})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["name"] == "Renamed"


def test_signed_out_sessions_are_401(api):
    client = api.client("owner")
    assert client.get(A).status_code == 200
    client.post("/console/logout", data={"csrf_token": client.environ_base["HTTP_X_CSRFTOKEN"]})
    assert_problem(client.get(A), 401)


def test_editors_write_rules_and_connections_but_not_people_or_settings(api):
    editor = api.client("editor")
    assert_problem(editor.patch(A, json={"name": "X"}), 403)
    assert_problem(editor.post(f"{A}/api-keys", json={"name": "ci", "scope": "read"}), 403)
    assert_problem(editor.post(f"{A}/invites", json={"email": "x@example.com", "role": "viewer"}), 403)
    assert editor.post(f"{A}/opt-outs", json={"number": "+15551234567"}).status_code == 201
    assert api.client("write").post(f"{A}/opt-outs", json={"number": "+15551234568"}).status_code == 201
