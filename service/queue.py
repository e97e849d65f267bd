"""Send work to the workers by task name: Celery's task message (protocol 2) published with kombu.

The web app and the CLI enqueue through this module alone and never import Celery or ``workers``:
the task names and queues below are the contract with ``workers.celery_app``, which routes the
same names to the same queues and declares them the same way (one direct exchange per queue).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from kombu import Connection, Exchange, Queue

from service.config import Settings
from service.redisconn import kombu_url

log = logging.getLogger(__name__)

INGEST = "pbxrelay.ingest"
FINALIZE_CALL = "pbxrelay.finalize_call"
RUN_ACTION = "pbxrelay.run_action"
REQUEUE_STALE = "pbxrelay.requeue_stale"
RECONCILE = "pbxrelay.reconcile"
REENABLE_HOOKS = "pbxrelay.reenable_hooks"
PURGE = "pbxrelay.purge"
# Which kind of queue each task goes to: hooks and housekeeping share one, actions have their own.
QUEUE_KIND = {INGEST: "ingest", FINALIZE_CALL: "ingest", REQUEUE_STALE: "ingest", RECONCILE: "ingest",
              REENABLE_HOOKS: "ingest", PURGE: "ingest", RUN_ACTION: "actions"}


def queue_names(settings: Settings) -> dict[str, str]:
    """The queue of each kind of work, under the settings' namespace."""
    ns = settings.namespace
    return {"ingest": f"{ns}.ingest", "actions": f"{ns}.actions"}


def declare(name: str) -> Queue:
    """A queue bound to its own direct exchange (two queues on one exchange and key would each get a copy)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def task_message(task: str, args: list[Any], *, countdown: float | None = None,
                 argsrepr: str | None = None) -> tuple[list[Any], dict[str, Any], str]:
    """(body, headers, task id) of a Celery protocol-2 task message."""
    task_id = str(uuid.uuid4())
    eta = (datetime.now(timezone.utc) + timedelta(seconds=countdown)).isoformat() if countdown else None
    headers = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": eta, "expires": None,
               "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
               "root_id": task_id, "parent_id": None,
               # Never a repr of the arguments: they carry caller data, and Celery would log them.
               "argsrepr": argsrepr or f"({len(args)} args)", "kwargsrepr": "{}",
               "origin": f"{os.getpid()}@{socket.gethostname()}", "ignore_result": True}
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return body, headers, task_id


class TaskQueue:
    """Publishes task messages; one producer per thread, reconnecting after a failure."""

    def __init__(self, settings: Settings, *, fail_fast: bool = False) -> None:
        options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5,
                                   "visibility_timeout": settings.visibility_timeout_seconds}
        if fail_fast:  # the receiver spools at once rather than wait for an absent Redis
            options.update(socket_timeout=1, socket_connect_timeout=1, max_retries=0)
        self._url = kombu_url(settings.effective_redis_url)
        self._options = options
        self._connect_timeout = 1 if fail_fast else 5
        self._queues = {kind: declare(name) for kind, name in queue_names(settings).items()}
        self._local = threading.local()

    def _producer(self):
        producer = getattr(self._local, "producer", None)
        if producer is None:
            connection = Connection(self._url, transport_options=self._options,
                                    connect_timeout=self._connect_timeout)
            producer = self._local.producer = connection.Producer(serializer="json")
        return producer

    def send(self, task: str, args: list[Any], *, countdown: float | None = None,
             argsrepr: str | None = None) -> str:
        """Publish one task by name; raises when the broker is unreachable. Returns the task id."""
        queue = self._queues[QUEUE_KIND[task]]
        body, headers, task_id = task_message(task, args, countdown=countdown, argsrepr=argsrepr)
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
        for delivery_id in delivery_ids:
            self.send(RUN_ACTION, [delivery_id], argsrepr=f"({delivery_id},)")
