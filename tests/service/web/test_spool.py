"""The durable spool: ordered, bounded, survives restarts, drains exactly once across processes."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from service.web.spool import Spool, SpoolFull


def test_put_then_drain_in_arrival_order(tmp_path):
    """Envelopes come out in the order they went in, and the spool is empty afterwards."""
    spool = Spool(tmp_path, max_events=100)
    for i in range(20):
        spool.put({"n": i})
    published = []
    assert spool.drain(published.append) == 20
    assert [e["n"] for e in published] == list(range(20))
    assert spool.depth() == 0


def test_a_failed_publish_keeps_the_event_in_place(tmp_path):
    """When the queue fails mid-drain, nothing is lost and order is kept for the next round."""
    spool = Spool(tmp_path, max_events=100)
    for i in range(5):
        spool.put({"n": i})
    published = []

    def flaky(envelope):
        if envelope["n"] == 2:
            raise ConnectionError("redis away")
        published.append(envelope["n"])

    with pytest.raises(ConnectionError):
        spool.drain(flaky)
    assert published == [0, 1] and spool.depth() == 3
    spool.drain(lambda e: published.append(e["n"]))
    assert published == [0, 1, 2, 3, 4]


def test_bound_is_enforced(tmp_path):
    """Past max_events the spool refuses (the receiver answers 503 then)."""
    spool = Spool(tmp_path, max_events=10)
    for i in range(10):
        spool.put({"n": i})
    with pytest.raises(SpoolFull):
        spool.put({"n": 10})


def test_survives_a_restart_and_recovers_a_dead_drainers_claim(tmp_path):
    """A new Spool object sees old files; a file claimed by a dead process is put back."""
    spool = Spool(tmp_path, max_events=10)
    path = spool.put({"n": 1})
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    os.rename(path, path.with_suffix(f".draining-{child.pid}"))
    reopened = Spool(tmp_path, max_events=10)
    assert reopened.depth() == 0
    assert reopened.recover_claims() == 1
    assert [json.loads(p.read_text()) for p in reopened.pending()] == [{"n": 1}]


def _drain_into(directory, out_path):
    spool = Spool(directory, max_events=10_000)
    seen = []
    spool.drain(lambda e: seen.append(e["n"]), limit=10_000)
    with open(out_path, "w") as handle:
        json.dump(seen, handle)


def test_two_processes_drain_each_event_once(tmp_path):
    """Concurrent drainers (two gunicorn workers) never publish the same file twice."""
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, max_events=10_000)
    for i in range(500):
        spool.put({"n": i})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_drain_into, args=(spool_dir, tmp_path / f"out{i}.json")) for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    seen = json.loads((tmp_path / "out0.json").read_text()) + json.loads((tmp_path / "out1.json").read_text())
    assert sorted(seen) == list(range(500))
