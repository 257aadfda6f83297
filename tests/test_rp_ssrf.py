"""The project's hostile-URL cases, run against runpod's own guard (runpod.serverless.utils.
rp_ssrf, SDK 1.12) as well as ours: the evidence behind fetch.py keeping its own guard.

Each case states what rp_ssrf does today. Where it differs from ours the test says so, and
fails when a new SDK changes it, so the decision gets revisited instead of silently going stale.
As in test_fetch.py, the test server's 127.0.0.1 plays the one "public" address and a stand-in
resolver answers for the test names; every other rule is the library's own.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import requests
from runpod.serverless.utils import rp_ssrf
from werkzeug import Response

from conftest import encode, noise_image
from vision_worker.fetch import UrlFetcher

IMAGE = encode(noise_image(5))
_real_getaddrinfo = socket.getaddrinfo
_real_is_safe = rp_ssrf.is_safe_address


@pytest.fixture
def names(monkeypatch):
    """Test names resolve through a table (first answer once, then the rest: rebinding), and
    127.0.0.1 counts as public; literals and real names resolve as usual."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            calls.append(host)
            answers = table[host]
            chosen = [answers.pop(0)] if len(answers) > 1 else list(answers)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in chosen]
        return _real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(rp_ssrf.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(
        rp_ssrf, "is_safe_address", lambda ip: ip == "127.0.0.1" or _real_is_safe(ip)
    )
    table.update(calls=calls)  # type: ignore[arg-type]
    return table


def _get(url: str, **kwargs) -> bytes:
    with rp_ssrf.safe_get(url, timeout=kwargs.pop("timeout", 3), **kwargs) as response:
        response.raise_for_status()
        return b"".join(rp_ssrf.iter_content_capped(response, 65536, kwargs.get("max_bytes")))


# --- where rp_ssrf holds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://2130706433/x.png",
        "http://0177.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost/x.png",
        "http://100.100.100.200/",
        "http://[fd00:ec2::254]/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http:///a.png",
    ],
)
def test_private_targets_and_other_schemes_are_refused(url):
    with pytest.raises(rp_ssrf.SSRFError):
        _get(url)


def test_names_resolving_to_private_addresses_are_refused(names, httpserver):
    names.update({"intranet.test": ["10.1.2.3"], "metadata.test": ["169.254.169.254"]})
    for host in ("intranet.test", "metadata.test"):
        with pytest.raises(rp_ssrf.SSRFError, match="non-public"):
            _get(f"http://{host}:{httpserver.port}/x.png")
    assert len(httpserver.log) == 0


def test_a_name_with_one_private_answer_among_public_ones_is_refused(names, monkeypatch):
    def mixed(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in ("127.0.0.1", "192.168.0.7")
        ]

    monkeypatch.setattr(rp_ssrf.socket, "getaddrinfo", mixed)
    with pytest.raises(rp_ssrf.SSRFError, match=r"192\.168\.0\.7"):
        _get("http://mixed.test/x.png")


def test_redirects_to_private_addresses_and_files_are_refused(names, httpserver):
    names.update({"cdn.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"]})
    httpserver.expect_request("/meta").respond_with_data(
        "", 302, {"Location": "http://metadata.test/latest/meta-data/"}
    )
    httpserver.expect_request("/file").respond_with_data("", 302, {"Location": "file:///etc/x"})
    for path in ("/meta", "/file"):
        with pytest.raises(rp_ssrf.SSRFError):
            _get(f"http://cdn.test:{httpserver.port}{path}")


def test_dns_rebinding_connects_to_the_address_that_was_checked(names, httpserver):
    httpserver.expect_request("/x.png").respond_with_data(IMAGE)
    names.update({"rebind.test": ["127.0.0.1", "10.0.0.9"]})
    assert _get(f"http://rebind.test:{httpserver.port}/x.png") == IMAGE
    assert names["calls"] == ["rebind.test"]


def test_declared_and_undeclared_oversize_bodies_are_cut(names, httpserver):
    httpserver.expect_request("/big").respond_with_data(b"x" * 5000)
    httpserver.expect_request("/endless").respond_with_handler(
        lambda _r: Response(iter([b"x" * 1000] * 50))
    )
    for path in ("/big", "/endless"):
        with pytest.raises(rp_ssrf.SSRFError, match="size cap"):
            _get(f"http://127.0.0.1:{httpserver.port}{path}", max_bytes=2000)


# --- where it differs from ours (fetch.py keeps its own guard for these) --------------------


def test_no_total_deadline_a_dripping_server_holds_the_download(names, httpserver):
    """Its timeout is per read: 15 drips 0.2 s apart take 3 s against timeout=1. Ours cuts the
    whole download at URL_TIMEOUT_S (test_fetch.py)."""

    def drip(_request):
        def body():
            for _ in range(15):
                time.sleep(0.2)
                yield b"x"

        return Response(body(), content_type="image/png")

    httpserver.expect_request("/drip").respond_with_handler(drip)
    started = time.monotonic()
    assert _get(f"http://127.0.0.1:{httpserver.port}/drip", timeout=1) == b"x" * 15
    assert time.monotonic() - started > 2.5


def test_no_retries_a_transient_503_is_the_answer(names, httpserver):
    """Ours retries 429/502/503/504 and connection errors (URL_RETRIES, test_fetch.py)."""
    httpserver.expect_ordered_request("/x.png").respond_with_data("busy", 503)
    httpserver.expect_ordered_request("/x.png").respond_with_data(IMAGE)
    with pytest.raises(requests.HTTPError, match="503"):
        _get(f"http://127.0.0.1:{httpserver.port}/x.png")


def test_credentials_in_the_url_are_sent_not_refused(names, httpserver):
    """Ours refuses user:password URLs (they end up in logs and error messages)."""
    httpserver.expect_request("/x.png").respond_with_data(IMAGE)
    names.update({"cdn.test": ["127.0.0.1"]})
    assert _get(f"http://user:secret@cdn.test:{httpserver.port}/x.png") == IMAGE
    assert httpserver.log[-1][0].headers["Authorization"].startswith("Basic ")


def test_a_proxy_in_the_environment_refuses_every_url(names, httpserver, monkeypatch):
    """Ours ignores proxy variables (they would route around the guard) and still fetches."""
    httpserver.expect_request("/x.png").respond_with_data(IMAGE)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(rp_ssrf.SSRFError, match="proxy"):
        _get(f"http://127.0.0.1:{httpserver.port}/x.png")


def test_the_private_address_switch_is_process_wide(names, httpserver, monkeypatch):
    """Its only switch is an environment variable read at each call, so one worker cannot hold
    a guarded fetcher and an open one (ours: UrlFetcher(allow_private=...))."""
    httpserver.expect_request("/x.png").respond_with_data(IMAGE)
    monkeypatch.setattr(rp_ssrf, "is_safe_address", _real_is_safe)
    url = f"http://127.0.0.1:{httpserver.port}/x.png"
    with pytest.raises(rp_ssrf.SSRFError):
        _get(url)
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    assert _get(url) == IMAGE


class _KeepAliveImage(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as CDNs serve; records each request's client port."""

    protocol_version = "HTTP/1.1"
    client_ports: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        self.client_ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        self.wfile.write(IMAGE)

    def log_message(self, *args) -> None:
        pass


def test_each_download_opens_a_new_connection():
    """A session per call: 8 downloads from one host are 8 TCP (and TLS) handshakes. Ours pools
    connections per host, so a job of many URLs on one CDN reuses them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveImage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    ports = _KeepAliveImage.client_ports
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rp_ssrf, "is_safe_address", lambda ip: ip == "127.0.0.1")
            for _ in range(8):
                assert _get(url) == IMAGE
        assert len(set(ports)) == 8

        ports.clear()
        ours = UrlFetcher(timeout_s=3, max_bytes=100_000, allow_private=True)
        for _ in range(8):
            assert ours.fetch(url) == IMAGE
        assert len(set(ports)) == 1
    finally:
        server.shutdown()
        server.server_close()
