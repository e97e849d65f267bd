"""The Celery app (named ``pbxrelay``): Redis broker, late acks, prefetch 1, no result backend.

Worker entry point: ``celery -A workers.celery_app worker`` (``pbxrelay worker`` runs the same).
Results are never stored: task return values and exceptions could carry event data, and secrets
must never land in a result backend.
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
    app = Celery("pbxrelay", broker=kombu_url(settings.effective_redis_url), include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # A pool child killed mid-task (OOM, kill -9) gets its task re-sent like retry() (Celery 5.7).
        task_retry_on_worker_lost=True,
        task_reject_on_worker_lost=False,
        # Must exceed the longest countdown plus runtime, or Redis re-delivers early (duplicates).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds,
                                  "socket_timeout": 5, "socket_connect_timeout": 5},
        broker_connection_retry_on_startup=True,
        task_queues=[queue.declare(name) for name in queues.values()],
        task_default_queue=queues["actions"],
        task_routes={task: {"queue": queues[kind]} for task, kind in queue.QUEUE_KIND.items()},
        # A task whose pool process died is re-sent after default_retry_delay (Celery's default: 180 s). An
        # action comes back as its claim lease (Settings.claim_lease_seconds) runs out; ingest
        # and finalize are idempotent and come back at once, before the call's settle window closes.
        task_annotations={queue.RUN_ACTION: {"time_limit": settings.action_timeout_seconds,
                                                  "soft_time_limit": max(1, settings.action_timeout_seconds - 5),
                                                  "default_retry_delay": settings.claim_lease_seconds},
                          queue.INGEST: {"default_retry_delay": 0, "time_limit": settings.ingest_timeout_seconds,
                                         "soft_time_limit": settings.ingest_timeout_seconds / 2},
                          queue.FINALIZE_CALL: {"default_retry_delay": 0}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "requeue-stale-deliveries": {"task": queue.REQUEUE_STALE,
                                         "schedule": min(60.0, settings.stale_after_seconds / 2)},
            "reconcile-cdrs": {"task": queue.RECONCILE, "schedule": 600.0},
            "reenable-disabled-hooks": {"task": queue.REENABLE_HOOKS, "schedule": 300.0},
            "purge-past-retention": {"task": queue.PURGE, "schedule": 3600.0},
        },
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
