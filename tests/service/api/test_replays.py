"""Replays through the API: one delivery, an event re-planned, a bulk job (202, progress, one at a time)."""

from __future__ import annotations

from service import engine
from service.store.models import Delivery
from tests.service.api.conftest import ACCOUNT_A
from tests.service.api.test_access import A, assert_problem
from tests.service.api.test_resources import audited, ingest, simulated_call


def add_delivery(api, status: str, key: str = "e") -> int:
    """A delivery of account A in ``status``; its id."""
    with api.rt.sessions.begin() as db:
        row = Delivery(account_id=ACCOUNT_A, event_key=key, event_type="call.missed", rule_name="missed calls",
                       action_index=0, connection="team-slack", integration="slack", action="post_message",
                       params={"channel": "C1", "text": "x"}, status=status, last_error="gave up")
        db.add(row)
        db.flush()
        return row.id


def test_replay_one_delivery(api):
    dead, done = add_delivery(api, "dead", "e1"), add_delivery(api, "succeeded", "e2")
    writer = api.client("write")
    replayed = writer.post(f"{A}/deliveries/{dead}/replay")
    assert replayed.status_code == 200, replayed.get_data(as_text=True)
    assert replayed.get_json()["status"] == "pending"
    assert audited(api, "delivery_replayed")[0].actor.startswith("api_key:")
    refused = assert_problem(writer.post(f"{A}/deliveries/{done}/replay"), 422)
    assert refused["errors"][0]["field"] == "delivery"
    assert_problem(api.client("viewer").post(f"{A}/deliveries/{dead}/replay"), 403)
    assert_problem(api.client("b_write").post(f"{A}/deliveries/{dead}/replay"), 404)
    assert_problem(writer.post(f"{A}/deliveries/999999/replay"), 404)


def test_replan_an_event_with_todays_rules(api):
    call_id, payloads = simulated_call("inbound_missed", 9)
    for payload in payloads:
        ingest(api, payload)
    engine.finalize_call(api.rt, ACCOUNT_A, call_id)
    key = f"call.missed:{call_id}"
    writer = api.client("write")
    planned = writer.get(f"{A}/deliveries?event_key={key}").get_json()["items"]
    assert len(planned) == 1
    again = writer.post(f"{A}/events/{key}/replan")
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json() == {"event_key": key, "created": [], "replayed": [], "unchanged": [planned[0]["id"]]}
    assert audited(api, "event_replanned")[0].actor.startswith("api_key:")
    assert_problem(writer.post(f"{A}/events/no-such-event/replan"), 404)
    assert_problem(api.client("read").post(f"{A}/events/{key}/replan"), 403)


def test_bulk_replay_is_a_job_one_at_a_time(api_on):
    api = api_on  # SQLite and PostgreSQL
    for n in range(3):
        add_delivery(api, "failed", f"f{n}")
    add_delivery(api, "succeeded", "s")
    writer = api.client("write")
    started = writer.post(f"{A}/replays", json={"status": "failed"})
    assert started.status_code == 202, started.get_data(as_text=True)
    job = started.get_json()
    assert job["total"] == 3 and job["status"] in ("queued", "running")
    assert started.headers["Location"].endswith(f"/replays/{job['id']}")
    assert api.client("read").get(f"{A}/replays/{job['id']}").get_json()["total"] == 3
    assert_problem(api.client("b_write").get(f"{A}/replays/{job['id']}"), 404)
    busy = assert_problem(writer.post(f"{A}/replays", json={}), 409)
    assert "still running" in busy["detail"]
    assert "status" in [e["field"] for e in assert_problem(
        writer.post(f"{A}/replays", json={"status": "succeeded"}), 422)["errors"]]
    assert "colour" in [e["field"] for e in assert_problem(writer.post(f"{A}/replays", json={"colour": 1}),
                                                          422)["errors"]]
