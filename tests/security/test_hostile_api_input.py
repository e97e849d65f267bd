"""A hostile tenant's input to the API and the console: whatever its shape, a 4xx naming what is wrong, never a 500
(on SQLite and PostgreSQL, whose text columns refuse NUL characters)."""

from __future__ import annotations

import pytest

from tests.service.api.conftest import ACCOUNT_A, api, api_on  # noqa: F401 - fixtures used here
from tests.service.api.test_access import A, assert_problem
from tests.service.console.conftest import fast_hashing  # noqa: F401 - a fixture the api fixtures use

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
