"""The scheduler: every second, enqueue what is due (actions, calls to finalise) and the periodic jobs.

Several schedulers may run (one per host, say); only the holder of a Redis lock acts. The lock is a key
set with NX and a lease, renewed every tick and deleted on exit, so a scheduler that dies is replaced
by another within the lease. Due times live in the database and Redis, so nothing is lost with it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from service import engine, queue
from service.runtime import Runtime

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
# How long a scheduler that stopped answering keeps the lock: a few ticks, so one slow pass does not lose it.
LOCK_LEASE_SECONDS = 5.0

# KEYS[1] lock; ARGV: owner token, lease (ms). Extend the lease only if we still own the lock.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
# KEYS[1] lock; ARGV: owner token. Delete the lock only if we own it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SchedulerLock:
    """A Redis lock with a lease: one scheduler acts at a time, and a dead one's lock runs out."""

    def __init__(self, client: redis.Redis, namespace: str, *, lease_seconds: float = LOCK_LEASE_SECONDS) -> None:
        self._redis = client
        self.key = f"{namespace}:scheduler:lock"
        self.token = uuid.uuid4().hex
        self._lease_ms = int(lease_seconds * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take the lock, or renew it if ours; False while another scheduler holds it."""
        if self._renew(keys=[self.key], args=[self.token, self._lease_ms]):
            return True
        return bool(self._redis.set(self.key, self.token, nx=True, px=self._lease_ms))

    def release(self) -> None:
        """Give the lock up (only if ours), so a standby takes over at its next tick."""
        self._release(keys=[self.key], args=[self.token])


class Scheduler:
    """One scheduler process's loop (``pbxrelay scheduler``)."""

    def __init__(self, rt: Runtime, tasks: queue.TaskQueue, *, tick: float = TICK_SECONDS,
                 lock_lease: float = LOCK_LEASE_SECONDS) -> None:
        self.rt = rt
        self.tasks = tasks
        self.tick = tick
        self.lock = SchedulerLock(rt.redis, rt.settings.namespace, lease_seconds=lock_lease)
        self._periodic_key = f"{rt.settings.namespace}:scheduler:next-run"

    def run_once(self) -> dict[str, int] | None:
        """One tick: if this scheduler holds the lock, send what is due; None when another one acts."""
        if not self.lock.hold():
            return None
        sent = {"actions": 0, "finalize": 0, "periodic": 0}
        for delivery_id in engine.due_deliveries(self.rt):
            self.tasks.send(queue.RUN_ACTION, [delivery_id], argsrepr=f"({delivery_id},)")
            sent["actions"] += 1
        for account_id, call_key in engine.due_finalizations(self.rt):
            self.tasks.send(queue.FINALIZE_CALL, [account_id, call_key], argsrepr="(account, call)")
            sent["finalize"] += 1
        sent["periodic"] = self._send_periodic()
        return sent

    def _send_periodic(self) -> int:
        """Send each periodic job whose time has come; the next run time is in Redis, so a standby keeps to it."""
        now = time.time()
        due = self.rt.redis.hgetall(self._periodic_key)
        count = 0
        for task, every in queue.PERIODIC.items():
            if task not in due:  # a first start: the first run comes one interval later (as Celery beat did)
                self.rt.redis.hsetnx(self._periodic_key, task, now + every)
            elif float(due[task]) <= now:
                self.tasks.send(task, [])
                self.rt.redis.hset(self._periodic_key, task, now + every)
                count += 1
        return count

    def run(self, stop: threading.Event) -> None:
        """Tick every second until ``stop`` is set; then release the lock."""
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.run_once()
                except Exception:  # Redis, the database or the broker away: keep ticking, they come back
                    log.exception("scheduler tick failed")
                stop.wait(max(0.0, self.tick - (time.monotonic() - started)))
        finally:
            try:
                self.lock.release()
            except redis.RedisError:
                log.warning("could not release the scheduler lock; it runs out by itself")
