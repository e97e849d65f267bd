"""The Trello stand-in itself, spoken to over HTTP the way Trello documents (not through our client)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from service.sandbox.standins.trello import (
    DEFAULT_BOARD,
    DEFAULT_KEY,
    DEFAULT_LABELS,
    DEFAULT_LISTS,
    DEFAULT_MEMBER,
    DEFAULT_TOKEN,
    TrelloStandin,
    create_app,
)

FIXTURES = Path(__file__).resolve().parents[3] / "integrations" / "trello" / "fixtures"
LIST = next(iter(DEFAULT_LISTS))
LABEL = next(iter(DEFAULT_LABELS))
AUTH = {"key": DEFAULT_KEY, "token": DEFAULT_TOKEN}


@pytest.fixture(scope="module")
def server(serve_standin):
    """One stand-in with the ready-made demo workspace (what ``create_app()`` serves)."""
    served = serve_standin(TrelloStandin.with_defaults(), create_app)
    return served.url, served.state


@pytest.fixture
def trello(server):
    """(base URL, state): only the demo workspace, no cards, calls or faults; limits back to Trello's."""
    url, state = server
    state.reset(registrations=True)
    state.load_defaults()
    state.token_limit, state.key_limit, state.window = 100, 300, 10.0
    state.attachment_max_bytes = 10 * 1024 * 1024
    return url, state


def fixture(name: str):
    """A JSON body from integrations/trello/fixtures."""
    return json.loads((FIXTURES / name).read_text())


def new_card(url: str, **fields) -> requests.Response:
    """POST /1/cards with auth in the query and a JSON body."""
    return requests.post(f"{url}/1/cards", params=AUTH, json={"idList": LIST, "name": "c", **fields}, timeout=5)


def test_demo_workspace_creates_a_card_with_trellos_shape(trello):
    url, _ = trello
    response = new_card(url, desc="hello", idLabels=LABEL, idMembers=DEFAULT_MEMBER, due="2024-05-02T09:00:00-04:00")
    assert response.status_code == 200
    card = response.json()
    assert set(fixture("card_created.json")) == set(card)
    assert (card["idBoard"], card["idList"], card["idLabels"], card["idMembers"], card["due"]) == (
        DEFAULT_BOARD, LIST, [LABEL], [DEFAULT_MEMBER], "2024-05-02T13:00:00.000Z")
    assert card["shortUrl"] in card["url"] and len(card["id"]) == 24
    assert response.headers["x-rate-limit-api-token-max"] == "100"
    assert response.headers["x-rate-limit-api-token-remaining"] == "99"


def test_form_body_and_array_ids_are_accepted_too(trello):
    url, _ = trello
    form = requests.post(f"{url}/1/cards", data={**AUTH, "idList": LIST, "name": "form", "idLabels": LABEL},
                         timeout=5)
    array = new_card(url, idLabels=[LABEL], idMembers=[DEFAULT_MEMBER])
    assert form.status_code == 200 and form.json()["idLabels"] == [LABEL]
    assert array.status_code == 200 and array.json()["idMembers"] == [DEFAULT_MEMBER]


@pytest.mark.parametrize("auth,text", [
    ({"token": DEFAULT_TOKEN}, "invalid key"),
    ({"key": "f" * 32, "token": DEFAULT_TOKEN}, "invalid key"),
    ({"key": DEFAULT_KEY}, "unauthorized permission requested"),
    ({"key": DEFAULT_KEY, "token": "ATTAnope"}, "invalid token"),
], ids=["no-key", "unknown-key", "no-token", "unknown-token"])
def test_auth_errors_are_plain_text_401s(trello, auth, text):
    url, _ = trello
    response = requests.post(f"{url}/1/cards", params=auth, json={"idList": LIST, "name": "x"}, timeout=5)
    assert (response.status_code, response.text) == (401, text)
    assert response.headers["Content-Type"].startswith("text/plain")


def test_read_only_token_and_a_board_the_member_is_not_on_are_refused(trello):
    url, state = trello
    state.add_token("ATTAreadonly-standin", DEFAULT_KEY, member=DEFAULT_MEMBER, scopes={"read"})
    state.add_token("ATTAoutsider-standin", DEFAULT_KEY, member="5f00000000000000000000ff")
    read_only = requests.post(f"{url}/1/cards", params={"key": DEFAULT_KEY, "token": "ATTAreadonly-standin"},
                              json={"idList": LIST}, timeout=5)
    outsider = requests.get(f"{url}/1/lists/{LIST}/cards", params={"key": DEFAULT_KEY, "token": "ATTAoutsider-standin"},
                            timeout=5)
    assert (read_only.status_code, read_only.text) == (401, "unauthorized permission requested")
    assert (outsider.status_code, outsider.text) == (401, "unauthorized permission requested")


@pytest.mark.parametrize("fields,status,text", [
    ({"idList": None}, 400, "invalid value for idList"),
    ({"idList": "not-an-id"}, 400, "invalid value for idList"),
    ({"idList": "5f00000000000000000000ee"}, 404, "could not find the board that the card belongs to"),
    ({"name": "x" * 16_385}, 400, "invalid value for name"),
    ({"name": "📞" * 8_193}, 400, "invalid value for name"),
    ({"desc": "x" * 16_385}, 400, "invalid value for desc"),
    ({"due": "tomorrow"}, 400, "invalid value for due"),
    ({"pos": "middle"}, 400, "invalid value for pos"),
    ({"idLabels": "5f00000000000000000000ee"}, 400, "invalid value for idLabels"),
    ({"idMembers": "5f00000000000000000000ee"}, 400, "invalid value for idMembers"),
], ids=["no-list", "bad-list", "unknown-list", "long-name", "long-emoji-name", "long-desc", "bad-due", "bad-pos",
        "foreign-label", "foreign-member"])
def test_create_card_validation(trello, fields, status, text):
    url, state = trello
    response = new_card(url, **fields)
    assert (response.status_code, response.text) == (status, text)
    assert state.all_cards() == []


def test_list_cards_honours_fields_and_hides_archived_cards(trello):
    url, state = trello
    top, bottom = new_card(url, name="b", desc="d1").json(), new_card(url, name="a", pos="top").json()
    state.cards[top["id"]]["closed"] = True
    response = requests.get(f"{url}/1/lists/{LIST}/cards", params={**AUTH, "fields": "id,desc,shortUrl"}, timeout=5)
    assert response.json() == [{"id": bottom["id"], "desc": "", "shortUrl": bottom["shortUrl"]}]
    assert set(fixture("list_cards_fields.json")[0]) == set(response.json()[0])
    bad = requests.get(f"{url}/1/lists/nope/cards", params=AUTH, timeout=5)
    missing = requests.get(f"{url}/1/lists/5f00000000000000000000ee/cards", params=AUTH, timeout=5)
    assert (bad.status_code, bad.text) == (400, "invalid id")
    assert (missing.status_code, missing.text) == (404, "The requested resource was not found.")


def test_attachments_upload_url_and_size_limit(trello):
    url, state = trello
    card = new_card(url).json()
    path = f"{url}/1/cards/{card['id']}/attachments"
    content = b"ID3" + bytes(5000)
    upload = requests.post(path, params=AUTH, data={"name": "Recording", "mimeType": "audio/mpeg"},
                           files={"file": ("vm.mp3", content, "audio/mpeg")}, timeout=5)
    link = requests.post(path, params=AUTH, data={"url": "https://example.com/vm.mp3", "name": "Link"}, timeout=5)
    assert set(upload.json()) == set(fixture("attachment_upload.json"))
    assert set(link.json()) == set(fixture("attachment_url.json"))
    assert (upload.json()["bytes"], upload.json()["isUpload"], link.json()["isUpload"]) == (5003, True, False)

    state.attachment_max_bytes = 1000
    too_big = requests.post(path, params=AUTH, files={"file": ("vm.mp3", content, "audio/mpeg")}, timeout=5)
    neither = requests.post(path, params=AUTH, data={"name": "nothing"}, timeout=5)
    bad_url = requests.post(path, params=AUTH, data={"url": "javascript:alert(1)"}, timeout=5)
    assert (too_big.status_code, neither.status_code, bad_url.status_code) == (413, 400, 400)

    listed = requests.get(path, params={**AUTH, "fields": "id,name"}, timeout=5).json()
    assert listed == [{"id": upload.json()["id"], "name": "Recording"}, {"id": link.json()["id"], "name": "Link"}]
    [shown] = requests.get(f"{url}/_standin/cards", timeout=5).json()["cards"]
    assert shown["attachments"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert shown["badges"]["attachments"] == 2
    missing = requests.get(f"{url}/1/cards/5f00000000000000000000ee/attachments", params=AUTH, timeout=5)
    assert (missing.status_code, missing.text) == (404, "The requested resource was not found.")


def test_token_and_key_rate_limits_answer_429_json(trello):
    url, state = trello
    state.token_limit = 2
    codes = [new_card(url).status_code for _ in range(3)]
    limited = new_card(url)
    assert codes == [200, 200, 429] and limited.json() == fixture("error_429_token.json")
    assert "Retry-After" not in limited.headers

    state.reset()
    state.token_limit, state.key_limit = None, 1
    new_card(url)
    assert new_card(url).json() == fixture("error_429_key.json")


def test_fault_queue_setup_and_reset_over_http(trello):
    url, state = trello
    setup = {"keys": ["k" * 32],
             "tokens": [{"token": "ATTAsetup", "key": "k" * 32, "member": "5f0000000000000000000002"}],
             "boards": [{"id": "5f00000000000000000000b2", "members": ["5f0000000000000000000002"],
                         "lists": [{"id": "5f00000000000000000000a9", "name": "Inbox"}]}]}
    assert requests.post(f"{url}/_standin/setup", json=setup, timeout=5).status_code == 200
    requests.post(f"{url}/_standin/faults", json=[{"status": 503}, {"status": 500, "commit": True}], timeout=5)
    auth = {"key": "k" * 32, "token": "ATTAsetup"}
    body = {"idList": "5f00000000000000000000a9", "name": "x"}
    first = requests.post(f"{url}/1/cards", params=auth, json=body, timeout=5)
    second = requests.post(f"{url}/1/cards", params=auth, json=body, timeout=5)
    assert (first.status_code, second.status_code) == (503, 500)
    assert len(state.all_cards()) == 1  # the commit fault created the card anyway
    calls = requests.get(f"{url}/_standin/calls", timeout=5).json()["calls"]
    assert [c["route"] for c in calls] == ["/1/cards", "/1/cards"]
    assert all("ATTAsetup" not in json.dumps(c) for c in calls)

    requests.post(f"{url}/_standin/reset", json={"registrations": True}, timeout=5)
    assert state.all_cards() == [] and state.keys == set()


def oauth(key: str, token: str | None = None) -> dict[str, str]:
    """Trello's Authorization header form of key and token."""
    value = f'OAuth oauth_consumer_key="{key}"' + (f', oauth_token="{token}"' if token is not None else "")
    return {"Authorization": value}


def test_the_oauth_authorization_header_authenticates(trello):
    url, state = trello
    response = requests.post(f"{url}/1/cards", headers=oauth(DEFAULT_KEY, DEFAULT_TOKEN),
                             json={"idList": LIST, "name": "by header"}, timeout=5)
    assert response.status_code == 200 and response.json()["name"] == "by header"
    assert state.calls[-1]["auth"] == "header"
    listed = requests.get(f"{url}/1/lists/{LIST}/cards", headers=oauth(DEFAULT_KEY, DEFAULT_TOKEN), timeout=5)
    assert [c["name"] for c in listed.json()] == ["by header"]


@pytest.mark.parametrize("headers,text", [
    (oauth("f" * 32, DEFAULT_TOKEN), "invalid key"),
    (oauth(DEFAULT_KEY), "unauthorized permission requested"),
    (oauth(DEFAULT_KEY, "ATTAnope"), "invalid token"),
], ids=["unknown-key", "no-token", "unknown-token"])
def test_a_bad_oauth_header_is_refused_even_with_good_query_credentials(trello, headers, text):
    url, _ = trello
    response = requests.post(f"{url}/1/cards", headers=headers, params=AUTH, json={"idList": LIST, "name": "x"},
                             timeout=5)
    assert (response.status_code, response.text) == (401, text)
