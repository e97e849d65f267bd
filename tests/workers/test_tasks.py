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
