"""The hostile inputs of test_hostile_api_input over real HTTP, to a real gunicorn on SQLite and PostgreSQL: each
answer is a 4xx problem, and the web process keeps serving."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from tests.harness import Service

ACCOUNT = "c" * 32
PASSWORD = "correct horse battery"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


@pytest.fixture
def web(tmp_path, redis_url, database_url):
    """A real web process with one account and one operator."""
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"h{uuid.uuid4().hex[:8]}", database_url=database_url)
    svc.cli("migrate")
    svc.add_account(ACCOUNT)
    svc.cli("users", "add", "op@example.com", "--operator", "--password-stdin", input=PASSWORD + "\n")
    svc.start_web()
    yield svc
    svc.stop()


def signed_in(svc: Service) -> requests.Session:
    """A browser-like session signed in to the console, sending the CSRF header the pages send."""
    http = requests.Session()
    token = CSRF_FIELD.search(http.get(f"{svc.url}/console/login", timeout=10).text).group(1)
    answer = http.post(f"{svc.url}/console/login", timeout=10,
                       data={"email": "op@example.com", "password": PASSWORD, "csrf_token": token})
    assert answer.ok, answer.text
    http.headers["X-CSRFToken"] = CSRF_META.search(http.get(f"{svc.url}/console/", timeout=10).text).group(1)
    return http


def test_hostile_bodies_are_4xx_problems_and_the_server_keeps_serving(web):
    http = signed_in(web)
    account = f"{web.url}/api/v1/accounts/{ACCOUNT}"
    json_type = {"Content-Type": "application/json"}
    yaml_type = {"Content-Type": "text/yaml"}
    aliased = (f"account: {{id: {ACCOUNT}, name: A, timezone: UTC}}\nrules: []\n"
               f"x: [&a \"{'x' * 100_000}\", {', '.join(['*a'] * 300)}]\n")
    for method, url, body, headers, status, says in (
        ("PATCH", account, '{"name": ' + "[" * 50_000 + "]" * 50_000 + "}", json_type, 422, "nested too deeply"),
        ("PATCH", account, '{"name": "Acme\\u0000Dental"}', json_type, 422, "NUL"),
        ("POST", f"{account}/api-keys", '{"name": "ci\\u0000", "scope": "read"}', json_type, 422, "NUL"),
        ("POST", f"{account}/rules/validate", aliased, yaml_type, 422, "KiB of text"),
        ("GET", f"{account}/calls/a%00b", None, {}, 404, "no such call"),
    ):
        answer = http.request(method, url, data=body, headers=headers, timeout=30)
        assert answer.status_code == status, (method, url, answer.status_code, answer.text[:300])
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert says in answer.json()["detail"], answer.text[:300]
    assert http.patch(account, json={"name": "Acme Dental Two"}, timeout=10).json()["name"] == "Acme Dental Two"
