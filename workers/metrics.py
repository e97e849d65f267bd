"""Task durations for /metrics, from Celery's signals (written through prometheus-client; in multiprocess
mode to the worker's metric directory, which the receiver merges: see service/metrics.py)."""

from __future__ import annotations

import os
import time

from celery.signals import task_postrun, task_prerun, worker_process_shutdown
from prometheus_client import Histogram

from service import metrics

TASK_SECONDS = Histogram("pbxrelay_task_seconds", "Time a worker spent running one task",
                         ["task", "state"], registry=None,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id: str | None = None, **_) -> None:
    _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished(task_id: str | None = None, task=None, state: str | None = None, **_) -> None:
    started = _started.pop(task_id, None)
    if started is not None and task is not None:
        TASK_SECONDS.labels(task.name, state or "UNKNOWN").observe(time.perf_counter() - started)


@worker_process_shutdown.connect
def _pool_process_exits(**_) -> None:
    metrics.mark_dead(os.getpid())
