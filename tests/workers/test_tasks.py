"""How a task tells a re-run from a first run: the decision that re-enqueues what a killed run planned."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.tasks import is_rerun


@pytest.mark.parametrize(("retries", "delivery_info", "expected"), [
    (0, {"exchange": "", "routing_key": "pbxrelay.ingest", "redelivered": False}, False),
    (0, None, False),
    (1, {"redelivered": False}, True),  # Celery's retry, also the worker-lost re-send
    (0, {"redelivered": True}, True),  # kombu restored it: visibility timeout, or handed back at shutdown
])
def test_a_rerun_is_a_retry_or_a_broker_redelivery(retries, delivery_info, expected):
    """Either sign of an earlier run counts; a first delivery does not."""
    assert is_rerun(SimpleNamespace(retries=retries, delivery_info=delivery_info)) is expected


# --- every way out of ingest keeps the hook ----------------------------------------------------------------

ACCOUNT = "e0000000000000000000000000000007"


@pytest.fixture
def tasks_rt(tmp_path, redis_url, namespace, redis_client, database_url, monkeypatch):
    """workers.tasks running on a Runtime with one account (no rules: nothing is sent to the broker)."""
    import json

    from cryptography.fernet import Fernet

    from service import accounts
    from service.config import Settings
    from service.runtime import Runtime
    from service.store.models import migrate
    from service.web.receiver import make_envelope
    from tests.conftest import FIXTURES
    from workers import tasks

    settings = Settings(var_dir=tmp_path / "var", redis_url=redis_url, namespace=namespace, database_url=database_url,
                        secret_keys=Fernet.generate_key().decode(), allow_private_urls=True)
    migrate(database_url)
    rt = Runtime(settings)
    with rt.sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="Tasks", box=rt.box)
    monkeypatch.setattr(tasks, "_runtime", rt)
    payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
    rt.envelope = make_envelope(source="virtualpbx", account_id=ACCOUNT, method="POST",
                                content_type="application/json", query_string="",
                                body=json.dumps(payload).encode(), headers={})
    yield rt
    rt.sessions.kw["bind"].dispose()


def _kept(rt) -> tuple[list[str], list[str]]:
    """(stored event types, quarantine reasons) of the account."""
    import sqlalchemy as sa

    from service.store.models import QuarantinedDelivery, StoredEvent

    with rt.sessions() as session:
        return (list(session.scalars(sa.select(StoredEvent.type))),
                list(session.scalars(sa.select(QuarantinedDelivery.reason))))


def test_a_hook_whose_runs_were_killed_3_times_is_quarantined_with_the_reason(tasks_rt):
    """Three starts that never ended (hard time limit, OOM, kill -9): the fourth quarantines, and says why."""
    from workers import tasks

    tasks_rt.redis.set(tasks._run_key(tasks_rt, "killed-task"), tasks.MAX_KILLED_RUNS)
    # (a killed run comes back as a retry on Redis, or flagged redelivered: either is a rerun)
    result = tasks.ingest.apply(args=(tasks_rt.envelope,), task_id="killed-task", retries=1)
    assert result.get() == "quarantined"
    assert _kept(tasks_rt) == ([], ["processing was killed 3 times (time limit or crash)"])
    assert not tasks_rt.redis.exists(tasks._run_key(tasks_rt, "killed-task")), "the count ends with the run"


def test_a_hook_killed_fewer_times_is_processed_as_a_rerun(tasks_rt):
    """Two kills: the third run processes the hook (a kill -9 storm must not quarantine good hooks)."""
    from workers import tasks

    tasks_rt.redis.set(tasks._run_key(tasks_rt, "unlucky-task"), tasks.MAX_KILLED_RUNS - 1)
    assert tasks.ingest.apply(args=(tasks_rt.envelope,), task_id="unlucky-task", retries=1).get() == "accepted"
    assert _kept(tasks_rt) == (["virtualpbx.parking"], [])
    assert not tasks_rt.redis.exists(tasks._run_key(tasks_rt, "unlucky-task"))


def test_only_reruns_are_counted_and_a_rerun_counts_the_first_start(tasks_rt):
    """A first start keeps no count in Redis (no round trip); a rerun's count includes that first start, so the
    third kill still quarantines on the fourth start."""
    from workers import tasks

    key = tasks._run_key(tasks_rt, "first-task")
    assert tasks.start_run(tasks_rt, "first-task", _request(retries=0)) == 1
    assert not tasks_rt.redis.exists(key)
    reruns = [tasks.start_run(tasks_rt, "first-task", _request(retries=0, redelivered=True)) for _ in range(2)]
    assert reruns + [tasks.start_run(tasks_rt, "first-task", _request(retries=1))] == [2, 3, 4]
    tasks.end_run(tasks_rt, "first-task", 4)
    assert not tasks_rt.redis.exists(key)


def _request(*, retries: int, redelivered: bool = False):
    """The parts of a Celery task request that say whether it ran before."""
    from types import SimpleNamespace

    return SimpleNamespace(retries=retries, delivery_info={"redelivered": redelivered})


@pytest.mark.parametrize(("raised", "reason"), [
    ("soft-limit", "processing exceeded the 30 s time limit"),
    ("bug", "processing failed: KeyError: 'boom'"),
])
def test_the_soft_time_limit_and_unexpected_errors_quarantine_the_hook(tasks_rt, monkeypatch, raised, reason):
    """Neither Celery's soft limit nor a bug in ingest lets the message be acknowledged with the hook lost."""
    from celery.exceptions import SoftTimeLimitExceeded

    from service import engine
    from workers import tasks

    def failing(*_args, **_kwargs):
        raise SoftTimeLimitExceeded() if raised == "soft-limit" else KeyError("boom")

    monkeypatch.setattr(engine, "ingest", failing)
    assert tasks.ingest.apply(args=(tasks_rt.envelope,), task_id=f"{raised}-task").get() == "quarantined"
    assert _kept(tasks_rt) == ([], [reason])


def test_a_database_error_while_quarantining_is_retried_not_dropped(tasks_rt, monkeypatch):
    """A DataError (not an OperationalError, so not autoretried) while quarantining used to lose the hook;
    now the task is retried, and its next run keeps the hook."""
    from sqlalchemy.exc import DataError

    from service import engine
    from workers import tasks

    real_quarantine = engine.quarantine
    calls = []

    def refused_once(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 1:
            raise DataError("INSERT", {}, Exception("invalid byte sequence"))
        return real_quarantine(*args, **kwargs)

    def broken(*_args, **_kwargs):
        raise ValueError("bad")

    monkeypatch.setattr(engine, "ingest", broken)
    monkeypatch.setattr(engine, "quarantine", refused_once)
    monkeypatch.setattr(engine, "retry_delay", lambda *_args, **_kwargs: 0)
    assert tasks.ingest.apply(args=(tasks_rt.envelope,), task_id="refused-task").get() == "quarantined"
    assert calls == ["processing failed: ValueError: bad"] * 2
    assert _kept(tasks_rt) == ([], ["processing failed: ValueError: bad"])


def test_the_celery_app_uses_quorum_queues_and_reject_on_worker_lost_on_rabbitmq(tmp_path):
    """amqp:// broker: quorum queues declared as the publisher declares them, late acks, rejected back when a pool
    process dies; Redis keeps the worker-lost re-send. Neither delays an action in the broker."""
    from service import queue
    from service.config import Settings
    from workers.celery_app import make_celery

    rabbit = make_celery(Settings(var_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0", namespace="cfg",
                                  broker_url="amqp://guest:guest@127.0.0.1:5672//")).conf
    assert (rabbit.task_default_queue_type, rabbit.worker_detect_quorum_queues) == ("quorum", True)
    assert (rabbit.task_acks_late, rabbit.task_reject_on_worker_lost, rabbit.task_retry_on_worker_lost) == (
        True, True, False)
    assert {q.name: q.queue_arguments for q in rabbit.task_queues} == {
        "cfg.ingest": {"x-queue-type": "quorum"}, "cfg.actions": {"x-queue-type": "quorum"}}
    assert rabbit.broker_transport_options == {"confirm_publish": True}
    redis_conf = make_celery(Settings(var_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0", namespace="cfg")).conf
    assert (redis_conf.task_retry_on_worker_lost, redis_conf.task_reject_on_worker_lost) == (True, False)
    assert {q.name: q.queue_arguments for q in redis_conf.task_queues} == {"cfg.ingest": None, "cfg.actions": None}
    assert {task: redis_conf.task_annotations[task]["default_retry_delay"]
            for task in (queue.RUN_ACTION, queue.INGEST, queue.FINALIZE_CALL)} == dict.fromkeys(
        (queue.RUN_ACTION, queue.INGEST, queue.FINALIZE_CALL), 0), "a worker-lost re-send is never delayed"
