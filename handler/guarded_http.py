"""HTTP sessions that connect only to public addresses, checked on the address actually connected to.

Checking a host name and then letting the HTTP library resolve it again leaves a gap: a second DNS
answer (rebinding) can point the real connection at loopback. Here the connection itself resolves the
name, keeps only the addresses ``is_public`` accepts, and connects to one of those, so what was checked
is what is used. TLS still verifies the certificate against the host name. Used for input downloads
redirected to another host (:mod:`handler.inputs`). ``is_public`` is injectable: tests count one
loopback address as public.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3 import connection as u3connection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_public_address(address: "ipaddress.IPv4Address | ipaddress.IPv6Address") -> bool:
    """Routable on the internet: not loopback, private, link-local, multicast, reserved or unspecified;
    an IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64) only if that one is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in IPV4_COMPATIBLE:
            return False
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


class AddressRefused(Exception):
    """The host resolves only to addresses the rule does not allow (loopback, private, ...)."""


def _guarded(base: type, is_public: Callable[..., bool]) -> type:
    class GuardedConnection(base):
        def _new_conn(self) -> socket.socket:
            try:
                infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise NewConnectionError(self, f"cannot resolve {self.host} ({exc})") from exc
            allowed = [info[4][:2] for info in infos if is_public(ipaddress.ip_address(info[4][0]))]
            if not allowed:
                raise AddressRefused(f"resolves only to addresses that are not public "
                                     f"({', '.join(sorted({info[4][0] for info in infos}))})")
            last: OSError | None = None
            for address in allowed:
                try:
                    return u3connection.connection.create_connection(
                        address, self.timeout, source_address=self.source_address,
                        socket_options=self.socket_options)
                except OSError as exc:
                    last = exc
            raise NewConnectionError(self, f"cannot connect to {self.host} ({last})")

    return GuardedConnection


class PublicOnlyAdapter(HTTPAdapter):
    def __init__(self, is_public: Callable[..., bool]) -> None:
        self._is_public = is_public
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_conn = _guarded(u3connection.HTTPConnection, self._is_public)
        https_conn = _guarded(u3connection.HTTPSConnection, self._is_public)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }


def guarded_session(is_public: Callable[..., bool]) -> requests.Session:
    """A session whose every connection goes to a public address (no proxies from the environment)."""
    session = requests.Session()
    session.trust_env = False
    adapter = PublicOnlyAdapter(is_public)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
