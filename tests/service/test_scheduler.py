"""The scheduler: due work enqueued every tick, and of two schedulers only the lock holder acts."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import sqlalchemy as sa

from service import queue
from service.scheduler import Scheduler
from service.store.models import Delivery, utcnow
from tests.harness import wait_for
from tests.service.engine.test_delivery import ingest_parking, rt, slack  # noqa: F401 (fixtures)


class Recording(Scheduler):
    """A Scheduler that notes, per tick, whether it acted."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.acted: list[float] = []

    def run_once(self):
        """Tick, and note the time when this scheduler held the lock."""
        result = super().run_once()
        if result is not None:
            self.acted.append(time.monotonic())
        return result


def start(scheduler: Scheduler) -> tuple[threading.Thread, threading.Event]:
    """Run a scheduler loop in a thread; returns the thread and its stop event."""
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def queued(rt, kind: str) -> list[tuple[str, list]]:  # noqa: F811
    """(task name, args) of the task messages waiting in one of this namespace's Redis queues."""
    messages = [json.loads(raw) for raw in rt.redis.lrange(f"{rt.settings.namespace}.{kind}", 0, -1)]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def test_two_schedulers_one_acts_and_the_other_takes_over(rt):  # noqa: F811
    """Two loops on one Redis: only the lock holder sends; it stops (lock released), the other takes over at once;
    it dies holding the lock, the first takes over once the lease runs out. Each due action is sent once."""
    tasks = queue.TaskQueue(rt.settings)
    a = Recording(rt, tasks, tick=0.05, lock_lease=0.5)
    b = Recording(rt, tasks, tick=0.05, lock_lease=0.5)
    (first,) = ingest_parking(rt, "call-sched-1")
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == first).values(
            status="retrying", next_attempt_at=utcnow() - timedelta(seconds=1)))
    thread_a, stop_a = start(a)
    thread_b, stop_b = start(b)
    wait_for(lambda: len(a.acted) + len(b.acted) >= 10, timeout=10, message="ten ticks acted")
    assert bool(a.acted) != bool(b.acted), "exactly one scheduler acts"
    holder, standby = (a, b) if a.acted else (b, a)
    (stop_holder, thread_holder), (stop_standby, thread_standby) = (
        ((stop_a, thread_a), (stop_b, thread_b)) if holder is a else ((stop_b, thread_b), (stop_a, thread_a)))
    assert queued(rt, "actions") == [(queue.RUN_ACTION, [first])]
    assert queued(rt, "ingest") == [], "periodic jobs come one interval after the first start"
    rt.redis.hset(holder._periodic_key, mapping={task: 0 for task in queue.PERIODIC})  # their interval passed
    wait_for(lambda: queued(rt, "ingest"), timeout=5, message="the periodic jobs sent")
    time.sleep(0.3)
    assert sorted(task for task, _ in queued(rt, "ingest")) == sorted(queue.PERIODIC), \
        "each periodic job once, not once per scheduler or per tick"

    stop_holder.set()
    thread_holder.join(timeout=5)
    stopped = time.monotonic()
    wait_for(lambda: standby.acted, timeout=5, message="the standby takes over")
    assert standby.acted[0] - stopped < 0.5, "a released lock is taken at the next tick"

    # The new holder dies without releasing (a crash): the other loop, restarted, waits out the lease.
    second = ingest_parking(rt, "call-sched-2")[0]
    with rt.sessions.begin() as session:
        session.execute(sa.update(Delivery).where(Delivery.id == second).values(
            status="retrying", next_attempt_at=utcnow() - timedelta(seconds=1)))
    wait_for(lambda: len(queued(rt, "actions")) == 2, timeout=5, message="the second action sent")
    standby.lock.release = lambda: None  # its process is gone: nothing releases the lock
    stop_standby.set()
    thread_standby.join(timeout=5)
    crashed = time.monotonic()
    holder.acted.clear()
    thread, stop = start(holder)
    wait_for(lambda: holder.acted, timeout=5, message="the first scheduler takes over after the lease")
    assert 0.3 < holder.acted[0] - crashed < 1.5, "not before the dead holder's lease ran out, and soon after"
    stop.set()
    thread.join(timeout=5)
    assert sorted(queued(rt, "actions")) == [(queue.RUN_ACTION, [first]), (queue.RUN_ACTION, [second])], \
        "each due action was sent once"
    assert not rt.redis.exists(holder.lock.key), "a scheduler that stops releases the lock"


def test_a_due_call_is_sent_for_finalising(rt):  # noqa: F811
    """The call's settle window passes: one finalize_call task, by name, with the account and call key."""
    from service import engine

    rt.settings.call_settle_seconds = 0.2
    engine.schedule_finalize(rt, "acct", "call-x")
    scheduler = Scheduler(rt, queue.TaskQueue(rt.settings))
    assert scheduler.run_once()["finalize"] == 0
    time.sleep(0.3)
    assert scheduler.run_once()["finalize"] == 1
    assert scheduler.run_once()["finalize"] == 0, "leased until its task has run"
    assert [args for task, args in queued(rt, "ingest") if task == queue.FINALIZE_CALL] == [["acct", "call-x"]]
