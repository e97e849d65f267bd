"""GoogleSheetsIntegration against the Sheets stand-in over real HTTP, with the real Redis rate limiter."""

from __future__ import annotations

import hashlib
import heapq
import json
import pickle
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from integrations.base import ActionContext, AuthError, PermanentError, RetryableError
from integrations.google_sheets import ALL_COLUMNS, GoogleSheetsConfig, GoogleSheetsIntegration
from integrations.google_sheets.columns import CELL_MAX, row_values
from integrations.google_sheets.integration import ACCOUNT_BURST, ACCOUNT_PER_SECOND
from service.sandbox.standins.google_sheets import SheetsStandin, create_app, service_account_json
from tests.integrations.conftest import sandbox_config

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "google_sheets" / "fixtures"
SHEET_ID = "1TestCallLogSpreadsheet00000000000000000000"
OTHER_ID = "1SomebodyElsesSpreadsheet000000000000000000"


def fixture(name: str):
    """A JSON body from integrations/google_sheets/fixtures."""
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Sheets:
    """A running stand-in, its state, and this test's service account (key file text and e-mail)."""

    state: SheetsStandin
    url: str
    key: rsa.RSAPrivateKey
    sa_json: str = ""
    email: str = ""

    def new_account(self, **kwargs) -> tuple[str, str]:
        """Register another service account (fresh e-mail, so no cached token) and return (json, email)."""
        email = f"pbx-{uuid.uuid4().hex[:10]}@standin-project.iam.gserviceaccount.com"
        text = service_account_json(self.state, self.key, self.url + "/token", client_email=email, **kwargs)
        return text, email

    def column(self, name: str, sheet: str = "Sheet1") -> list[str]:
        """The values under header ``name``, data rows only."""
        header, *rows = self.state.rows(SHEET_ID, sheet)
        index = header.index(name)
        return [row[index] if index < len(row) else "" for row in rows]


@pytest.fixture(scope="module")
def _server(serve_standin):
    """One stand-in server and one RSA key per module: both are slow to make."""
    served = serve_standin(SheetsStandin(), create_app)
    return Sheets(served.state, served.url, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def sheets(_server):
    """The stand-in, freshly set up: our spreadsheet (Sheet1, Calls) shared with a new service account."""
    state = _server.state
    state.reset(registrations=True)
    state.add_spreadsheet(SHEET_ID, title="Call log", sheets=["Sheet1", "Calls"])
    state.add_spreadsheet(OTHER_ID, title="Not ours")
    _server.sa_json, _server.email = _server.new_account(share=[SHEET_ID])
    return _server


@pytest.fixture
def make_ctx(sheets, action_context, redis_client, namespace):
    """Build an ActionContext as the worker does, for one call.ended event."""
    def build(call_id: str = "call-1", *, attempt: int = 1, data: dict | None = None,
              timezone: str = "America/New_York", paced: bool = True, event: dict | None = None) -> ActionContext:
        return action_context(account_id="acc", idempotency_key=f"acc:{call_id}:rule-1:0",
                              connection_id="acc:call-log", attempt=attempt, timezone=timezone,
                              api_urls={"google_sheets": sheets.url}, redis=redis_client, namespace=namespace,
                              event=event or call_event(call_id, **(data or {})), paced=paced)
    return build


def sa_write_bucket(sheets: Sheets) -> str:
    """The limiter bucket of this test's service-account key under the contexts' account ("acc")."""
    return f"gsheets:sa:acc:{hashlib.sha256(sheets.sa_json.encode()).hexdigest()[:24]}"


def integration(sheets: Sheets, **config) -> GoogleSheetsIntegration:
    """The integration on our spreadsheet with this test's service account."""
    return GoogleSheetsIntegration(sandbox_config(GoogleSheetsConfig, **{"credentials": sheets.sa_json,
                                                                        "spreadsheet_id": SHEET_ID, **config}))


CALLER = {"name": "Alice Example", "number": "+15555550123"}
CALLEE = {"name": "Sales", "number": "+15555550100"}
AGENT = {"name": "Bob Agent", "number": "201", "user_id": "u-201"}


def call_event(call_id: str, **data) -> dict:
    """A call.ended Event.to_json() document."""
    body = {"call_id": call_id, "direction": "inbound", "caller": CALLER, "callee": CALLEE, "answered_by": AGENT,
            "started_at": "2024-05-01T14:03:00+00:00", "ended_at": "2024-05-01T14:05:05+00:00", "duration": 125,
            "talk_time": 98, "ringing": 27, "outcome": "answered", "voicemail_left": False,
            "hangup_cause": "NORMAL_CLEARING", "legs": [], **data}
    return {"type": "call.ended", "account_id": "acc", "key": f"acc:{call_id}:call.ended",
            "occurred_at": body["ended_at"], "data": body}


def drive(gs: GoogleSheetsIntegration, params: dict, build, call_id: str, *, attempts: int = 8):
    """Run the action the way the task runner does: on RetryableError, again after retry_after, attempt+1."""
    for attempt in range(1, attempts + 1):
        try:
            return gs.run("append_row", params, build(call_id, attempt=attempt))
        except RetryableError as exc:
            assert exc.retry_after is not None and exc.retry_after <= 5, str(exc)
            time.sleep(exc.retry_after)
    raise AssertionError(f"{call_id} not written after {attempts} attempts")


def writes(sheets: Sheets, spreadsheet_id: str = SHEET_ID) -> list[dict]:
    """The write requests that reached the stand-in for one spreadsheet."""
    return sheets.state.log("write", spreadsheet_id=spreadsheet_id)


# -- rows, header, columns -----------------------------------------------------------------------

def test_empty_sheet_gets_the_header_and_rows_follow_it(sheets, make_ctx):
    gs = integration(sheets)
    first = drive(gs, {}, make_ctx, "call-1")
    second = drive(gs, {}, make_ctx, "call-2")
    header, *rows = sheets.state.rows(SHEET_ID)
    assert header == list(ALL_COLUMNS)
    assert [r[-1] for r in rows] == ["call-1", "call-2"]
    assert (first.external_id, second.external_id) == ("Sheet1!A2", "Sheet1!A3")
    assert not first.deduplicated and first.url.endswith(SHEET_ID)
    assert len(writes(sheets)) == 2  # the header rode along with the first row, no separate write
    assert len(sheets.state.log("token")) == 1  # the access token is reused


EXPECTED = {
    "start_time": "2024-05-01 10:03:00",  # 14:03 UTC is 10:03 EDT
    "direction": "inbound",
    "caller": "Alice Example (+15555550123)",
    "caller_number": "+15555550123",
    "caller_name": "Alice Example",
    "callee": "Sales (+15555550100)",
    "callee_number": "+15555550100",
    "answered_by": "Bob Agent (201)",
    "duration": "125",
    "talk_time": "98",
    "outcome": "answered",
    "voicemail": "no",
    "call_id": "call-1",
}


def test_each_column_holds_its_value(sheets, make_ctx):
    drive(integration(sheets), {}, make_ctx, "call-1")
    header, row = sheets.state.rows(SHEET_ID)
    assert dict(zip(header, row)) == EXPECTED


@pytest.mark.parametrize("data,column,expected", [
    ({"started_at": "2024-01-15T14:03:00Z"}, "start_time", "2024-01-15 09:03:00"),  # EST in winter
    ({"started_at": "not a time"}, "start_time", ""),
    ({"caller": {"name": "", "number": "+15555550199"}}, "caller", "+15555550199"),
    ({"caller": {"name": "Reception", "number": None}}, "caller", "Reception"),
    ({"answered_by": None, "outcome": "missed", "voicemail_left": True}, "answered_by", ""),
    ({"answered_by": None, "outcome": "voicemail", "voicemail_left": True}, "voicemail", "yes"),
    ({"caller": {"name": "=IMPORTXML(\"http://x\",\"//a\")", "number": "+1"}}, "caller_name",
     "=IMPORTXML(\"http://x\",\"//a\")"),
    ({"duration": "125s"}, "duration", ""),
], ids=["winter-time", "bad-start", "number-only", "name-only", "unanswered", "voicemail", "formula-stays-text",
        "non-numeric-duration"])
def test_column_edge_values(sheets, make_ctx, data, column, expected):
    drive(integration(sheets), {}, lambda cid, attempt: make_ctx(cid, attempt=attempt, data=data), "call-1")
    assert sheets.column(column) == [expected]


def test_existing_header_is_matched_by_name_in_any_order(sheets, make_ctx):
    sheets.state.set_rows(SHEET_ID, "Sheet1", [["call_id", "Notes", "outcome", "start_time", "caller"],
                                               ["older", "typed by hand", "missed", "2024-04-30 09:00:00", "x"]])
    result = drive(integration(sheets), {"columns": ["start_time", "caller", "outcome", "call_id"]}, make_ctx,
                   "call-1")
    assert sheets.state.rows(SHEET_ID)[2] == ["call-1", "", "answered", "2024-05-01 10:03:00",
                                              "Alice Example (+15555550123)"]
    assert result.external_id == "Sheet1!A3"


def test_column_missing_from_the_header_is_permanent_and_named(sheets, make_ctx):
    sheets.state.set_rows(SHEET_ID, "Sheet1", [["start_time", "call_id", "outcome"]])
    with pytest.raises(PermanentError) as info:
        drive(integration(sheets), {"columns": ["start_time", "talk_time", "call_id"]}, make_ctx, "call-1")
    assert "'talk_time'" in str(info.value) and info.value.code == "column_missing"
    assert writes(sheets) == [] and len(sheets.state.rows(SHEET_ID)) == 1


def test_header_without_call_id_column_is_permanent_not_a_false_match(sheets, make_ctx):
    # Column A would be the call_id column by the action's order; here it holds something else.
    sheets.state.set_rows(SHEET_ID, "Sheet1", [["Ref", "outcome"], ["call-1", "typed by hand"]])
    with pytest.raises(PermanentError) as info:
        drive(integration(sheets), {"columns": ["call_id", "outcome"]}, make_ctx, "call-1")
    assert "'call_id'" in str(info.value) and writes(sheets) == []


def test_without_header_row_cells_are_positional(sheets, make_ctx):
    gs = integration(sheets, worksheet="Calls")
    drive(gs, {"columns": ["call_id", "outcome"], "header_row": False}, make_ctx, "call-1")
    drive(gs, {"columns": ["call_id", "outcome"], "header_row": False}, make_ctx, "call-2")
    assert sheets.state.rows(SHEET_ID, "Calls") == [["call-1", "answered"], ["call-2", "answered"]]


# -- batching, pacing, exactly-once --------------------------------------------------------------

@dataclass(order=True)
class _Task:
    due: float
    call_id: str = field(compare=False)
    attempt: int = field(default=1, compare=False)


def test_burst_of_30_calls_from_4_workers_is_30_rows_at_most_one_write_a_second(sheets, make_ctx):
    gs = integration(sheets)
    # Calls end over three seconds, so rows keep arriving while earlier batches are being written.
    queue = [_Task(time.monotonic() + i * 0.1, f"burst-{i:02d}") for i in range(30)]
    heapq.heapify(queue)
    lock, results, failures, runs = threading.Lock(), {}, [], []
    deadline = time.monotonic() + 25

    def worker():
        while time.monotonic() < deadline and len(results) + len(failures) < 30:
            with lock:
                task = heapq.heappop(queue) if queue else None
            if task is None:  # the others hold the remaining tasks; one may come back as a retry
                time.sleep(0.02)
                continue
            if task.due > time.monotonic():
                time.sleep(task.due - time.monotonic())
            try:
                runs.append(task.call_id)
                results[task.call_id] = gs.run("append_row", {}, make_ctx(task.call_id, attempt=task.attempt))
            except RetryableError as exc:  # what the task runner does: retry_after plus up to 1 s jitter
                with lock:
                    due = time.monotonic() + exc.retry_after + random.uniform(0, 1)
                    heapq.heappush(queue, _Task(due, task.call_id, task.attempt + 1))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    assert failures == [] and len(results) == 30
    ids = sheets.column("call_id")
    assert sorted(ids) == sorted(results) and len(set(ids)) == 30
    for call_id, result in results.items():  # each result names the row that holds its call
        row = int(re.fullmatch(r"Sheet1!A(\d+)", result.external_id).group(1))
        assert ids[row - 2] == call_id
    times = [w["at"] for w in writes(sheets)]
    assert len(times) <= elapsed + 1 and len(times) < 10, times  # batched: far fewer writes than calls
    # At most one write a second. The limiter grants a flush a second apart, but the stand-in stamps the
    # append's arrival, after the flush's read, whose duration varies on a loaded machine: so each gap may
    # lose up to that read's spread, while over the whole burst the shortfall cannot add up.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.7 for gap in gaps), gaps
    assert times[-1] - times[0] >= len(gaps) - 0.3, gaps
    assert len(runs) < 30 * 5


def test_service_account_bucket_is_shared_by_all_its_sheets(sheets, make_ctx, limiter):
    # Another sheet's flushes used up this service account's writes: ours waits, without asking Google.
    for _ in range(int(ACCOUNT_BURST)):
        assert limiter.acquire(sa_write_bucket(sheets), ACCOUNT_BURST, ACCOUNT_PER_SECOND) == 0
    with pytest.raises(RetryableError) as info:
        integration(sheets, worksheet="Calls").run("append_row", {}, make_ctx("call-1"))
    assert info.value.code == "queued" and 1.0 <= info.value.retry_after <= 1 / ACCOUNT_PER_SECOND + 0.1
    assert sheets.state.log() == []


@pytest.mark.parametrize("commit", [True, False], ids=["append-committed-then-500", "append-failed-503"])
def test_failed_append_is_retried_without_a_double_row(sheets, make_ctx, commit):
    gs = integration(sheets)
    drive(gs, {}, make_ctx, "call-0")
    status = 500 if commit else 503
    sheets.state.push_faults([{"status": status, "commit": commit, "on": "write"}])
    time.sleep(1.0)  # the sheet's bucket: one write a second
    with pytest.raises(RetryableError) as info:
        gs.run("append_row", {}, make_ctx("call-1"))
    assert info.value.code == f"http_{status}"
    time.sleep(1.0)
    result = gs.run("append_row", {}, make_ctx("call-1", attempt=2))
    assert sheets.column("call_id") == ["call-0", "call-1"]
    assert result.external_id == "Sheet1!A3"
    assert result.deduplicated is commit  # found in the sheet rather than written by this attempt
    assert len(writes(sheets)) == 3 - commit


def test_row_already_in_the_sheet_is_not_written_again(sheets, make_ctx):
    # Redis lost its records (or they expired) but the sheet has the row: the call_id column decides.
    sheets.state.set_rows(SHEET_ID, "Sheet1", [list(ALL_COLUMNS), list(EXPECTED.values())])
    result = integration(sheets).run("append_row", {}, make_ctx("call-1", attempt=3))
    assert (result.external_id, result.deduplicated) == ("Sheet1!A2", True)
    assert writes(sheets) == []


def test_a_second_delivery_of_the_same_call_is_deduplicated(sheets, make_ctx):
    gs = integration(sheets)
    drive(gs, {}, make_ctx, "call-1")
    again = gs.run("append_row", {}, make_ctx("call-1"))
    assert (again.external_id, again.deduplicated) == ("Sheet1!A2", True)
    assert len(sheets.column("call_id")) == 1 and len(writes(sheets)) == 1


def test_sheet_level_failure_fails_every_queued_row(sheets, make_ctx):
    gs = integration(sheets)
    sheets.state.spreadsheets[SHEET_ID]["shared"].clear()
    held_off = make_ctx("call-1")
    held_off.acquire = lambda key, capacity, per_second, cost=1.0: 0.5  # its flush is paced: row stays queued
    with pytest.raises(RetryableError, match="queued"):
        gs.run("append_row", {}, held_off)
    with pytest.raises(AuthError) as info:  # the next flush carries both rows and hits the 403
        gs.run("append_row", {}, make_ctx("call-2"))
    assert sheets.email in str(info.value)
    requests_so_far = len(sheets.state.log())
    with pytest.raises(AuthError) as info:
        gs.run("append_row", {}, make_ctx("call-1", attempt=2))
    assert sheets.email in str(info.value) and info.value.code == "permission_denied"
    assert len(sheets.state.log()) == requests_so_far  # answered from the recorded failure, no request


def test_429_from_google_penalises_the_service_account_for_a_minute(sheets, make_ctx, limiter):
    sheets.state.quota["write"] = 1  # the stand-in's own per-minute quota, not a queued fault
    gs = integration(sheets)
    gs.run("append_row", {}, make_ctx("call-1", paced=False))
    with pytest.raises(RetryableError) as info:
        gs.run("append_row", {}, make_ctx("call-2"))
    assert (info.value.code, info.value.retry_after, info.value.status) == ("quota", 60.0, 429)
    assert 59 < limiter.acquire(sa_write_bucket(sheets), ACCOUNT_BURST, ACCOUNT_PER_SECOND) <= 60
    time.sleep(1.0)  # past the sheet's own bucket
    with pytest.raises(RetryableError) as info:  # every worker now holds off without asking Google
        gs.run("append_row", {}, make_ctx("call-2", attempt=2))
    assert info.value.code == "queued" and info.value.retry_after > 57
    assert len(writes(sheets)) == 2


# -- failure table -------------------------------------------------------------------------------

@dataclass
class Failure:
    """One row: how to break Google, and what the integration must raise."""

    expected: type
    code: str
    faults: tuple = ()
    prepare: object = None  # callable(sheets) for failures that are real stand-in behaviour
    config: dict = field(default_factory=dict)
    refused: bool = False
    retry_after: float | None = None
    mentions: str = ""
    max_seconds: float = 3.0
    warm: bool = False  # write one row first, so an access token exists for the fault body to echo


LATE = ({"delay": 1.0, "status": 500},)  # answers, too late, with an error: nothing lands in a later test


def _echo_body(sheets: Sheets) -> str:
    token = next(iter(sheets.state.tokens), "none")
    return f"<html>proxy error for Bearer {token} ({token})</html>"


FAILURES = {
    "timeout": Failure(RetryableError, "network", LATE, config={"timeout": 0.3}),
    "connection-refused": Failure(RetryableError, "network", refused=True),
    "token-invalid_grant": Failure(AuthError, "invalid_grant",
                                   prepare=lambda s: s.state.disable_service_account(s.email),
                                   mentions="invalid_grant"),
    "token-503-fails-fast": Failure(RetryableError, "token_unavailable", ({"on": "token", "status": 503},),
                                    max_seconds=0.9),
    "token-timeout": Failure(RetryableError, "network", ({"on": "token", "delay": 1.0, "status": 500},),
                             config={"timeout": 0.3}),
    "401-after-one-refresh": Failure(AuthError, "unauthenticated",
                                     ({"status": 401, "body": fixture("error_401_unauthenticated.json")},) * 2),
    "403-not-shared": Failure(AuthError, "permission_denied",
                              prepare=lambda s: s.state.spreadsheets[SHEET_ID]["shared"].clear(), mentions="share"),
    "403-read-only": Failure(AuthError, "permission_denied",
                             prepare=lambda s: s.state.share(SHEET_ID, s.email, "reader")),
    "404-spreadsheet": Failure(PermanentError, "not_found", config={"spreadsheet_id": "1NoSuchSpreadsheet00000000"},
                               mentions="1NoSuchSpreadsheet00000000"),
    "400-bad-worksheet": Failure(PermanentError, "no_worksheet", config={"worksheet": "Calls 2024"},
                                 mentions="'Calls 2024'"),
    "429-no-retry-after": Failure(RetryableError, "quota", ({"status": 429, "on": "write"},), retry_after=60.0),
    "429-retry-after": Failure(RetryableError, "quota",
                               ({"status": 429, "on": "write", "retry_after": 7,
                                 "body": fixture("error_429_resource_exhausted.json")},), retry_after=7.0),
    "500": Failure(RetryableError, "http_500", ({"status": 500, "body": fixture("error_500_internal.json")},)),
    "503": Failure(RetryableError, "http_503", ({"status": 503, "body": fixture("error_503_unavailable.json")},)),
    "502-non-json-echoing-token": Failure(RetryableError, "http_502", ({"status": 502, "body": "ECHO"},),
                                          mentions="not JSON", warm=True),
    "404-non-json": Failure(PermanentError, "not_found", ({"status": 404, "body": "<html>Not Found</html>"},)),
    "200-non-json-append": Failure(RetryableError, "malformed_response",
                                   ({"status": 200, "on": "write", "body": "<html>ok?</html>"},)),
}


def _free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("row", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_table(sheets, make_ctx, limiter, row):
    if row.prepare:
        row.prepare(sheets)
    if row.warm:
        integration(sheets).run("append_row", {}, make_ctx("warm-up", paced=False))
    faults = [dict(f, body=_echo_body(sheets)) if f.get("body") == "ECHO" else f for f in row.faults]
    sheets.state.push_faults(faults)
    gs = integration(sheets, **row.config)
    ctx = make_ctx("call-1")
    if row.refused:
        ctx.api_urls = {"google_sheets": _free_port_url()}

    started = time.monotonic()
    with pytest.raises(Exception) as info:
        gs.run("append_row", {}, ctx)
    elapsed = time.monotonic() - started

    error = info.value
    assert type(error) is row.expected, f"{type(error).__name__}: {error}"
    assert error.code == row.code, str(error)
    assert error.retry_after == row.retry_after
    assert row.mentions in str(error)
    assert elapsed < row.max_seconds  # nothing sleeps in-process (gspread/google-auth backoff would)
    if row.code == "quota":  # the shared service-account bucket is shut for every worker
        wait = limiter.acquire(sa_write_bucket(sheets), ACCOUNT_BURST, ACCOUNT_PER_SECOND)
        assert row.retry_after - 1 < wait <= row.retry_after
    private_key = json.loads(sheets.sa_json)["private_key"]
    secrets = [sheets.sa_json, private_key, *private_key.splitlines()[1:-1], *sheets.state.tokens]
    shown = str(error) + repr(error.args)
    assert not [s for s in secrets if s and s in shown], shown
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.retry_after, copy.status, copy.code) == \
           (type(error), str(error), error.retry_after, error.status, error.code)


def test_401_refreshes_the_token_once_then_succeeds(sheets, make_ctx):
    gs = integration(sheets)
    drive(gs, {}, make_ctx, "call-1")
    sheets.state.revoke_tokens()  # Google dropped the token before its hour was up
    time.sleep(1.0)
    result = gs.run("append_row", {}, make_ctx("call-2"))
    assert result.external_id == "Sheet1!A3"
    assert len(sheets.state.log("token")) == 2


# -- action input and configuration -------------------------------------------------------------

def test_connection_api_url_overrides_the_service_setting(sheets, make_ctx):
    ctx = make_ctx("call-1")
    ctx.api_urls = {"google_sheets": _free_port_url()}  # the service-wide setting points nowhere
    result = integration(sheets, api_url=sheets.url).run("append_row", {}, ctx)
    assert result.external_id == "Sheet1!A2"


@pytest.mark.parametrize("event,mentions", [
    ({"type": "call.missed", "data": {"call_id": "c"}}, "call.ended"),
    ({"type": "call.ended", "data": {"direction": "inbound"}}, "call_id"),
    ({"type": "call.ended", "data": {"call_id": "x" * 300}}, "call_id"),
    ({"type": "call.ended", "data": "nope"}, "call_id"),
], ids=["wrong-event", "no-call-id", "huge-call-id", "data-not-object"])
def test_unusable_event_is_permanent_without_any_request(sheets, make_ctx, event, mentions):
    with pytest.raises(PermanentError, match=mentions):
        integration(sheets).run("append_row", {}, make_ctx(event=event))
    assert sheets.state.log() == []


def test_unknown_account_timezone_is_permanent(sheets, make_ctx):
    with pytest.raises(PermanentError, match="Mars/Olympus"):
        integration(sheets).run("append_row", {}, make_ctx(timezone="Mars/Olympus"))


@pytest.mark.parametrize("params,mentions", [
    ({"columns": ["start_time", "shoe_size", "call_id"]}, "shoe_size"),
    ({"columns": ["start_time", "outcome"]}, "call_id"),
    ({"columns": ["call_id", "call_id"]}, "repeat"),
    ({"columns": []}, "columns"),
    ({"value_input_option": "USER_ENTERED"}, "value_input_option"),
], ids=["unknown-column", "no-call-id", "repeated", "empty", "unknown-param"])
def test_bad_params_are_a_clear_permanent_error(sheets, make_ctx, params, mentions):
    with pytest.raises(PermanentError, match="invalid parameters") as info:
        integration(sheets).run("append_row", params, make_ctx())
    assert mentions in str(info.value)


def test_config_never_shows_the_service_account(sheets):
    config = sandbox_config(GoogleSheetsConfig, credentials=sheets.sa_json, spreadsheet_id=SHEET_ID)
    shown = repr(config) + str(config) + config.model_dump_json() + repr(integration(sheets).config)
    assert "PRIVATE KEY" not in shown and sheets.email not in shown and "**********" in shown


def _sa(**changes) -> str:
    base = fixture("service_account_key_shape.json")
    base.update(changes)
    return json.dumps({k: v for k, v in base.items() if v is not None})


SECRET_LOOKING = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
HOSTILE_SA = {
    "not-json": ("{'type': 'service_account', " + SECRET_LOOKING, "not JSON"),
    "json-list": ("[1, 2, 3]", "JSON object"),
    "user-credentials": (_sa(type="authorized_user", refresh_token="1//TOPSECRETREFRESH"), "authorized_user"),
    "missing-fields": (_sa(client_email=None, token_uri=None, private_key=SECRET_LOOKING), "client_email, token_uri"),
    "unusable-key": (_sa(private_key=SECRET_LOOKING), "not a usable PEM private key"),
    "huge": (_sa(padding="A" * 1_000_000, private_key=SECRET_LOOKING), "larger than"),
    "token-uri-not-http": (_sa(token_uri="file:///etc/passwd", private_key=SECRET_LOOKING), "token_uri"),
    "email-not-email": (_sa(client_email="TOPSECRET no at sign", private_key=SECRET_LOOKING), "client_email"),
}


@pytest.mark.parametrize("text,mentions", list(HOSTILE_SA.values()), ids=list(HOSTILE_SA))
def test_hostile_service_account_json_is_rejected_clearly_without_echo(text, mentions):
    # A ValidationError here is what the rules loader reports, and what the worker turns into
    # PermanentError("connection ... is misconfigured: ...") (workers/pipeline.py).
    with pytest.raises(ValidationError) as info:
        GoogleSheetsConfig(credentials=text, spreadsheet_id=SHEET_ID)
    message = str(info.value)
    assert mentions in message, message
    assert "TOPSECRET" not in message and "BEGIN PRIVATE KEY" not in message


@pytest.mark.parametrize("config,mentions", [
    ({"spreadsheet_id": "../../etc"}, "spreadsheet_id"),
    ({"worksheet": "a/b"}, "worksheet"),
    ({"worksheet": "  "}, "worksheet"),
    ({"timeout": 0}, "timeout"),
    ({"surprise": 1}, "surprise"),
], ids=["bad-id", "slash-in-tab", "blank-tab", "zero-timeout", "unknown-key"])
def test_bad_config_is_rejected(sheets, config, mentions):
    with pytest.raises(ValidationError, match=mentions):
        GoogleSheetsConfig(**{"credentials": sheets.sa_json, "spreadsheet_id": SHEET_ID, **config})


_hostile = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60_000),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["call_id", "direction", "caller", "callee", "answered_by",
                                             "started_at", "duration", "talk_time", "outcome", "voicemail_left"]),
                            _hostile | st.fixed_dictionaries({"name": _hostile, "number": _hostile})))
def test_row_values_survive_any_event_data(data):
    cells = row_values(data, ALL_COLUMNS, ZoneInfo("America/New_York"))
    assert len(cells) == len(ALL_COLUMNS)
    for cell in cells:
        assert isinstance(cell, (str, int, float)) and not isinstance(cell, bool)
        assert len(str(cell)) <= CELL_MAX
