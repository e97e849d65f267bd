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
