"""The rules' versions through the API: list, get, diff, rollback (as the tenant), each with its actor."""

from __future__ import annotations

from tests.service.api.test_access import A, assert_problem


def test_versions_list_get_diff_and_rollback(api):
    writer = api.client("write")
    first = writer.get(f"{A}/rules").get_json()
    document = first["document"]
    document["account"]["name"] = "Second Name"
    second = writer.put(f"{A}/rules", json=document).get_json()["version"]

    versions = writer.get(f"{A}/rules/versions").get_json()["items"]
    assert [v["version"] for v in versions][:2] == [second, first["version"]]
    assert versions[0]["actor"].startswith("api_key:") and versions[0]["supplied_by"] == "tenant"
    assert "source" not in versions[0]
    one = writer.get(f"{A}/rules/versions/{first['version']}").get_json()
    assert "Acme Dental" in one["source"] and "xoxb-1-secret" not in one["source"]
    diff = writer.get(f"{A}/rules/versions/diff?from={first['version']}&to={second}").get_json()["diff"]
    assert "-  name: Acme Dental" in diff and "+  name: Second Name" in diff
    assert_problem(writer.get(f"{A}/rules/versions/999"), 404)
    assert_problem(writer.get(f"{A}/rules/versions/diff?from=1"), 422)

    rolled = writer.post(f"{A}/rules/versions/{first['version']}/rollback")
    assert rolled.status_code == 200, rolled.get_data(as_text=True)
    assert rolled.get_json()["version"] == second + 1 and rolled.get_json()["supplied_by"] == "tenant"
    assert writer.get(A).get_json()["name"] == "Acme Dental"
    assert_problem(api.client("viewer").post(f"{A}/rules/versions/{first['version']}/rollback"), 403)
    assert_problem(api.client("b_write").get(f"{A}/rules/versions"), 404)
