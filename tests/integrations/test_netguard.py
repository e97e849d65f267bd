"""The outbound-URL guard on real sockets: refused requests never reach a listener on 127.0.0.1 / ::1.

Every test connects only to loopback listeners started here. Addresses that must be refused
(metadata, RFC 1918, …) are given as IP literals to functions that resolve without connecting, so
even a broken guard could not send traffic anywhere but this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import pickle
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3.util.connection

from integrations.base import PermanentError, RetryableError
from integrations.netguard import (
    UnsafeURL,
    assert_public_address,
    assert_url_public,
    check_url,
    guard_session,
    guarded_session,
)

TIMEOUT = 5


@dataclass
class Listener:
    """A loopback HTTP server that records every TCP connection it accepts and every request path."""

    server: ThreadingHTTPServer
    connections: list = field(default_factory=list)
    paths: list = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    """200 "ok" on any path; ``/redirect?to=URL`` answers 302 to URL."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.listener.paths.append(self.path)
        query = parse_qs(urlsplit(self.path).query)
        if self.path.startswith("/redirect") and "to" in query:
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serve(host: str, family: socket.AddressFamily) -> Iterator[Listener]:
    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

        def get_request(self):
            # Recorded at accept(), before any HTTP: "nothing arrived" means not even a TCP connection.
            sock, address = super().get_request()
            self.listener.connections.append(address)
            return sock, address

    server = Server((host, 0), _Handler)
    listener = server.listener = Listener(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6_loopback()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """A tripwire, not a stand-in: should the guard ever fail, the test fails instead of sending traffic
    off this machine. It changes nothing for connections to 127.0.0.0/8 or ::1."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(address[0].split("%", 1)[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
                raise AssertionError(f"a test tried to connect to {address[0]}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def v4() -> Iterator[Listener]:
    """A listener on 127.0.0.1."""
    with _serve("127.0.0.1", socket.AF_INET) as listener:
        yield listener


@pytest.fixture
def v6() -> Iterator[Listener]:
    """A listener on ::1 (skipped where the machine has no IPv6 loopback)."""
    if not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    with _serve("::1", socket.AF_INET6) as listener:
        yield listener


# Ways to write "this machine" in a URL; {p} is the 127.0.0.1 listener's port, {p6} the ::1 one's.
LOOPBACK_TRICKS = [
    "{scheme}://127.0.0.1:{p}/",
    "{scheme}://localhost:{p}/",          # a name that resolves to 127.0.0.1
    "{scheme}://2130706433:{p}/",         # 127.0.0.1 as one decimal number
    "{scheme}://0x7f.1:{p}/",             # hex, two parts
    "{scheme}://0x7f000001:{p}/",
    "{scheme}://0177.0.0.1:{p}/",         # octal
    "{scheme}://127.1:{p}/",
    "{scheme}://127.0.0.1.:{p}/",         # trailing dot
    "{scheme}://LOCALHOST:{p}/",
    "{scheme}://0.0.0.0:{p}/",            # connect() to 0.0.0.0 lands on this machine
    "{scheme}://[::ffff:127.0.0.1]:{p}/",  # IPv4-mapped IPv6
]
LOOPBACK_TRICKS_V6 = ["{scheme}://[::1]:{p6}/", "{scheme}://[0:0:0:0:0:0:0:1]:{p6}/"]


def _refused_without_contact(session: requests.Session, url: str, *listeners: Listener) -> UnsafeURL:
    with pytest.raises(UnsafeURL) as caught:
        session.get(url, timeout=TIMEOUT)
    for listener in listeners:
        assert listener.connections == [], f"{url} reached the listener"
    return caught.value


# -- (a) tenant mode: nothing reaches this machine -----------------------------------------------------

@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("template", LOOPBACK_TRICKS)
def test_tenant_session_never_connects_to_loopback(v4, scheme, template):
    url = template.format(scheme=scheme, p=v4.port)
    with guarded_session(allow_private=False, field="api_url") as session:
        error = _refused_without_contact(session, url, v4)
    assert str(error).startswith("api_url: host ")
    assert "loopback" in str(error) or "unspecified" in str(error) or "local-network name" in str(error)
    assert isinstance(error, PermanentError) and error.code in ("unsafe_address", "unsafe_url")


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("template", LOOPBACK_TRICKS_V6)
def test_tenant_session_never_connects_to_ipv6_loopback(v6, scheme, template):
    url = template.format(scheme=scheme, p6=v6.port)
    with guarded_session(allow_private=False) as session:
        error = _refused_without_contact(session, url, v6)
    assert "loopback" in str(error)


def test_a_name_resolving_to_loopback_is_refused_after_dns(v4):
    """Not only the well-known names: whatever a name resolves to is checked (here this machine's own name)."""
    name = socket.gethostname().lower()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip("this machine's name does not resolve")
    if not ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine's name does not resolve to loopback")
    with guarded_session(allow_private=False, field="webhook_url") as session:
        error = _refused_without_contact(session, f"http://{name}:{v4.port}/", v4)
    assert str(error) == f"webhook_url: host {name} resolves to {address}, a loopback address"


def test_tenant_session_refuses_other_schemes_and_proxies(v4):
    with guarded_session(allow_private=False) as session:
        for url in ("file:///etc/passwd", f"gopher://127.0.0.1:{v4.port}/_PING", "ftp://127.0.0.1/"):
            with pytest.raises(UnsafeURL, match="scheme .* is not allowed"):
                session.get(url, timeout=TIMEOUT)
    with guarded_session(allow_private=True) as session:
        with pytest.raises(UnsafeURL, match="proxy"):
            session.get(f"http://127.0.0.1:{v4.port}/", timeout=TIMEOUT,
                        proxies={"http": f"http://127.0.0.1:{v4.port}"})
    assert v4.connections == []


# -- (b) operator mode: the same requests arrive ---------------------------------------------------------

@pytest.mark.parametrize("template", ["http://127.0.0.1:{p}/", "http://localhost:{p}/", "http://2130706433:{p}/",
                                      "http://0x7f.1:{p}/", "http://127.1:{p}/"])
def test_private_session_delivers_to_loopback(v4, template):
    with guarded_session(allow_private=True) as session:
        response = session.get(template.format(p=v4.port) + "hello", timeout=TIMEOUT)
    assert response.status_code == 200 and response.text == "ok"
    assert v4.paths == ["/hello"] and len(v4.connections) == 1


def test_private_session_delivers_to_ipv6_loopback(v6):
    with guarded_session(allow_private=True) as session:
        response = session.get(f"http://[::1]:{v6.port}/hello", timeout=TIMEOUT)
    assert response.status_code == 200 and v6.paths == ["/hello"]


def test_private_session_still_refuses_cloud_metadata():
    """No connection is attempted: the refusal comes from the address itself, before connect()."""
    with guarded_session(allow_private=True) as session:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                    "http://[::ffff:169.254.169.254]/", "http://0xa9fea9fe/"):
            with pytest.raises(UnsafeURL, match="cloud metadata address"):
                session.get(url, timeout=TIMEOUT)


def test_environment_proxy_is_ignored(v4, monkeypatch):
    """HTTP_PROXY would send the request to the proxy, which resolves the target where the guard cannot see."""
    with _serve("127.0.0.1", socket.AF_INET) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with guarded_session(allow_private=True) as session:
            assert session.get(f"http://127.0.0.1:{v4.port}/direct", timeout=TIMEOUT).status_code == 200
        assert v4.paths == ["/direct"] and proxy.connections == []


# -- connect-time pinning: one resolution, the socket goes to the checked address ------------------------

def test_every_connection_goes_through_the_guard(v4, monkeypatch):
    """urllib3's own create_connection (which would resolve again, unchecked) is never used, redirects included."""
    used = []
    real = urllib3.util.connection.create_connection
    monkeypatch.setattr(urllib3.util.connection, "create_connection",
                        lambda *args, **kwargs: used.append(args) or real(*args, **kwargs))
    with guarded_session(allow_private=True, max_redirects=3) as session:
        target = f"http://localhost:{v4.port}/final"
        response = session.get(f"http://127.0.0.1:{v4.port}/redirect?to={target}", timeout=TIMEOUT)
    assert response.status_code == 200 and v4.paths[-1] == "/final"
    assert used == []


def test_dns_answer_checked_is_the_address_connected(v4, monkeypatch):
    """A rebinding resolver (first answer 127.0.0.1, later answers elsewhere) is asked once; the request
    arrives at the first answer. Everything stays on loopback: the later answer is 127.0.0.2, unused."""
    real = socket.getaddrinfo
    asked = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            asked.append(host)
            host = "127.0.0.1" if len(asked) == 1 else "127.0.0.2"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with guarded_session(allow_private=True) as session:
        response = session.get(f"http://rebind.test:{v4.port}/pinned", timeout=TIMEOUT)
    assert response.status_code == 200 and v4.paths == ["/pinned"]
    assert asked == ["rebind.test"]
    # In tenant mode the same first answer is refused, before any connection.
    asked.clear()
    v4.connections.clear()
    with guarded_session(allow_private=False) as session:
        error = _refused_without_contact(session, f"https://rebind.test:{v4.port}/", v4)
    assert str(error) == "url: host rebind.test resolves to 127.0.0.1, a loopback address"


# -- redirects --------------------------------------------------------------------------------------------

def test_redirects_are_returned_not_followed_by_default(v4):
    with guarded_session(allow_private=True) as session:
        response = session.get(f"http://127.0.0.1:{v4.port}/redirect?to=/final", timeout=TIMEOUT)
    assert response.status_code == 302 and response.headers["Location"] == "/final"
    assert v4.paths == ["/redirect?to=/final"]


def test_followed_redirects_are_rechecked_each_hop(v4):
    with guarded_session(allow_private=True, max_redirects=3) as session:
        for target in (f"gopher://127.0.0.1:{v4.port}/_SET", "file:///etc/passwd", "dict://127.0.0.1:6379/INFO"):
            with pytest.raises(UnsafeURL, match="scheme .* is not allowed"):
                session.get(f"http://127.0.0.1:{v4.port}/redirect?to={target}", timeout=TIMEOUT)
        with pytest.raises(UnsafeURL, match="cloud metadata"):
            session.get(f"http://127.0.0.1:{v4.port}/redirect?to=http://[::ffff:a9fe:a9fe]/", timeout=TIMEOUT)
    assert all(path.startswith("/redirect") for path in v4.paths) and len(v4.paths) == 4


def test_guard_session_hardens_an_existing_session(v4):
    """For sessions built elsewhere (google-auth's AuthorizedSession): same adapters, same refusals."""
    session = guard_session(requests.Session(), allow_private=False, field="credentials.token_uri")
    with session:
        error = _refused_without_contact(session, f"http://127.0.0.1:{v4.port}/token", v4)
    assert str(error) == "credentials.token_uri: host 127.0.0.1 is a loopback address"
    assert session.trust_env is False


def test_google_authorized_session_can_be_guarded(v4):
    """The Sheets client's session type: guarding it after construction keeps google-auth's behaviour."""
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    session = guard_session(AuthorizedSession(AnonymousCredentials()), allow_private=False, field="api_url")
    with session:
        _refused_without_contact(session, f"http://127.0.0.1:{v4.port}/v4/spreadsheets/x", v4)
    session = guard_session(AuthorizedSession(AnonymousCredentials()), allow_private=True)
    with session:
        assert session.get(f"http://127.0.0.1:{v4.port}/v4/spreadsheets/x", timeout=TIMEOUT).text == "ok"


# -- (c) check_url ---------------------------------------------------------------------------------------

SLACK_HOSTS = ("slack.com", "hooks.slack.com")


@pytest.mark.parametrize("url, says", [
    ("gopher://slack.com/_x", "api_url: scheme gopher is not allowed (use https)"),
    ("file:///etc/passwd", "api_url: scheme file is not allowed (use https)"),
    ("http://slack.com/api", "api_url: scheme http is not allowed (use https)"),
    ("slack.com/api", "api_url: scheme (none) is not allowed (use https)"),
    ("https://user:pw@slack.com/api", "api_url: a user name or password in the URL is not allowed"),
    ("https://slack.com@evil.example/api", "api_url: a user name or password in the URL is not allowed"),
    ("https://slack.com/api#frag", "api_url: a fragment (#…) is not allowed"),
    ("https://slack.com/api?q=1", "api_url: a query (?…) is not allowed"),
    ("https://slack.com/api?", "api_url: a query (?…) is not allowed"),
    ("https://evil.example/api", "api_url: host evil.example is not an allowed host (allowed: hooks.slack.com, "
                                 "slack.com)"),
    ("https://slack.com.evil.example/", "api_url: host slack.com.evil.example is not an allowed host"),
    ("https://127.0.0.1/api", "api_url: host 127.0.0.1 is a loopback address"),
    ("https://2130706433/api", "api_url: host 2130706433 is a loopback address"),
    ("https://0x7f.1/api", "api_url: host 0x7f.1 is a loopback address"),
    ("https://[::1]/api", "api_url: host ::1 is a loopback address"),
    ("https://169.254.169.254/", "api_url: host 169.254.169.254 is a cloud metadata address"),
    ("https://10.0.0.1/", "api_url: host 10.0.0.1 is a private address"),
    ("https://8.8.8.8/", "api_url: host 8.8.8.8 is an IP address; use the vendor's host name"),
    ("https://localhost/api", "api_url: host localhost is a local-network name"),
    ("https://metadata.google.internal/", "api_url: host metadata.google.internal is a cloud metadata host"),
    ("https://slack.com:8443/api", "api_url: port 8443 is not allowed for slack.com (only 443)"),
    ("https://slack.com:99999/api", "api_url: not a valid URL (bad host or port)"),
    ("https://slack.com\\@evil.example/", "api_url: contains whitespace, control characters or a backslash"),
    ("https://slack.com /api", "api_url: contains whitespace, control characters or a backslash"),
    ("https://sl%61ck.com/api", "api_url: the URL's host is ambiguous"),
    ("https://slack.com_/api", "api_url: host slack.com_ is not a valid host name"),
    ("https://1.2.3.com.4/api", "api_url: host 1.2.3.com.4 is not a valid host name"),
    ("", "api_url: not a URL"),
])
def test_check_url_refuses_in_tenant_mode(url, says):
    with pytest.raises(UnsafeURL) as caught:
        check_url(url, field="api_url", allowed_hosts=SLACK_HOSTS, allow_private=False)
    assert str(caught.value).startswith(says)
    assert caught.value.code == "unsafe_url"


def test_check_url_refuses_ip_literals_even_when_listed():
    for host in ("127.0.0.1", "8.8.8.8", "2130706433", "[2001:4860:4860::8888]"):
        with pytest.raises(UnsafeURL, match="api_url: host"):
            check_url(f"https://{host}/", field="api_url", allowed_hosts=[host, host.strip("[]")],
                      allow_private=False)


def test_check_url_never_quotes_the_secret_parts():
    secret = "T000/B000/XXXXSECRETXXXX"
    for url in (f"http://hooks.slack.com/services/{secret}", f"https://evil.example/services/{secret}",
                f"https://hooks.slack.com/services/{secret}#x", f"https://u:{secret}@hooks.slack.com/"):
        with pytest.raises(UnsafeURL) as caught:
            check_url(url, field="webhook_url", allowed_hosts=SLACK_HOSTS, allow_private=False)
        assert "SECRET" not in str(caught.value) and str(caught.value).startswith("webhook_url: ")


@pytest.mark.parametrize("url, allowed, normal", [
    ("https://slack.com/api/", SLACK_HOSTS, "https://slack.com/api"),
    ("https://slack.com/api", SLACK_HOSTS, "https://slack.com/api"),
    ("HTTPS://Slack.COM:443/api/", SLACK_HOSTS, "https://slack.com/api"),
    ("https://slack.com./api/", SLACK_HOSTS, "https://slack.com/api"),
    ("https://hooks.slack.com/services/T0/B0/x", SLACK_HOSTS, "https://hooks.slack.com/services/T0/B0/x"),
    ("https://api.trello.com", ["api.trello.com"], "https://api.trello.com"),
    ("https://eu.api.example.com/v1/", ["*.example.com"], "https://eu.api.example.com/v1"),
    ("https://public-api.virtualpbx.com:8443", ["public-api.virtualpbx.com:8443"],
     "https://public-api.virtualpbx.com:8443"),
])
def test_check_url_accepts_listed_https_hosts(url, allowed, normal):
    assert check_url(url, field="api_url", allowed_hosts=allowed, allow_private=False) == normal


def test_check_url_suffix_pattern_is_not_the_bare_domain():
    with pytest.raises(UnsafeURL, match="not an allowed host"):
        check_url("https://example.com/", field="api_url", allowed_hosts=["*.example.com"], allow_private=False)
    with pytest.raises(UnsafeURL, match="port 443 is not allowed"):
        check_url("https://public-api.virtualpbx.com/", field="api_url",
                  allowed_hosts=["public-api.virtualpbx.com:8443"], allow_private=False)


def test_check_url_in_operator_mode():
    def ok(url: str) -> str:
        return check_url(url, field="api_url", allowed_hosts=(), allow_private=True)

    assert ok("http://127.0.0.1:5000/api/") == "http://127.0.0.1:5000/api"
    assert ok("http://localhost:8080") == "http://localhost:8080"
    assert ok("http://[::1]:8080/x/") == "http://[::1]:8080/x"
    assert ok("https://anything.example/v1?tenant=a") == "https://anything.example/v1?tenant=a"
    for url, says in [("gopher://127.0.0.1/", "scheme gopher is not allowed (use http or https)"),
                      ("file:///etc/passwd", "scheme file is not allowed"),
                      ("http://u:p@127.0.0.1/", "user name or password"),
                      ("http://127.0.0.1/#x", "fragment"),
                      ("http://169.254.169.254/", "cloud metadata address"),
                      ("http://metadata.google.internal/", "cloud metadata host")]:
        with pytest.raises(UnsafeURL, match=f"^api_url: .*{re.escape(says)}"):
            ok(url)


# -- (d) assert_public_address ---------------------------------------------------------------------------

@pytest.mark.parametrize("address, reason", [
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.1.1", "a link-local address"),
    ("10.0.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("172.16.0.1", "a private address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("127.0.0.1", "a loopback address"),
    ("0.0.0.0", "the unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.2.1", "a private address"),  # TEST-NET-1 (documentation)
    ("::1", "a loopback address"),
    ("::", "the unspecified address"),
    ("fe80::1", "a link-local address"),
    ("fc00::1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "a loopback address (127.0.0.1 inside an IPv6 address)"),
    ("::ffff:10.0.0.1", "a private address (10.0.0.1 inside an IPv6 address)"),
    ("64:ff9b::7f00:1", "a loopback address (127.0.0.1 inside an IPv6 address)"),  # NAT64
    ("2002:7f00:1::1", "a loopback address (127.0.0.1 inside an IPv6 address)"),  # 6to4
    ("fd00:ec2::254", "a cloud metadata address"),
    ("168.63.129.16", "a cloud metadata address"),
])
def test_assert_public_address_refuses(address, reason):
    with pytest.raises(UnsafeURL) as caught:
        assert_public_address(address, 443, allow_private=False, field="api_url")
    assert str(caught.value) == f"api_url: host {address} is {reason}"


def test_assert_public_address_accepts_public_literals_without_connecting():
    assert assert_public_address("8.8.8.8", 443, allow_private=False) == ["8.8.8.8"]
    assert assert_public_address("2001:4860:4860::8888", 443, allow_private=False) == ["2001:4860:4860::8888"]


def test_assert_public_address_in_operator_mode():
    assert assert_public_address("127.0.0.1", 80, allow_private=True) == ["127.0.0.1"]
    assert assert_public_address("10.0.0.1", 80, allow_private=True) == ["10.0.0.1"]
    with pytest.raises(UnsafeURL, match="cloud metadata address"):
        assert_public_address("169.254.169.254", 80, allow_private=True)


def test_metadata_names_are_refused_before_any_dns_query(monkeypatch):
    def no_dns(*args, **kwargs):
        raise AssertionError("resolved a name the guard must refuse by name")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for name in ("metadata.google.internal", "metadata.google.internal.", "METADATA", "metadata.goog"):
        for allow_private in (False, True):
            with pytest.raises(UnsafeURL, match="cloud metadata host"):
                assert_public_address(name, 80, allow_private=allow_private)
    with pytest.raises(UnsafeURL, match="local-network name"):
        assert_public_address("redis.internal", 6379, allow_private=False)


def test_unresolvable_names_are_retryable(monkeypatch):
    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    with pytest.raises(RetryableError, match="^api_url: cannot resolve host slack.com") as caught:
        assert_public_address("slack.com", 443, allow_private=False, field="api_url")
    assert caught.value.code == "dns"


def test_assert_url_public():
    assert assert_url_public("http://127.0.0.1:9/x", field="api_url", allow_private=True) == "http://127.0.0.1:9/x"
    for url, says in [("https://127.0.0.1/api/", "api_url: host 127.0.0.1 is a loopback address"),
                      ("https://[::ffff:7f00:1]/", "api_url: host ::ffff:7f00:1 is a loopback address"),
                      ("gopher://slack.com/", "api_url: scheme gopher is not allowed"),
                      ("https://localhost:8443/", "api_url: host localhost is a local-network name")]:
        with pytest.raises(UnsafeURL) as caught:
            assert_url_public(url, field="api_url", allow_private=False)
        assert str(caught.value).startswith(says)


def test_unsafe_url_survives_pickling_for_celery():
    error = pickle.loads(pickle.dumps(UnsafeURL("api_url: host 10.0.0.1 is a private address", code="unsafe_url")))
    assert type(error) is UnsafeURL and not error.retryable and error.code == "unsafe_url"
