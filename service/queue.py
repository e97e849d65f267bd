"""Send work to the workers by task name: Celery's task message (protocol 2), in kombu's envelope.

The web app, the CLI and the workers' follow-ups enqueue through this module and never import Celery
or ``workers`` here: the task names and queues below are the contract with ``workers.celery_app``, which
routes the same names to the same queues and declares them the same way (one direct exchange per queue;
on RabbitMQ a quorum queue, which RabbitMQ replicates and confirms to disk before it accepts a message).

On RabbitMQ a message is published with kombu and publisher confirms. On the Redis broker it is the very
JSON document kombu's Redis transport would ``LPUSH`` (a queue's direct exchange with the queue's own name
as routing key delivers to the list of that name), built here and pushed with one ``LPUSH`` per batch:
kombu's publish path (channel, exchange lookup, bindings, encoding) cost about five times the push itself
in the receiver's profile, and a normal Celery worker consumes the result unchanged.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import uuid
from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.utils.json import dumps

from service.config import Settings
from service.redisconn import kombu_url, make_redis

log = logging.getLogger(__name__)

INGEST = "pbxrelay.ingest"
FINALIZE_CALL = "pbxrelay.finalize_call"
RUN_ACTION = "pbxrelay.run_action"
RECONCILE = "pbxrelay.reconcile"
REENABLE_HOOKS = "pbxrelay.reenable_hooks"
PURGE = "pbxrelay.purge"
REPLAY_JOB = "pbxrelay.replay_job"
# Which kind of queue each task goes to: hooks and housekeeping share one, actions have their own.
QUEUE_KIND = {INGEST: "ingest", FINALIZE_CALL: "ingest", RECONCILE: "ingest", REENABLE_HOOKS: "ingest",
              PURGE: "ingest", REPLAY_JOB: "ingest", RUN_ACTION: "actions"}
# What the scheduler sends on its own clock, in seconds (reconcile CDRs; re-enable hooks Kazoo disabled;
# purge what is past each account's retention).
PERIODIC = {RECONCILE: 600.0, REENABLE_HOOKS: 300.0, PURGE: 3600.0}


# The status a worker exits with when its watchdog ends it (workers/watchdog.py; EX_SOFTWARE): supervisors,
# `pbxrelay run` among them, start a new worker.
WATCHDOG_EXIT_STATUS = 70


def queue_names(settings: Settings) -> dict[str, str]:
    """The queue of each kind of work, under the settings' namespace."""
    ns = settings.namespace
    return {"ingest": f"{ns}.ingest", "actions": f"{ns}.actions"}


def declare(name: str, *, quorum: bool = False) -> Queue:
    """A queue bound to its own direct exchange (two queues on one exchange and key would each get a copy).

    ``quorum`` (RabbitMQ): publisher and worker must declare it alike, or RabbitMQ refuses the second one.
    """
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)


def declare_all(settings: Settings) -> dict[str, Queue]:
    """Every queue by kind, declared as this broker needs (quorum queues on RabbitMQ)."""
    return {kind: declare(name, quorum=settings.broker_is_amqp) for kind, name in queue_names(settings).items()}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for this broker, shared by the publisher here and the Celery app."""
    if settings.broker_is_amqp:
        # Publisher confirms: a publish returns only once RabbitMQ has the message (a quorum queue: on a majority).
        return {"confirm_publish": True}
    # Redis: a message taken but never acknowledged comes back after the visibility timeout.
    return {"visibility_timeout": settings.visibility_timeout_seconds, "socket_timeout": 5, "socket_connect_timeout": 5}


def task_message(task: str, args: list[Any], *, argsrepr: str | None = None) -> tuple[list[Any], dict[str, Any], str]:
    """(body, headers, task id) of a Celery protocol-2 task message (never delayed: due times live in the store)."""
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
               "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
               "root_id": task_id, "parent_id": None,
               # Never a repr of the arguments: they carry caller data, and Celery would log them.
               "argsrepr": argsrepr or f"({len(args)} args)", "kwargsrepr": "{}",
               "origin": f"{os.getpid()}@{socket.gethostname()}", "ignore_result": True}
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return body, headers, task_id


# URL schemes whose broker is kombu's Redis transport (the URL spelled for redis-py or for kombu).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")


def redis_message(task: str, args: list[Any], queue: str, *, argsrepr: str | None = None) -> tuple[str, str]:
    """(JSON document, task id): the message kombu's Redis transport stores for this task published to ``queue``
    (its direct exchange, routing key ``queue``, priority 0): the JSON body base64-encoded, as kombu does."""
    body, headers, task_id = task_message(task, args, argsrepr=argsrepr)
    message = {"body": base64.b64encode(dumps(body).encode()).decode(), "content-encoding": "utf-8",
               "content-type": "application/json", "headers": headers,
               "properties": {"correlation_id": task_id, "delivery_mode": 2,
                              "delivery_info": {"exchange": queue, "routing_key": queue}, "priority": 0,
                              "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
    return dumps(message), task_id


# Push only while a key still holds the value the caller read it under: the check and the push are one step.
_PUSH_IF_UNCHANGED = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
    redis.call('LPUSH', KEYS[2], ARGV[2])
    return 1
end
return 0
"""


class TaskQueue:
    """Publishes task messages: a raw LPUSH on the Redis broker; on RabbitMQ one kombu producer per thread,
    reconnecting after a failure."""

    def __init__(self, settings: Settings, *, fail_fast: bool = False) -> None:
        self._queues = declare_all(settings)
        self._redis = None
        # Whether send_if can check a key of the shared-state Redis in the same step (the broker is that Redis).
        self.checks_state = False
        if settings.effective_broker_url.startswith(REDIS_SCHEMES):
            # The receiver spools at once rather than wait for the broker.
            self._redis = make_redis(settings.effective_broker_url, timeout=1 if fail_fast else 5,
                                     retries=0 if fail_fast else 1)
            self._push_if = self._redis.register_script(_PUSH_IF_UNCHANGED)
            self.checks_state = settings.effective_broker_url == settings.effective_redis_url
            return
        options: dict[str, Any] = broker_transport_options(settings)
        self._url = kombu_url(settings.effective_broker_url)
        self._options = options
        self._connect_timeout = 1 if fail_fast else 5
        self._local = threading.local()

    def _producer(self):
        producer = getattr(self._local, "producer", None)
        if producer is None:
            connection = Connection(self._url, transport_options=self._options,
                                    connect_timeout=self._connect_timeout)
            producer = self._local.producer = connection.Producer(serializer="json")
        return producer

    def send(self, task: str, args: list[Any], *, argsrepr: str | None = None) -> str:
        """Publish one task by name; raises when the broker is unreachable. Returns the task id."""
        return self.send_many(task, [(args, argsrepr)])[0]

    def send_if(self, key: str, expected: str, task: str, args: list[Any], *, argsrepr: str | None = None) -> bool:
        """Publish one task only if the Redis ``key`` still holds ``expected`` ("" = unset), checked and pushed in one
        round trip (needs ``checks_state``); False when it no longer does. Raises when Redis is unreachable."""
        assert self.checks_state, "the broker is not the shared-state Redis"
        queue = self._queues[QUEUE_KIND[task]]
        document, _ = redis_message(task, args, queue.name, argsrepr=argsrepr)
        return bool(self._push_if(keys=[key, queue.name], args=[expected, document]))

    def send_many(self, task: str, calls: list[tuple[list[Any], str | None]]) -> list[str]:
        """Publish one task per (args, argsrepr), in order; raises when the broker is unreachable. Returns the ids.

        On Redis one LPUSH carries them all (the worker pops from the other end, so the first comes out first)."""
        if not calls:
            return []
        queue = self._queues[QUEUE_KIND[task]]
        if self._redis is not None:
            messages = [redis_message(task, args, queue.name, argsrepr=argsrepr) for args, argsrepr in calls]
            self._redis.lpush(queue.name, *(document for document, _ in messages))
            return [task_id for _, task_id in messages]
        return [self._publish(task, queue, args, argsrepr) for args, argsrepr in calls]

    def _publish(self, task: str, queue: Queue, args: list[Any], argsrepr: str | None) -> str:
        """Publish one task with kombu (waiting for RabbitMQ's confirm)."""
        body, headers, task_id = task_message(task, args, argsrepr=argsrepr)
        producer = self._producer()
        try:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue],
                             headers=headers, correlation_id=task_id, content_encoding="utf-8",
                             serializer="json", delivery_mode=2, retry=False)
        except Exception:
            self._local.producer = None  # reconnect on the next call
            try:
                producer.connection.release()
            except Exception:  # already broken: releasing is best effort
                log.debug("could not release a broken connection")
            raise
        return task_id

    def send_actions(self, delivery_ids: list[int]) -> None:
        """Enqueue one action task per delivery id."""
        self.send_many(RUN_ACTION, [([delivery_id], f"({delivery_id},)") for delivery_id in delivery_ids])
