"""Celery tasks: thin wrappers that call one engine function, enqueue what it returns, and decide how to retry."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
import requests
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from integrations.base import PermanentError, RetryableError, scrub
from service import engine, queue, tenant_data
from service.config import get_settings
from service.runtime import Runtime
from service.store.models import session_factory
from workers.celery_app import app

log = logging.getLogger(__name__)
_runtime: Runtime | None = None
_tasks: queue.TaskQueue | None = None

# Infrastructure hiccups (Redis or the database briefly away) are retried, never dropped.
INFRA_ERRORS = (redis.RedisError, OperationalError, BrokerError)


def runtime() -> Runtime:
    """This process's Runtime, built on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def task_queue() -> queue.TaskQueue:
    """This process's publisher of follow-up tasks, built on first use."""
    global _tasks
    if _tasks is None:
        _tasks = queue.TaskQueue(runtime().settings)
    return _tasks


@worker_process_init.connect
def reset_runtime(**_kwargs) -> None:
    """Forget connections inherited across fork: pool children must not share the parent's sockets."""
    global _runtime, _tasks
    _runtime = _tasks = None
    session_factory.cache_clear()


def is_rerun(request) -> bool:
    """Whether this task ran before: retried (also after its worker died) or redelivered by the broker."""
    return bool(request.retries) or bool((request.delivery_info or {}).get("redelivered"))


def enqueue_actions(delivery_ids: list[int]) -> None:
    """One run_action task per delivery id, sent together (one LPUSH on Redis; no Celery publish machinery)."""
    task_queue().send_actions(delivery_ids)


# Runs of one hook that may end without a word (hard time limit, OOM, kill -9) before it is quarantined.
MAX_KILLED_RUNS = 3
RUN_COUNT_TTL_SECONDS = 7 * 24 * 3600


def _run_key(rt: Runtime, task_id: str) -> str:
    return f"{rt.settings.namespace}:ingest-runs:{task_id}"


def start_run(rt: Runtime, task_id: str, request) -> int:
    """Which start of this ingest task this is, 1 for the first (counted by task id, which retries and
    worker-lost re-sends keep).

    A killed run always comes back flagged (a retry, or a redelivery: kombu flags every message it restores),
    so only those are counted, in Redis: the first start of every hook costs no round trip. A rerun's count
    includes that first start.
    """
    if not is_rerun(request):
        return 1
    key = _run_key(rt, task_id)
    with rt.redis.pipeline() as pipe:
        _, runs, _ = pipe.set(key, 1, nx=True).incr(key).expire(key, RUN_COUNT_TTL_SECONDS).execute()
    return int(runs)


def end_run(rt: Runtime, task_id: str, runs: int) -> None:
    """This run ended on its own (done, retried or quarantined): it was not killed, so it does not count."""
    if runs > 1:  # (a first run kept no count)
        rt.redis.delete(_run_key(rt, task_id))


# The hard time limit kills the pool process; Celery would then acknowledge the message (its default for
# timeouts) and the hook would be lost. acks_on_timeout=False requeues it; the run count ends the loop.
@app.task(name=queue.INGEST, bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True, acks_on_timeout=False)
def ingest(self, envelope: dict) -> str:
    """Ingest one received delivery, schedule its call's finalising and enqueue what it planned.

    Every way out keeps the hook: stored, quarantined with the reason, or retried (infrastructure).
    """
    rt = runtime()
    task_id = self.request.id or "eager"
    runs = start_run(rt, task_id, self.request)
    if runs > MAX_KILLED_RUNS:
        reason = f"processing was killed {runs - 1} times (time limit or crash)"
        return _quarantine_or_retry(self, rt, task_id, runs, envelope, reason)
    try:
        outcome = engine.ingest(rt, envelope, rerun=runs > 1)
    except SoftTimeLimitExceeded:
        limit = rt.settings.ingest_timeout_seconds / 2
        return _quarantine_or_retry(self, rt, task_id, runs, envelope,
                                    f"processing exceeded the {limit:g} s time limit")
    except INFRA_ERRORS:
        end_run(rt, task_id, runs)
        raise  # autoretry_for: retried with backoff
    except Exception as exc:  # a bug or a database refusal: keep the hook with the reason, never drop it
        log.exception("ingest of a delivery for %s failed", envelope.get("account_id"))
        return _quarantine_or_retry(self, rt, task_id, runs, envelope,
                                    f"processing failed: {type(exc).__name__}: {scrub(str(exc))}"[:2000])
    if outcome.finalize_call:
        # Due in call_settle_seconds, kept in Redis for the scheduler (not a countdown in this worker's memory).
        engine.schedule_finalize(rt, envelope["account_id"], outcome.finalize_call)
    enqueue_actions(outcome.deliveries)
    end_run(rt, task_id, runs)
    return outcome.status


def _quarantine_or_retry(task, rt: Runtime, task_id: str, runs: int, envelope: dict, reason: str) -> str:
    """Quarantine the envelope with ``reason``; a database or Redis error while doing so is retried, not dropped."""
    try:
        engine.quarantine(rt, envelope, reason)
    except (SQLAlchemyError, redis.RedisError, BrokerError) as exc:
        end_run(rt, task_id, runs)
        raise task.retry(countdown=engine.retry_delay(rt, task.request.retries + 1, None),
                         exc=RetryableError(f"infrastructure while quarantining: {type(exc).__name__}"),
                         max_retries=None)
    log.warning("quarantined a delivery for %s: %s", envelope.get("account_id"), reason)
    end_run(rt, task_id, runs)
    return "quarantined"


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
        return engine.execute_delivery(rt, delivery_id, time_limit_errors=(SoftTimeLimitExceeded,))
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


@app.task(name=queue.PURGE)
def purge() -> int:
    """Delete every account's events, finished deliveries and quarantined hooks past its retention."""
    totals = tenant_data.purge_expired(runtime())
    if any(totals.values()):
        log.info("purged past retention: %s", ", ".join(f"{n} {table}" for table, n in sorted(totals.items())))
    return sum(totals.values())


@app.task(name=queue.REPLAY_JOB, bind=True, max_retries=None, autoretry_for=INFRA_ERRORS,
          retry_backoff=1, retry_backoff_max=60, retry_jitter=True)
def replay_job(self, job_id: int) -> int:
    """Run a bulk replay job from the console, batch by batch (each batch's progress commits with it)."""
    rt = runtime()
    replayed = 0
    try:
        while True:
            batch = engine.replay_job_batch(rt, job_id)
            enqueue_actions(batch.delivery_ids)
            replayed += len(batch.delivery_ids)
            if batch.finished:
                return replayed
    except INFRA_ERRORS:
        raise  # autoretry_for: the next run continues after the last committed batch
    except Exception as exc:  # a bug: the job says so instead of staying "running" for ever
        log.exception("replay job %s failed", job_id)
        engine.fail_replay_job(rt, job_id, f"{type(exc).__name__}: {scrub(str(exc))}")
        raise
