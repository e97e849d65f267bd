"""The Celery app (named ``pbxrelay``): Redis broker, late acks, prefetch 1, no result backend.

Worker entry point: ``celery -A workers.celery_app worker`` (``pbxrelay worker`` runs the same).
Results are never stored: task return values and exceptions could carry event data, and secrets
must never land in a result backend.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from service.config import Settings, get_settings
from service.redisconn import kombu_url


def queue_names(settings: Settings) -> dict[str, str]:
    """The queue of each kind of work, under the settings' namespace."""
    ns = settings.namespace
    return {"ingest": f"{ns}.ingest", "actions": f"{ns}.actions"}


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for ``settings``."""
    queues = queue_names(settings)
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
        # One direct exchange per queue: two queues bound to the same exchange and key would each get a copy.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in queues.values()],
        task_default_queue=queues["actions"],
        task_routes={"pbxrelay.ingest": {"queue": queues["ingest"]},
                     "pbxrelay.finalize_call": {"queue": queues["ingest"]},
                     "pbxrelay.requeue_stale": {"queue": queues["ingest"]},
                     "pbxrelay.reconcile": {"queue": queues["ingest"]},
                     "pbxrelay.reenable_hooks": {"queue": queues["ingest"]}},
        # A task whose pool process died is re-sent after default_retry_delay (Celery's default: 180 s). An
        # action comes back as its claim lease (Settings.claim_lease_seconds) runs out; ingest
        # and finalize are idempotent and come back at once, before the call's settle window closes.
        task_annotations={"pbxrelay.run_action": {"time_limit": settings.action_timeout_seconds,
                                                  "soft_time_limit": max(1, settings.action_timeout_seconds - 5),
                                                  "default_retry_delay": settings.claim_lease_seconds},
                          "pbxrelay.ingest": {"default_retry_delay": 0},
                          "pbxrelay.finalize_call": {"default_retry_delay": 0}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "requeue-stale-deliveries": {"task": "pbxrelay.requeue_stale",
                                         "schedule": min(60.0, settings.stale_after_seconds / 2)},
            "reconcile-cdrs": {"task": "pbxrelay.reconcile", "schedule": 600.0},
            "reenable-disabled-hooks": {"task": "pbxrelay.reenable_hooks", "schedule": 300.0},
        },
    )
    return app


app = make_celery(get_settings())


@worker_process_init.connect
def _reset_connections_after_fork(**_kwargs):
    """Pool children must not share the parent's DB and Redis sockets."""
    from workers import tasks

    tasks.reset_runtime()
