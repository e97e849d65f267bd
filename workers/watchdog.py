"""Hard time limits on pools that cannot stop one task: threads and solo.

Celery enforces a task's ``time_limit`` by killing the prefork child running it. A thread cannot be killed,
so on the threads pool an action could run past its claim lease (its time limit plus a margin), and the
scheduler would then send a second copy while the first may still act: an effect done twice. The watchdog
closes that gap the way prefork does, one level up: when any task outlives its hard limit it ends the whole
worker process, before the claim lapses. The tasks running beside it end too; as with any worker killed as a
whole, their deliveries come back when their claims run out and their messages are redelivered (the fault
suite's whole-worker kills), so nothing is lost or doubled. The supervisor (Compose, systemd, `pbxrelay
run`) starts a new worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from celery.concurrency import get_implementation
from celery.signals import task_postrun, task_prerun, worker_init

from service import queue

log = logging.getLogger(__name__)

EXIT_STATUS = queue.WATCHDOG_EXIT_STATUS
CHECK_INTERVAL_SECONDS = 0.5


class Watchdog:
    """Tracks running tasks with a hard time limit and says which one outlived it."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, tuple[str, float]] = {}  # task id -> (task name, deadline)

    def started(self, task_id: str, name: str, time_limit: float | None) -> None:
        """A task began; with a hard limit it is watched until :meth:`finished`."""
        if time_limit:
            with self._lock:
                self._running[task_id] = (name, self._clock() + float(time_limit))

    def finished(self, task_id: str) -> None:
        """A task ended (done, retried or failed)."""
        with self._lock:
            self._running.pop(task_id, None)

    def overdue(self) -> tuple[str, str] | None:
        """(task id, name) of a task past its deadline, if any."""
        now = self._clock()
        with self._lock:
            for task_id, (name, deadline) in self._running.items():
                if now > deadline:
                    return task_id, name
        return None

    def watch(self, stop: threading.Event, on_overdue: Callable[[str, str], None],
              interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """Check every ``interval`` seconds until ``stop``; call ``on_overdue`` for the first task past its limit."""
        while not stop.wait(interval):
            found = self.overdue()
            if found is not None:
                on_overdue(*found)
                return


def end_worker(task_id: str, name: str) -> None:
    """Log why, then end this worker process at once (no cleanup may run: the overdue task must stop acting)."""
    log.critical("task %s (%s) outlived its hard time limit, which this pool cannot enforce on one task: "
                 "ending the worker so no second copy can run beside it (its supervisor starts a new one)",
                 name, task_id)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_STATUS)


_watchdog: Watchdog | None = None


@worker_init.connect
def _watch_pools_that_cannot_stop_a_task(sender=None, **_) -> None:
    """Start the watchdog in a worker whose pool is not prefork (threads, solo)."""
    global _watchdog
    from celery.concurrency.prefork import TaskPool as PreforkPool

    if sender is None or issubclass(get_implementation(sender.pool_cls), PreforkPool):
        return
    _watchdog = Watchdog()
    threading.Thread(target=_watchdog.watch, args=(threading.Event(), end_worker), name="pbxrelay-watchdog",
                     daemon=True).start()


@task_prerun.connect
def _task_started(task_id: str | None = None, task=None, **_) -> None:
    if _watchdog is not None and task is not None and task_id is not None:
        hard = (task.request.timelimit or (None, None))[0]
        _watchdog.started(task_id, task.name, hard or task.time_limit or task.app.conf.task_time_limit)


@task_postrun.connect
def _task_finished(task_id: str | None = None, **_) -> None:
    if _watchdog is not None and task_id is not None:
        _watchdog.finished(task_id)
