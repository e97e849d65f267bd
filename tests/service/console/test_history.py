"""The console's history layer on SQLite and PostgreSQL: delivery log pages and filters, attempts, events,
calls built by the real ingest pipeline from simulated Kazoo hooks, the day's overview, and hostile input."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts, engine
from service.config import Settings
from service.console import history
from service.console.errors import ConsoleError, NotFound
from service.engine import planning
from service.events import aware
from service.runtime import Runtime
from service.sandbox.virtualpbx import standin
from service.sandbox.virtualpbx.simulator import CallSimulator
from service.store.models import AuditEntry, Connection, Delivery, DeliveryAttempt, StoredEvent, migrate
from service.web.receiver import make_envelope
from tests.conftest import FIXTURES

ACCOUNT = standin.DEMO_ACCOUNT_ID
OTHER = "b" * 32
T0 = datetime(2026, 11, 28, 14, 0, tzinfo=timezone.utc)  # 09:00 in New York


@pytest.fixture
def rt(tmp_path, redis_url, namespace, redis_client, database_url):
    """A Runtime on a migrated database with two accounts; ACCOUNT posts every call event to Slack."""
    settings = Settings(_env_file=None, var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace,
                        database_url=database_url, secret_keys=Fernet.generate_key().decode())
    migrate(database_url)
    runtime = Runtime(settings)
    rules = f"""
account: {{id: {ACCOUNT}, name: Demo, timezone: America/New_York}}
connections:
  chat: {{integration: slack, bot_token: xoxb-history-tests}}
rules:
  - name: call log
    on: [call.ended, call.missed]
    do: [{{use: chat, action: post_message, with: {{channel: C1, text: "{{{{ event.type }}}}"}}}}]
  - name: missed alert
    on: call.missed
    do: [{{use: chat, action: post_message, with: {{channel: C2, text: "missed"}}}}]
"""
    with runtime.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Demo", box=runtime.box)
        accounts.add_account(session, OTHER, name="Other", box=runtime.box)
        accounts.apply_rules(session, rules, account_id=ACCOUNT, filename="rules.yaml", base_dir=tmp_path,
                             registry=runtime.registry, box=runtime.box, supplied_by="operator")
    planning._RULES_CACHE.clear()
    yield runtime
    runtime.sessions.kw["bind"].dispose()


def add_deliveries(rt, account_id: str, specs: list[tuple[str, str]], *, at: datetime = T0) -> list[int]:
    """Deliveries of ``account_id`` with (status, connection) each, one minute apart from ``at``; their ids."""
    ids = []
    with rt.sessions.begin() as session:
        for n, (status, connection) in enumerate(specs):
            row = Delivery(account_id=account_id, event_key=f"ev:{uuid.uuid4().hex}", event_type="call.ended",
                           rule_name=f"rule {n % 2}", action_index=0, connection=connection, integration="slack",
                           action="post_message", params={"text": "x"}, status=status,
                           created_at=at + timedelta(minutes=n))
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def all_pages(session, account_id, flt, limit):
    """Every item of a list, following next_cursor; also the number of pages."""
    items, cursor, pages = [], None, 0
    while True:
        page = history.list_deliveries(session, account_id, flt, cursor=cursor, limit=limit)
        items.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


def test_delivery_log_pages_newest_first_and_filters(rt):
    """Keyset pages walk every delivery of the account once, newest first; each filter narrows exactly."""
    statuses = [("succeeded", "chat"), ("failed", "chat"), ("dead", "sheet"), ("failed", "sheet"),
                ("retrying", "chat"), ("succeeded", "sheet"), ("paused", "chat")]
    mine = add_deliveries(rt, ACCOUNT, statuses)
    add_deliveries(rt, OTHER, [("failed", "chat")] * 3)
    with rt.sessions() as session:
        items, pages = all_pages(session, ACCOUNT, history.DeliveryFilter(), limit=3)
        assert [d.id for d in items] == sorted(mine, reverse=True) and pages == 3
        failed, _ = all_pages(session, ACCOUNT, history.DeliveryFilter(status="failed"), limit=1)
        assert [d.id for d in failed] == [mine[3], mine[1]]
        gave_up, _ = all_pages(session, ACCOUNT, history.DeliveryFilter(status=("failed", "dead")), limit=2)
        assert [d.id for d in gave_up] == [mine[3], mine[2], mine[1]]
        sheet, _ = all_pages(session, ACCOUNT, history.DeliveryFilter(connection="sheet"), limit=50)
        assert [d.id for d in sheet] == [mine[5], mine[3], mine[2]]
        rule, _ = all_pages(session, ACCOUNT, history.DeliveryFilter(rule_name="rule 1", status="failed"), limit=50)
        assert [d.id for d in rule] == [mine[3], mine[1]]
        window = history.DeliveryFilter(since=T0 + timedelta(minutes=2),
                                        until=(T0 + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=-5))))
        assert [d.id for d in all_pages(session, ACCOUNT, window, limit=50)[0]] == [mine[4], mine[3], mine[2]]
        assert history.list_deliveries(session, ACCOUNT, history.DeliveryFilter(event_type="call.missed")).items == []
        last = history.list_deliveries(session, ACCOUNT, history.DeliveryFilter(), limit=7)
        assert len(last.items) == 7 and last.next_cursor is None


@pytest.mark.parametrize(("near_rows", "window_rows"), [(history.NEAR_ROWS, history.WINDOW_ROWS),
                                                        (2, history.WINDOW_ROWS), (2, 3)])
def test_a_time_window_lists_exactly_its_deliveries_newest_id_first(rt, monkeypatch, near_rows, window_rows):
    """Each way to a windowed page (the rows near the cursor; the window read through created_at; the id walk:
    forced with small NEAR_ROWS and WINDOW_ROWS) pages through the same rows: those created in [since, until),
    by id newest first, replayed ones (created_at moved past newer ids) included, with other filters."""
    monkeypatch.setattr(history, "NEAR_ROWS", near_rows)
    monkeypatch.setattr(history, "WINDOW_ROWS", window_rows)
    specs = [("succeeded", "chat"), ("failed", "chat"), ("failed", "sheet")] * 4
    mine = add_deliveries(rt, ACCOUNT, specs)  # T0, T0+1min, ... T0+11min
    add_deliveries(rt, OTHER, [("failed", "chat")] * 12)
    with rt.sessions.begin() as session:  # two old deliveries replayed: created later than newer ids
        for delivery_id, minutes in ((mine[0], 6.5), (mine[1], 30)):
            session.execute(sa.update(Delivery).where(Delivery.id == delivery_id).values(
                created_at=T0 + timedelta(minutes=minutes)))
    created = {d: T0 + timedelta(minutes=n) for n, d in enumerate(mine)}
    created.update({mine[0]: T0 + timedelta(minutes=6.5), mine[1]: T0 + timedelta(minutes=30)})
    status = dict(zip(mine, (s for s, _ in specs)))
    cases = [(T0 + timedelta(minutes=3), T0 + timedelta(minutes=9), ()),  # mine[0] replayed into it
             (T0 + timedelta(minutes=3), T0 + timedelta(minutes=9), ("failed",)),
             (None, T0 + timedelta(minutes=4), ()),  # mine[1] replayed out of it
             (T0 + timedelta(minutes=10), None, ()),  # mine[1] replayed into it
             (T0 - timedelta(days=1), T0 - timedelta(hours=1), ())]  # nothing
    with rt.sessions() as session:
        for since, until, statuses in cases:
            expected = sorted((d for d in mine if (since is None or created[d] >= since) and
                               (until is None or created[d] < until) and (not statuses or status[d] in statuses)),
                              reverse=True)
            flt = history.DeliveryFilter(since=since, until=until, status=statuses)
            for limit in (2, 50):
                items, pages = all_pages(session, ACCOUNT, flt, limit)
                assert [d.id for d in items] == expected, (since, until, statuses, limit)
                assert pages == max(1, -(-len(expected) // limit))
            if (since, until, statuses) == cases[0]:  # (the replayed row sorts by its id, last)
                assert expected == [*reversed(mine[3:9]), mine[0]]


@pytest.mark.parametrize("cursor", [
    "garbage", "!!!", "x" * 500, base64.urlsafe_b64encode(b'{"before": "7"}').decode(),
    base64.urlsafe_b64encode(json.dumps({"before": 2**40}).encode()).decode(),
    base64.urlsafe_b64encode(b'{"before": -1}').decode(), base64.urlsafe_b64encode(b"[1]").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(), "\x00",
])
def test_a_cursor_we_did_not_hand_out_is_a_clear_error_naming_cursor(rt, cursor):
    """Garbage, tampered and out-of-range cursors raise ConsoleError (a ValueError) that names ``cursor``."""
    with rt.sessions() as session:
        for lister, flt in ((history.list_deliveries, history.DeliveryFilter()),
                            (history.list_events, history.EventFilter()), (history.list_calls, history.CallFilter())):
            with pytest.raises(ConsoleError, match="^cursor: ") as caught:
                lister(session, ACCOUNT, flt, cursor=cursor)
            assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("make", "field"), [
    (lambda: history.DeliveryFilter(status="exploded"), "status"),
    (lambda: history.DeliveryFilter(status=("failed", 3)), "status"),
    (lambda: history.DeliveryFilter(connection="c" * 101), "connection"),
    (lambda: history.DeliveryFilter(rule_name=["x"]), "rule_name"),
    (lambda: history.DeliveryFilter(since=datetime(2026, 1, 1)), "since"),
    (lambda: history.DeliveryFilter(since="yesterday"), "since"),
    (lambda: history.DeliveryFilter(since=T0, until=T0), "until"),
    (lambda: history.EventFilter(type="t" * 101), "type"),
    (lambda: history.CallFilter(number="555' OR 1=1 --"), "number"),
    (lambda: history.CallFilter(number="+1"), "number"),
    (lambda: history.CallFilter(outcome="great"), "outcome"),
    (lambda: history.CallFilter(direction="sideways"), "direction"),
])
def test_bad_filters_are_refused_naming_the_field(make, field):
    """Each filter field validates on construction, and the error starts with the field's name."""
    with pytest.raises(ConsoleError, match=f"^{field}: "):
        make()


def test_limit_is_bounded(rt):
    """limit must be a whole number from 1 to 200."""
    with rt.sessions() as session:
        for limit in (0, -1, 201, 10**9, "5", 2.5, True):
            with pytest.raises(ConsoleError, match="^limit: "):
                history.list_deliveries(session, ACCOUNT, history.DeliveryFilter(), limit=limit)


def test_a_delivery_and_its_attempts_are_the_accounts_own(rt):
    """get_delivery and delivery_attempts find the account's delivery; another account's ids are NotFound."""
    mine = add_deliveries(rt, ACCOUNT, [("failed", "chat")])[0]
    theirs = add_deliveries(rt, OTHER, [("failed", "chat")])[0]
    with rt.sessions.begin() as session:
        for n, outcome in ((1, "retrying"), (2, "failed")):
            session.add(DeliveryAttempt(delivery_id=mine, account_id=ACCOUNT, number=n, started_at=T0,
                                        duration_ms=12, outcome=outcome, status_code=500 + n, error=f"e{n}"))
        session.add(DeliveryAttempt(delivery_id=theirs, account_id=OTHER, number=1, started_at=T0, duration_ms=1,
                                    outcome="failed"))
    with rt.sessions() as session:
        assert history.get_delivery(session, ACCOUNT, mine).id == mine
        assert history.get_delivery(session, ACCOUNT, str(mine)).id == mine
        attempts = history.delivery_attempts(session, ACCOUNT, mine)
        assert [(a.number, a.outcome, a.status_code) for a in attempts] == [(1, "retrying", 501), (2, "failed", 502)]
        for bad in (theirs, str(theirs), 0, -1, 2**40, "1 OR 1=1", "", None, 1.5, True, "٣"):
            with pytest.raises(NotFound):
                history.get_delivery(session, ACCOUNT, bad)
            with pytest.raises(NotFound):
                history.delivery_attempts(session, ACCOUNT, bad)


def ingest_calls(rt, scenarios: list[str], *, start: datetime = T0) -> list:
    """Play simulated calls through the real ingest (Redis call window, SQL store) and finalise each."""
    simulator = CallSimulator(standin.demo_state(), ACCOUNT, seed=7, start=start)
    calls = []
    for scenario in scenarios:
        call = simulator.build(scenario, simulator.now)
        simulator.now = max(step.at for step in call.steps) + 600
        for step in call.steps:
            ingest(rt, step.payload)
        engine.finalize_call(rt, ACCOUNT, call.a_leg.call_id)
        calls.append(call)
    return calls


def ingest(rt, payload: dict) -> None:
    """One hook, as the receiver would queue it."""
    envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST", content_type="application/json",
                             query_string="", body=json.dumps(payload).encode(), headers={})
    assert engine.ingest(rt, envelope).status == "accepted"


def test_calls_list_one_summary_per_call_and_filter(rt):
    """Each call is listed once (call.ended, or call.missed when only Kazoo's notification arrived), newest first;
    outcome, direction, number and time filters narrow it."""
    calls = ingest_calls(rt, ["inbound_answered", "inbound_missed", "outbound", "voicemail"])
    notification = json.loads((FIXTURES / "kazoo" / "webhook_notifications_missed_call.json").read_text())
    ingest(rt, notification)
    with rt.sessions() as session:
        page = history.list_calls(session, ACCOUNT, history.CallFilter())
        keys = [c.call_key for c in page.items]
        assert keys == [notification["call_id"], *reversed([c.a_leg.call_id for c in calls])]
        by_key = {c.call_key: c for c in page.items}
        assert by_key[calls[0].a_leg.call_id].outcome == "answered"
        assert by_key[calls[1].a_leg.call_id].outcome == "missed"
        assert by_key[calls[3].a_leg.call_id].outcome == "voicemail"
        assert by_key[notification["call_id"]].event_key.startswith("call.missed:")
        assert all(c.occurred_at.tzinfo is not None for c in page.items)

        missed = history.list_calls(session, ACCOUNT, history.CallFilter(outcome="missed"))
        assert {c.call_key for c in missed.items} == {calls[1].a_leg.call_id, notification["call_id"]}
        outbound = history.list_calls(session, ACCOUNT, history.CallFilter(direction="outbound"))
        assert [c.call_key for c in outbound.items] == [calls[2].a_leg.call_id]
        caller = by_key[calls[1].a_leg.call_id].caller["number"]
        by_number = history.list_calls(session, ACCOUNT, history.CallFilter(number=f"({caller[-10:-7]}) "
                                                                                   f"{caller[-7:-4]}-{caller[-4:]}"))
        assert calls[1].a_leg.call_id in {c.call_key for c in by_number.items}
        assert calls[0].a_leg.call_id not in {c.call_key for c in by_number.items} or \
            by_key[calls[0].a_leg.call_id].caller["number"] == caller
        first, second = (history.list_calls(session, ACCOUNT, history.CallFilter(), limit=3),
                         history.list_calls(session, ACCOUNT, history.CallFilter(), limit=3,
                                            cursor=history.list_calls(session, ACCOUNT, history.CallFilter(),
                                                                      limit=3).next_cursor))
        assert [c.call_key for c in first.items + second.items] == keys and second.next_cursor is None
        ended_at = by_key[calls[2].a_leg.call_id].occurred_at
        window = history.CallFilter(since=ended_at, until=ended_at + timedelta(seconds=1))
        assert [c.call_key for c in history.list_calls(session, ACCOUNT, window).items] == [calls[2].a_leg.call_id]
        assert history.list_calls(session, OTHER, history.CallFilter()).items == []


def voicemail_notification(call_id: str | None, voicemail_id: str, caller: str = "+15553456789") -> dict:
    """Kazoo's voicemail_new notification for a message ``voicemail_id`` left in call ``call_id``."""
    payload = json.loads((FIXTURES / "kazoo" / "webhook_notifications_voicemail_new.json").read_text())
    payload.update(call_id=call_id, voicemail_id=voicemail_id, caller_id_number=caller, from_user=caller)
    return payload


def test_a_call_known_only_by_its_voicemail_is_listed_once(rt):
    """A voicemail.new whose call has neither call.ended nor call.missed is a call (outcome voicemail, one row
    however many messages it left); calls with call.ended or call.missed are not doubled by their voicemails;
    pages, filters, the detail and the overview agree."""
    answered, voicemail_call = ingest_calls(rt, ["inbound_answered", "voicemail"])
    missed_notification = json.loads((FIXTURES / "kazoo" / "webhook_notifications_missed_call.json").read_text())
    ingest(rt, missed_notification)
    ingest(rt, voicemail_notification(missed_notification["call_id"], "vm-of-the-missed-call"))
    ingest(rt, voicemail_notification("orphan-call@10.0.0.1", "vm-1", caller="+15557654321"))
    ingest(rt, voicemail_notification("orphan-call@10.0.0.1", "vm-2", caller="+15557654321"))
    ingest(rt, voicemail_notification(None, "vm-without-call"))
    with rt.sessions() as session:
        voicemails = session.scalars(sa.select(StoredEvent).where(
            StoredEvent.account_id == ACCOUNT, StoredEvent.type == "voicemail.new").order_by(StoredEvent.id)).all()
        # The simulated voicemail call left one too (its call.ended must stay its only row).
        assert {v.data["call_id"] for v in voicemails} == {
            voicemail_call.a_leg.call_id, missed_notification["call_id"], "orphan-call@10.0.0.1", None}
        newest_orphan = voicemails[-2]
        assert newest_orphan.key == "voicemail.new:vm-2"

        keys = [c.call_key for c in history.list_calls(session, ACCOUNT, history.CallFilter()).items]
        assert keys == ["orphan-call@10.0.0.1", missed_notification["call_id"], voicemail_call.a_leg.call_id,
                        answered.a_leg.call_id]
        paged, cursor = [], None
        while True:  # one row a page: the keyset walks every call once
            page = history.list_calls(session, ACCOUNT, history.CallFilter(), cursor=cursor, limit=1)
            paged += [c.call_key for c in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert paged == keys

        orphan = history.list_calls(session, ACCOUNT, history.CallFilter(), limit=1).items[0]
        assert (orphan.outcome, orphan.voicemail_left, orphan.direction) == ("voicemail", True, None)
        assert orphan.event_id == newest_orphan.id and orphan.caller["number"] == "+15557654321"
        assert orphan.occurred_at.tzinfo is not None
        by_outcome = history.list_calls(session, ACCOUNT, history.CallFilter(outcome="voicemail")).items
        assert [c.call_key for c in by_outcome] == ["orphan-call@10.0.0.1", voicemail_call.a_leg.call_id]
        assert "orphan-call@10.0.0.1" not in {c.call_key for c in history.list_calls(
            session, ACCOUNT, history.CallFilter(outcome="missed")).items}
        assert "orphan-call@10.0.0.1" not in {c.call_key for c in history.list_calls(
            session, ACCOUNT, history.CallFilter(direction="inbound")).items}
        by_number = history.list_calls(session, ACCOUNT, history.CallFilter(number="555 765 4321")).items
        assert [c.call_key for c in by_number] == ["orphan-call@10.0.0.1"]
        assert history.list_calls(session, OTHER, history.CallFilter()).items == []

        detail = history.call_detail(session, ACCOUNT, "orphan-call@10.0.0.1")
        assert detail.summary.outcome == "voicemail" and detail.summary.event_id == newest_orphan.id
        assert [e.key for e in detail.events] == ["voicemail.new:vm-1", "voicemail.new:vm-2"]

        day = aware(newest_orphan.occurred_at).date()
        view = history.overview(session, ACCOUNT, day=day, tz="UTC")
        listed = [c for c in history.list_calls(session, ACCOUNT, history.CallFilter()).items
                  if c.occurred_at.date() == day]
        assert view.calls_total == len(listed) and "orphan-call@10.0.0.1" in {c.call_key for c in listed}


def test_call_detail_has_legs_events_deliveries_attempts_and_rules(rt):
    """A missed call's detail: its leg hooks, call.started/ended/missed, the deliveries they planned with
    attempts, and the rules that matched; another account (or an unknown call) is NotFound."""
    missed = ingest_calls(rt, ["inbound_missed", "inbound_answered"])[0]
    key = missed.a_leg.call_id
    with rt.sessions.begin() as session:
        first = session.scalars(sa.select(Delivery).where(Delivery.event_key == f"call.missed:{key}")
                                .order_by(Delivery.id)).first()
        session.add(DeliveryAttempt(delivery_id=first.id, account_id=ACCOUNT, number=1, started_at=T0,
                                    duration_ms=40, outcome="retrying", status_code=503))
    with rt.sessions() as session:
        detail = history.call_detail(session, ACCOUNT, key)
        assert detail.summary.outcome == "missed" and detail.summary.call_key == key
        assert {e.type for e in detail.events} == {"call.started", "call.ended", "call.missed"}
        assert len(detail.legs) == len(missed.steps)
        assert {leg.data["call_id"] for leg in detail.legs} == {key} | {b.call_id for b in missed.b_legs}
        assert {(h.delivery.event_type, h.delivery.rule_name) for h in detail.deliveries} == {
            ("call.ended", "call log"), ("call.missed", "call log"), ("call.missed", "missed alert")}
        with_attempt = next(h for h in detail.deliveries if h.delivery.id == first.id)
        assert [a.status_code for a in with_attempt.attempts] == [503]
        assert detail.rules == ["call log", "missed alert"]
        for other_account, bad_key in ((OTHER, key), (ACCOUNT, "no-such-call"), (ACCOUNT, ""), (ACCOUNT, "k" * 1000),
                                       (ACCOUNT, None)):
            with pytest.raises(NotFound):
                history.call_detail(session, other_account, bad_key)


def test_events_list_and_lookup_by_id_or_key(rt):
    """list_events pages the account's events by type; get_event finds one by id or key, never another's."""
    ingest_calls(rt, ["inbound_answered"])
    with rt.sessions.begin() as session:
        session.add(StoredEvent(account_id=OTHER, key="other:1", type="call.ended", occurred_at=T0, data={}))
    with rt.sessions() as session:
        ended = history.list_events(session, ACCOUNT, history.EventFilter(type="call.ended"))
        assert len(ended.items) == 1 and ended.items[0].account_id == ACCOUNT
        everything = history.list_events(session, ACCOUNT, history.EventFilter(), limit=200)
        assert len(everything.items) > 4 and all(e.account_id == ACCOUNT for e in everything.items)
        assert [e.id for e in everything.items] == sorted((e.id for e in everything.items), reverse=True)
        event = ended.items[0]
        assert history.get_event(session, ACCOUNT, event.id).key == event.key
        assert history.get_event(session, ACCOUNT, event.key).id == event.id
        theirs = history.list_events(session, OTHER, history.EventFilter()).items[0]
        for bad in (theirs.id, theirs.key, 2**40, "", "k" * 400, None, ["x"]):
            with pytest.raises(NotFound):
                history.get_event(session, ACCOUNT, bad)


def test_overview_counts_the_day_in_the_accounts_time_zone(rt):
    """Calls per local hour and outcome, the missed-call rate, deliveries per connection and status, the last
    hook of each kind, re-enabled hooks and paused connections."""
    calls = ingest_calls(rt, ["inbound_answered", "inbound_missed", "voicemail", "outbound"])
    add_deliveries(rt, ACCOUNT, [("failed", "sheet")], at=T0)
    add_deliveries(rt, ACCOUNT, [("failed", "sheet")], at=T0 - timedelta(days=2))  # another day
    with rt.sessions.begin() as session:
        session.execute(sa.update(Connection).where(Connection.account_id == ACCOUNT).values(
            paused_reason="3 authentication failures"))
        session.add(AuditEntry(account_id=ACCOUNT, kind="hook_reenabled", detail="channel_create was disabled"))
    with rt.sessions() as session:
        view = history.overview(session, ACCOUNT, day=date(2026, 11, 28))
        assert view.tz == "America/New_York" and len(view.calls_by_hour) == 24
        assert view.calls_total == 4 and sum(sum(h.values()) for h in view.calls_by_hour) == 4
        assert sum(sum(h.values()) for h in view.calls_by_hour[9:11]) == 4  # 09:00-10:59 local time
        assert view.inbound_total == 3 and view.missed_total == 2 and view.missed_rate == pytest.approx(2 / 3)
        outcomes = {o for h in view.calls_by_hour for o in h}
        assert outcomes == {"answered", "missed", "voicemail"}
        assert view.deliveries == {"sheet": {"failed": 1}}  # the calls' deliveries were planned today
        today = history.overview(session, ACCOUNT)
        assert today.deliveries["chat"] == {"pending": 4 + 2 * 2}  # 4 call.ended, 2 call.missed with 2 rules
        hooks = {h.kind: h.last_received_at for h in view.hooks}
        assert hooks["virtualpbx.channel_destroy"] is not None and hooks["virtualpbx.parking"] is None
        assert hooks["crm.event"] is None
        assert [p.name for p in view.paused_connections] == ["chat"]
        assert [e.detail for e in view.hooks_reenabled] == ["channel_create was disabled"]
        utc = history.overview(session, ACCOUNT, day=date(2026, 11, 28), tz="UTC")
        assert sum(sum(h.values()) for h in utc.calls_by_hour[14:16]) == 4
        assert history.overview(session, ACCOUNT, day=date(2026, 11, 27)).calls_total == 0
        assert history.overview(session, OTHER, day=date(2026, 11, 28)).calls_total == 0
        for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", 5):
            with pytest.raises(ConsoleError, match="^tz: "):
                history.overview(session, ACCOUNT, tz=bad)
        with pytest.raises(ConsoleError, match="^day: "):
            history.overview(session, ACCOUNT, day="2026-11-28")
        with pytest.raises(NotFound):
            history.overview(session, "c" * 32)
    assert len(calls) == 4


def test_a_call_with_hooks_but_no_call_event_yet_shows_its_legs(rt):
    """An A-leg's channel_destroy still waiting for its settle window: the detail has the leg, no summary."""
    payload = json.loads((FIXTURES / "kazoo" / "webhook_channel_destroy.json").read_text())
    ingest(rt, payload)
    with rt.sessions() as session:
        detail = history.call_detail(session, ACCOUNT, payload["call_id"])
        assert detail.summary is None and detail.events == [] and detail.deliveries == []
        assert [leg.type for leg in detail.legs] == ["virtualpbx.channel_destroy"]
        with pytest.raises(NotFound):
            history.call_detail(session, OTHER, payload["call_id"])
