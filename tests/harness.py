"""Runs pbxrelay as real processes (receiver, Celery worker) for end-to-end tests and benches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from cryptography.fernet import Fernet

PBXRELAY = [sys.executable, "-m", "service.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One pbxrelay deployment: its settings as environment, its processes, and its CLI."""

    def __init__(self, tmp_path: Path, *, redis_url: str, namespace: str, database_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.var_dir = tmp_path / "var"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PBXRELAY_")}
        self.env.update({
            "PBXRELAY_VAR_DIR": str(self.var_dir),
            "PBXRELAY_REDIS_URL": redis_url,
            "PBXRELAY_NAMESPACE": namespace,
            "PBXRELAY_DATABASE_URL": database_url or f"sqlite:///{self.var_dir / 'pbxrelay.sqlite3'}",
            "PBXRELAY_SECRET_KEYS": Fernet.generate_key().decode(),
            "PBXRELAY_PUBLIC_URL": self.url,
            "PBXRELAY_CALL_SETTLE_SECONDS": "0.5",
            "PBXRELAY_RETRY_BASE_SECONDS": "0.2",
            "PBXRELAY_WEB_WORKERS": "1",
            "PBXRELAY_LOG_LEVEL": "WARNING",
            # Stand-ins listen on 127.0.0.1 over http: the operator's switch that lets connections reach them.
            "PBXRELAY_ALLOW_PRIVATE_URLS": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        })
        self.env.update(env or {})
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `pbxrelay ARGS` with this deployment's settings."""
        proc = subprocess.run([*PBXRELAY, *args], env=self.env, capture_output=True, text=True, timeout=120,
                              input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"pbxrelay {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen([*PBXRELAY, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_web(self) -> None:
        """Start the receiver and wait until /healthz answers."""
        self._spawn("web", "web", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError(f"web did not start:\n{self.log('web')}")

    def start_worker(self, name: str = "worker", *, pool: str = "prefork", concurrency: int = 2,
                     queues: str = "all") -> subprocess.Popen:
        """Start a Celery worker process (``queues``: all, ingest or actions, as `pbxrelay worker --queues`)."""
        return self._spawn(name, "worker", "--queues", queues, "--pool", pool, "--concurrency", str(concurrency))

    def start_scheduler(self, name: str = "scheduler") -> subprocess.Popen:
        """Start the scheduler (due actions and calls every second, periodic jobs), as production runs it."""
        return self._spawn(name, "scheduler")

    def delete_queues(self) -> None:
        """Delete this deployment's queues on its RabbitMQ broker (they outlive its processes)."""
        from kombu import Connection

        from service import queue
        from service.config import Settings

        settings = Settings(namespace=self.env["PBXRELAY_NAMESPACE"], var_dir=self.var_dir)
        with Connection(self.env["PBXRELAY_BROKER_URL"]) as conn:
            for name in queue.queue_names(settings).values():
                conn.default_channel.queue_delete(name)

    def log(self, name: str) -> str:
        """What a process printed so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def add_account(self, account_id: str, name: str = "Acme Dental", timezone: str = "America/New_York") -> dict:
        """Add an account through the CLI; returns its JSON (account_id, hook_url, ...)."""
        return json.loads(self.cli("accounts", "add", account_id, "--name", name, "--timezone", timezone,
                                   "--json").stdout)

    def deliveries(self, account_id: str) -> list[dict]:
        """The delivery log through the CLI."""
        out = self.cli("deliveries", account_id, "--json", "--limit", "10000").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def quarantine(self, account_id: str) -> list[dict]:
        """The quarantine through the CLI."""
        out = self.cli("quarantine", account_id, "--json", "--limit", "10000").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop one process (or all) and wait for it."""
        for key in [name] if name else list(self.processes):
            proc = self.processes.pop(key, None)
            if proc and proc.poll() is None:
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}; last value: {last!r}")
