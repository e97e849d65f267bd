"""Celery tasks: thin wrappers that call one pipeline function and decide how to retry."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import redis
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from integrations.base import PermanentError, RetryableError
from service.config import get_settings
from service.runtime import Runtime
from workers import pipeline
from workers.celery_app import app

log = logging.getLogger(__name__)
_runtime: Runtime | None = None

# Infrastructure hiccups (Redis or the database briefly away) are retried, never dropped.
INFRA_ERRORS = (redis.RedisError, OperationalError, BrokerError)


def runtime() -> Runtime:
    """This process's Runtime, built on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def reset_runtime() -> None:
    """Forget connections inherited across fork."""
    global _runtime
    _runtime = None
    from service.store import session_factory

    session_factory.cache_clear()


def is_rerun(request) -> bool:
    """Whether this task ran before: retried (also after its worker died) or redelivered by the broker."""
    return bool(request.retries) or bool((request.delivery_info or {}).get("redelivered"))


@app.task(name="pbxrelay.ingest", bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True, soft_time_limit=30, time_limit=60)
def ingest(self, envelope: dict) -> str:
    """Ingest one received delivery and enqueue what it planned."""
    rt = runtime()
    try:
        outcome = pipeline.ingest(rt, envelope, schedule_finalize=lambda account_id, call_key:
                                  finalize_call.apply_async((account_id, call_key),
                                                            countdown=rt.settings.call_settle_seconds),
                                  rerun=is_rerun(self.request))
    except SoftTimeLimitExceeded:
        # A pathological rule template can outrun any in-process guard; keep the event, don't loop on it.
        pipeline.quarantine(rt, envelope, "processing exceeded the 30 s time limit (check the rules' templates)")
        return "quarantined"
    for delivery_id in outcome.deliveries:
        run_action.delay(delivery_id)
    return outcome.status


@app.task(name="pbxrelay.finalize_call", bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True)
def finalize_call(self, account_id: str, call_key: str) -> int:
    """Emit a finished call's call.ended / call.missed and enqueue their actions."""
    planned = pipeline.finalize_call(runtime(), account_id, call_key, rerun=is_rerun(self.request))
    for delivery_id in planned:
        run_action.delay(delivery_id)
    return len(planned)


# PermanentError is an expected outcome (recorded in the delivery log): `throws` logs it without a traceback.
@app.task(name="pbxrelay.run_action", bind=True, max_retries=None, throws=(PermanentError,))
def run_action(self, delivery_id: int) -> str:
    """Run one delivery; retry RetryableError after the computed delay; PermanentError is final."""
    rt = runtime()
    try:
        return pipeline.execute_delivery(rt, delivery_id)
    except RetryableError as exc:
        delay = pipeline.retry_delay(rt, self.request.retries + 1, exc.retry_after, code=exc.code)
        raise self.retry(countdown=delay, exc=exc, max_retries=None)
    except INFRA_ERRORS as exc:
        raise self.retry(countdown=pipeline.retry_delay(rt, self.request.retries + 1, None),
                         exc=RetryableError(f"infrastructure: {type(exc).__name__}"), max_retries=None)
    except PermanentError as exc:
        log.warning("delivery %s failed permanently: %s", delivery_id, exc)
        raise


pipeline.set_enqueue(lambda delivery_id: run_action.delay(delivery_id))


@app.task(name="pbxrelay.requeue_stale")
def requeue_stale() -> int:
    """Re-enqueue deliveries whose task message was lost (never attempted, or overdue retrying or running)."""
    rt = runtime()
    ids = pipeline.stale_deliveries(rt, timedelta(seconds=rt.settings.stale_after_seconds))
    for delivery_id in ids:
        run_action.delay(delivery_id)
    return len(ids)


@app.task(name="pbxrelay.reconcile")
def reconcile_cdrs() -> int:
    """For every account with a VirtualPBX connection, emit calls whose hooks never arrived."""
    rt = runtime()
    now = datetime.now(timezone.utc)
    total = 0
    for account_id in pipeline.pbx_accounts(rt):
        try:
            ids = pipeline.reconcile_account(rt, account_id, now)
        except RetryableError as exc:  # one account's API trouble must not stop the others
            log.warning("reconcile %s postponed: %s", account_id, exc)
            continue
        for delivery_id in ids:
            run_action.delay(delivery_id)
        total += len(ids)
    return total


@app.task(name="pbxrelay.reenable_hooks")
def reenable_hooks() -> int:
    """Re-enable pbxrelay's webhooks that Kazoo disabled, once our public receiver answers again."""
    import requests

    rt = runtime()
    try:
        healthy = requests.get(f"{rt.settings.public_url}/readyz", timeout=5).status_code == 200
    except requests.RequestException:
        healthy = False
    count = 0
    for account_id in pipeline.pbx_accounts(rt):
        try:
            count += pipeline.reenable_account_hooks(rt, account_id, receiver_healthy=healthy)
        except RetryableError as exc:
            log.warning("re-enabling hooks of %s postponed: %s", account_id, exc)
    return count
