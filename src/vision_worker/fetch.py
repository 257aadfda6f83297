"""Safe image download: http(s) only, no private or metadata addresses, total deadline, byte cap.

The address check happens where the socket is opened, on the exact address that was checked:
resolving once to validate and again to connect would let a DNS answer change in between
(DNS rebinding). Redirects are followed by hand so every hop is checked the same way.

Why not runpod's own guard (runpod.serverless.utils.rp_ssrf, SDK 1.12)? tests/test_rp_ssrf.py
runs our hostile-URL cases against it. Its address rules hold: private, loopback, metadata and
mixed answers, obfuscated literals, redirects to them or to file:, DNS rebinding, size caps. What
fails for a serving worker: a dripping server holds a download past any deadline (its timeout is
per read); a 503 is final (no retries); each download is a new session, so a job of 64 URLs on
one CDN pays 64 TCP+TLS handshakes where this pool reuses connections; its private-address switch
is a process-wide environment variable; it refuses every URL when a proxy variable is set; and it
has no POST for webhooks. Built on it, this module would keep all of its own code for those and
gain a second guard, so it keeps one.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.util import Retry, connection

from .config import Settings
from .errors import ImageError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> addresses, like the useful part of socket.getaddrinfo; tests pass a stand-in.
Resolver = Callable[[str, int], list[str]]
AddressPolicy = Callable[[Address], bool]

_CHUNK_BYTES = 64 * 1024
# Statuses worth another try: the server said "later" or a proxy in front of it hiccuped.
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


_JSON_HEADERS = {"Content-Type": "application/json"}


class _Watchdog:
    """One thread that shuts down the sockets of downloads past their total deadline.

    requests' timeouts are per socket operation, so a server that drips its headers one byte a
    second holds a download (and its thread) for as long as it likes. Each download registers
    the connections it uses (new or reused from the pool) while it runs; at its deadline they
    are shut down, the blocked read returns at once, and the thread is free.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, set]] = []
        self._wake = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self.local = threading.local()

    @contextmanager
    def watching(self, deadline: float) -> Iterator[None]:
        connections: set = set()
        entry = (deadline, next(self._order), connections)
        self.local.connections, self.local.deadline = connections, deadline
        with self._wake:
            heapq.heappush(self._due, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fetch-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        try:
            yield
        finally:
            self.local.connections = self.local.deadline = None
            connections.clear()  # finished in time: nothing left to cut

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(timeout)
                _, _, connections = heapq.heappop(self._due)
                overdue = list(connections)
            for connection_ in overdue:
                sock = getattr(connection_, "sock", None)
                # Back in the pool and reused by another download since: not ours to cut.
                if sock is not None and getattr(connection_, "watched_by", None) is connections:
                    with suppress(OSError):  # closed meanwhile
                        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


def _time_left(timeout: Any) -> Any:
    """A connection attempt's timeout, within the running download's total deadline."""
    deadline = getattr(_WATCHDOG.local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise ConnectTimeoutError(None, "the download's deadline passed before connecting")
    return left if not isinstance(timeout, (int, float)) else min(timeout, left)


class _DeadlineRetry(Retry):
    """urllib3's retries, their backoff cut to the running download's deadline: a retry after a
    failed connect must not sleep past URL_TIMEOUT_S (the attempt after it fails at once)."""

    def get_backoff_time(self) -> float:
        deadline = getattr(_WATCHDOG.local, "deadline", None)
        backoff = super().get_backoff_time()
        return backoff if deadline is None else max(0.0, min(backoff, deadline - time.monotonic()))


class ForbiddenAddress(Exception):
    """Raised inside the connection; deliberately not an OSError so urllib3 does not retry it."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for host."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_private_address(address: Address) -> bool:
    """True for anything but a public unicast address: private, loopback, link-local (cloud
    metadata at 169.254.169.254), shared (100.64/10), unique-local, multicast, reserved."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def allow_every_address(address: Address) -> bool:
    return False


class _GuardedConnectionMixin:
    """Resolves the host itself, refuses forbidden addresses, connects to a checked one."""

    resolver: Resolver
    is_forbidden: AddressPolicy

    def _new_conn(self) -> socket.socket:
        host, port = self._dns_host, self.port  # type: ignore[attr-defined]
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, UnicodeError) as error:
            raise NewConnectionError(self, f"cannot resolve {host!r}: {error}") from error
        if not addresses:
            raise NewConnectionError(self, f"{host!r} resolves to no address")
        # Any forbidden answer refuses the host: a name with one private address is not public.
        forbidden = [a for a in addresses if self.is_forbidden(a)]
        if forbidden:
            raise ForbiddenAddress(f"{host} resolves to a non-public address ({forbidden[0]})")
        last_error: OSError | None = None
        for address in addresses:
            try:
                return connection.create_connection(
                    (str(address), port),
                    _time_left(self.timeout),  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options,  # type: ignore[attr-defined]
                )
            except TimeoutError as error:
                raise ConnectTimeoutError(self, f"connect to {host} timed out") from error
            except OSError as error:
                last_error = error
        raise NewConnectionError(self, f"cannot connect to {host}: {last_error}")

    def request(self, *args: Any, **kwargs: Any) -> Any:
        watched = getattr(_WATCHDOG.local, "connections", None)
        if watched is not None:
            watched.add(self)  # cut at the download's deadline, whether new or from the pool
            self.watched_by = watched  # the download using it now (the pool hands it on)
        return super().request(*args, **kwargs)  # type: ignore[misc]


def _guarded_adapter(resolver: Resolver, policy: AddressPolicy, retries: int) -> HTTPAdapter:
    guard = {"resolver": staticmethod(resolver), "is_forbidden": staticmethod(policy)}
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), guard)
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), guard)
    http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    retry = _DeadlineRetry(
        total=retries,
        connect=retries,
        read=0,
        redirect=False,  # followed by hand in UrlFetcher.fetch
        status_forcelist=_TRANSIENT_STATUSES,
        allowed_methods={"GET"},
        backoff_factor=0.2,
        backoff_max=2.0,
        respect_retry_after_header=False,  # a server must not choose how long we stall
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
    adapter.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
    return adapter


class UrlFetcher:
    """Downloads one image URL within a total deadline and a byte cap; failures are ImageErrors."""

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlFetcher:
        """The fetcher the settings ask for: image downloads and webhooks share its guard."""
        return cls(
            timeout_s=settings.URL_TIMEOUT_S,
            max_bytes=settings.MAX_IMAGE_BYTES,
            retries=settings.URL_RETRIES,
            max_redirects=settings.MAX_REDIRECTS,
            allow_private=settings.ALLOW_PRIVATE_URLS,
        )

    def __init__(
        self,
        *,
        timeout_s: float,
        max_bytes: int,
        retries: int = 2,
        max_redirects: int = 5,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
        is_forbidden: AddressPolicy = is_private_address,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        policy = allow_every_address if allow_private else is_forbidden
        self._session = requests.Session()
        # Proxy variables would route around the address guard.
        self._session.trust_env = False
        self._session.headers["User-Agent"] = "vision-worker/0.1 (+image fetch)"
        adapter = _guarded_adapter(resolver, policy, retries)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        with _WATCHDOG.watching(deadline):
            return self._fetch(url, deadline)

    def _fetch(self, url: str, deadline: float) -> bytes:
        for _hop in range(self.max_redirects + 1):
            check_url_shape(url)
            response = self._get(url, deadline)
            with response:
                if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                    url = _joined(url, response.headers["location"])
                    continue
                if response.status_code >= 400:
                    raise ImageError(
                        "fetch_failed", f"{_redact(url)} returned HTTP {response.status_code}"
                    )
                return self._read_body(response, deadline, url)
        raise ImageError("fetch_failed", f"more than {self.max_redirects} redirects")

    def post_json(self, url: str, body: Any) -> int:
        """POST JSON (a value, or bytes already encoded) through the same address guard (job
        webhooks); the HTTP status, or raises ImageError. Redirects are not followed: a webhook
        that moved is a failed delivery. Connect, headers and all are within URL_TIMEOUT_S."""
        if isinstance(body, bytes):
            payload: dict[str, Any] = {"data": body, "headers": _JSON_HEADERS}
        else:
            payload = {"json": body}
        check_url_shape(url)
        try:
            with _WATCHDOG.watching(time.monotonic() + self.timeout_s):
                # stream=True: the status is all a delivery needs; a receiver that answers with
                # an endless body is never read (it used to be, 2 GB of it).
                response = self._session.post(
                    url,
                    **payload,
                    allow_redirects=False,
                    stream=True,
                    timeout=(self.timeout_s, self.timeout_s),
                )
                response.close()
        except ForbiddenAddress as error:
            raise ImageError("forbidden_url", str(error)) from None
        except requests.exceptions.RequestException as error:
            raise ImageError(
                "fetch_failed", f"cannot reach {_redact(url)}: {_reason(error)}"
            ) from None
        return response.status_code

    def _get(self, url: str, deadline: float) -> requests.Response:
        remaining = _remaining(deadline, url)
        try:
            return self._session.get(
                url, stream=True, allow_redirects=False, timeout=(remaining, remaining)
            )
        except ForbiddenAddress as error:
            raise ImageError("forbidden_url", str(error)) from None
        except requests.exceptions.InvalidSchema:
            raise ImageError("forbidden_url", f"scheme not allowed in {_redact(url)}") from None
        except requests.exceptions.Timeout:
            raise ImageError("fetch_failed", f"timed out fetching {_redact(url)}") from None
        except requests.exceptions.RequestException as error:
            raise ImageError(
                "fetch_failed", f"cannot fetch {_redact(url)}: {_reason(error)}"
            ) from None

    def _read_body(self, response: requests.Response, deadline: float, url: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageError(
                "too_large", f"{declared} bytes declared, over the {self.max_bytes}-byte limit"
            )
        body = bytearray()
        try:
            # read1 returns what has arrived instead of waiting to fill the chunk, so the
            # deadline is checked between the drips of a slow server.
            while chunk := response.raw.read1(_CHUNK_BYTES):
                body += chunk
                if len(body) > self.max_bytes:
                    raise ImageError(
                        "too_large", f"download is over the {self.max_bytes}-byte limit"
                    )
                _remaining(deadline, url)
        except (requests.exceptions.RequestException, HTTPError, OSError) as error:
            raise ImageError(
                "fetch_failed", f"download of {_redact(url)} broke off: {_reason(error)}"
            ) from None
        return bytes(body)


def check_url_shape(url: str) -> None:
    """Reject what no address check is needed for: other schemes, credentials, no host, and
    what does not parse as a URL at all (`http://[::1`)."""
    try:
        parts = urlsplit(url)
        parts.hostname, parts.port  # noqa: B018 (both parse lazily and raise on a bad netloc)
    except ValueError as error:
        raise ImageError("invalid_image", f"not a valid URL: {error}") from None
    if parts.scheme.lower() not in {"http", "https"}:
        raise ImageError(
            "forbidden_url", f"only http and https URLs are allowed, got {parts.scheme!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ImageError("forbidden_url", "URLs with user credentials are not allowed")
    if not parts.hostname:
        raise ImageError("forbidden_url", "URL has no host")


def _remaining(deadline: float, url: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageError("fetch_failed", f"download of {_redact(url)} exceeded its deadline")
    return remaining


def _joined(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError as error:
        raise ImageError("fetch_failed", f"redirect to an invalid URL: {error}") from None


def _redact(url: str) -> str:
    """Scheme, host and path only: query strings often carry signed-URL secrets."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"[:200]
    except ValueError:
        return "(an invalid URL)"


def _reason(error: Any) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"[:200]
