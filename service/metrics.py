"""Metrics that span processes: the hook->effect histogram, and /metrics across every process of a deployment.

``pbxrelay web`` and ``pbxrelay worker`` put each process group's prometheus-client files in its own
directory ``<var>/metrics/<role>-<pid>@<host>`` (``PROMETHEUS_MULTIPROC_DIR``, set before prometheus-client
is imported; gunicorn's workers and Celery's pool children inherit it). The receiver's ``/metrics`` merges
every directory under ``<var>/metrics``, so it shows the gunicorn workers', the Celery pool children's and
every other worker's figures together, as long as they share that directory (one machine, or one volume
mounted there in every container). A group's directory is wiped when it starts, and the directories of
groups on the same host whose main process is gone are removed then too (their counters reset, as after
any restart); another host's directories are left alone (its processes cannot be seen from here).

prometheus-client is imported only inside the functions below: it chooses between in-memory and file-backed
values when first imported, so the CLI must be able to set the directory after importing this module.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import socket
from pathlib import Path

from service.datafiles import process_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"


@functools.cache
def _hook_to_effect():
    from prometheus_client import Histogram

    # registry=None: in multiprocess mode the value lives in this process's file whatever the registry, and
    # the receiver exports the files; outside it (tests building the app in-process) nothing exports it.
    return Histogram("pbxrelay_hook_to_effect_seconds",
                     "From the receiver accepting a hook to its action succeeding at the vendor",
                     ["integration"], registry=None,
                     buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))


def observe_hook_to_effect(integration: str, seconds: float) -> None:
    """Record one effect's latency from its hook's receipt."""
    _hook_to_effect().labels(integration).observe(max(0.0, seconds))


def metrics_root(var_dir: Path) -> Path:
    """Where every process group of the deployment keeps its metric files."""
    return Path(var_dir) / "metrics"



def prepare_process_dir(var_dir: Path, role: str) -> Path:
    """Create an empty metrics directory for this process group (``<role>-<pid>@<host>``) and remove the
    directories of this host's groups whose main process no longer runs; returns the new directory."""
    root = metrics_root(var_dir)
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for old in root.iterdir():
        group, _, its_host = old.name.rpartition("@")
        pid = group.rpartition("-")[2]
        stale = pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid)))
        if old.is_dir() and its_host == host and stale:
            shutil.rmtree(old, ignore_errors=True)
    mine = root / f"{role}-{os.getpid()}@{host}"
    mine.mkdir()
    return mine


def use_process_dir(var_dir: Path, role: str) -> bool:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory of this process group, unless it already
    points into this deployment's metrics root (a re-exec); True when it changed."""
    current = os.environ.get(ENV)
    if current and Path(current).parent == metrics_root(var_dir):
        return False
    os.environ[ENV] = str(prepare_process_dir(var_dir, role))
    return True


def multiprocess_enabled() -> bool:
    """Whether this process writes its metrics to files (multiprocess mode)."""
    return bool(os.environ.get(ENV))


def mark_dead(pid: int) -> None:
    """Drop the live-gauge files of a process that exited (gunicorn's child_exit, Celery's pool shutdown)."""
    if multiprocess_enabled():
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)


class AllProcessesCollector:
    """Every metric file under the deployment's metrics root, merged (counters and histograms summed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self):
        """The merged metric families."""
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self.root, "*", "*.db"))
        return MultiProcessCollector.merge(files, accumulate=True)


class QueueDepthCollector:
    """``pbxrelay_queue_depth{queue}``: task messages waiting in each queue, read from Redis at scrape time."""

    def __init__(self, depths) -> None:
        self.depths = depths  # () -> {queue kind: messages waiting}

    def collect(self):
        """One gauge sample per queue (none when Redis does not answer)."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("pbxrelay_queue_depth", "Task messages waiting in each queue", labels=["queue"])
        try:
            depths = self.depths()
        except Exception:  # Redis away: /readyz says so; the scrape still answers
            depths = {}
        for kind, depth in sorted(depths.items()):
            family.add_metric([kind], depth)
        yield family
