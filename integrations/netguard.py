"""The outbound-URL guard: tenant-supplied URLs reach only public vendor hosts, never this network.

Tenants' rules files choose URLs we connect to (a connection's ``api_url``, a Slack ``webhook_url``,
the ``token_uri`` of a Google service-account key). Without a guard a tenant could aim our workers,
with their credentials and error reporting, at ``http://169.254.169.254/`` (cloud metadata),
``http://127.0.0.1:6379/`` (our Redis) or ``gopher://…``. Two layers stop that:

1. :func:`check_url`, when a config is validated: scheme, userinfo, query/fragment, host allow-list,
   port. Cheap, and it tells the tenant what is wrong before anything runs.
2. At connect time, after DNS: :class:`GuardedAdapter` (for ``requests``) resolves the host once,
   refuses the whole host if any answer is not a public address, and connects the socket to the
   address it checked. A second resolution never happens, so DNS rebinding (a public answer for the
   check, a private one for the connect) has no window. TLS still verifies and sends SNI for the
   host name, and the Host header is unchanged: only *where the socket goes* is pinned.
   :func:`guarded_session` wraps that in a Session that refuses other schemes, proxies and, by
   default, redirects. The pattern is the one of the ``advocate`` library (connection classes whose
   ``_new_conn`` validates and connects), rebuilt here to fit urllib3 2.x.

``allow_private=True`` is the operator's switch for the sandbox and tests, whose stand-ins listen
on 127.0.0.1: then any host and plain http are fine, but cloud metadata endpoints stay refused.

This module imports nothing from service/ or workers/ (integrations/ stays standalone).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection
from urllib3.util import parse_url
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from integrations.base import PermanentError, RetryableError

__all__ = ["UnsafeURL", "check_url", "assert_public_address", "assert_url_public", "address_refusal",
           "GuardedAdapter", "guarded_session", "guard_session"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud metadata services: refused even with allow_private, because no sandbox needs them and they
# hand out the host's credentials. (169.254.169.254: AWS/GCP/Azure/OpenStack; fd00:ec2::254: AWS
# IPv6; 100.100.100.200: Alibaba; 168.63.129.16: Azure wireserver, a *public* address that reaches
# the host platform; 192.0.0.192: Oracle.)
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192"))
_METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                             "instance-data.ec2.internal"})
# Names that only ever mean this machine or its private network; refused in tenant mode before any
# DNS query (the address check would catch most, but a split-horizon resolver might answer publicly).
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan", ".intranet")

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# One DNS label: letters, digits, inner hyphens; the whole name lower-case ASCII (IDNs arrive as xn--).
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
# WHATWG treats a host whose last label is numeric as IPv4 (127.1, 0x7f.1, 2130706433), and so does
# inet_aton, which getaddrinfo uses: such a host is an address, never a name to allow-list.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# Whitespace, controls and backslashes are where URL parsers disagree (urlsplit vs urllib3 vs a
# browser); a vendor URL never needs them.
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeURL(PermanentError):
    """A URL or address the guard refuses; the message names the field and never quotes secrets."""


def _show(host: str) -> str:
    """The host as error text: short, since a refused host is tenant input."""
    return host if len(host) <= 100 else host[:100] + "…"


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host string denotes by itself (any inet_aton form, or IPv6), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        # inet_aton is what getaddrinfo applies to a numeric host: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why connecting to ``ip`` is refused (e.g. "a loopback address"), or None when it is allowed."""
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address can carry an IPv4 one that the network may end up reaching: judge that too.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_refusal(embedded, allow_private=allow_private)
            if inner:
                return f"{inner} ({embedded} inside an IPv6 address)"
    if allow_private:
        return None
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _name_refusal(host: str, *, allow_private: bool) -> str | None:
    """Why a host *name* is refused before any DNS query, or None."""
    name = host.rstrip(".").lower()
    if name in _METADATA_NAMES:
        return "a cloud metadata host"
    if not allow_private and (name == "localhost" or name.endswith(_LOCAL_SUFFIXES)):
        return "a local-network name"
    return None


def check_url(url: str, *, field: str, allowed_hosts: Collection[str], allow_private: bool) -> str:
    """Validate a configured URL statically and return it normalised (no trailing slash), or raise UnsafeURL."""
    if not isinstance(url, str) or not url:
        raise UnsafeURL(f"{field}: not a URL", code="unsafe_url")
    if _BAD_URL_CHARS.search(url):
        raise UnsafeURL(f"{field}: contains whitespace, control characters or a backslash", code="unsafe_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL(f"{field}: not a valid URL (bad host or port)", code="unsafe_url") from None
    scheme = parts.scheme.lower()
    wanted = "http or https" if allow_private else "https"
    if scheme not in (("http", "https") if allow_private else ("https",)):
        shown = scheme if re.fullmatch(r"[a-z][a-z0-9+.-]{0,20}", scheme) else "other" if scheme else "(none)"
        raise UnsafeURL(f"{field}: scheme {shown} is not allowed (use {wanted})", code="unsafe_url")
    if "@" in parts.netloc:
        # userinfo is both a secret in the config and a classic parser-confusion trick.
        raise UnsafeURL(f"{field}: a user name or password in the URL is not allowed", code="unsafe_url")
    if "#" in url:
        # A fragment silently drops every path the client appends to this base URL.
        raise UnsafeURL(f"{field}: a fragment (#…) is not allowed", code="unsafe_url")
    if not allow_private and "?" in url:
        # Clients append paths to the base URL; after a "?" those become query text and the tenant's own
        # path picks the exact endpoint called with our credentials.
        raise UnsafeURL(f"{field}: a query (?…) is not allowed", code="unsafe_url")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL(f"{field}: the URL has no host", code="unsafe_url")
    # The HTTP stack parses the URL again with urllib3; both parsers must agree on where it goes.
    try:
        other = parse_url(url)
    except ValueError:
        raise UnsafeURL(f"{field}: not a valid URL", code="unsafe_url") from None
    if (other.host or "").strip("[]").rstrip(".").lower() != host or other.port != port:
        raise UnsafeURL(f"{field}: the URL's host is ambiguous", code="unsafe_url")

    literal = _ip_literal(host)
    if literal is not None:
        reason = address_refusal(literal, allow_private=allow_private)
        if reason:
            raise UnsafeURL(f"{field}: host {_show(host)} is {reason}", code="unsafe_url")
        if not allow_private:
            # Even when listed: vendors are reached by name, and who answers at a given address can change.
            raise UnsafeURL(f"{field}: host {_show(host)} is an IP address; use the vendor's host name",
                            code="unsafe_url")
    else:
        reason = _name_refusal(host, allow_private=allow_private)
        if reason:
            raise UnsafeURL(f"{field}: host {_show(host)} is {reason}", code="unsafe_url")
    if not allow_private:
        if not _DNS_NAME.match(host) or _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
            raise UnsafeURL(f"{field}: host {_show(host)} is not a valid host name", code="unsafe_url")
        allowed_ports = _allowed_ports(host, allowed_hosts)
        if not allowed_ports:
            listed = ", ".join(sorted(allowed_hosts)) or "none"
            raise UnsafeURL(f"{field}: host {_show(host)} is not an allowed host (allowed: {listed})",
                            code="unsafe_url")
        if (port or 443) not in allowed_ports:
            only = ", ".join(str(p) for p in sorted(allowed_ports))
            raise UnsafeURL(f"{field}: port {port or 443} is not allowed for {host} (only {only})", code="unsafe_url")

    shown_host = f"[{host}]" if ":" in host else host
    port_part = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    normal = f"{scheme}://{shown_host}{port_part}{parts.path.rstrip('/')}"
    return normal + (f"?{parts.query}" if parts.query else "")


def _allowed_ports(host: str, allowed_hosts: Collection[str]) -> set[int]:
    """The ports the allow-list grants ``host``: 443 per matching entry, or N for an entry written ``name:N``."""
    ports = set()
    for entry in allowed_hosts:
        pattern, _, port_text = entry.strip().lower().partition(":")
        port = int(port_text) if port_text.isdigit() else 443
        # "*.example.com" matches any name below example.com, never example.com itself.
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            ports.add(port)
    return ports


def _resolve(host: str, port: int, *, field: str, allow_private: bool) -> list[tuple]:
    """getaddrinfo(host, port) with every answer checked; UnsafeURL if any answer is refused."""
    bare = host.strip("[]")
    if bare.endswith(".") and _ip_literal(bare.rstrip(".")) is not None:
        bare = bare.rstrip(".")  # "127.0.0.1." is an address to browsers; judge it as one, without asking DNS
    reason = _name_refusal(bare, allow_private=allow_private)
    if reason:
        raise UnsafeURL(f"{field}: host {_show(bare)} is {reason}", code="unsafe_address")
    infos = socket.getaddrinfo(bare, port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, "no addresses")
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        reason = address_refusal(ip, allow_private=allow_private)
        if reason:
            # The whole host, not just this answer: a vendor never publishes a private address, so a
            # mixed answer is an attack, and skipping would still let it probe which ones are up.
            said = f"is {reason}" if _ip_literal(bare) == ip else f"resolves to {ip}, {reason}"
            raise UnsafeURL(f"{field}: host {_show(bare)} {said}", code="unsafe_address")
    return infos


def assert_public_address(host: str, port: int, *, allow_private: bool, field: str = "url") -> list[str]:
    """Resolve ``host`` and return its addresses; UnsafeURL if any is not public, RetryableError if DNS fails."""
    try:
        infos = _resolve(host, port, field=field, allow_private=allow_private)
    except socket.gaierror as exc:
        raise RetryableError(f"{field}: cannot resolve host {_show(host)}: {exc.strerror or exc}",
                             code="dns") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def assert_url_public(url: str, *, field: str, allow_private: bool) -> str:
    """Check an http(s) URL's host resolves only to allowed addresses, for clients that bypass requests (slack-sdk).

    This is a check, not a pin: the client resolves the name again when it connects, so a hostile
    DNS server could answer differently in between (TOCTOU, DNS rebinding), and urllib follows
    redirects on its own. It is sound only together with check_url's host allow-list, which limits
    the names to vendor hosts whose DNS we trust; prefer guarded_session wherever the client allows.
    """
    if not isinstance(url, str) or _BAD_URL_CHARS.search(url):
        raise UnsafeURL(f"{field}: not a usable URL", code="unsafe_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL(f"{field}: not a valid URL (bad host or port)", code="unsafe_url") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURL(f"{field}: scheme {scheme or '(none)'} is not allowed", code="unsafe_url")
    if not parts.hostname:
        raise UnsafeURL(f"{field}: the URL has no host", code="unsafe_url")
    assert_public_address(parts.hostname, port or _DEFAULT_PORTS[scheme], allow_private=allow_private,
                          field=field)
    return url


# -- requests / urllib3 integration ----------------------------------------------------------------

class _GuardedConnectionMixin:
    """urllib3 connection whose socket goes only to an address checked in the same resolution."""

    _allow_private: bool = False
    _guard_field: str = "url"

    def _new_conn(self) -> socket.socket:
        # Mirrors urllib3's HTTPConnection._new_conn + util.connection.create_connection, with the
        # check between getaddrinfo and connect. HTTPSConnection.connect wraps the returned socket
        # with SNI and certificate checks for self.host, so only the socket's destination changes.
        try:
            infos = _resolve(self._dns_host, self.port, field=self._guard_field,  # type: ignore[attr-defined]
                             allow_private=self._allow_private)
            sock = _connect_first(infos, self.timeout, self.source_address,  # type: ignore[attr-defined]
                                  self.socket_options)  # type: ignore[attr-defined]
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined, arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "  # type: ignore[attr-defined]
                                            f"(connect timeout={self.timeout})") from exc  # type: ignore[attr-defined]
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
        sys.audit("http.client.connect", self, self.host, self.port)  # type: ignore[attr-defined]
        return sock


def _connect_first(infos: list[tuple], timeout: Any, source_address: Any, socket_options: Any) -> socket.socket:
    """Connect to the first reachable checked address (urllib3's create_connection loop, minus its getaddrinfo)."""
    error: OSError | None = None
    for family, socktype, proto, _canonname, sockaddr in infos:
        sock = None
        try:
            sock = socket.socket(family, socktype, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            if sock is not None:
                sock.close()
    raise error if error is not None else OSError("getaddrinfo returned no addresses")


@functools.cache
def _pool_classes(allow_private: bool, field: str) -> dict[str, type]:
    """Pool classes per scheme whose connections carry this policy (classes, since urllib3 builds them)."""
    policy = {"_allow_private": allow_private, "_guard_field": field}
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), policy)
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), policy)
    return {"http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})}


class GuardedAdapter(HTTPAdapter):
    """requests adapter whose every connection (redirect hops too) is checked after DNS and pinned to that address."""

    __attrs__ = [*HTTPAdapter.__attrs__, "allow_private", "field"]

    def __init__(self, *, allow_private: bool, field: str = "url", **kwargs: Any) -> None:
        # Set before super().__init__, which builds the pool manager that needs them.
        self.allow_private = allow_private
        self.field = field
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Build requests' pool manager, then swap in the guarded pool classes."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.allow_private, self.field)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Refuse proxies: behind one, the target is resolved by the proxy and the guard sees only the proxy."""
        raise UnsafeURL(f"{self.field}: requests through a proxy are not allowed by the outbound guard",
                        code="unsafe_proxy")


class _RefusingAdapter(BaseAdapter):
    """Catch-all adapter for every scheme but http/https (file:, gopher:, ftp:, …): refuses to send."""

    def __init__(self, field: str) -> None:
        super().__init__()
        self.field = field

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        """Raise UnsafeURL naming the scheme."""
        scheme = (request.url or "").split(":", 1)[0].lower()
        shown = scheme if re.fullmatch(r"[a-z][a-z0-9+.-]{0,20}", scheme) else "other"
        raise UnsafeURL(f"{self.field}: scheme {shown} is not allowed", code="unsafe_url")

    def close(self) -> None:
        """Nothing to release."""


def guard_session(session: requests.Session, *, allow_private: bool, max_redirects: int = 0,
                  field: str = "url") -> requests.Session:
    """Harden an existing Session (e.g. google-auth's AuthorizedSession) in place and return it."""
    session.trust_env = False  # HTTP(S)_PROXY would route around the guard; .netrc would add credentials
    session.adapters.clear()
    session.mount("", _RefusingAdapter(field))  # shortest prefix: only reached when no http(s) prefix matches
    session.mount("http://", GuardedAdapter(allow_private=allow_private, field=field))
    session.mount("https://", GuardedAdapter(allow_private=allow_private, field=field))
    session.max_redirects = max_redirects
    if max_redirects <= 0:
        # requests would raise TooManyRedirects (a "network error" to our callers) at 0; instead the
        # 3xx is returned as is, and no Location (which keeps custom auth headers) is ever followed.
        session.get_redirect_target = lambda response: None  # type: ignore[method-assign]
    return session


def guarded_session(*, allow_private: bool, max_redirects: int = 0, field: str = "url") -> requests.Session:
    """A requests Session for tenant-chosen URLs: http/https only, no proxies, no redirects unless asked."""
    return guard_session(requests.Session(), allow_private=allow_private, max_redirects=max_redirects, field=field)
