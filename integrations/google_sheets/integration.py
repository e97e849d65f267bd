"""Google Sheets: append one row per call (``call.ended``) to a worksheet, batched across all workers.

Auth is gspread's real service-account path: ``google.oauth2.service_account.Credentials`` from the
key file's JSON, a JWT-bearer grant POSTed to the key's ``token_uri``, and a gspread ``Client`` whose
``HTTPClient`` subclass sends ``https://sheets.googleapis.com`` requests to the configured base URL
(gspread copies its URL constants at import, so the HTTPClient is the only clean seam; sdks.md §2).
Nothing retries or sleeps in-process: the plain ``HTTPClient`` (not ``BackOffHTTPClient``, which
never gives up in 6.2.1), and a token transport that fails fast instead of google-auth's sleeping
retry loop. Every failure is decided once, in :func:`classify_failure`.

Batching (Google allows 60 write and 60 read requests per minute per service account):
``append_row`` pushes its row to a Redis list per (service account, spreadsheet, worksheet) and
tries to become that sheet's flusher (a short ``SET NX`` lock). The flusher takes a token from the
per-sheet bucket (1 write/s) and the service account's read and write buckets, reads row 1 and the
``call_id`` column in ONE ``values:batchGet``, drops rows whose call is already in the sheet, and
appends the rest in ONE ``values:append``. Only after that succeeds does it record each call as
written and remove the rows from the list (``LREM`` in a transaction): a flusher that dies between
the append and the bookkeeping leaves its rows queued, and the next flusher finds them in the sheet
instead of writing them twice. A task whose row is not written yet raises ``RetryableError``
(``code="queued"``, about 1 s) instead of sleeping; on its next attempt it finds its call recorded.

Delivery guarantee: exactly one row per call_id per worksheet, as long as the sheet's call_id column
is not edited by hand. A row whose task is lost stays queued until the next call to the same sheet
flushes it.

Header row (``header_row: true``, the default): on an empty sheet the header is written in the same
append as the first rows. On a sheet with a header, cells are matched BY NAME (any order; header
columns pbxrelay does not know stay blank). A configured column missing from an existing header is a
PermanentError naming it: pbxrelay never rewrites a header a person maintains, and editing it would
cost a second write request per flush.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import google.auth.exceptions
import google.auth.transport.requests
import gspread
import requests
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient
from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from integrations.base import (
    ActionContext,
    ActionResult,
    AuthError,
    ConfigModel,
    Integration,
    IntegrationError,
    ParamsModel,
    PermanentError,
    RetryableError,
    checked_url,
    excerpt,
    scrub,
)
from integrations.google_sheets.columns import ALL_COLUMNS, ColumnName, row_values
from integrations.http import retry_after_seconds
from integrations.netguard import guard_session, guarded_session

GOOGLE_API_URL = "https://sheets.googleapis.com"
DEFAULT_API_URL = GOOGLE_API_URL
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)

# Pacing, shared by every worker through the Redis limiter. Per sheet: at most one write a second.
SHEET_BURST = 1.0
SHEET_PER_SECOND = 1.0
# Per service account, Google allows 60 write and 60 read requests per minute. A token bucket lets
# through up to capacity + 60 s x rate in any minute, so 10 + 50 = 60 (capacity 60 at 1/s would
# admit 119 in the first minute and earn 429s).
ACCOUNT_BURST = 10.0
ACCOUNT_PER_SECOND = 50 / 60
# Google's quota is per minute and its 429 rarely carries Retry-After: hold off a whole minute.
QUOTA_PENALTY_SECONDS = 60.0
# How soon a task whose row is queued looks again: about one flush interval.
QUEUED_RETRY_SECONDS = 1.0

MAX_ROWS_PER_APPEND = 500
# Written-call records outlive the task runner's retry horizon (24 h), so a late retry still finds them.
WRITTEN_TTL_SECONDS = 2 * 24 * 3600
# Failure records only need to reach the other tasks of the same batch, which retry within seconds;
# a short life lets a replay after the operator fixes the sheet start afresh.
FAILED_TTL_SECONDS = 300
QUEUED_TTL_SECONDS = 600
BUFFER_TTL_SECONDS = 24 * 3600
ID_COLUMN_TTL_SECONDS = 24 * 3600
CALL_ID_MAX = 256
# A service-account key file is about 2.4 KB; anything much larger is not one.
SERVICE_ACCOUNT_MAX_BYTES = 16_384
SERVICE_ACCOUNT_FIELDS = ("type", "client_email", "private_key", "token_uri")
# Where a key file's token_uri may point (key files from before about 2019 name accounts.google.com).
TOKEN_URI_HOSTS = ("oauth2.googleapis.com", "accounts.google.com")

# KEYS: queued marker, buffer; ARGV: marker TTL, entry, buffer TTL. Marker and row go in together, so
# a crash between the two can never leave a call marked queued with no row to write.
_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 1
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def parse_service_account(text: str, *, validation: ValidationInfo | None = None) -> dict[str, Any]:
    """The key file's fields, or ValueError saying what is wrong without quoting any of it.

    With ``validation`` (a config being validated) ``token_uri`` must also pass the outbound guard; without
    it (a config validated before) only its shape is checked, and the guarded session stops the rest.
    """
    if len(text.encode("utf-8", "surrogatepass")) > SERVICE_ACCOUNT_MAX_BYTES:
        raise ValueError(f"credentials is larger than {SERVICE_ACCOUNT_MAX_BYTES} bytes: not a service-account "
                         "key file")
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("credentials is not JSON: paste the service-account key file (Google Cloud console > "
                         "IAM > Service accounts > Keys > JSON)") from None
    if not isinstance(info, dict):
        raise ValueError("credentials must be a JSON object (a service-account key file)")
    missing = [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise ValueError(f"credentials lacks {', '.join(missing)}: not a service-account key file")
    if info["type"] != "service_account":
        kind = info["type"] if re.fullmatch(r"[a-z_]{1,40}", info["type"]) else "other"
        raise ValueError(f"credentials must be a service-account key (type service_account), not type {kind!r}")
    if not re.fullmatch(r"[^@\s]{1,200}@[^@\s]{1,200}", info["client_email"]):
        raise ValueError("credentials.client_email is not an e-mail address")
    if not re.fullmatch(r"https?://[^\s]{1,500}", info["token_uri"]):
        raise ValueError("credentials.token_uri is not an http(s) URL")
    if validation is not None:
        checked_url(info["token_uri"], field="credentials.token_uri", allowed_hosts=TOKEN_URI_HOSTS, info=validation)
    try:
        service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, TypeError, IndexError):  # cryptography's "could not deserialize" and friends
        raise ValueError("credentials.private_key is not a usable PEM private key") from None
    return info


class GoogleSheetsConfig(ConfigModel):
    """A Sheets connection: a service-account key and the worksheet that receives the call log."""

    # pydantic puts the raw input into validation errors; here that is the private key.
    model_config = ConfigDict(hide_input_in_errors=True)
    allowed_hosts = ("sheets.googleapis.com",)

    credentials: SecretStr
    spreadsheet_id: str = Field(pattern=r"^[A-Za-z0-9_-]{10,200}$")
    worksheet: str = Field(default="Sheet1", min_length=1, max_length=100)
    # Seconds per HTTP request (token endpoint included); a hung Google never pins a worker for long.
    timeout: float = Field(default=10.0, gt=0, le=60)

    @field_validator("credentials")
    @classmethod
    def _service_account_shape(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        parse_service_account(value.get_secret_value(), validation=info)
        return value

    @field_validator("worksheet")
    @classmethod
    def _worksheet_name(cls, value: str) -> str:
        # Sheets forbids these in tab names, and a blank name cannot be addressed in A1 notation.
        if not value.strip() or re.search(r"[\x00-\x1f\[\]*?/\\:]", value):
            raise ValueError("worksheet must be a tab name without control characters or []*?/\\:")
        return value


class AppendRowParams(ParamsModel):
    """Params of ``append_row``: which columns (see ``columns.ALL_COLUMNS``) and whether row 1 is a header."""

    columns: list[ColumnName] = Field(default_factory=lambda: list(ALL_COLUMNS), min_length=1)
    header_row: bool = True

    @field_validator("columns")
    @classmethod
    def _columns_usable(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("columns must not repeat a name")
        if "call_id" not in value:
            raise ValueError("columns must include call_id: it is how retries find an already-written row")
        return value


class TokenEndpointUnavailable(google.auth.exceptions.TransportError):
    """The token endpoint answered 429/5xx (raised instead of google-auth's sleeping retries)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"token endpoint answered HTTP {status}")
        self.status = status


class _FailFastTokenRequest(google.auth.transport.requests.Request):
    """google-auth's transport for the token endpoint, raising on 429/5xx so nothing sleeps in the worker."""

    def __call__(self, url, method="GET", **kwargs):
        response = super().__call__(url, method, **kwargs)
        if response.status == 429 or response.status >= 500:
            raise TokenEndpointUnavailable(response.status)
        return response


class SheetsHTTPClient(HTTPClient):
    """gspread's plain HTTPClient (no retries) sending Sheets API requests to ``base_url`` with a timeout."""

    def __init__(self, auth, session=None, *, base_url: str, timeout: float) -> None:
        super().__init__(auth, session)
        self.base_url = base_url.rstrip("/")
        self.set_timeout(timeout)

    def request(self, method: str, endpoint: str, *args, **kwargs) -> requests.Response:
        """Rewrite the Google host to the configured base, then send as gspread would."""
        if endpoint.startswith(GOOGLE_API_URL):
            endpoint = self.base_url + endpoint[len(GOOGLE_API_URL):]
        return super().request(method, endpoint, *args, **kwargs)


# Tokens live about an hour: keep one Credentials per key per process (google-auth refreshes it when
# it expires) and one gspread Client per thread (requests.Session is not documented thread-safe).
_CREDENTIALS: dict[str, service_account.Credentials] = {}
_CREDENTIALS_LOCK = threading.Lock()
_CLIENTS = threading.local()
_CACHE_MAX = 64


def _credentials(owner: str, key_hash: str, info: Mapping[str, Any]) -> service_account.Credentials:
    # Keyed by our account too: an access token is never served to another account's connection.
    cache_key = f"{owner}:{key_hash}"
    with _CREDENTIALS_LOCK:
        creds = _CREDENTIALS.get(cache_key)
        if creds is None:
            if len(_CREDENTIALS) >= _CACHE_MAX:  # rotated keys must not pile up for the process lifetime
                _CREDENTIALS.pop(next(iter(_CREDENTIALS)))
            creds = _CREDENTIALS[cache_key] = service_account.Credentials.from_service_account_info(
                info, scopes=SCOPES)
        return creds


def _client(owner: str, key_hash: str, info: Mapping[str, Any], base_url: str, timeout: float,
            allow_private: bool) -> gspread.Client:
    clients: dict[tuple, gspread.Client] = getattr(_CLIENTS, "clients", None) or {}
    _CLIENTS.clients = clients
    cache_key = (owner, key_hash, base_url, timeout, allow_private)
    client = clients.get(cache_key)
    if client is None:
        if len(clients) >= _CACHE_MAX:
            clients.pop(next(iter(clients)))
        # One refresh on a 401 covers a token revoked early; more would only repeat a real rejection.
        # Both the token request (to the key file's token_uri) and the Sheets calls go through the
        # outbound guard: checked after DNS, pinned to the checked address, no redirects.
        token_session = guarded_session(allow_private=allow_private, field="credentials.token_uri")
        session = guard_session(AuthorizedSession(_credentials(owner, key_hash, info), max_refresh_attempts=1,
                                                  auth_request=_FailFastTokenRequest(token_session)),
                                allow_private=allow_private, field="api_url")
        client = clients[cache_key] = gspread.Client(
            auth=None, session=session,
            http_client=functools.partial(SheetsHTTPClient, base_url=base_url, timeout=timeout))
    return client


def a1_sheet(worksheet: str) -> str:
    """The worksheet as the sheet part of an A1 range: always quoted, quotes doubled."""
    return "'" + worksheet.replace("'", "''") + "'"


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _digest(*parts: str) -> str:
    """A short stable name for parts that may hold any character (worksheet names do)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class _Keys:
    """The Redis keys of one (our account, service-account key, spreadsheet, worksheet) and its limiter buckets."""

    ns: str
    sheet: str
    sheet_bucket: str
    read_bucket: str
    write_bucket: str

    @classmethod
    def of(cls, ctx: ActionContext, key_hash: str, spreadsheet_id: str, worksheet: str) -> "_Keys":
        # Queue keys include the key itself (its hash): rows must never be written with another
        # connection's credentials. Everything is keyed by our account too: a tenant can copy another's
        # client_email and spreadsheet id into a key file of its own, and must share neither the queue
        # nor the buckets with them (nor cost them time).
        account, credential = ctx.account_id, key_hash[:24]
        return cls(ns=ctx.namespace, sheet=_digest(account, key_hash, spreadsheet_id, worksheet),
                   sheet_bucket=f"gsheets:sheet:{account}:{_digest(spreadsheet_id, worksheet)}",
                   read_bucket=f"gsheets:sa-read:{account}:{credential}",
                   write_bucket=f"gsheets:sa:{account}:{credential}")

    def key(self, kind: str, call_id: str | None = None) -> str:
        """``{ns}:gsheets:{kind}:{sheet}[:{call_id}]``."""
        base = f"{self.ns}:gsheets:{kind}:{self.sheet}"
        return base if call_id is None else f"{base}:{call_id}"


class GoogleSheetsIntegration(Integration):
    """Appends one row per finished call to a Google Sheets worksheet."""

    key = "google_sheets"
    name = "Google Sheets"
    Config = GoogleSheetsConfig
    actions = {"append_row": AppendRowParams}
    default_api_url = DEFAULT_API_URL

    def __init__(self, config: GoogleSheetsConfig) -> None:
        super().__init__(config)
        text = config.credentials.get_secret_value()
        self._info = parse_service_account(text)
        self._key_hash = hashlib.sha256(text.encode()).hexdigest()

    @property
    def client_email(self) -> str:
        """The service account's address: the one the spreadsheet must be shared with."""
        return self._info["client_email"]

    def secrets(self) -> list[str]:
        """The key file, its private key and id, and the current access token."""
        values = super().secrets() + [self._info["private_key"], str(self._info.get("private_key_id") or "")]
        with _CREDENTIALS_LOCK:  # this key's tokens, whichever of our accounts holds them
            tokens = [creds.token for key, creds in _CREDENTIALS.items() if key.endswith(f":{self._key_hash}")]
        return values + [token for token in tokens if token]

    def check(self, ctx: ActionContext) -> str:
        """spreadsheets.get (metadata): the key works, the sheet is shared, the worksheet exists."""
        client = _client(ctx.account_id, self._key_hash, self._info, self.base_url(ctx.api_urls), self.config.timeout,
                         ctx.allow_private_urls)
        try:
            metadata = client.http_client.fetch_sheet_metadata(self.config.spreadsheet_id)
        except Exception as exc:
            keys = _Keys.of(ctx, self._key_hash, self.config.spreadsheet_id, self.config.worksheet)
            raise self._failure(ctx, exc, "spreadsheets.get", keys.read_bucket) from None
        titles = [sheet.get("properties", {}).get("title") for sheet in metadata.get("sheets") or []]
        if self.config.worksheet not in titles:
            raise PermanentError(f"google_sheets: spreadsheet {self.config.spreadsheet_id} has no worksheet "
                                 f"{self.config.worksheet!r}", code="no_worksheet")
        return f"spreadsheet {metadata.get('properties', {}).get('title')!r} is shared with {self.client_email}"

    def append_row(self, params: AppendRowParams, ctx: ActionContext) -> ActionResult:
        """Queue this call's row for the sheet's next batch write; succeed once it is in the sheet."""
        data = _call_data(ctx.event)
        zone = _zone(ctx.timezone)
        if ctx.redis is None:
            raise PermanentError("google_sheets.append_row needs the shared Redis (ctx.redis) to batch writes")
        call_id = data["call_id"]
        keys = _Keys.of(ctx, self._key_hash, self.config.spreadsheet_id, self.config.worksheet)
        recorded = self._recorded(ctx, keys, call_id)
        if recorded is not None:
            # Present before this execution queued anything: an earlier delivery already wrote it.
            return self._result(recorded, already_there=ctx.attempt == 1)
        entry = json.dumps({"call_id": call_id, "columns": list(params.columns), "header_row": params.header_row,
                            "values": row_values(data, params.columns, zone)})
        # Queued once per call: a retry, or a second copy of the task, finds the marker and adds nothing.
        ctx.redis.eval(_ENQUEUE, 2, keys.key("queued", call_id), keys.key("buffer"), QUEUED_TTL_SECONDS, entry,
                       BUFFER_TTL_SECONDS)
        wait = self._try_flush(ctx, keys)
        recorded = self._recorded(ctx, keys, call_id)
        if recorded is not None:
            return self._result(recorded, already_there=False)
        raise RetryableError(f"google_sheets: the row of call {call_id!r} is queued for the next batch write to "
                             f"worksheet {self.config.worksheet!r}", retry_after=max(QUEUED_RETRY_SECONDS, wait),
                             code="queued")

    # -- results -------------------------------------------------------------------------------

    def redis_key_patterns(self, namespace: str, account_id: str) -> list[str]:
        """The keys of this connection's worksheet: queued rows, the written-calls records, lock and header cache."""
        sheet = _digest(account_id, self._key_hash, self.config.spreadsheet_id, self.config.worksheet)
        return [f"{namespace}:gsheets:*:{sheet}", f"{namespace}:gsheets:*:{sheet}:*"]

    @staticmethod
    def _recorded(ctx: ActionContext, keys: _Keys, call_id: str) -> dict[str, Any] | None:
        raw = ctx.redis.get(keys.key("done", call_id))
        return json.loads(raw) if raw else None

    def _result(self, record: dict[str, Any], *, already_there: bool) -> ActionResult:
        if "error" in record:
            cls = AuthError if record.get("kind") == "AuthError" else PermanentError
            raise cls(record["error"], status=record.get("status"), code=record.get("code"))
        return ActionResult(external_id=record["range"], deduplicated=record["dedup"] or already_there,
                            url=f"https://docs.google.com/spreadsheets/d/{self.config.spreadsheet_id}",
                            detail="the call was already in the sheet" if record["dedup"] else None)

    # -- the flusher ---------------------------------------------------------------------------

    def _try_flush(self, ctx: ActionContext, keys: _Keys) -> float:
        """Write the queued rows if no other worker is; return the seconds until trying again is useful."""
        token = uuid.uuid4().hex
        lock = keys.key("lock")
        # The lock outlives the slowest flush (token, two reads, the append, and a token refresh plus
        # repeat on a 401, each bounded by the timeout), so two flushers never append to one sheet at once.
        if not ctx.redis.set(lock, token, nx=True, ex=int(6 * self.config.timeout) + 5):
            return QUEUED_RETRY_SECONDS
        try:
            raw = ctx.redis.lrange(keys.key("buffer"), 0, MAX_ROWS_PER_APPEND - 1)
            if not raw:
                return 0.0
            # The sheet's bucket first: it refuses most often, and a refused flush wastes what it took.
            for bucket, capacity, rate in ((keys.sheet_bucket, SHEET_BURST, SHEET_PER_SECOND),
                                           (keys.write_bucket, ACCOUNT_BURST, ACCOUNT_PER_SECOND),
                                           (keys.read_bucket, ACCOUNT_BURST, ACCOUNT_PER_SECOND)):
                wait = ctx.acquire(bucket, capacity, rate)
                if wait > 0:
                    return wait
            return self._flush(ctx, keys, raw)
        finally:
            ctx.redis.eval(_RELEASE_LOCK, 1, lock, token)

    def _flush(self, ctx: ActionContext, keys: _Keys, raw: list) -> float:
        entries = [json.loads(item) for item in raw]
        layout = _layout(entries[0])
        batch = [(item, entry) for item, entry in zip(raw, entries) if _layout(entry) == layout]
        client = _client(ctx.account_id, self._key_hash, self._info, self.base_url(ctx.api_urls), self.config.timeout,
                         ctx.allow_private_urls)
        try:
            records, rows = self._plan(ctx, keys, client, [entry for _, entry in batch])
            if rows:
                try:
                    response = client.http_client.values_append(
                        self.config.spreadsheet_id, f"{a1_sheet(self.config.worksheet)}!A1",
                        params={"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"},
                        body={"values": rows})
                except Exception as exc:
                    raise self._failure(ctx, exc, "values.append", keys.write_bucket) from None
                _place_appended(records, response)
        except IntegrationError as error:
            if error.retryable:
                raise
            # The whole sheet is unusable (not shared, missing, bad key): every queued row fails alike.
            records = {entry["call_id"]: _failed(error) for _, entry in batch}
            self._bookkeep(ctx, keys, batch, records)
            raise
        self._bookkeep(ctx, keys, batch, records)
        return 0.0

    def _plan(self, ctx: ActionContext, keys: _Keys, client: gspread.Client,
              entries: list[dict[str, Any]]) -> tuple[dict[str, dict], list[list]]:
        """Read the header and call_id column; decide each entry's fate and the rows to append."""
        sheet = a1_sheet(self.config.worksheet)
        first = entries[0]
        if not first["header_row"]:
            header = list(first["columns"])
            ids = self._read_ids(ctx, keys, client, [], header.index("call_id"))[1]
        else:
            cached = ctx.redis.get(keys.key("idcol"))
            guess = int(cached) if cached else first["columns"].index("call_id")
            header, ids = self._read_ids(ctx, keys, client, [f"{sheet}!1:1"], guess)
            if header and "call_id" in header and header.index("call_id") != guess:
                # Someone ordered the columns differently: read the right column (once; then cached).
                if (wait := ctx.acquire(keys.read_bucket, ACCOUNT_BURST, ACCOUNT_PER_SECOND)) > 0:
                    raise RetryableError(f"google_sheets: waiting {wait:.2f}s for {self.client_email}'s read quota",
                                         retry_after=wait, code="paced")
                ids = self._read_ids(ctx, keys, client, [], header.index("call_id"))[1]
            if header and "call_id" in header:
                ctx.redis.set(keys.key("idcol"), header.index("call_id"), ex=ID_COLUMN_TTL_SECONDS)
            elif any(header):
                ids = []  # no call_id column to check: every row fails below, naming the missing column
        header_added = first["header_row"] and not any(header)
        if header_added:
            header = []
            for entry in entries:
                header += [name for name in entry["columns"] if name not in header]
        found = {cid: row for row, cid in enumerate(ids, start=1) if cid and row > (1 if first["header_row"] else 0)}
        records: dict[str, dict] = {}
        rows: list[list] = [header] if header_added else []
        for entry in entries:
            cid = entry["call_id"]
            if cid in records:
                continue  # a second copy of the same call (re-delivered task, expired queued marker)
            if cid in found:
                records[cid] = {"range": f"{_range_sheet(self.config.worksheet)}!A{found[cid]}", "dedup": True}
                continue
            if not entry["header_row"]:
                rows.append(entry["values"])
                records[cid] = {"pending": len(rows) - 1}
                continue
            missing = [name for name in entry["columns"] if name not in header]
            if missing:
                records[cid] = _failed(PermanentError(
                    f"google_sheets: worksheet {self.config.worksheet!r} has no column "
                    f"{', '.join(repr(m) for m in missing)} in its header row: add it to row 1 or remove it from "
                    "the action's columns", code="column_missing"))
                continue
            cells: list[Any] = [""] * len(header)
            for name, value in zip(entry["columns"], entry["values"]):
                cells[header.index(name)] = value
            rows.append(cells)
            records[cid] = {"pending": len(rows) - 1}
        if header_added and len(rows) == 1:
            rows = []  # nothing but failures: do not write a lone header
        return records, rows

    def _read_ids(self, ctx: ActionContext, keys: _Keys, client: gspread.Client, extra: list[str],
                  id_index: int) -> tuple[list[str], list[str]]:
        """One values:batchGet of ``extra`` ranges plus the call_id column; returns (row 1, that column)."""
        letter = column_letter(id_index)
        ranges = extra + [f"{a1_sheet(self.config.worksheet)}!{letter}:{letter}"]
        try:
            response = client.http_client.values_batch_get(self.config.spreadsheet_id, ranges,
                                                           params={"majorDimension": "COLUMNS"})
        except Exception as exc:
            raise self._failure(ctx, exc, "values.batchGet", keys.read_bucket) from None
        value_ranges = response.get("valueRanges") if isinstance(response, dict) else None
        columns = [vr.get("values") or [] for vr in value_ranges or () if isinstance(vr, dict)]
        if len(columns) != len(ranges):
            raise RetryableError(f"google_sheets values.batchGet returned {len(columns)} ranges for {len(ranges)}",
                                 code="malformed_response")
        header = [str(col[0]) if col else "" for col in columns[0]] if extra else []
        ids = [str(cell) for cell in columns[-1][0]] if columns[-1] else []
        return header, ids

    def _bookkeep(self, ctx: ActionContext, keys: _Keys, batch: list, records: dict[str, dict]) -> None:
        """Record every call's outcome and drop its rows from the queue, all in one transaction."""
        with ctx.redis.pipeline(transaction=True) as pipe:
            for cid, record in records.items():
                ttl = FAILED_TTL_SECONDS if "error" in record else WRITTEN_TTL_SECONDS
                pipe.set(keys.key("done", cid), json.dumps(record), ex=ttl)
                pipe.delete(keys.key("queued", cid))
            for item, _entry in batch:
                pipe.lrem(keys.key("buffer"), 1, item)
            pipe.execute()

    def _failure(self, ctx: ActionContext, exc: Exception, method: str, bucket: str) -> IntegrationError:
        error = classify_failure(exc, method=method, spreadsheet_id=self.config.spreadsheet_id,
                                 worksheet=self.config.worksheet, client_email=self.client_email,
                                 secrets=self.secrets())
        if error.code == "quota":  # shut the service account's bucket for every worker
            ctx.penalise(bucket, error.retry_after)
        return error



def _layout(entry: Mapping[str, Any]) -> Any:
    """Entries sharing a layout go in one append: header-matched ones, or positional ones with equal columns."""
    return "header" if entry["header_row"] else tuple(entry["columns"])


def _failed(error: IntegrationError) -> dict[str, Any]:
    return {"error": error.message, "kind": type(error).__name__, "status": error.status, "code": error.code}


def _range_sheet(worksheet: str) -> str:
    """The sheet part as Google writes it in ranges: bare when it is a plain word, else quoted."""
    return worksheet if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", worksheet) else a1_sheet(worksheet)


def _place_appended(records: dict[str, dict], response: Any) -> None:
    """Turn each pending record (its index among the appended rows) into its row's range."""
    updates = response.get("updates") if isinstance(response, dict) else None
    updated = updates.get("updatedRange") if isinstance(updates, dict) else None
    # "Sheet1!A7:M9": the sheet part and the first row written. Without it the rows are written but
    # their numbers unknown, and the result carries no external_id.
    match = re.search(r"^(.*)!\$?[A-Z]+\$?(\d+)", updated if isinstance(updated, str) else "")
    for record in records.values():
        if "pending" in record:
            index = record.pop("pending")
            record["dedup"] = False
            record["range"] = f"{match.group(1)}!A{int(match.group(2)) + index}" if match else None


def _call_data(event: Mapping[str, Any]) -> dict[str, Any]:
    """The call.ended data with a usable call_id, or PermanentError."""
    etype = event.get("type") if isinstance(event, Mapping) else None
    if etype != "call.ended":
        raise PermanentError(f"google_sheets.append_row logs call.ended events (one row per call), got {etype!r}",
                             code="wrong_event")
    data = event.get("data")
    call_id = data.get("call_id") if isinstance(data, Mapping) else None
    if not isinstance(call_id, str) or not call_id.strip() or len(call_id) > CALL_ID_MAX:
        raise PermanentError("google_sheets.append_row: the call.ended event has no usable call_id", code="no_call_id")
    return dict(data)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise PermanentError(f"google_sheets: the account's timezone {name!r} is unknown",
                             code="bad_timezone") from None


_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED"}


def classify_failure(exc: Exception, *, method: str, spreadsheet_id: str, worksheet: str, client_email: str,
                     secrets: list[str]) -> IntegrationError:
    """Decide retry vs permanent for any failure of a Sheets or token-endpoint request."""
    where = f"google_sheets {method} (spreadsheet {spreadsheet_id}, worksheet {worksheet!r})"
    if isinstance(exc, IntegrationError):
        return exc
    if isinstance(exc, TokenEndpointUnavailable):
        return RetryableError(f"{where}: the OAuth token endpoint answered HTTP {exc.status}", status=exc.status,
                              code="token_unavailable")
    if isinstance(exc, google.auth.exceptions.RefreshError):
        text = excerpt(scrub(str(exc.args[0]) if exc.args else "", secrets), 300)
        if exc.retryable:
            return RetryableError(f"{where}: the OAuth token endpoint failed: {text}", code="token_unavailable")
        code = "invalid_grant" if "invalid_grant" in text else "token_refused"
        return AuthError(f"{where}: Google refused the service-account key of {client_email} ({text}): the key may "
                         "be deleted or disabled, or this host's clock is wrong", code=code)
    if isinstance(exc, google.auth.exceptions.TransportError):
        return RetryableError(scrub(f"{where}: network error reaching the token endpoint: {exc}", secrets),
                              code="network")
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        # A 2xx with a body that is not JSON: the write may have happened; the call_id check makes a retry safe.
        return RetryableError(f"{where}: Google answered with a body that is not JSON", code="malformed_response")
    if isinstance(exc, requests.RequestException):
        return RetryableError(scrub(f"{where}: network error: {type(exc).__name__}: {exc}", secrets), code="network")
    if not isinstance(exc, APIError):
        return RetryableError(scrub(f"{where}: unexpected {type(exc).__name__}: {exc}", secrets), code="unexpected")

    http_status = exc.response.status_code
    status = exc.code if isinstance(exc.code, int) and exc.code > 0 else http_status
    google_status = str(exc.error.get("status") or "") if exc.code != -1 else _STATUS_NAMES.get(status, "")
    message = excerpt(scrub(str(exc.error.get("message") or ""), secrets), 300)
    detail = f"HTTP {status} {google_status}: {message}" if exc.code != -1 else \
        f"HTTP {status} with a body that is not JSON: {message!r}"
    if status == 429 or google_status == "RESOURCE_EXHAUSTED":
        retry_after = retry_after_seconds(exc.response.headers or {}) or QUOTA_PENALTY_SECONDS
        return RetryableError(f"{where}: Google Sheets quota exhausted (60 requests per minute per service "
                              f"account), retry after {retry_after:g}s", status=status, retry_after=retry_after,
                              code="quota")
    if status >= 500:
        return RetryableError(f"{where}: Google error {detail}", status=status,
                              retry_after=retry_after_seconds(exc.response.headers or {}), code=f"http_{status}")
    if status == 401:
        return AuthError(f"{where}: Google rejected the access token of {client_email}: {detail}", status=status,
                         code="unauthenticated")
    if status == 403:
        return AuthError(f"{where}: the service account {client_email} may not use this spreadsheet: share the "
                         f"spreadsheet with {client_email} as Editor ({detail})", status=status,
                         code="permission_denied")
    if status == 404:
        return PermanentError(f"{where}: spreadsheet {spreadsheet_id} does not exist (check spreadsheet_id, the "
                              f"part of the URL after /d/): {detail}", status=status, code="not_found")
    if status == 400 and "Unable to parse range" in message:
        return PermanentError(f"{where}: there is no worksheet (tab) named {worksheet!r} in the spreadsheet: "
                              f"{detail}", status=status, code="no_worksheet")
    return PermanentError(f"{where}: Google refused the request: {detail}", status=status,
                          code=google_status.lower() or f"http_{status}")
