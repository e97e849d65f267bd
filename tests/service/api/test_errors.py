"""Bad input answers problem+json naming the field (or the YAML line); unexpected errors give nothing away;
the OpenAPI 3.1 document validates and documents what the views do."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from service.api import MAX_BODY_BYTES
from service.console import settings
from tests.service.api.conftest import ACCOUNT_A
from tests.service.api.test_access import A, assert_problem


def assert_problem_headers(response, status: int):
    """The response is a problem with this status; its headers."""
    assert_problem(response, status)
    return response.headers


def fields(body: dict) -> list[str]:
    """The fields a problem names."""
    return [error["field"] for error in body["errors"]]


@pytest.mark.parametrize(("method", "path", "payload", "field"), [
    ("patch", A, {"retention_days": "ninety"}, "retention_days"),
    ("patch", A, {"retention_days": 0}, "retention_days"),
    ("patch", A, {"name": "X", "colour": "red"}, "colour"),
    ("put", f"{A}/connections/x", {"integration": "slack", "settings": [1]}, "settings"),
    ("put", f"{A}/connections/x", {"integration": "slack", "secret": "x"}, "secret"),
    ("post", f"{A}/api-keys", {"name": "ci", "scope": "admin"}, "scope"),
    ("post", f"{A}/invites", {"email": "a@example.com"}, "role"),
    ("post", f"{A}/opt-outs", {"number": 15551234567}, "number"),
    ("post", f"{A}/rules/dry-run", {"payloads": "all of them"}, "payloads"),
])
def test_wrong_types_and_unknown_fields_name_the_field(api, method, path, payload, field):
    body = assert_problem(getattr(api.client("owner"), method)(path, json=payload), 422)
    assert field in fields(body), body
    assert "ninety" not in str(body["errors"]) or field != "retention_days"


def test_bad_paths_and_queries_name_the_parameter(api):
    owner = api.client("owner")
    assert "account_id" in fields(assert_problem(owner.get("/api/v1/accounts/NOT-HEX"), 422))
    assert "limit" in fields(assert_problem(owner.get(f"{A}/opt-outs?limit=zero"), 422))
    assert "colour" in fields(assert_problem(owner.get(f"{A}/opt-outs?colour=red"), 422))
    assert_problem(owner.get("/api/v1/nowhere"), 404)
    assert "GET" in assert_problem_headers(owner.post("/api/v1/accounts"), 405)["Allow"]


def test_not_json_is_a_clear_error(api):
    owner = api.client("owner")
    body = assert_problem(owner.patch(A, data="{not json", content_type="application/json"), 422)
    assert body["errors"]
    body = assert_problem(owner.put(f"{A}/rules", data="account: {}", content_type="text/plain"), 422)
    assert fields(body) == ["body"] and "text/yaml" in body["detail"]


def test_oversized_bodies_are_refused_before_reading(api):
    owner = api.client("owner")
    big = "#" * (MAX_BODY_BYTES + 1)
    body = assert_problem(owner.put(f"{A}/rules", data=big, content_type="text/yaml"), 413)
    assert "KiB" in body["detail"]
    assert_problem(owner.patch(A, data=big, content_type="application/json"), 413)


def test_invalid_yaml_names_the_line(api):
    text = f"account:\n  id: {ACCOUNT_A}\n  name: [unclosed\nrules: []\n"
    body = assert_problem(api.client("owner").put(f"{A}/rules", data=text, content_type="text/yaml"), 422)
    assert body["type"].endswith("invalid-rules")
    assert body["errors"][0]["line"] in (3, 4) and "line" in body["errors"][0]["message"]


def test_rule_problems_name_rule_and_field(api):
    text = (f"account: {{id: {ACCOUNT_A}, name: A, timezone: UTC}}\n"
            "rules:\n  - name: r1\n    on: call.missed\n    do: [{use: nowhere, action: post_message}]\n")
    body = assert_problem(api.client("owner").post(f"{A}/rules/validate", data=text, content_type="text/yaml"),
                          422)
    assert "rules[r1].do[0].use" in fields(body)


def test_unexpected_errors_are_500_without_internals(api, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(settings, "account_settings", broken)
    body = assert_problem(api.client("owner").get(A), 500)
    assert "hunter2" not in str(body) and "RuntimeError" not in str(body)


def test_the_openapi_document_validates_and_covers_the_api(api):
    response = api.app.test_client().get("/api/v1/openapi.json")  # public: it describes, it opens nothing
    assert response.status_code == 200
    doc = response.get_json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "session"}
    paths = doc["paths"]
    for path in ("/api/v1/accounts/{account_id}/connections/{name}/test", "/api/v1/accounts/{account_id}/rules",
                 "/api/v1/accounts/{account_id}/deliveries", "/api/v1/accounts/{account_id}/opt-outs"):
        assert path in paths
    patch = paths["/api/v1/accounts/{account_id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]
    assert "application/problem+json" in patch["responses"]["422"]["content"]
    assert "text/yaml" in paths["/api/v1/accounts/{account_id}/rules"]["put"]["requestBody"]["content"]
    schema = doc["components"]["schemas"]["SettingsPatch"]
    assert schema["additionalProperties"] is False


def test_the_openapi_document_describes_every_route_and_method_served(api):
    doc = api.app.test_client().get("/api/v1/openapi.json").get_json()
    documented = {(path, method.upper()) for path, operations in doc["paths"].items() for method in operations}
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
              for rule in api.app.url_map.iter_rules() if rule.rule.startswith("/api/v1/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    served.discard(("/api/v1/openapi.json", "GET"))  # the document itself, public
    assert served == documented
    assert len(served) > 40


def test_a_concurrent_change_is_a_conflict_not_a_crash(api, monkeypatch):
    import sqlalchemy.exc

    def collide(*_args, **_kwargs):
        raise sqlalchemy.exc.IntegrityError("INSERT INTO ruleset_versions", {}, Exception("duplicate key"))

    monkeypatch.setattr(settings, "edit_rules", collide)
    body = assert_problem(api.client("owner").patch(A, json={"name": "X"}), 409)
    assert "try again" in body["detail"] and "ruleset_versions" not in str(body)
