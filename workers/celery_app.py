"""The Celery app (named ``pbxrelay``): Redis or RabbitMQ broker, late acks, prefetch 1, no result backend.

Worker entry point: ``celery -A workers.celery_app worker`` (``pbxrelay worker`` runs the same).
Results are never stored: task return values and exceptions could carry event data, and secrets
must never land in a result backend. Actions are never delayed here: a retry's or a rate-limit wait's
due time is kept in the delivery row and the scheduler enqueues the action when it is due.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import after_setup_logger

from service import queue
from service.config import Settings, get_settings
from service.datafiles import restrict_umask
from service.logcaps import cap_sdk_loggers
from service.redisconn import kombu_url


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for ``settings``."""
    queues = queue.queue_names(settings)
    declared = queue.declare_all(settings)
    app = Celery("pbxrelay", broker=kombu_url(settings.effective_broker_url), include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=queue.broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_queues=list(declared.values()),
        task_default_queue=queues["actions"],
        task_routes={task: {"queue": queues[kind]} for task, kind in queue.QUEUE_KIND.items()},
        # A task whose pool process died is re-sent after default_retry_delay (Celery's default, 180 s, is a Task
        # attribute no setting reaches): at once. Ingest and finalize are idempotent; an action's claim keeps a
        # second run off it until the killed attempt's lease has run out, and the scheduler re-sends it then.
        task_annotations={queue.RUN_ACTION: {"time_limit": settings.action_timeout_seconds,
                                             "soft_time_limit": max(1, settings.action_timeout_seconds - 5),
                                             "default_retry_delay": 0},
                          queue.INGEST: {"default_retry_delay": 0, "time_limit": settings.ingest_timeout_seconds,
                                         "soft_time_limit": settings.ingest_timeout_seconds / 2},
                          queue.FINALIZE_CALL: {"default_retry_delay": 0}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if settings.broker_is_amqp:
        app.conf.update(
            # Quorum queues (replicated, confirmed to disk); Celery then turns global QoS off, which they lack.
            task_default_queue_type="quorum",
            worker_detect_quorum_queues=True,
            # A pool child killed mid-task: reject its message back to the queue. RabbitMQ redelivers it (flagged
            # redelivered) at once, as it does every unacknowledged message of a connection that closes.
            task_reject_on_worker_lost=True,
            task_retry_on_worker_lost=False,
        )
    else:
        app.conf.update(
            # Redis: a pool child killed mid-task gets its task re-sent like retry() (Celery 5.7).
            task_retry_on_worker_lost=True,
            task_reject_on_worker_lost=False,
        )
    return app


@after_setup_logger.connect
def _cap_sdk_loggers(**_kwargs) -> None:
    """Re-apply the SDK logger caps after Celery configured logging (a worker at DEBUG logs no URLs)."""
    cap_sdk_loggers()


# `celery -A workers.celery_app` run directly gets the same private files and quiet SDKs as `pbxrelay worker`.
restrict_umask()
cap_sdk_loggers()
app = make_celery(get_settings())
import workers.metrics  # noqa: E402,F401  (connects the task-duration signals)
import workers.watchdog  # noqa: E402,F401  (hard time limits on the threads and solo pools)
