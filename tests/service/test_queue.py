"""Tasks sent by name reach the broker the settings name: Redis by default, RabbitMQ quorum queues in production."""

from __future__ import annotations

import amqp
import pytest
from kombu import Connection

from service import queue
from service.config import Settings


def test_on_redis_a_task_is_a_message_in_the_namespaced_list(tmp_path, redis_url, namespace, redis_client):
    """No broker URL: the task message goes to the Redis list of its queue, never delayed."""
    settings = Settings(var_dir=tmp_path, redis_url=redis_url, namespace=namespace)
    assert not settings.broker_is_amqp
    queue.TaskQueue(settings).send(queue.RUN_ACTION, [7], argsrepr="(7,)")
    (raw,) = redis_client.lrange(f"{namespace}.actions", 0, -1)
    assert '"task": "pbxrelay.run_action"' in raw and '"eta": null' in raw


def test_on_rabbitmq_a_task_lands_in_a_quorum_queue(tmp_path, redis_url, rabbitmq_url, namespace):
    """With an amqp:// broker the queues are quorum queues (declared so by the publisher, as by the worker)."""
    settings = Settings(var_dir=tmp_path, redis_url=redis_url, broker_url=rabbitmq_url, namespace=namespace)
    assert settings.broker_is_amqp
    declared = queue.declare_all(settings)
    try:
        queue.TaskQueue(settings).send(queue.RUN_ACTION, [7], argsrepr="(7,)")
        with Connection(rabbitmq_url) as conn:
            # RabbitMQ refuses to re-declare a queue with another type: proof that it is a quorum queue.
            with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
                conn.default_channel.queue_declare(f"{namespace}.actions", durable=True, auto_delete=False,
                                                   arguments={"x-queue-type": "classic"})
        with Connection(rabbitmq_url) as conn:
            with conn.SimpleQueue(declared["actions"]) as simple:
                message = simple.get(timeout=5)
                message.ack()
        assert message.headers["task"] == queue.RUN_ACTION and message.payload[0] == [7]
        assert message.properties["delivery_mode"] == 2, "persistent"
    finally:
        with Connection(rabbitmq_url) as conn:
            for q in declared.values():
                q.bind(conn.default_channel).delete()


def _without_ids(document: str) -> dict:
    """A stored kombu message with the per-message ids (task id, delivery tag) and the queue names taken out."""
    import json

    message = json.loads(document)
    for key in ("id", "root_id"):
        message["headers"].pop(key)
    for key in ("correlation_id", "delivery_tag", "delivery_info"):
        message["properties"].pop(key)
    return message


def test_on_redis_the_raw_push_stores_what_kombus_publish_stores(tmp_path, redis_url, namespace, redis_client):
    """The LPUSH'd document is the one kombu's Redis transport writes for the same task, field for field."""
    settings = Settings(var_dir=tmp_path, redis_url=redis_url, namespace=namespace)
    envelope = {"body": "caf\u00e9 \u2603 \"quoted\"", "n": 1, "nested": {"list": [1, None, True]}}
    queue.TaskQueue(settings).send(queue.INGEST, [envelope], argsrepr="(envelope)")
    ours = queue.declare_all(settings)["ingest"]
    theirs = queue.declare(f"{namespace}.kombu")
    body, headers, task_id = queue.task_message(queue.INGEST, [envelope], argsrepr="(envelope)")
    with Connection(redis_url) as conn:
        conn.Producer(serializer="json").publish(body, exchange=theirs.exchange, routing_key=theirs.routing_key,
                                                 declare=[theirs], headers=headers, correlation_id=task_id,
                                                 content_encoding="utf-8", serializer="json", delivery_mode=2)
    (raw,) = redis_client.lrange(ours.name, 0, -1)
    (kombu_raw,) = redis_client.lrange(theirs.name, 0, -1)
    assert _without_ids(raw) == _without_ids(kombu_raw)
    with Connection(redis_url) as conn:  # and kombu's consumer (Celery's) reads it back as the same task
        with conn.SimpleQueue(ours) as simple:
            message = simple.get(timeout=5)
            message.ack()
    assert message.headers["task"] == queue.INGEST and message.payload[0] == [envelope]
    assert message.properties["correlation_id"] == message.headers["id"]


def test_on_redis_a_batch_is_one_push_and_comes_out_in_order(tmp_path, redis_url, namespace):
    """send_actions pushes all its tasks at once; the consumer gets them in the order given."""
    settings = Settings(var_dir=tmp_path, redis_url=redis_url, namespace=namespace)
    queue.TaskQueue(settings).send_actions([3, 1, 2])
    got = []
    with Connection(redis_url) as conn:
        with conn.SimpleQueue(queue.declare_all(settings)["actions"]) as simple:
            for _ in range(3):
                message = simple.get(timeout=5)
                message.ack()
                got.append(message.payload[0][0])
    assert got == [3, 1, 2]
