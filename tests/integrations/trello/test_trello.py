"""TrelloIntegration against the Trello stand-in over real HTTP, with the real Redis rate limiter."""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError

from integrations.base import (
    ActionContext,
    AuthError,
    IntegrationError,
    Media,
    MediaTooLarge,
    PermanentError,
    RetryableError,
)
from integrations.ratelimit import RateLimiter
from integrations.trello import TrelloConfig, TrelloIntegration
from integrations.trello.integration import ATTACHMENT_NAME, TEXT_MAX, TRUNCATION_NOTE, classify_failure, utf16_len
from service.sandbox.standins.trello import TrelloStandin, create_app

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "trello" / "fixtures"
KEY = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
TOKEN = "ATTAsecrettoken" + "9" * 49
READONLY_TOKEN = "ATTAreadonly" + "8" * 52
MEMBER, STRANGER = "60000000000000000000aa01", "60000000000000000000aa02"
BOARD = "60000000000000000000bb01"
INBOX, OTHER = "60000000000000000000cc01", "60000000000000000000cc02"
URGENT, SALES = "60000000000000000000dd01", "60000000000000000000dd02"
AUDIO = bytes(range(256)) * 400  # 102,400 bytes, every byte value: a corrupted upload cannot match
TOKEN_BUCKET = f"trello:token:{hashlib.sha256(TOKEN.encode()).hexdigest()[:16]}"
KEY_BUCKET = f"trello:key:{hashlib.sha256(KEY.encode()).hexdigest()[:16]}"


def fixture(name: str):
    """A JSON body from integrations/trello/fixtures."""
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def _server(serve_standin):
    """One stand-in server per module."""
    return serve_standin(TrelloStandin(), create_app)


@pytest.fixture
def trello(_server):
    """The stand-in, freshly set up: a key, a read-write and a read-only token, one board, two lists."""
    state = _server.state
    state.reset(registrations=True)
    state.token_limit, state.key_limit, state.window = 100, 300, 10.0
    state.attachment_max_bytes = 10 * 1024 * 1024
    state.add_key(KEY)
    state.add_token(TOKEN, KEY, member=MEMBER)
    state.add_token(READONLY_TOKEN, KEY, member=MEMBER, scopes={"read"})
    state.add_board(BOARD, "Calls", members=[MEMBER, STRANGER], lists={INBOX: "Voicemail", OTHER: "Other"},
                    labels={URGENT: ("Urgent", "red"), SALES: ("Sales", "green")})
    return _server


def with_audio(content: bytes = AUDIO, link: str | None = "https://media.example.com/vm-9.mp3"):
    """A ctx.media like the worker's: the file, or MediaTooLarge (with a link) past max_bytes."""
    def media(max_bytes: int) -> Media:
        if len(content) > max_bytes:
            raise MediaTooLarge(f"voicemail is {len(content)} bytes, over {max_bytes}", url=link)
        return Media(content, "audio/mpeg", "vm-9.mp3")
    return media


VOICEMAIL_EVENT = {"type": "voicemail.new", "account_id": "acc", "key": "acc:vm-9:voicemail.new",
                   "occurred_at": "2024-05-01T14:03:00+00:00",
                   "data": {"voicemail_id": "vm-9", "caller": {"name": "Alice Example", "number": "+15555550123"}}}


@pytest.fixture
def make_ctx(trello, action_context):
    """Build an ActionContext as the worker does; paced=False keeps ActionContext's no-op pacing."""
    def build(*, key: str = "acc:vm-9:rule-1:0", attempt: int = 1, media=None, event: dict | None = None,
              timezone: str = "UTC", base: str | None = None, paced: bool = True) -> ActionContext:
        return action_context(account_id="acc", idempotency_key=key, connection_id="acc:trello", attempt=attempt,
                              timezone=timezone, api_urls={"trello": base or trello.url},
                              event=VOICEMAIL_EVENT if event is None else event, media=media or with_audio(),
                              paced=paced)
    return build


def integration(token: str = TOKEN, key: str = KEY, **config) -> TrelloIntegration:
    """The integration with the test credentials."""
    return TrelloIntegration(TrelloConfig(api_key=key, token=token, **config))


def card_params(**overrides) -> dict:
    """Minimal valid create_card params for the inbox list."""
    return {"list_id": INBOX, "name": "Voicemail from Alice", **overrides}


def leaks(text: str, *secrets: str) -> bool:
    """True when ``text`` holds any 12-character piece of a secret (a cut-off secret is still a leak)."""
    secrets = secrets or (KEY, TOKEN)
    return any(secret[i:i + 12] in text for secret in secrets for i in range(len(secret) - 11))


def free_port_url() -> str:
    """A URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- happy paths ---------------------------------------------------------------------------------

def test_card_with_rendered_values_labels_members_due_and_audio(trello, make_ctx):
    name = "📞 Voicemail from {{ caller.name }} ${CALLER} %(number)s — Jürgen <b>"
    desc = "Caller: Alice Example (+15555550123)\nTranscript: \"call me {0} back\" *bold* [x](javascript:1)"
    result = integration().run("create_card", card_params(
        name=name, desc=desc, labels=[URGENT, SALES], members=[MEMBER], due="2024-05-02T09:00:00-04:00",
        position="top"), make_ctx())

    [card] = trello.state.cards_in(INBOX)
    assert (result.external_id, result.url, result.deduplicated) == (card["id"], card["shortUrl"], False)
    assert card["name"] == name
    assert card["desc"] == desc + "\n\n---\npbxrelay-id: acc:vm-9:rule-1:0\nvoicemail-id: vm-9"
    assert (card["idLabels"], card["idMembers"], card["due"]) == ([URGENT, SALES], [MEMBER],
                                                                   "2024-05-02T13:00:00.000Z")
    [attachment] = card["attachments"]
    assert attachment["isUpload"] and attachment["bytes"] == len(AUDIO)
    assert attachment["sha256"] == hashlib.sha256(AUDIO).hexdigest()
    assert (attachment["name"], attachment["fileName"], attachment["mimeType"]) == (
        f"{ATTACHMENT_NAME} - vm-9.mp3", "vm-9.mp3", "audio/mpeg")
    assert result.detail == f"audio attached ({len(AUDIO)} bytes)"


def test_card_json_from_standin_has_trellos_documented_shape(trello, make_ctx):
    integration().run("create_card", card_params(), make_ctx())
    [card] = trello.state.cards_in(INBOX)
    assert set(fixture("card_created.json")) <= set(card)


def test_position_top_puts_the_newest_card_first(trello, make_ctx):
    for n, position in enumerate(["bottom", "top", "bottom"]):
        integration().run("create_card", card_params(name=f"card {n}", position=position, attach_audio=False),
                          make_ctx(paced=False, key=f"k{n}"))
    assert [c["name"] for c in trello.state.cards_in(INBOX)] == ["card 1", "card 0", "card 2"]


def test_naive_due_is_read_in_the_account_time_zone(trello, make_ctx):
    integration().run("create_card", card_params(due="2024-01-15T09:30:00"),
                      make_ctx(timezone="America/New_York"))
    assert trello.state.cards_in(INBOX)[0]["due"] == "2024-01-15T14:30:00.000Z"


def test_empty_due_from_an_empty_template_means_no_due_date(trello, make_ctx):
    integration().run("create_card", card_params(due="  "), make_ctx())
    assert trello.state.cards_in(INBOX)[0]["due"] is None


def test_too_large_audio_attaches_a_link_instead(trello, make_ctx):
    result = integration().run("create_card", card_params(audio_max_bytes=1000), make_ctx())
    [attachment] = trello.state.cards_in(INBOX)[0]["attachments"]
    assert (attachment["isUpload"], attachment["url"]) == (False, "https://media.example.com/vm-9.mp3")
    assert attachment["name"].startswith(ATTACHMENT_NAME)
    assert result.detail == "audio too large: link attached"


def test_too_large_audio_without_a_link_creates_the_card_and_says_so(trello, make_ctx):
    result = integration().run("create_card", card_params(audio_max_bytes=1000),
                               make_ctx(media=with_audio(link=None)))
    [card] = trello.state.cards_in(INBOX)
    assert card["attachments"] == [] and "too large" in result.detail


def test_no_media_means_no_attachment(trello, make_ctx):
    result = integration().run("create_card", card_params(),
                               make_ctx(media=lambda max_bytes: None, event={}))
    [card] = trello.state.cards_in(INBOX)
    assert card["attachments"] == [] and result.detail == "no audio for this event"
    assert "voicemail-id" not in card["desc"]
    assert trello.state.calls_to("POST", "/1/cards/{id}/attachments") == 0


def test_attach_audio_false_never_fetches_media(trello, make_ctx):
    def media(max_bytes):
        raise AssertionError("media must not be fetched")
    integration().run("create_card", card_params(attach_audio=False), make_ctx(media=media))
    assert trello.state.cards_in(INBOX)[0]["attachments"] == []


def test_upload_trello_refuses_keeps_the_card_and_reports_it(trello, make_ctx):
    trello.state.attachment_max_bytes = 50_000  # a board limit below what the action allows
    result = integration().run("create_card", card_params(), make_ctx())
    [card] = trello.state.cards_in(INBOX)
    assert card["attachments"] == []
    assert result.external_id == card["id"] and "413" in result.detail and "audio not attached" in result.detail


def test_attachment_refusal_detail_never_carries_credentials(trello, make_ctx):
    def media(max_bytes):
        trello.state.push_faults([{"status": 400, "body": ECHO}])  # for the upload, which comes next
        return Media(AUDIO, "audio/mpeg", "vm-9.mp3")
    result = integration().run("create_card", card_params(), make_ctx(media=media))
    # The detail goes to the delivery log without passing Integration.run()'s scrub of raised errors.
    assert "audio not attached" in result.detail and "upstream error" in result.detail
    assert not leaks(result.detail), result.detail


def test_media_source_failing_for_good_keeps_the_card(trello, make_ctx):
    def media(max_bytes):
        raise AuthError("virtualpbx: media download: HTTP 401")
    result = integration().run("create_card", card_params(), make_ctx(media=media))
    assert len(trello.state.cards_in(INBOX)) == 1 and "virtualpbx" in result.detail


def test_media_source_failing_for_now_is_retried_and_the_retry_attaches(trello, make_ctx):
    def media(max_bytes):
        raise RetryableError("virtualpbx: media download timed out", code="timeout")
    with pytest.raises(RetryableError, match="virtualpbx"):
        integration().run("create_card", card_params(), make_ctx(paced=False, media=media))
    result = integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))
    [card] = trello.state.cards_in(INBOX)
    assert result.deduplicated and len(card["attachments"]) == 1


# -- exactly one card per voicemail -------------------------------------------------------------
# These contexts use ActionContext's no-op limiter, so a retry can follow at once.

def test_retry_after_success_does_not_create_or_attach_twice(trello, make_ctx):
    first = integration().run("create_card", card_params(), make_ctx(paced=False))
    again = integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))
    [card] = trello.state.cards_in(INBOX)
    assert again.deduplicated and (again.external_id, again.url) == (first.external_id, first.url)
    assert len(card["attachments"]) == 1 and "already attached" in again.detail
    assert trello.state.calls_to("POST", "/1/cards") == 1


def test_retry_after_crash_between_create_and_attach_attaches_once(trello, make_ctx):
    integration().run("create_card", card_params(name="unrelated"), make_ctx(paced=False, key="other"))
    trello.state.push_faults([{"status": 500, "commit": True}])  # created, but the worker never hears so
    with pytest.raises(RetryableError):
        integration().run("create_card", card_params(), make_ctx(paced=False))
    result = integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))
    cards = trello.state.cards_in(INBOX)
    assert len(cards) == 2 and result.deduplicated
    [ours] = [c for c in cards if c["id"] == result.external_id]
    assert ours["name"] == "Voicemail from Alice" and len(ours["attachments"]) == 1
    assert ours["attachments"][0]["sha256"] == hashlib.sha256(AUDIO).hexdigest()


def test_retry_after_timeout_on_create_finds_the_late_card(trello, make_ctx):
    trello.state.push_faults([{"delay": 0.6}])  # Trello creates the card after the client gave up
    with pytest.raises(RetryableError) as info:
        integration(timeout=0.3).run("create_card", card_params(), make_ctx(paced=False))
    assert info.value.code == "timeout"
    for _ in range(50):  # wait for the delayed request to land in the stand-in
        if trello.state.cards_in(INBOX):
            break
        time.sleep(0.05)
    result = integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))
    assert result.deduplicated and len(trello.state.cards_in(INBOX)) == 1


def test_retry_with_nothing_earlier_creates_the_card(trello, make_ctx):
    result = integration().run("create_card", card_params(), make_ctx(paced=False, attempt=3))
    assert not result.deduplicated and len(trello.state.cards_in(INBOX)) == 1
    assert trello.state.calls_to("GET", "/1/lists/{id}/cards") == 1


def test_first_attempt_never_searches(trello, make_ctx):
    integration().run("create_card", card_params(), make_ctx(paced=False))
    assert trello.state.calls_to("GET", "/1/lists/{id}/cards") == 0


def test_a_different_key_in_the_same_list_is_not_a_duplicate(trello, make_ctx):
    integration().run("create_card", card_params(), make_ctx(paced=False, key="acc:vm-9:rule-1:0"))
    # A key that merely starts like the first one must not match it.
    result = integration().run("create_card", card_params(), make_ctx(paced=False, key="acc:vm-9:rule-1", attempt=2))
    assert not result.deduplicated and len(trello.state.cards_in(INBOX)) == 2


def test_dedupe_off_is_at_least_once(trello, make_ctx):
    integration().run("create_card", card_params(dedupe=False), make_ctx(paced=False))
    result = integration().run("create_card", card_params(dedupe=False), make_ctx(paced=False, attempt=2))
    assert not result.deduplicated and len(trello.state.cards_in(INBOX)) == 2
    assert trello.state.calls_to("GET", "/1/lists/{id}/cards") == 0


def test_search_outage_on_retry_defers_instead_of_risking_a_duplicate(trello, make_ctx):
    trello.state.push_faults([{"status": 503}])
    with pytest.raises(RetryableError) as info:
        integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))
    assert "find earlier card" in str(info.value)
    assert trello.state.calls_to("POST", "/1/cards") == 0


# -- failure table -------------------------------------------------------------------------------

@dataclass
class Failure:
    """One row: how to break Trello, and what the integration must raise."""

    expected: type
    code: str
    faults: tuple = ()
    token: str = TOKEN
    key: str = KEY
    params: dict | None = None
    refused: bool = False
    retry_after: float | None = None
    penalised: str | None = None  # the shared bucket a 429 must shut


# The timeout row answers (too late) with an error, so nothing lands in a later test.
LATE = ({"delay": 1.0, "status": 500},)
ECHO = f"<html>upstream error for /1/cards?key={KEY}&token={TOKEN} ({TOKEN})</html>"

FAILURES = {
    "timeout": Failure(RetryableError, "timeout", LATE),
    "connection-refused": Failure(RetryableError, "network", refused=True),
    "401-invalid-key": Failure(AuthError, "invalid_key", key="ffffffffffffffffffffffffffffffff"),
    "401-invalid-token": Failure(AuthError, "invalid_token", token="ATTAunknown" + "7" * 53),
    "401-read-only-token": Failure(AuthError, "unauthorized_permission", token=READONLY_TOKEN),
    "403-forbidden-html": Failure(AuthError, "http_403", ({"status": 403, "body": "<html>403 ERROR</html>"},)),
    "404-list-not-found": Failure(PermanentError, "not_found", params={"list_id": "60000000000000000000ee99"}),
    "400-label-not-on-board": Failure(PermanentError, "invalid_value",
                                      params={"labels": ["60000000000000000000ee98"]}),
    "400-invalid-idList": Failure(PermanentError, "invalid_value",
                                  ({"status": 400, "body": "invalid value for idList"},)),
    "429-token-retry-after": Failure(RetryableError, "API_TOKEN_LIMIT_EXCEEDED",
                                     ({"status": 429, "retry_after": 7, "body": fixture("error_429_token.json")},),
                                     retry_after=7.0, penalised=TOKEN_BUCKET),
    "429-token-no-retry-after": Failure(RetryableError, "API_TOKEN_LIMIT_EXCEEDED",
                                        ({"status": 429, "body": fixture("error_429_token.json")},),
                                        retry_after=10.0, penalised=TOKEN_BUCKET),
    "429-key-no-retry-after": Failure(RetryableError, "API_KEY_LIMIT_EXCEEDED",
                                      ({"status": 429, "body": fixture("error_429_key.json")},),
                                      retry_after=10.0, penalised=KEY_BUCKET),
    "429-html-body": Failure(RetryableError, "rate_limited", ({"status": 429, "body": ECHO},), retry_after=10.0,
                             penalised=TOKEN_BUCKET),
    "500": Failure(RetryableError, "http_500", ({"status": 500},)),
    "503": Failure(RetryableError, "http_503", ({"status": 503, "body": "<html>Service Unavailable</html>"},)),
    "502-echoing-credentials": Failure(RetryableError, "http_502", ({"status": 502, "body": ECHO},)),
    "200-malformed-body": Failure(PermanentError, "malformed_response", ({"status": 200, "body": ECHO},)),
    "200-json-not-a-card": Failure(PermanentError, "malformed_response", ({"status": 200, "body": ["x"]},)),
    "200-card-without-id": Failure(PermanentError, "malformed_response", ({"status": 200, "body": {"name": "x"}},)),
}


@pytest.mark.parametrize("row", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_table(trello, limiter, row, make_ctx):
    trello.state.push_faults(list(row.faults))
    ctx = make_ctx(base=free_port_url() if row.refused else trello.url)
    # A short client timeout against the 1 s stand-in delay keeps the timeout row fast.
    with pytest.raises(IntegrationError) as info:
        integration(token=row.token, key=row.key, timeout=0.3).run("create_card", card_params(**(row.params or {})),
                                                                   ctx)
    error = info.value
    assert type(error) is row.expected, f"{type(error).__name__}: {error}"
    assert error.code == row.code, str(error)
    assert error.retry_after == row.retry_after
    if row.penalised:  # the shared bucket is shut for retry_after, for every worker
        assert row.retry_after - 1 < limiter.acquire(row.penalised, 100, 10) <= row.retry_after
    assert not leaks(str(error) + repr(error.args), KEY, TOKEN, row.token, row.key), str(error)
    assert error.__context__ is None and error.__cause__ is None  # no chained exception quoting the URL
    assert str(error).startswith("trello ")
    assert trello.state.cards_in(INBOX) == []


def test_network_error_text_quotes_a_url_without_the_credentials(trello, make_ctx):
    # The raw requests message quotes the URL; with the credentials in the Authorization header it has
    # nothing to scrub (the echo rows of the table above still prove the scrubbing).
    ctx = make_ctx(paced=False, base=free_port_url())
    with pytest.raises(RetryableError) as info:
        integration().run("create_card", card_params(), ctx)
    assert "/1/cards" in str(info.value)
    assert "key=" not in str(info.value) and "token=" not in str(info.value) and "***" not in str(info.value)


@pytest.mark.parametrize("status", [200, 401, 429, 502])
def test_classify_failure_scrubs_on_its_own(trello, status):
    # Integration.run() scrubs again; this checks the function the lead may call directly.
    trello.state.push_faults([{"status": status, "body": ECHO}])
    response = requests.post(f"{trello.url}/1/cards", params={"key": KEY, "token": TOKEN}, timeout=5)
    refused = None
    try:
        requests.get(f"{free_port_url()}/1/lists/x/cards", params={"key": KEY, "token": TOKEN}, timeout=5)
    except requests.RequestException as exc:
        refused = exc
    assert TOKEN in response.text and TOKEN in str(refused)
    for outcome in (response, refused):
        error = classify_failure("test", outcome, [KEY, TOKEN])
        assert not leaks(str(error) + repr(error.args)), str(error)


def test_token_revoked_between_card_and_attachment_raises_auth_error(trello, make_ctx):
    def media(max_bytes):
        trello.state.revoke_token(TOKEN)  # revoked by the user while we were fetching the audio
        return Media(AUDIO, "audio/mpeg", "vm-9.mp3")
    with pytest.raises(AuthError) as info:
        integration().run("create_card", card_params(), make_ctx(media=media))
    assert info.value.code == "invalid_token" and "attach audio" in str(info.value)
    assert len(trello.state.cards_in(INBOX)) == 1


def test_standin_rate_limit_answers_429_and_the_client_backs_off(trello, make_ctx):
    trello.state.token_limit = 2
    no_pacing = make_ctx(paced=False)
    integration().run("create_card", card_params(), no_pacing)  # POST card + POST attachment
    with pytest.raises(RetryableError) as info:
        integration().run("create_card", card_params(), make_ctx(paced=False, key="k2"))
    assert (info.value.code, info.value.retry_after, info.value.status) == ("API_TOKEN_LIMIT_EXCEEDED", 10.0, 429)
    assert len(trello.state.cards_in(INBOX)) == 1


# -- pacing --------------------------------------------------------------------------------------

def test_every_request_takes_a_token_from_both_shared_buckets(trello, limiter, make_ctx):
    taken = []

    def acquire(key, capacity, per_second, cost=1.0):
        taken.append((key, capacity, per_second))
        return limiter.acquire(key, capacity, per_second, cost)

    ctx = make_ctx(attempt=2)
    ctx.acquire = acquire
    integration().run("create_card", card_params(), ctx)  # search + create + attach
    assert len(trello.state.calls) == 3
    assert taken == [(TOKEN_BUCKET, 100.0, 10.0), (KEY_BUCKET, 300.0, 30.0)] * 3


def test_pacing_is_shared_across_workers_with_the_same_token(trello, limiter, make_ctx):
    worker_a, worker_b = make_ctx(key="a"), make_ctx(key="b")
    integration().run("create_card", card_params(), worker_a)
    # Worker A (or anything else with this token) used up the bucket: worker B must wait, not call.
    assert limiter.acquire(TOKEN_BUCKET, 100, 10, cost=limiter_tokens_left(limiter)) == 0
    calls_before = len(trello.state.calls)
    with pytest.raises(RetryableError) as info:
        integration().run("create_card", card_params(), worker_b)
    assert info.value.code == "paced" and 0 < info.value.retry_after <= 0.2
    assert len(trello.state.calls) == calls_before


def limiter_tokens_left(limiter: RateLimiter) -> float:
    """How many whole tokens the test token bucket holds now (read from Redis)."""
    tokens = limiter._redis.hget(f"{limiter._prefix}{TOKEN_BUCKET}", "tokens")
    return float(int(float(tokens)))


def test_429_shuts_the_bucket_for_other_workers_and_other_tokens_still_flow(trello, make_ctx):
    trello.state.push_faults([{"status": 429, "body": fixture("error_429_token.json")}])
    with pytest.raises(RetryableError):
        integration().run("create_card", card_params(), make_ctx(key="a"))
    calls_before = len(trello.state.calls)
    with pytest.raises(RetryableError) as info:
        integration().run("create_card", card_params(), make_ctx(key="b"))
    assert info.value.code == "paced" and 9 < info.value.retry_after <= 10
    assert len(trello.state.calls) == calls_before

    other_token = "ATTAanothertoken" + "6" * 48
    trello.state.add_token(other_token, KEY, member=MEMBER)
    integration(token=other_token).run("create_card", card_params(), make_ctx(key="c"))
    assert len(trello.state.cards_in(INBOX)) == 1


# -- errors, config, hostile input ---------------------------------------------------------------

def test_raised_errors_survive_pickling(trello, make_ctx):
    raised = []
    for faults, params, token in (([{"status": 429, "retry_after": 4, "body": fixture("error_429_token.json")}], {},
                                   TOKEN),
                                  ([], {"list_id": "60000000000000000000ee99"}, TOKEN),
                                  ([], {}, "ATTAunknown" + "7" * 53),
                                  ([{"status": 200, "body": "<html>"}], {}, TOKEN)):
        trello.state.push_faults(faults)
        with pytest.raises(IntegrationError) as info:
            integration(token=token).run("create_card", card_params(**params), make_ctx(paced=False))
        raised.append(info.value)
    with pytest.raises(PermanentError) as info:
        integration().run("create_card", {"list_id": INBOX, "name": ""}, make_ctx(paced=False))
    raised.append(info.value)
    assert [type(e) for e in raised] == [RetryableError, PermanentError, AuthError, PermanentError, PermanentError]

    for error in raised:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), copy.retry_after, copy.status, copy.code) == \
               (str(error), error.retry_after, error.status, error.code)
    assert raised[0].retry_after == 4.0


def test_config_never_shows_secrets():
    config = TrelloConfig(api_key=KEY, token=TOKEN)
    shown = repr(config) + str(config) + config.model_dump_json() + repr(integration().config)
    assert KEY not in shown and TOKEN not in shown and "**********" in shown
    assert config.timeout == 10.0


@pytest.mark.parametrize("config", [
    {"api_key": KEY},
    {"token": TOKEN},
    {"api_key": KEY, "token": "ATTA secret with spaces"},
    {"api_key": KEY, "token": TOKEN + "&key=x"},
    {"api_key": KEY, "token": TOKEN, "surprise": 1},
    {"api_key": KEY, "token": TOKEN, "timeout": 0},
], ids=["no-token", "no-key", "token-with-space", "token-with-query", "unknown-key", "zero-timeout"])
def test_bad_config_is_rejected_without_echoing_secrets(config):
    with pytest.raises(ValidationError) as info:
        TrelloConfig(**config)
    text = str(info.value)
    assert KEY not in text and TOKEN not in text and "secret with spaces" not in text


HOSTILE = {
    "name-over-16384": ({"name": "x" * 16_385}, "name"),
    "name-emoji-over-16384-utf16": ({"name": "📞" * 8_193}, "16384"),
    "name-blank": ({"name": " \n "}, "blank"),
    "name-missing": ({"name": None}, "name"),
    "due-not-a-date": ({"due": "next tuesday"}, "due"),
    "due-impossible": ({"due": "2024-02-30T10:00:00Z"}, "due"),
    "list-id-path-traversal": ({"list_id": "../../1/members/me"}, "list_id"),
    "list-id-short-link": ({"list_id": "Ab3dE6gH"}, "list_id"),
    "label-not-an-id": ({"labels": ["Urgent"]}, "Trello id"),
    "member-injection": ({"members": [MEMBER + ",x"]}, "Trello id"),
    "position-number": ({"position": 5}, "position"),
    "audio-max-over-250mb": ({"audio_max_bytes": 300 * 1024 * 1024}, "audio_max_bytes"),
    "unknown-param": ({"board": BOARD}, "board"),
}


@pytest.mark.parametrize("params,mentions", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_params_are_a_clear_permanent_error(trello, params, mentions, make_ctx):
    merged = {k: v for k, v in card_params(**params).items() if v is not None}
    with pytest.raises(PermanentError) as info:
        integration().run("create_card", merged, make_ctx())
    assert "invalid parameters" in str(info.value) and mentions in str(info.value)
    assert trello.state.calls == []


def test_unknown_account_time_zone_with_a_naive_due_is_permanent(trello, make_ctx):
    with pytest.raises(PermanentError, match="time zone"):
        integration().run("create_card", card_params(due="2024-01-15T09:30:00"),
                          make_ctx(paced=False, timezone="Mars/Olympus"))
    assert trello.state.calls == []


@pytest.mark.parametrize("name", [
    "x" * TEXT_MAX,
    "📞" * (TEXT_MAX // 2),
    "Anruf von Jürgen — 日本語 — مرحبا — \u200b\u202e reversed",
    "line1\r\nline2\x1b[31m",
], ids=["exactly-16384", "emoji-exactly-16384-utf16", "unicode", "control-chars"])
def test_unusual_but_valid_names_are_created_verbatim(trello, name, make_ctx):
    integration().run("create_card", card_params(name=name, attach_audio=False), make_ctx(paced=False))
    assert trello.state.cards_in(INBOX)[0]["name"] == name


# The marker block this test's ctx appends: "\n\n---\npbxrelay-id: acc:vm-9:rule-1:0\nvoicemail-id: vm-9".
TAIL = 55


@pytest.mark.parametrize("desc,cut", [("d" * 20_000, True), ("📞" * 9_000, True), ("x" * (TEXT_MAX - TAIL + 1), True),
                                      ("x" * (TEXT_MAX - TAIL), False)],
                         ids=["ascii", "emoji", "one-over-with-marker", "exactly-fits-with-marker"])
def test_long_description_is_cut_with_a_note_and_keeps_the_marker(trello, desc, cut, make_ctx):
    integration().run("create_card", card_params(desc=desc, attach_audio=False), make_ctx(paced=False))
    # Retried, the marker must still be found: the cut never eats it.
    result = integration().run("create_card", card_params(desc=desc, attach_audio=False),
                               make_ctx(paced=False, attempt=2))
    [card] = trello.state.cards_in(INBOX)
    assert result.deduplicated
    assert utf16_len(card["desc"]) <= TEXT_MAX
    assert card["desc"].startswith(desc) is not cut
    assert (TRUNCATION_NOTE in card["desc"]) is cut and card["desc"].endswith("pbxrelay-id: acc:vm-9:rule-1:0\n"
                                                                     "voicemail-id: vm-9")
    assert "\ufffd" not in card["desc"]  # no emoji cut in half


def test_hostile_voicemail_id_cannot_forge_extra_marker_lines(trello, make_ctx):
    event = {"data": {"voicemail_id": "vm-1\npbxrelay-id: someone-else"}}
    integration().run("create_card", card_params(attach_audio=False), make_ctx(paced=False, event=event))
    desc = trello.state.cards_in(INBOX)[0]["desc"]
    assert desc.splitlines()[-1] == "voicemail-id: vm-1 pbxrelay-id: someone-else"
    assert "pbxrelay-id: someone-else" not in desc.splitlines()


def test_credentials_travel_only_in_the_authorization_header(trello, make_ctx):
    """Key and token never appear in a URL (logs, proxies, exception text): the OAuth header carries them."""
    integration().run("create_card", card_params(), make_ctx(paced=False))
    integration().run("create_card", card_params(), make_ctx(paced=False, attempt=2))  # the retry's lookup too
    calls = trello.state.calls
    assert {c["route"] for c in calls} >= {"/1/cards", "/1/lists/{id}/cards", "/1/cards/{id}/attachments"}
    assert [c["auth"] for c in calls] == ["header"] * len(calls)


@pytest.mark.parametrize("bad", ['abc"defgh', "abcdefgh\\", "abc,defgh", "abcdéfgh", "abc\x00defgh"])
def test_credentials_that_would_break_the_header_are_refused(bad):
    with pytest.raises(ValueError, match="exactly as shown"):
        TrelloConfig(api_key=bad, token=TOKEN)
