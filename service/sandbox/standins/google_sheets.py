"""A Google Sheets stand-in: the OAuth token endpoint and the Sheets v4 values API that pbxrelay uses.

Reproduces (per developers.google.com/identity/protocols/oauth2/service-account and
developers.google.com/sheets/api/reference/rest): ``POST /token`` with the JWT-bearer grant, the
assertion's RS256 signature checked against the registered service account's public key, ``iss``
against its e-mail, ``aud`` against Google's token URL (what google-auth sends) or this server's
``/token``, ``exp``/``iat``, and a spreadsheets scope (``400 {"error": "invalid_grant", ...}`` or
``invalid_scope`` / ``unsupported_grant_type`` otherwise); Bearer tokens that expire after
``expires_in`` (401 UNAUTHENTICATED); spreadsheet sharing per service account, reader or writer
(403 PERMISSION_DENIED); unknown spreadsheets (404 NOT_FOUND); ``GET /v4/spreadsheets/{id}``
metadata; ``GET .../values/{range}`` and ``GET .../values:batchGet`` with A1 ranges (``'Sheet 1'!A1:C3``,
``Sheet1!A:A``, ``Sheet1!1:1``, ``Sheet1``), ``majorDimension`` ROWS/COLUMNS, FORMATTED_VALUE
rendering (everything comes back as strings, trailing empty cells and rows omitted), and
``Unable to parse range`` (400 INVALID_ARGUMENT) for an unknown tab; ``POST .../values/{range}:append``
(required ``valueInputOption`` RAW/USER_ENTERED, ``insertDataOption`` OVERWRITE/INSERT_ROWS, rows
placed after the last non-empty row, ``updates.updatedRange``); ``PUT .../values/{range}``; per
service account per-minute quotas of 60 read and 60 write requests (sliding 60 s window; 429
RESOURCE_EXHAUSTED, Google-shaped, no Retry-After, as Sheets sends none).

Not reproduced: formulas are stored, never evaluated; USER_ENTERED only turns numeric text into
numbers (no dates, percentages or locales); table detection is "after the last non-empty row" rather
than Google's contiguous-table search; no grid limits (10 million cells), no per-project quota, no
Drive API, no batchUpdate.

Test controls under ``/_standin/``: ``POST faults`` queues faults consumed one per matching request,
e.g. ``[{"status": 500}, {"status": 429, "on": "write"}, {"delay": 3}, {"on": "token", "status": 503},
{"body": "<html>oops", "status": 502}, {"status": 500, "commit": true, "on": "write"}]`` (``on`` is
``api`` (default: any Sheets request), ``read``, ``write`` or ``token``; ``delay`` alone delays then
answers normally; ``commit`` performs the request, then answers with the fault); ``GET sheets``
(cells, and write requests per service account, per minute and one by one); ``POST setup``;
``POST reset``; ``POST service_accounts`` mints a key pair, registers it and returns the key file.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import threading
import time
from typing import Any

import google.auth.exceptions
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, request

from service.sandbox.standins.base import (
    FaultQueue,
    add_control_routes,
    answer_with_fault,
    fault_response,
    json_response,
)

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SHEETS_SCOPES = ("https://www.googleapis.com/auth/spreadsheets", "https://www.googleapis.com/auth/drive")
TOKEN_LIFETIME = 3599
QUOTA_WINDOW = 60.0
# Google: 60 read and 60 write requests per minute per user (a service account is a user) per project.
READS_PER_MINUTE = 60
WRITES_PER_MINUTE = 60
DEFAULT_ROWS, DEFAULT_COLUMNS = 1000, 26
# A ready-made spreadsheet so `create_app()` is usable by hand and by the sandbox without any setup.
DEFAULT_SPREADSHEET_ID = "1StandinCallLog0000000000000000000000000000"
DEFAULT_TITLE = "Call log (stand-in)"
# Google spells the charset in capitals; the stand-in answers likewise.
JSON_TYPE = "application/json; charset=UTF-8"
TEXT_TYPE = "text/html; charset=UTF-8"

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}
_MESSAGES = {
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
         "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute per user' of "
         "service 'sheets.googleapis.com'.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


class SheetsStandin:
    """The stand-in's state: service accounts, tokens, spreadsheets, the request log and the fault queue."""

    def __init__(self, *, reads_per_minute: int | None = READS_PER_MINUTE,
                 writes_per_minute: int | None = WRITES_PER_MINUTE) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.spreadsheets: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults = FaultQueue()
        self.quota = {"read": reads_per_minute, "write": writes_per_minute}
        self._initial_quota = dict(self.quota)
        # Spreadsheets shared with every service account minted over HTTP (the demo sheet).
        self.open_to_new_accounts: set[str] = set()

    @classmethod
    def with_defaults(cls) -> "SheetsStandin":
        """A stand-in holding DEFAULT_SPREADSHEET_ID (tab Sheet1), shared with every minted service account."""
        state = cls()
        state.add_spreadsheet(DEFAULT_SPREADSHEET_ID, title=DEFAULT_TITLE)
        state.open_to_new_accounts.add(DEFAULT_SPREADSHEET_ID)
        return state

    # -- registration ------------------------------------------------------------------------

    def add_service_account(self, client_email: str, public_key_pem: str, private_key_id: str = "") -> None:
        """Accept JWT grants from ``client_email`` signed by the key matching ``public_key_pem``."""
        with self.lock:
            self.accounts[client_email] = {"public_key": public_key_pem, "key_id": private_key_id,
                                           "disabled": False}

    def disable_service_account(self, client_email: str) -> None:
        """Make grants from this account fail with invalid_grant (a deleted key) and revoke its tokens."""
        with self.lock:
            self.accounts[client_email]["disabled"] = True
            for token in [t for t, info in self.tokens.items() if info["email"] == client_email]:
                del self.tokens[token]

    def revoke_tokens(self) -> None:
        """Forget every access token issued (clients must fetch new ones)."""
        with self.lock:
            self.tokens.clear()

    def add_spreadsheet(self, spreadsheet_id: str, *, title: str = "Untitled spreadsheet",
                        sheets: list[str] | tuple[str, ...] = ("Sheet1",),
                        shared_with: dict[str, str] | None = None) -> None:
        """Create a spreadsheet with empty tabs; ``shared_with`` maps e-mail -> "writer" | "reader"."""
        with self.lock:
            self.spreadsheets[spreadsheet_id] = {
                "title": title, "shared": dict(shared_with or {}),
                "sheets": {name: _new_sheet(index) for index, name in enumerate(sheets)}}

    def share(self, spreadsheet_id: str, client_email: str, role: str = "writer") -> None:
        """Share a spreadsheet with a service account as "writer" or "reader"."""
        with self.lock:
            self.spreadsheets[spreadsheet_id]["shared"][client_email] = role

    def set_rows(self, spreadsheet_id: str, sheet: str, rows: list[list[Any]]) -> None:
        """Replace a tab's cells (as if typed in the UI)."""
        with self.lock:
            tab = self.spreadsheets[spreadsheet_id]["sheets"][sheet]
            tab["rows"] = [list(row) for row in rows]
            tab["rowCount"] = max(tab["rowCount"], len(rows))

    def push_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue faults; each matching request consumes the next one."""
        self.faults.push(faults)

    def reset(self, *, registrations: bool = False) -> None:
        """Forget faults, the request log (and quota windows) and every cell; with ``registrations``
        also every service account, token and spreadsheet, and restore the quotas."""
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            for book in self.spreadsheets.values():
                for tab in book["sheets"].values():
                    tab["rows"] = []
            if registrations:
                self.accounts.clear()
                self.tokens.clear()
                self.spreadsheets.clear()
                self.open_to_new_accounts.clear()
                self.quota = dict(self._initial_quota)

    # -- inspection ----------------------------------------------------------------------------

    def rows(self, spreadsheet_id: str, sheet: str = "Sheet1") -> list[list[str]]:
        """A tab's cells as the API renders them (strings), trailing empties trimmed."""
        with self.lock:
            return _render(self.spreadsheets[spreadsheet_id]["sheets"][sheet]["rows"])

    def log(self, kind: str | None = None, *, spreadsheet_id: str | None = None) -> list[dict[str, Any]]:
        """Copies of the logged requests ("read" | "write" | "token"), oldest first."""
        with self.lock:
            return [dict(r) for r in self.requests if (kind is None or r["kind"] == kind)
                    and (spreadsheet_id is None or r.get("spreadsheet") == spreadsheet_id)]

    def summary(self) -> dict[str, Any]:
        """Cells of every tab, and write requests per service account and per minute (GET /_standin/sheets)."""
        with self.lock:
            books = {sid: {"title": b["title"], "sheets": {name: _render(tab["rows"]) for name, tab in
                                                           b["sheets"].items()}}
                     for sid, b in self.spreadsheets.items()}
            per_account: dict[str, int] = {}
            per_minute: dict[str, dict[str, int]] = {}
            writes = [r for r in self.requests if r["kind"] == "write"]
            for r in writes:
                email = r.get("email") or "?"
                per_account[email] = per_account.get(email, 0) + 1
                minutes = per_minute.setdefault(email, {})
                minute = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(r["at"]))
                minutes[minute] = minutes.get(minute, 0) + 1
            return {"spreadsheets": books, "writes": {"per_service_account": per_account, "per_minute": per_minute,
                                                      "log": [dict(r) for r in writes]}}

    # -- internals (call with the lock held) ---------------------------------------------------

    def _over_quota(self, email: str, kind: str) -> bool:
        limit = self.quota.get(kind)
        if limit is None:
            return False
        since = time.time() - QUOTA_WINDOW
        used = sum(1 for r in self.requests if r["kind"] == kind and r.get("email") == email
                   and r["at"] > since and r.get("counted"))
        return used >= limit


def new_service_account(state: SheetsStandin, token_uri: str, *, client_email: str | None = None,
                        share: tuple[str, ...] | list[str] = (), role: str = "writer") -> str:
    """Mint an RSA key, register it in ``state`` (shared with ``share``) and return the key file's JSON text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return service_account_json(state, key, token_uri, client_email=client_email, share=share, role=role)


def service_account_json(state: SheetsStandin, key: rsa.RSAPrivateKey, token_uri: str, *,
                         client_email: str | None = None, share: tuple[str, ...] | list[str] = (),
                         role: str = "writer") -> str:
    """Register an existing RSA key under a (new) e-mail and return the key file's JSON text."""
    key_id = secrets.token_hex(20)
    email = client_email or f"pbxrelay-{secrets.token_hex(4)}@standin-project.iam.gserviceaccount.com"
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    state.add_service_account(email, public_pem, key_id)
    for spreadsheet_id in share:
        state.share(spreadsheet_id, email, role)
    return json.dumps({
        "type": "service_account", "project_id": "standin-project", "private_key_id": key_id,
        "private_key": private_pem, "client_email": email, "client_id": str(secrets.randbelow(10 ** 20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + email.replace("@", "%40"),
        "universe_domain": "googleapis.com"}, indent=2)


def create_app(state: SheetsStandin | None = None) -> Flask:
    """The stand-in as a Flask app; ``app.extensions["sheets_standin"]`` is its :class:`SheetsStandin`."""
    state = state or SheetsStandin.with_defaults()
    app = Flask("sheets_standin")
    app.extensions["sheets_standin"] = state

    @app.post("/token")
    def token() -> Response:
        return _with_fault(state, "token", None, lambda entry: _grant(state, entry))

    @app.get("/v4/spreadsheets/<sid>")
    def metadata(sid: str) -> Response:
        return _with_fault(state, "read", sid, lambda entry: _api(state, entry, sid, "read", _metadata))

    @app.get("/v4/spreadsheets/<sid>/values:batchGet")
    def batch_get(sid: str) -> Response:
        return _with_fault(state, "read", sid, lambda entry: _api(state, entry, sid, "read", _batch_get))

    @app.route("/v4/spreadsheets/<sid>/values/<path:rng>", methods=["GET", "PUT", "POST"])
    def values(sid: str, rng: str) -> Response:
        if request.method == "GET":
            return _with_fault(state, "read", sid, lambda entry: _api(state, entry, sid, "read", _get_values, rng))
        if request.method == "PUT":
            return _with_fault(state, "write", sid, lambda entry: _api(state, entry, sid, "write", _update, rng))
        if not rng.endswith(":append"):
            return _google_error(404, f"Method not found: {rng.rsplit(':', 1)[-1]}")
        target = rng[:-len(":append")]
        return _with_fault(state, "write", sid, lambda entry: _api(state, entry, sid, "write", _append, target))

    add_control_routes(app, state, json_type=JSON_TYPE)

    @app.get("/_standin/sheets")
    def sheets() -> Response:
        return _json(state.summary())

    @app.post("/_standin/service_accounts")
    def mint() -> Response:
        body = request.get_json(force=True, silent=True) or {}
        share = list(body.get("share") or state.open_to_new_accounts)
        text = new_service_account(state, request.host_url.rstrip("/") + "/token", share=share,
                                   role=body.get("role", "writer"))
        return Response(text, content_type="application/json")

    @app.post("/_standin/setup")
    def setup() -> Response:
        body = request.get_json(force=True, silent=True) or {}
        for account in body.get("service_accounts", []):
            state.add_service_account(account["client_email"], account["public_key_pem"],
                                      account.get("private_key_id", ""))
        for book in body.get("spreadsheets", []):
            state.add_spreadsheet(book["id"], title=book.get("title", "Untitled spreadsheet"),
                                  sheets=book.get("sheets", ["Sheet1"]), shared_with=book.get("shared_with"))
        if "quota" in body:
            with state.lock:
                state.quota.update({"read": body["quota"].get("reads_per_minute"),
                                    "write": body["quota"].get("writes_per_minute")})
        return _json({"ok": True})

    return app


# -- faults and the request log ---------------------------------------------------------------

def _with_fault(state: SheetsStandin, kind: str, sid: str | None, handle) -> Response:
    """Log the request and apply the next matching queued fault (if any) around the real handler."""
    # A fault's "on" picks the requests it hits: "api" (the default) is any Sheets request, never the token one.
    accepted = (kind, "api" if kind != "token" else "")
    with state.lock:
        fault = state.faults.pop(lambda f: f.get("on", "api") in accepted)
        entry = {"kind": kind, "spreadsheet": sid, "method": request.method, "path": request.path,
                 "at": time.time(), "fault": fault, "email": None, "status": None, "counted": False}
        state.requests.append(entry)
    response = answer_with_fault(fault, lambda: handle(entry), lambda f: fault_response(
        f, functools.partial(_fault_body, kind=kind), json_type=JSON_TYPE, text_type=TEXT_TYPE))
    with state.lock:
        entry["status"] = response.status_code
    return response


def _fault_body(status: int, kind: str) -> dict[str, Any]:
    if kind == "token":
        return {"error": "invalid_grant", "error_description": "Invalid JWT Signature."} if status < 500 else \
            {"error": "internal_failure"}
    return _google_body(status, _MESSAGES.get(status, f"HTTP {status}"))


# -- responses --------------------------------------------------------------------------------

_json = functools.partial(json_response, content_type=JSON_TYPE)


def _google_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def _google_error(status: int, message: str | None = None) -> Response:
    return _json(_google_body(status, message or _MESSAGES.get(status, f"HTTP {status}")), status)


def _oauth_error(error: str, description: str) -> Response:
    return _json({"error": error, "error_description": description}, 400)


# -- OAuth token endpoint -----------------------------------------------------------------------

def _grant(state: SheetsStandin, entry: dict[str, Any]) -> Response:
    if request.form.get("grant_type") != JWT_BEARER:
        return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {request.form.get('grant_type', '')}")
    assertion = request.form.get("assertion", "")
    try:
        claims = google.auth.jwt.decode(assertion, verify=False)
    except (ValueError, google.auth.exceptions.GoogleAuthError):
        return _oauth_error("invalid_grant", "Invalid JWT: the assertion is not a JWT.")
    email = claims.get("iss")
    with state.lock:
        account = state.accounts.get(email) if isinstance(email, str) else None
        if account is None or account["disabled"]:
            return _oauth_error("invalid_grant", "Invalid grant: account not found")
        public_key = account["public_key"]
    try:
        # Signature, iat and exp (google-auth allows no clock skew by default; Google allows a little).
        google.auth.jwt.decode(assertion, certs=public_key, verify=True, clock_skew_in_seconds=10)
    except (ValueError, google.auth.exceptions.GoogleAuthError):
        return _oauth_error("invalid_grant", "Invalid JWT Signature.")
    if claims.get("aud") not in (GOOGLE_TOKEN_URL, request.base_url):
        return _oauth_error("invalid_grant", "Invalid JWT: audience is not the token endpoint.")
    if claims.get("exp", 0) - claims.get("iat", 0) > 3600:
        return _oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                             "reasonable timeframe.")
    if not set(str(claims.get("scope", "")).split()) & set(SHEETS_SCOPES):
        return _oauth_error("invalid_scope", "No Sheets scope was requested.")
    token = "ya29.standin-" + secrets.token_urlsafe(32)
    with state.lock:
        state.tokens[token] = {"email": email, "expires": time.time() + TOKEN_LIFETIME}
        entry["email"] = email
    return _json({"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"})


# -- Sheets API ---------------------------------------------------------------------------------

def _api(state: SheetsStandin, entry: dict[str, Any], sid: str, kind: str, handler, *args) -> Response:
    """Authenticate, authorise and count the request against its quota, then run ``handler`` under the lock."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    with state.lock:
        info = state.tokens.get(token)
        if info is None or info["expires"] < time.time():
            return _google_error(401)
        email = info["email"]
        entry["email"] = email
        book = state.spreadsheets.get(sid)
        if book is None:
            return _google_error(404)
        role = book["shared"].get(email)
        if role is None or (kind == "write" and role != "writer"):
            return _google_error(403)
        if state._over_quota(email, kind):
            metric = "Write" if kind == "write" else "Read"
            return _google_error(429, f"Quota exceeded for quota metric '{metric} requests' and limit '{metric} "
                                      f"requests per minute per user' of service 'sheets.googleapis.com' for "
                                      f"consumer 'project_number:000000000000'.")
        entry["counted"] = True
        return handler(book, sid, *args)


def _metadata(book: dict[str, Any], sid: str) -> Response:
    return _json({"spreadsheetId": sid,
                  "properties": {"title": book["title"], "locale": "en_US", "autoRecalc": "ON_CHANGE",
                                 "timeZone": "Etc/GMT"},
                  "sheets": [{"properties": {"sheetId": tab["sheetId"], "title": name, "index": tab["index"],
                                             "sheetType": "GRID",
                                             "gridProperties": {"rowCount": tab["rowCount"],
                                                                "columnCount": tab["columnCount"]}}}
                             for name, tab in book["sheets"].items()],
                  "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{sid}/edit"})


def _get_values(book: dict[str, Any], sid: str, rng: str) -> Response:
    parsed = _parse_range(book, rng)
    if parsed is None:
        return _google_error(400, f"Unable to parse range: {rng}")
    major = request.args.get("majorDimension", "ROWS")
    if major not in ("ROWS", "COLUMNS"):
        return _google_error(400, f"Invalid value at 'major_dimension' (type.googleapis.com/google.apps.sheets.v4."
                                  f"Dimension), \"{major}\"")
    return _json(_value_range(book, parsed, major))


def _batch_get(book: dict[str, Any], sid: str) -> Response:
    ranges = request.args.getlist("ranges")
    major = request.args.get("majorDimension", "ROWS")
    out = []
    for rng in ranges:
        parsed = _parse_range(book, rng)
        if parsed is None:
            return _google_error(400, f"Unable to parse range: {rng}")
        out.append(_value_range(book, parsed, major))
    return _json({"spreadsheetId": sid, "valueRanges": out})


def _input_option() -> tuple[str | None, Response | None]:
    option = request.args.get("valueInputOption")
    if option is None:
        return None, _google_error(400, "'valueInputOption' is required but not specified")
    if option not in ("RAW", "USER_ENTERED"):
        return None, _google_error(400, f"Invalid value at 'value_input_option' (type.googleapis.com/google.apps."
                                        f"sheets.v4.ValueInputOption), \"{option}\"")
    return option, None


def _write_target(book: dict[str, Any], rng: str) -> tuple[tuple | None, list[list[Any]] | None, Response | None]:
    """(parsed range, the body's values, None), or (None, None, the 400 Google gives) for a write request."""
    parsed = _parse_range(book, rng)
    if parsed is None:
        return None, None, _google_error(400, f"Unable to parse range: {rng}")
    body = request.get_json(silent=True)
    values = body.get("values") if isinstance(body, dict) else None
    if not isinstance(values, list) or not all(isinstance(row, list) for row in values):
        return None, None, _google_error(400, "Invalid JSON payload received. 'values' must be a list of lists.")
    return parsed, values, None


def _append(book: dict[str, Any], sid: str, rng: str) -> Response:
    option, error = _input_option()
    if error:
        return error
    insert = request.args.get("insertDataOption", "OVERWRITE")
    if insert not in ("OVERWRITE", "INSERT_ROWS"):
        return _google_error(400, f"Invalid value at 'insert_data_option', \"{insert}\"")
    parsed, values, error = _write_target(book, rng)
    if error:
        return error
    name, c1, _r1, _c2, _r2 = parsed
    tab = book["sheets"][name]
    rows = tab["rows"]
    used = _last_used_row(rows)
    table = f"{_a1_name(name)}!A1:{_letter(max((len(r) for r in rows[:used]), default=1) - 1)}{used}" if used else None
    start = used  # 0-based index of the first written row
    _write(tab, start, c1, values, option)
    width = max((len(r) for r in values), default=0)
    response = {"spreadsheetId": sid,
                "updates": {"spreadsheetId": sid,
                            "updatedRange": f"{_a1_name(name)}!{_letter(c1)}{start + 1}:"
                                            f"{_letter(c1 + max(width, 1) - 1)}{start + len(values)}",
                            "updatedRows": len(values), "updatedColumns": width,
                            "updatedCells": sum(len(r) for r in values)}}
    if table:
        response["tableRange"] = table
    return _json(response)


def _update(book: dict[str, Any], sid: str, rng: str) -> Response:
    option, error = _input_option()
    if error:
        return error
    parsed, values, error = _write_target(book, rng)
    if error:
        return error
    name, c1, r1, _c2, _r2 = parsed
    width = max((len(r) for r in values), default=0)
    _write(book["sheets"][name], r1 or 0, c1, values, option)
    start = (r1 or 0) + 1
    return _json({"spreadsheetId": sid,
                  "updatedRange": f"{_a1_name(name)}!{_letter(c1)}{start}:{_letter(c1 + max(width, 1) - 1)}"
                                  f"{start + len(values) - 1}",
                  "updatedRows": len(values), "updatedColumns": width, "updatedCells": sum(len(r) for r in values)})


# -- cells --------------------------------------------------------------------------------------

def _new_sheet(index: int) -> dict[str, Any]:
    return {"sheetId": 0 if index == 0 else 1_000_000 + index, "index": index, "rows": [],
            "rowCount": DEFAULT_ROWS, "columnCount": DEFAULT_COLUMNS}


def _cell_text(value: Any) -> str:
    """FORMATTED_VALUE rendering: what the API returns by default."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _render(rows: list[list[Any]]) -> list[list[str]]:
    """Strings, with trailing empty cells of each row and trailing empty rows left out (as the API does)."""
    out = [[_cell_text(v) for v in row] for row in rows]
    for row in out:
        while row and row[-1] == "":
            row.pop()
    while out and not out[-1]:
        out.pop()
    return out


def _user_entered(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _write(tab: dict[str, Any], row0: int, col0: int, values: list[list[Any]], option: str) -> None:
    rows = tab["rows"]
    while len(rows) < row0 + len(values):
        rows.append([])
    for offset, new in enumerate(values):
        row = rows[row0 + offset]
        for index, value in enumerate(new):
            if value is None:
                continue  # the API skips null cells
            while len(row) <= col0 + index:
                row.append(None)
            row[col0 + index] = _user_entered(value) if option == "USER_ENTERED" else value
    tab["rowCount"] = max(tab["rowCount"], len(rows))
    tab["columnCount"] = max(tab["columnCount"], max((len(r) for r in rows), default=0))


def _last_used_row(rows: list[list[Any]]) -> int:
    """How many rows are in use (1-based number of the last row holding a non-empty cell)."""
    for index in range(len(rows) - 1, -1, -1):
        if any(v not in (None, "") for v in rows[index]):
            return index + 1
    return 0


def _value_range(book: dict[str, Any], parsed: tuple, major: str) -> dict[str, Any]:
    name, c1, r1, c2, r2 = parsed
    tab = book["sheets"][name]
    last_row = tab["rowCount"] - 1 if r2 is None else r2
    last_col = tab["columnCount"] - 1 if c2 is None else c2
    r1 = r1 or 0
    grid = [[(row[c] if c < len(row) else None) for c in range(c1, last_col + 1)]
            for row in tab["rows"][r1:last_row + 1]]
    if major == "COLUMNS":
        width = max((len(r) for r in grid), default=0)
        grid = [[r[c] for r in grid] for c in range(width)]
    out: dict[str, Any] = {"range": f"{_a1_name(name)}!{_letter(c1)}{r1 + 1}:{_letter(last_col)}{last_row + 1}",
                           "majorDimension": major}
    values = _render(grid)
    if values:  # the API leaves "values" out of an empty range
        out["values"] = values
    return out


# -- A1 notation --------------------------------------------------------------------------------

_CELL = re.compile(r"^([A-Za-z]{0,3})(\d{0,7})$")


def _letter(index: int) -> str:
    letters, index = "", index + 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _column_index(letters: str) -> int:
    index = 0
    for ch in letters.upper():
        index = index * 26 + ord(ch) - 64
    return index - 1


def _a1_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "'" + name.replace("'", "''") + "'"


def _split_sheet(rng: str) -> tuple[str | None, str]:
    """(sheet name or None, cell part) of an A1 range."""
    if rng.startswith("'"):
        match = re.match(r"^'((?:[^']|'')*)'(?:!(.*))?$", rng, re.S)
        if not match:
            return "", ""
        return match.group(1).replace("''", "'"), match.group(2) or ""
    if "!" in rng:
        name, cells = rng.split("!", 1)
        return name, cells
    return None, rng


def _parse_range(book: dict[str, Any], rng: str) -> tuple[str, int, int | None, int | None, int | None] | None:
    """(sheet, first col, first row, last col, last row), 0-based, None = open; None if unparseable."""
    name, cells = _split_sheet(rng)
    sheets = book["sheets"]
    if name is None:
        if rng in sheets:  # a bare tab name means the whole tab
            name, cells = rng, ""
        else:
            name = next(iter(sheets), "")
    if name not in sheets:
        return None
    if cells == "":
        return name, 0, None, None, None
    start, colon, end = cells.partition(":")
    if not start or (colon and not end):
        return None
    a, b = _CELL.match(start), _CELL.match(end or start)
    if not a or not b:
        return None
    (ac, ar), (bc, br) = a.groups(), b.groups()
    if (ac == "" and ar == "") or (bc == "" and br == ""):
        return None
    c1 = _column_index(ac) if ac else 0
    c2 = _column_index(bc) if bc else None
    r1 = int(ar) - 1 if ar else None
    r2 = int(br) - 1 if br else None
    if (r1 is not None and r1 < 0) or (r2 is not None and r2 < 0):
        return None
    return name, c1, r1, c2, r2
