"""A hostile tenant's input to the API and the console: whatever its shape, a 4xx naming what is wrong, never a 500
(on SQLite and PostgreSQL, whose text columns refuse NUL characters), nor unbounded work; and an invite link
held by another tenant is no way around the sign-in limits."""

from __future__ import annotations

import pytest

from service.console.limits import EMAIL_FAILURES
from tests.service.api.conftest import ACCOUNT_A, ACCOUNT_B, CSRF, api, api_on  # noqa: F401 - fixtures used here
from tests.service.api.test_access import A, assert_problem
from tests.service.console.conftest import PASSWORD, fast_hashing  # noqa: F401 - a fixture the api fixtures use

DEEP = "[" * 50_000 + "]" * 50_000  # 100 KB, under the body limit, far deeper than json.loads can recurse


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", f"{A}/rules/dry-run", '{"payloads": [{"a": ' + DEEP + "}]}"),
    ("put", f"{A}/rules", DEEP),
    ("patch", A, '{"name": ' + DEEP + "}"),
])
def test_json_nested_beyond_the_parser_is_a_422_naming_the_body(api, method, path, body):  # noqa: F811
    response = getattr(api.client("owner"), method)(path, data=body, content_type="application/json")
    problem = assert_problem(response, 422)
    assert problem["errors"] == [{"field": "body", "message": "the JSON body is nested too deeply"}]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("patch", A, {"json": {"name": "Acme\u0000Dental"}}, 422),
    ("put", f"{A}/rules", {"data": f'account: {{id: {ACCOUNT_A}, name: "a\\0b", timezone: UTC}}\nrules: []\n',
                           "content_type": "text/yaml"}, 422),
    ("put", f"{A}/rules", {"data": f"account: {{id: {ACCOUNT_A}, name: {'n' * 201}, timezone: UTC}}\nrules: []\n",
                           "content_type": "text/yaml"}, 422),
    ("put", f"{A}/rules", {"data": f"account: {{id: {ACCOUNT_A}, name: A, timezone: UTC}}\nconnections: {{}}\n"
                                   f"rules: [{{name: {'r' * 201}, on: call.missed, do: [{{use: x, action: y}}]}}]\n",
                           "content_type": "text/yaml"}, 422),
    ("post", f"{A}/api-keys", {"json": {"name": "ci\u0000", "scope": "read"}}, 422),
    ("post", f"{A}/invites", {"json": {"email": "a\u0000@example.com", "role": "viewer"}}, 422),
    ("get", f"{A}/events/a%00b", {}, 404),
    ("get", f"{A}/calls/a%00b", {}, 404),
])
def test_nul_and_names_longer_than_their_column_are_refused(api_on, method, path, kwargs, status):  # noqa: F811
    problem = assert_problem(getattr(api_on.client("owner"), method)(path, **kwargs), status)
    if status == 422:
        assert any(word in problem["detail"] for word in ("NUL", "email", "200 characters")), problem


def test_nul_characters_in_console_pages_and_sign_in_are_not_server_errors(api_on):  # noqa: F811
    owner = api_on.client("owner")
    base = f"/console/accounts/{ACCOUNT_A}"
    for path in ("/events/a%00b", "/calls/a%00b", "/connections/edit?name=a%00b"):
        assert owner.get(base + path).status_code in (400, 404), path
    anonymous = api_on.app.test_client()
    token = CSRF.search(anonymous.get("/console/login").get_data(as_text=True)).group(1)
    response = anonymous.post("/console/login", data={"email": "owner\u0000@example.com", "password": "x",
                                                      "csrf_token": token})
    assert response.status_code in (200, 400, 401), response.status_code


def test_aliases_of_a_long_anchor_are_refused_before_they_expand(api):  # noqa: F811
    # 100 KB of YAML, 300 values, but 30 MB once expanded: it used to be applied (12 s), served back as 30 MB,
    # and left the account unable to change its settings (the document written out again was over the limit).
    text = (f"account: {{id: {ACCOUNT_A}, name: A, timezone: UTC}}\nconnections: {{}}\nrules:\n"
            f"  - name: r0\n    on: call.missed\n"
            f"    if: {{caller.number: {{in: [&a \"{'x' * 100_000}\", {', '.join(['*a'] * 300)}]}}}}\n"
            f"    do: [{{use: x, action: y}}]\n")
    owner = api.client("owner")
    for method, path in (("post", f"{A}/rules/validate"), ("put", f"{A}/rules")):
        problem = assert_problem(getattr(owner, method)(path, data=text, content_type="text/yaml"), 422)
        assert problem["errors"][0]["field"] == "body" and "KiB of text" in problem["detail"], problem
    assert owner.get(f"{A}/rules/versions").get_json()["items"][0]["version"] == 1
    assert owner.patch(A, json={"name": "Still Editable"}).status_code == 200


HUGE = "99999999999999999999"  # an int to Python and Flask, out of range for the id columns


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("patch", f"{A}/members/{HUGE}", {"json": {"role": "viewer"}}),
    ("patch", f"{A}/members/2147483648", {"json": {"role": "viewer"}}),
    ("delete", f"{A}/members/{HUGE}", {}),
    ("delete", f"{A}/api-keys/{HUGE}", {}),
    ("post", f"{A}/quarantine/{HUGE}/reingest", {}),
])
def test_ids_beyond_the_id_columns_are_404(api_on, method, path, kwargs):  # noqa: F811
    assert_problem(getattr(api_on.client("owner"), method)(path, **kwargs), 404)


def test_console_forms_with_ids_beyond_the_id_columns_are_not_server_errors(api_on):  # noqa: F811
    owner = api_on.client("owner")
    base = f"/console/accounts/{ACCOUNT_A}"
    token = CSRF.search(owner.get(base + "/settings").get_data(as_text=True)).group(1)
    for path in (f"/members/{HUGE}", f"/api-keys/{HUGE}/revoke"):
        response = owner.post(base + path, data={"csrf_token": token, "role": "viewer"})
        assert response.status_code in (400, 404) and "no such" in response.get_data(as_text=True), path


def test_the_rules_page_survives_deep_and_expanding_drafts(api):  # noqa: F811
    owner = api.client("owner")
    base = f"/console/accounts/{ACCOUNT_A}/rules"
    token = CSRF.search(owner.get(base).get_data(as_text=True)).group(1)
    deep = "a: " + "[" * 5_000 + "]" * 5_000  # deeper than PyYAML can recurse, when the page places the problem
    for path in ("", "/try", "/recipe"):
        response = owner.post(base + path, data={"csrf_token": token, "text": deep, "source": "sample:missed_call",
                                                 "recipe": "missed_call_slack"})
        assert response.status_code in (200, 400), (path, response.status_code)
    # A recipe merged into a draft of aliases to one long anchor: the draft is parsed as rules are (refused, and
    # replaced by the recipe), not expanded and sent back (15 MB and seconds of CPU for this 65 KB form).
    aliased = f"rules: []\nx: [&a \"{'x' * 50_000}\", {', '.join(['*a'] * 300)}]\n"
    response = owner.post(base + "/recipe", data={"csrf_token": token, "text": aliased, "recipe": "missed_call_slack"})
    assert response.status_code == 200 and len(response.data) < 100_000, len(response.data)


def test_a_console_form_over_the_body_limit_gets_a_page_not_the_receivers_json(api):  # noqa: F811
    from service.rules.schema import MAX_RULES_REQUEST_BYTES

    owner = api.client("owner")
    base = f"/console/accounts/{ACCOUNT_A}/rules"
    token = CSRF.search(owner.get(base).get_data(as_text=True)).group(1)
    over = {  # the settings form keeps the app's limit; the rules editor takes a whole rules document
        f"/console/accounts/{ACCOUNT_A}/settings": api.settings.max_body_bytes + 1,
        base: MAX_RULES_REQUEST_BYTES + 1,
    }
    for path, size in over.items():
        response = owner.post(path, data={"csrf_token": token, "text": "#" * size})
        assert response.status_code == 413 and response.mimetype == "text/html", (path, response.mimetype)
        assert "Request Entity Too Large" in response.get_data(as_text=True)


def test_an_invite_link_is_no_way_around_the_sign_in_limits(api):  # noqa: F811
    # Account B's owner invites account A's owner, holds the link, and guesses at A's owner's password with it.
    link = api.client("other").post(f"/api/v1/accounts/{ACCOUNT_B}/invites",
                                    json={"email": "owner@example.com", "role": "viewer"}).get_json()["invite_url"]
    guesser = api.app.test_client()
    path = "/console/invite/" + link.rsplit("/", 1)[1]
    token = CSRF.search(guesser.get(path).get_data(as_text=True)).group(1)
    statuses = [guesser.post(path, data={"csrf_token": token, "password": f"guess {n}"}).status_code
                for n in range(EMAIL_FAILURES)]
    assert statuses == [400] * EMAIL_FAILURES
    assert guesser.post(path, data={"csrf_token": token, "password": PASSWORD}).status_code == 429
    login = api.app.test_client()
    token = CSRF.search(login.get("/console/login").get_data(as_text=True)).group(1)
    response = login.post("/console/login", data={"email": "owner@example.com", "password": PASSWORD,
                                                  "csrf_token": token})
    assert response.status_code == 429  # the same count as signing in
