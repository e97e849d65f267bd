"""The Sheets stand-in itself, spoken to over HTTP the way Google documents (and through plain gspread)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import google.auth.crypt
import google.auth.jwt
import gspread
import pytest
import requests

from integrations.google_sheets.integration import SheetsHTTPClient
from service.sandbox.standins.google_sheets import (
    DEFAULT_SPREADSHEET_ID,
    GOOGLE_TOKEN_URL,
    SheetsStandin,
    create_app,
    new_service_account,
)

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "google_sheets" / "fixtures"
BOOK = "1StandinTestBook000000000000"


def fixture(name: str):
    """A JSON body from integrations/google_sheets/fixtures."""
    return json.loads((FIXTURES / name).read_text())


def keys_of(body, depth: int = 3):
    """The nested key structure of a JSON body (lists reduced to their first element), for shape checks."""
    if isinstance(body, dict) and depth:
        return {k: keys_of(v, depth - 1) for k, v in body.items()}
    if isinstance(body, list) and body and depth:
        return [keys_of(body[0], depth - 1)]
    return type(body).__name__


@pytest.fixture(scope="module")
def server(serve_standin):
    """The default stand-in (what ``create_app()`` serves), served once for the module."""
    return serve_standin(SheetsStandin.with_defaults(), create_app)


@pytest.fixture(scope="module")
def account(server):
    """A service account minted over HTTP: shared with the demo spreadsheet, as the sandbox gets it."""
    info = requests.post(server.url + "/_standin/service_accounts", timeout=5).json()
    return info


@pytest.fixture
def standin(server, account):
    """The stand-in with an empty demo sheet and BOOK (tabs Sheet1 and "It's here") shared with ``account``."""
    state: SheetsStandin = server.state
    state.reset()
    state.add_spreadsheet(BOOK, title="Book", sheets=["Sheet1", "It's here"],
                          shared_with={account["client_email"]: "writer"})
    return server


def assertion(info: dict, **claims) -> str:
    """A JWT-bearer assertion signed with the key file's private key, as google-auth builds it."""
    now = int(time.time())
    payload = {"iss": info["client_email"], "aud": GOOGLE_TOKEN_URL, "iat": now, "exp": now + 3600,
               "scope": "https://www.googleapis.com/auth/spreadsheets", **claims}
    signer = google.auth.crypt.RSASigner.from_service_account_info(info)
    return google.auth.jwt.encode(signer, payload).decode()


def grant(url: str, jwt: str, grant_type: str = "urn:ietf:params:oauth:grant-type:jwt-bearer") -> requests.Response:
    """POST the grant to the token endpoint."""
    return requests.post(url + "/token", data={"grant_type": grant_type, "assertion": jwt}, timeout=5)


@pytest.fixture
def bearer(standin, account) -> dict:
    """Authorization headers with a fresh access token."""
    token = grant(standin.url, assertion(account)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def api(standin, method: str, path: str, headers: dict, **kwargs) -> requests.Response:
    """Call the Sheets API under /v4/spreadsheets."""
    return requests.request(method, f"{standin.url}/v4/spreadsheets/{path}", headers=headers, timeout=5, **kwargs)


def append(standin, headers, rng: str, values, option: str | None = "RAW", book: str = BOOK) -> requests.Response:
    """values.append as gspread sends it (range URL-quoted, ``:append`` suffix)."""
    params = {"valueInputOption": option} if option else {}
    return api(standin, "POST", f"{book}/values/{requests.utils.quote(rng, safe='')}:append", headers,
               params=params, json={"values": values})


# -- token endpoint ----------------------------------------------------------------------------

def test_token_grant_answers_like_google(standin, account):
    response = grant(standin.url, assertion(account))
    assert response.status_code == 200
    assert keys_of(response.json()) == keys_of(fixture("token_response_ok.json"))


@pytest.mark.parametrize("claims,error", [
    ({"aud": "https://evil.example/token"}, "invalid_grant"),
    ({"iss": "nobody@standin-project.iam.gserviceaccount.com"}, "invalid_grant"),
    ({"exp": int(time.time()) - 100, "iat": int(time.time()) - 3700}, "invalid_grant"),
    ({"scope": "https://www.googleapis.com/auth/calendar"}, "invalid_scope"),
], ids=["wrong-audience", "unknown-issuer", "expired", "no-sheets-scope"])
def test_token_grant_refusals(standin, account, claims, error):
    response = grant(standin.url, assertion(account, **claims))
    assert (response.status_code, response.json()["error"]) == (400, error)
    assert keys_of(response.json()) == keys_of(fixture("token_error_invalid_grant.json"))


def test_token_signed_by_another_key_is_invalid_grant(standin, account):
    impostor = json.loads(new_service_account(SheetsStandin(), "http://unused/token"))
    forged = assertion(dict(impostor, client_email=account["client_email"]))
    assert grant(standin.url, forged).json() == fixture("token_error_invalid_grant.json")
    assert grant(standin.url, assertion(account), grant_type="password").json()["error"] == "unsupported_grant_type"


# -- Sheets API --------------------------------------------------------------------------------

def test_missing_or_expired_token_is_401_unauthenticated(standin, bearer):
    assert api(standin, "GET", BOOK, {}).json() == fixture("error_401_unauthenticated.json")
    for info in standin.state.tokens.values():
        info["expires"] = time.time() - 1
    assert api(standin, "GET", BOOK, bearer).status_code == 401


def test_unknown_unshared_and_read_only_spreadsheets(standin, bearer, account):
    assert api(standin, "GET", "1NoSuchBook0000", bearer).json() == fixture("error_404_not_found.json")
    standin.state.add_spreadsheet("1NotSharedBook000")
    assert api(standin, "GET", "1NotSharedBook000", bearer).json() == fixture("error_403_permission_denied.json")
    standin.state.share("1NotSharedBook000", account["client_email"], "reader")
    assert api(standin, "GET", "1NotSharedBook000", bearer).status_code == 200
    assert append(standin, bearer, "Sheet1!A1", [["x"]], book="1NotSharedBook000").status_code == 403


def test_metadata_has_the_shape_gspread_reads(standin, bearer):
    body = api(standin, "GET", BOOK, bearer).json()
    assert keys_of(body) == keys_of(fixture("spreadsheet_metadata.json"))
    assert [s["properties"]["title"] for s in body["sheets"]] == ["Sheet1", "It's here"]


def test_append_places_rows_after_the_last_one_and_reports_the_range(standin, bearer):
    first = append(standin, bearer, "'Sheet1'!A1", [["h1", "h2", "h3"], ["a", 1, True]]).json()
    second = append(standin, bearer, "'Sheet1'!A1", [["b", 2.0, None]]).json()
    assert first["updates"]["updatedRange"] == "Sheet1!A1:C2" and "tableRange" not in first
    assert keys_of(second) == keys_of(fixture("values_append_response.json"))
    assert (second["tableRange"], second["updates"]["updatedRange"]) == ("Sheet1!A1:C2", "Sheet1!A3:C3")
    rows = api(standin, "GET", f"{BOOK}/values/Sheet1", bearer).json()
    assert keys_of(rows) == keys_of(fixture("values_get_rows.json"))
    assert rows["values"] == [["h1", "h2", "h3"], ["a", "1", "TRUE"], ["b", "2"]]  # FORMATTED_VALUE strings


def test_ranges_rows_columns_and_quoted_tab_names(standin, bearer):
    append(standin, bearer, "'It''s here'!A1", [["call_id", "x"], ["c1"], ["", "y"], ["c3"]])
    get = functools.partial(api, standin, "GET", headers=bearer)
    assert get(f"{BOOK}/values/'It''s here'!A:A").json()["values"] == [["call_id"], ["c1"], [], ["c3"]]
    assert get(f"{BOOK}/values/'It''s here'!1:1").json()["values"] == [["call_id", "x"]]
    by_column = get(f"{BOOK}/values/'It''s here'!A:A", params={"majorDimension": "COLUMNS"}).json()
    assert by_column["values"] == [["call_id", "c1", "", "c3"]]
    assert "values" not in get(f"{BOOK}/values/'It''s here'!D:D").json()
    batch = get(f"{BOOK}/values:batchGet", params={"ranges": ["'It''s here'!1:1", "'It''s here'!B:B"],
                                                   "majorDimension": "COLUMNS"}).json()
    assert keys_of(batch) == keys_of(fixture("values_batchget_columns.json"))
    assert [vr["values"] for vr in batch["valueRanges"]] == [[["call_id"], ["x"]], [["x", "", "y"]]]
    missing = get(f"{BOOK}/values/'Calls'!1:1").json()
    assert missing == fixture("error_400_unable_to_parse_range.json")


def test_value_input_options(standin, bearer):
    assert append(standin, bearer, "Sheet1!A1", [["007"]], option=None).json()["error"]["status"] == \
        "INVALID_ARGUMENT"
    append(standin, bearer, "Sheet1!A1", [["007", "=1+1"]], option="RAW")
    append(standin, bearer, "Sheet1!A1", [["007"]], option="USER_ENTERED")
    assert standin.state.rows(BOOK) == [["007", "=1+1"], ["7"]]


def test_put_writes_a_header_in_place(standin, bearer):
    append(standin, bearer, "Sheet1!A1", [["old"], ["row"]])
    response = api(standin, "PUT", f"{BOOK}/values/{requests.utils.quote(chr(39) + 'Sheet1' + chr(39) + '!A1')}",
                   bearer, params={"valueInputOption": "RAW"}, json={"values": [["new", "header"]]})
    assert keys_of(response.json()) == keys_of(fixture("values_update_response.json"))
    assert standin.state.rows(BOOK) == [["new", "header"], ["row"]]


def test_per_minute_write_quota_per_service_account(standin, bearer):
    standin.state.quota["write"] = 2
    try:
        assert [append(standin, bearer, "Sheet1!A1", [[i]]).status_code for i in range(3)] == [200, 200, 429]
        body = append(standin, bearer, "Sheet1!A1", [["x"]]).json()
        assert keys_of(body) == keys_of(fixture("error_429_resource_exhausted.json"))
        assert "Write requests per minute per user" in body["error"]["message"]
        assert api(standin, "GET", BOOK, bearer).status_code == 200  # reads have their own quota
    finally:
        standin.state.quota["write"] = 60


# -- test controls -----------------------------------------------------------------------------

def test_faults_target_request_kinds_and_commit(standin, bearer):
    faults = [{"status": 503, "on": "write"}, {"status": 500, "on": "write", "commit": True}]
    assert requests.post(standin.url + "/_standin/faults", json=faults, timeout=5).json() == {"queued": 2}
    assert api(standin, "GET", BOOK, bearer).status_code == 200  # a read does not consume write faults
    failed = append(standin, bearer, "Sheet1!A1", [["lost"]])
    assert failed.json() == fixture("error_503_unavailable.json")
    assert append(standin, bearer, "Sheet1!A1", [["kept"]]).json() == fixture("error_500_internal.json")
    assert standin.state.rows(BOOK) == [["kept"]]


def test_sheets_view_counts_writes_per_account_and_minute(standin, bearer, account):
    append(standin, bearer, "Sheet1!A1", [["a"]])
    append(standin, bearer, "Sheet1!A1", [["b"]])
    view = requests.get(standin.url + "/_standin/sheets", timeout=5).json()
    assert view["spreadsheets"][BOOK]["sheets"]["Sheet1"] == [["a"], ["b"]]
    assert view["writes"]["per_service_account"] == {account["client_email"]: 2}
    assert sum(view["writes"]["per_minute"][account["client_email"]].values()) == 2
    assert [w["status"] for w in view["writes"]["log"]] == [200, 200]
    assert requests.post(standin.url + "/_standin/reset", json={}, timeout=5).json() == {"ok": True}
    assert requests.get(standin.url + "/_standin/sheets", timeout=5).json()["writes"]["log"] == []


def test_setup_registers_accounts_and_spreadsheets(standin, account):
    body = {"spreadsheets": [{"id": "1SetUpOverHttp000", "sheets": ["Calls"],
                              "shared_with": {account["client_email"]: "writer"}}]}
    assert requests.post(standin.url + "/_standin/setup", json=body, timeout=5).json() == {"ok": True}
    assert list(standin.state.spreadsheets["1SetUpOverHttp000"]["sheets"]) == ["Calls"]


def test_plain_gspread_opens_and_appends_to_the_demo_sheet(standin, account):
    """gspread's own high-level path (open_by_key, worksheet, append_row) works against the stand-in."""
    client = gspread.service_account_from_dict(
        account, scopes=["https://www.googleapis.com/auth/spreadsheets"],
        http_client=functools.partial(SheetsHTTPClient, base_url=standin.url, timeout=5))
    sheet = client.open_by_key(DEFAULT_SPREADSHEET_ID).worksheet("Sheet1")
    sheet.append_row(["hello", 42])
    assert sheet.get_all_values() == [["hello", "42"]]
    assert client.open_by_key(DEFAULT_SPREADSHEET_ID).title == "Call log (stand-in)"
