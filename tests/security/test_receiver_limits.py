"""Hostile clients against the shipped receiver: real `pbxrelay web` (gunicorn) and deploy/nginx.conf.

Findings 7 and 8 of "A hard tenant boundary": slowloris and an endless request line stalled and grew
the web worker; a chunked body over the limit was cut and accepted. And finding 5: one token opened
both hook URLs, a rotated token kept working for 30 s, and an unsigned CRM endpoint was the default.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests

from service.sandbox.virtualpbx.sender import encode_kazoo_form
from tests.conftest import load_fixture
from tests.harness import Service, free_port, wait_for
from tests.service.web.test_receiver import queued

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"
ROOT = Path(__file__).resolve().parents[2]
NGINX = "/usr/sbin/nginx"
SLOW_CLIENTS = 16
# A web worker's RSS may grow this much under the attack (the slow clients' buffers are a few KB each;
# before the fix one endless request line grew a worker by 67 MB in seconds).
RSS_GROWTH_LIMIT_KB = 16 * 1024
ENDLESS_FOR = 20.0  # seconds the endless request line keeps going unless the server hangs up first


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_url):
    """`pbxrelay web` as shipped (one gunicorn worker, 8 threads) with one account; yields the Service."""
    svc = Service(tmp_path_factory.mktemp("limits"), redis_url=redis_url, namespace=f"lim{uuid.uuid4().hex[:8]}")
    svc.cli("migrate")
    svc.account = svc.add_account(ACCOUNT)
    svc.start_web()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, web):
    """nginx running deploy/nginx.conf with only its upstream and port rewritten; yields its base URL."""
    if not os.path.exists(NGINX):
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is required on CI (apt-get install -y nginx-light)")
        pytest.skip(f"{NGINX} not installed (apt-get install nginx-light): the nginx half is not run here")
    tmp = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("server web:8000;", f"server 127.0.0.1:{web.port};")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    assert f"127.0.0.1:{web.port}" in conf and f"127.0.0.1:{port}" in conf, "deploy/nginx.conf changed shape"
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr",
                             "-g", f"daemon off; pid {tmp / 'nginx.pid'};"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "error.log", "wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"nginx did not start:\n{(tmp / 'error.log').read_text()}")
        time.sleep(0.1)
    yield SimpleNamespace(url=url, pid=proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def tree_rss_kb(pid: int) -> dict[int, int]:
    """VmRSS (KB) of a process and all its descendants."""
    found, todo = {}, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        match = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
        found[current] = int(match.group(1)) if match else 0
    return found


class Attack:
    """SLOW_CLIENTS slowloris connections (request line and headers dribbled) and one endless request line."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stop = threading.Event()
        self.slow: list[socket.socket] = []
        self.endless_sent = 0
        self.endless_cut = False
        self.endless_answer = b""
        self.threads = [threading.Thread(target=self._dribble, daemon=True),
                        threading.Thread(target=self._endless, daemon=True)]

    def __enter__(self) -> "Attack":
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.sendall(b"POST /hooks/virtualpbx/")  # half a request line
            self.slow.append(sock)
        for thread in self.threads:
            thread.start()
        return self

    def _dribble(self) -> None:
        step = 0
        while not self.stop.wait(0.5):
            for sock in self.slow:
                try:
                    sock.sendall(b"x" if step < 4 else b"X-Slow: %d\r\n" % step)
                except OSError:
                    pass  # closed by the server: what it should do eventually
            step += 1

    def _endless(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(b"GET /healthz?")
        chunk = b"a" * 8192
        give_up = time.monotonic() + ENDLESS_FOR
        try:
            while time.monotonic() < give_up:  # about 800 KB/s, until the server hangs up
                sock.sendall(chunk)
                self.endless_sent += len(chunk)
                time.sleep(0.01)
        except OSError:
            self.endless_cut = True  # refused and closed: the point
        try:
            sock.settimeout(2)
            self.endless_answer = sock.recv(200)
        except OSError:
            pass
        sock.close()

    def slow_clients_closed(self) -> int:
        """How many slow connections the server has closed (a read returns EOF or an error answer)."""
        closed = 0
        for sock in self.slow:
            sock.setblocking(False)
            try:
                data = sock.recv(4096)
                closed += data == b"" or data.startswith(b"HTTP/1.1 4")
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for sock in self.slow:
            sock.close()
        for thread in self.threads:
            thread.join(timeout=ENDLESS_FOR + 5)


def healthz_times(base_url: str, count: int = 6, interval: float = 0.5) -> list[float]:
    """Seconds each of ``count`` fresh-connection /healthz requests took (a timeout counts as 5 s)."""
    times = []
    for _ in range(count):
        started = time.monotonic()
        try:
            ok = requests.get(f"{base_url}/healthz", timeout=5, headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            ok = False
        times.append(time.monotonic() - started if ok else 5.0)
        time.sleep(interval)
    return times


def run_attack(base_url: str, rss_pid: int, *, expect_closed_after: float) -> None:
    """Attack ``base_url``; /healthz stays under 1 s, RSS of ``rss_pid``'s tree stays bounded, and the slow
    clients are closed within ``expect_closed_after`` seconds."""
    parts = urlsplit(base_url)
    before = tree_rss_kb(rss_pid)
    with Attack(parts.hostname, parts.port) as attack:
        time.sleep(1.5)  # let every slow client be mid-request and the endless line be well under way
        times = healthz_times(base_url)
        after = tree_rss_kb(rss_pid)
        assert max(times) < 1.0, f"/healthz took {times} under {SLOW_CLIENTS} slow clients and an endless line"
        for pid, rss in after.items():
            assert rss - before.get(pid, rss) < RSS_GROWTH_LIMIT_KB, (pid, before.get(pid), rss)
        deadline = time.monotonic() + expect_closed_after
        while attack.slow_clients_closed() < SLOW_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.5)
        assert attack.slow_clients_closed() == SLOW_CLIENTS, "slow clients were never timed out"
    assert attack.endless_cut, f"the endless request line was still read after {attack.endless_sent} bytes"
    assert attack.endless_answer.startswith((b"HTTP/1.1 414", b"HTTP/1.1 400")) or attack.endless_answer == b""


def test_slow_and_endless_clients_do_not_stall_or_grow_gunicorn(web):
    """The real `pbxrelay web`: /healthz answers in under 1 s during the attack, RSS stays bounded, the slow
    clients are cut after the 10 s head timeout and the endless line at 16 KB (414)."""
    run_attack(web.url, web.processes["web"].pid, expect_closed_after=15)
    assert requests.get(f"{web.url}/healthz", timeout=2).status_code == 200


def test_slow_and_endless_clients_do_not_stall_nginx_or_gunicorn(nginx, web):
    """The same through deploy/nginx.conf: nginx absorbs them (client_header_timeout 10 s)."""
    run_attack(nginx.url, nginx.pid, expect_closed_after=15)
    assert requests.get(f"{nginx.url}/healthz", timeout=2).status_code == 200


def kazoo_get_path(token: str) -> str:
    """The hook URL path with Kazoo's longest GET delivery (missed_call) in the query string."""
    query = encode_kazoo_form(load_fixture("kazoo/webhook_notifications_missed_call.json"))
    assert len(query) > 4000, "the fixture is no longer the long one this test is about"
    return f"/hooks/virtualpbx/{token}?{query}"


def chunked_post(base_url: str, path: str, body: bytes, chunk: int = 4096) -> int:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length); the status, or 0 if cut off."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", path, body=(body[i:i + chunk] for i in range(0, len(body), chunk)),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


@pytest.fixture
def drained(web, redis_client):
    """The deployment's ingest queue, emptied before the test."""
    redis_client.delete(f"{web.env['PBXRELAY_NAMESPACE']}.ingest")
    return lambda: queued(redis_client, web.env["PBXRELAY_NAMESPACE"])


@pytest.mark.parametrize("through", ["gunicorn", "nginx"])
def test_the_longest_kazoo_get_is_accepted(web, request, drained, through):
    """missed_call as a GET query (the longest Kazoo delivery) gets 200 and is queued whole."""
    base = web.url if through == "gunicorn" else request.getfixturevalue("nginx").url
    path = kazoo_get_path(web.account["hook_url"].rsplit("/", 1)[1])
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)  # sent byte for byte (requests would re-encode the brackets)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()
    (envelope,) = drained()
    assert envelope["method"] == "GET" and envelope["query_string"] == path.split("?", 1)[1]


@pytest.mark.parametrize("through", ["gunicorn", "nginx"])
def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_queued(web, request, drained, through):
    """Chunked framing is no way around max_body_bytes (256 KiB); a chunked body within it is kept whole."""
    base = web.url if through == "gunicorn" else request.getfixturevalue("nginx").url
    path = urlsplit(web.account["hook_url"]).path
    over = b'{"hook_event": "channel_create", "pad": "' + b"x" * (256 * 1024) + b'"}'
    assert chunked_post(base, path, over) in (413, 0)
    assert chunked_post(base, path, over, chunk=100_000) in (413, 0)
    assert drained() == []
    within = b'{"hook_event": "channel_create", "pad": "' + b"y" * (200 * 1024) + b'"}'
    assert chunked_post(base, path, within) == 200
    (envelope,) = drained()
    assert envelope["body"] == within.decode()


def test_each_hook_token_opens_only_its_own_url(web, drained):
    """The CRM token gets 404 on the Kazoo URL (so no forged SMS STOP/START), and the Kazoo token 404 on the
    CRM URL; without `crm.signing` in the rules, the CRM URL refuses unsigned bodies with 401."""
    hook_token = web.account["hook_url"].rsplit("/", 1)[1]
    crm_token = web.account["crm_hook_url"].rsplit("/", 1)[1]
    assert hook_token != crm_token
    sms = {"hook_event": "sms", "from": "+15551234567", "body": "START"}
    assert requests.post(f"{web.url}/hooks/virtualpbx/{crm_token}", json=sms, timeout=5).status_code == 404
    assert requests.get(f"{web.url}/hooks/virtualpbx/{crm_token}", params=sms, timeout=5).status_code == 404
    assert requests.post(f"{web.url}/hooks/crm/{hook_token}", json={"id": "1"}, timeout=5).status_code == 404
    unsigned = requests.post(f"{web.url}/hooks/crm/{crm_token}", json={"id": "1"}, timeout=5)
    assert unsigned.status_code == 401 and "signing" in unsigned.json()["error"]
    assert drained() == []


def test_rotation_is_immediate_on_every_gunicorn_worker(tmp_path, redis_url):
    """Two gunicorn workers have both served a token; after `rotate-token` (and `--crm`) no request with the
    old one succeeds on either, and the new ones work at once."""
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"rot{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_WEB_WORKERS": "2"})
    try:
        svc.cli("migrate")
        account = svc.add_account(ACCOUNT)
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"account: {{id: {ACCOUNT}, name: Acme, timezone: UTC}}\ncrm: {{signing: none}}\n")
        svc.cli("rules", "apply", str(rules))
        svc.start_web()
        master = svc.processes["web"].pid
        wait_for(lambda: len(set(tree_rss_kb(master)) - {master}) == 2, timeout=30, message="two gunicorn workers")

        def statuses(url: str, body: dict) -> set[int]:
            # a fresh connection per request, so the kernel spreads them over both workers
            return {requests.post(url, json=body, timeout=5, headers={"Connection": "close"}).status_code
                    for _ in range(24)}

        assert statuses(account["hook_url"], {"hook_event": "channel_create"}) == {200}
        assert statuses(account["crm_hook_url"], {"id": "x"}) == {200}
        new_hook = svc.cli("accounts", "rotate-token", ACCOUNT).stdout.strip()
        new_crm = svc.cli("accounts", "rotate-token", ACCOUNT, "--crm").stdout.strip()
        assert statuses(account["hook_url"], {"hook_event": "channel_create"}) == {404}
        assert statuses(account["crm_hook_url"], {"id": "x"}) == {404}
        assert statuses(new_hook, {"hook_event": "channel_create"}) == {200}
        assert statuses(new_crm, {"id": "x"}) == {200}
    finally:
        svc.stop()


def test_honest_clients_still_work_slowly_on_one_connection_and_over_the_limit(web, drained):
    """Keep-alive serves several requests on one connection (each read whole by the event loop); a body that
    arrives in pieces within the body timeout is kept; a declared length over the limit gets the app's 413."""
    token = web.account["hook_url"].rsplit("/", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    for n in range(3):
        conn.request("POST", f"/hooks/virtualpbx/{token}", body=b'{"n": %d}' % n,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b'{"status":"ok"}\n')
    conn.close()
    body = b'{"hook_event": "channel_create", "call_id": "slow-but-honest"}'
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(b"POST /hooks/virtualpbx/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (token.encode(), len(body)))
        for i in range(0, len(body), 16):
            time.sleep(0.4)
            sock.sendall(body[i:i + 16])
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert sorted(e["body"] for e in drained()) == sorted(['{"n": 0}', '{"n": 1}', '{"n": 2}', body.decode()])
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(b"POST /hooks/virtualpbx/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (token.encode(), 256 * 1024 + 1))
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert len(drained()) == 4


def api_key_for(svc: Service, account_id: str) -> str:
    """A write API key of ``account_id``, made in the deployment's database (its secret)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from service.console.apikeys import create_api_key

    engine = sa.create_engine(svc.env["PBXRELAY_DATABASE_URL"])
    try:
        with Session(engine) as session, session.begin():
            return create_api_key(session, account_id, "uploader", "write", actor="test").secret
    finally:
        engine.dispose()


def test_slow_uploads_of_large_api_bodies_hold_no_thread(web):
    """The API takes bodies of up to 1 MiB + 64 KiB, four times the hooks' limit: a tenant's own key sending
    many such bodies slowly must not hold the web threads every account's hooks and /healthz need. The
    worker buffers them in its event loop like any body (and refuses what its buffer budget cannot hold)."""
    from service.api import MAX_BODY_BYTES

    key = api_key_for(web, ACCOUNT)
    length = 600 * 1024
    assert 256 * 1024 < length <= MAX_BODY_BYTES
    socks = []
    stop = threading.Event()
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
            sock.sendall(b"PUT /api/v1/accounts/%s/rules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{"
                         % (ACCOUNT.encode(), key.encode(), length))
            socks.append(sock)

        def dribble():
            while not stop.wait(0.5):
                for sock in socks:
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        pass

        threading.Thread(target=dribble, daemon=True).start()
        time.sleep(1.0)
        times = healthz_times(web.url)
        assert max(times) < 1.0, f"/healthz took {times} under {SLOW_CLIENTS} slow API uploads"
    finally:
        stop.set()
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("through", ["gunicorn", "nginx"])
def test_an_api_body_larger_than_a_hook_is_read_whole_but_not_on_a_hook_url(web, request, drained, through):
    """A 400 KB rules upload reaches the API whole (judged by it: 422 naming the unknown field), through
    gunicorn alone and through deploy/nginx.conf; the same size on a hook URL is 413 and queues nothing."""
    base = web.url if through == "gunicorn" else request.getfixturevalue("nginx").url
    key = api_key_for(web, ACCOUNT)
    rules = {"account": {"id": ACCOUNT, "name": "Big"}, "connections": {}, "rules": [],
             "x_padding": "p" * (400 * 1024)}
    response = requests.put(f"{base}/api/v1/accounts/{ACCOUNT}/rules", timeout=10, json=rules,
                            headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422 and "x_padding" in response.text, response.text[:300]
    hook = requests.post(f"{base}{urlsplit(web.account['hook_url']).path}", json=rules, timeout=10)
    assert hook.status_code == 413
    assert drained() == []


def test_uploads_past_the_buffer_budget_get_503_and_hooks_still_pass(web, drained):
    """Forty slow 1 MiB uploads: those past the worker's LARGE_BODY_BUDGET are refused with 503 at once, a
    declared length over every limit gets 413 without holding a thread, and hooks are never refused."""
    from service.web.server import LARGE_BODY_BUDGET

    key = api_key_for(web, ACCOUNT)
    token = web.account["hook_url"].rsplit("/", 1)[1]
    length = 1024 * 1024
    socks = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
            sock.sendall(b"PUT /api/v1/accounts/%s/rules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Length: %d\r\n\r\n{" % (ACCOUNT.encode(), key.encode(), length))
            socks.append(sock)
        for _ in range(SLOW_CLIENTS):  # past every route's limit: the app answers 413 without reading
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
            sock.sendall(b"PUT /api/v1/accounts/%s/rules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Length: %d\r\n\r\n" % (ACCOUNT.encode(), key.encode(), 50 * 1024 * 1024))
            socks.append(sock)
        time.sleep(1.0)
        answers = []
        for sock in socks:
            sock.settimeout(0.2)
            try:
                answers.append(sock.recv(30))
            except OSError:
                answers.append(b"")
        refused = sum(a.startswith(b"HTTP/1.1 503") for a in answers[:40])
        assert refused == 40 - LARGE_BODY_BUDGET // length, answers[:40]
        assert all(a.startswith(b"HTTP/1.1 413") for a in answers[40:]), answers[40:]
        assert max(healthz_times(web.url, count=3)) < 1.0
        hook = requests.post(f"{web.url}/hooks/virtualpbx/{token}", json={"n": "during uploads"}, timeout=5)
        assert hook.status_code == 200
    finally:
        for sock in socks:
            sock.close()
    assert [e["body"] for e in drained()] == ['{"n": "during uploads"}']
