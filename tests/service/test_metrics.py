"""Per-process-group metric directories: fresh at start, dead groups' directories removed, merged on scrape."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from service import metrics


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_prepare_wipes_its_own_and_dead_groups_and_keeps_live_ones(tmp_path):
    """A group's directory starts empty; a dead group's is removed; a live group's (here: our parent) stays,
    and so does another host's (its processes are not visible from here)."""
    root, host, dead_pid = metrics.metrics_root(tmp_path), socket.gethostname(), _dead_pid()
    dead, live = root / f"worker-{dead_pid}@{host}", root / f"web-{os.getppid()}@{host}"
    elsewhere = root / f"worker-{dead_pid}@another-host"
    for d in (dead, live, elsewhere):
        d.mkdir(parents=True)
        (d / "counter_1.db").write_bytes(b"x")
    mine = metrics.prepare_process_dir(tmp_path, "web")
    assert mine == root / f"web-{os.getpid()}@{host}" and list(mine.iterdir()) == []
    assert not dead.exists() and (live / "counter_1.db").exists() and (elsewhere / "counter_1.db").exists()
    (mine / "counter_2.db").write_bytes(b"x")
    assert metrics.prepare_process_dir(tmp_path, "web") == mine and list(mine.iterdir()) == []


def test_use_process_dir_keeps_a_directory_of_this_deployment(tmp_path, monkeypatch):
    """Set once (then inherited across the web command's re-exec); another deployment's setting is replaced."""
    monkeypatch.setenv(metrics.ENV, "/elsewhere/metrics/web-1")
    assert metrics.use_process_dir(tmp_path, "worker") is True
    assert os.environ[metrics.ENV] == str(
        metrics.metrics_root(tmp_path) / f"worker-{os.getpid()}@{socket.gethostname()}")
    assert metrics.use_process_dir(tmp_path, "worker") is False


def test_scrape_merges_the_files_of_every_group(tmp_path):
    """Histogram samples written by two processes in two groups' directories are summed on scrape."""
    script = ("import sys; from service import metrics; metrics.observe_hook_to_effect('slack', float(sys.argv[1]))")
    for group, seconds in (("worker-1", "0.2"), ("worker-2", "3")):
        directory = metrics.metrics_root(tmp_path) / group
        directory.mkdir(parents=True)
        env = {**os.environ, metrics.ENV: str(directory)}
        subprocess.run([sys.executable, "-c", script, seconds], env=env, check=True)
    families = {f.name: f for f in metrics.AllProcessesCollector(metrics.metrics_root(tmp_path)).collect()}
    samples = {(s.name, s.labels.get("le")): s.value for s in families["pbxrelay_hook_to_effect_seconds"].samples}
    assert samples[("pbxrelay_hook_to_effect_seconds_count", None)] == 2
    assert samples[("pbxrelay_hook_to_effect_seconds_bucket", "0.25")] == 1
    assert samples[("pbxrelay_hook_to_effect_seconds_sum", None)] == 3.2
