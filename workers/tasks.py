"""Celery tasks: thin wrappers that call one engine function, enqueue what it returns, and decide how to retry."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
import requests
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from integrations.base import PermanentError, RetryableError
from service import engine, queue
from service.config import get_settings
from service.runtime import Runtime
from service.store.models import session_factory
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


@worker_process_init.connect
def reset_runtime(**_kwargs) -> None:
    """Forget connections inherited across fork: pool children must not share the parent's sockets."""
    global _runtime
    _runtime = None
    session_factory.cache_clear()


def is_rerun(request) -> bool:
    """Whether this task ran before: retried (also after its worker died) or redelivered by the broker."""
    return bool(request.retries) or bool((request.delivery_info or {}).get("redelivered"))


def enqueue_actions(delivery_ids: list[int]) -> None:
    """One run_action task per delivery id."""
    for delivery_id in delivery_ids:
        run_action.delay(delivery_id)


@app.task(name=queue.INGEST, bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True, soft_time_limit=30, time_limit=60)
def ingest(self, envelope: dict) -> str:
    """Ingest one received delivery, schedule its call's finalising and enqueue what it planned."""
    rt = runtime()
    try:
        outcome = engine.ingest(rt, envelope, rerun=is_rerun(self.request))
    except SoftTimeLimitExceeded:
        # A pathological rule template can outrun any in-process guard; keep the event, don't loop on it.
        engine.quarantine(rt, envelope, "processing exceeded the 30 s time limit (check the rules' templates)")
        return "quarantined"
    if outcome.finalize_call:
        # Due in call_settle_seconds, kept in Redis for the scheduler (not a countdown in this worker's memory).
        engine.schedule_finalize(rt, envelope["account_id"], outcome.finalize_call)
    enqueue_actions(outcome.deliveries)
    return outcome.status


@app.task(name=queue.FINALIZE_CALL, bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True)
def finalize_call(self, account_id: str, call_key: str) -> int:
    """Emit a finished call's call.ended / call.missed, enqueue their actions, and take the call off the schedule."""
    rt = runtime()
    planned = engine.finalize_call(rt, account_id, call_key, rerun=is_rerun(self.request))
    enqueue_actions(planned)
    engine.finalized(rt, account_id, call_key)
    return len(planned)


# PermanentError is an expected outcome (recorded in the delivery log): `throws` logs it without a traceback.
@app.task(name=queue.RUN_ACTION, bind=True, max_retries=None, throws=(PermanentError,))
def run_action(self, delivery_id: int) -> str:
    """Run one delivery. A retry or rate-limit wait is recorded on the delivery (status retrying, next_attempt_at)
    and the scheduler enqueues it when due; nothing is held back here."""
    rt = runtime()
    try:
        return engine.execute_delivery(rt, delivery_id)
    except RetryableError as exc:
        log.info("delivery %s will be retried: %s", delivery_id, exc.code or "retryable")
        return "retrying"
    except INFRA_ERRORS as exc:
        # The database or Redis is away: the delivery is still pending/retrying under the scheduler's lease, or
        # running under this attempt's claim, and the scheduler sends it again when that runs out.
        log.warning("delivery %s left to the scheduler: %s", delivery_id, type(exc).__name__)
        return "deferred"
    except PermanentError as exc:
        enqueue_actions(engine.follow_ups(exc))
        log.warning("delivery %s failed permanently: %s", delivery_id, exc)
        raise


@app.task(name=queue.RECONCILE)
def reconcile_cdrs() -> int:
    """For every account with a VirtualPBX connection, emit calls whose hooks never arrived."""
    rt = runtime()
    now = datetime.now(timezone.utc)
    total = 0
    for account_id in engine.pbx_accounts(rt):
        try:
            ids = engine.reconcile_account(rt, account_id, now)
        except RetryableError as exc:  # one account's API trouble must not stop the others
            log.warning("reconcile %s postponed: %s", account_id, exc)
            continue
        enqueue_actions(ids)
        total += len(ids)
    return total


@app.task(name=queue.REENABLE_HOOKS)
def reenable_hooks() -> int:
    """Re-enable pbxrelay's webhooks that Kazoo disabled, once our public receiver answers again."""
    rt = runtime()
    try:
        healthy = requests.get(f"{rt.settings.public_url}/readyz", timeout=5).status_code == 200
    except requests.RequestException:
        healthy = False
    count = 0
    for account_id in engine.pbx_accounts(rt):
        try:
            count += engine.reenable_account_hooks(rt, account_id, receiver_healthy=healthy)
        except RetryableError as exc:
            log.warning("re-enabling hooks of %s postponed: %s", account_id, exc)
    return count
