"""URL images: redirects, slow and failing servers, size caps, and the private-address guard.

Servers run on 127.0.0.1 only. Tests of the guard use a resolver stand-in and treat the test
server's 127.0.0.1 as the one "public" address, so every other rule is the production rule.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from werkzeug import Response

from conftest import encode, noise_image, run_job
from vision_worker.errors import ImageError
from vision_worker.fetch import UrlFetcher, is_private_address

IMAGE = encode(noise_image(5))


def _only_test_server_is_public(address) -> bool:
    return str(address) != "127.0.0.1" and is_private_address(address)


def _fetcher(resolver=None, **overrides) -> UrlFetcher:
    options = {"timeout_s": 3.0, "max_bytes": 100_000, "retries": 2, "max_redirects": 3}
    options.update(overrides)
    if resolver is not None:
        options["resolver"] = resolver
        options["is_forbidden"] = _only_test_server_is_public
    return UrlFetcher(**options)


def _names(table: dict[str, list[str]]):
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host in table:
            answers = table[host]
            return [answers.pop(0)] if len(answers) > 1 else list(answers)
        return [str(ipaddress.ip_address(host))]  # literals resolve to themselves

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def _fetch_error(fetcher: UrlFetcher, url: str) -> ImageError:
    with pytest.raises(ImageError) as caught:
        fetcher.fetch(url)
    return caught.value


def test_follows_redirects_to_the_image(httpserver):
    httpserver.expect_request("/a").respond_with_data("", 302, {"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", 301, {"Location": "/img.png"})
    httpserver.expect_request("/img.png").respond_with_data(IMAGE, content_type="image/png")
    assert _fetcher(allow_private=True).fetch(httpserver.url_for("/a")) == IMAGE


def test_too_many_redirects_fail(httpserver):
    httpserver.expect_request("/loop").respond_with_data("", 302, {"Location": "/loop"})
    error = _fetch_error(_fetcher(allow_private=True), httpserver.url_for("/loop"))
    assert (error.code, error.message) == ("fetch_failed", "more than 3 redirects")


@pytest.mark.parametrize("status", [404, 500, 403])
def test_error_statuses_are_fetch_failed_with_the_status(httpserver, status):
    httpserver.expect_request("/x").respond_with_data("nope", status)
    error = _fetch_error(_fetcher(allow_private=True, retries=0), httpserver.url_for("/x"))
    assert error.code == "fetch_failed"
    assert f"HTTP {status}" in error.message


def test_transient_errors_are_retried_then_succeed(httpserver):
    httpserver.expect_oneshot_request("/flaky").respond_with_data("busy", 503)
    httpserver.expect_oneshot_request("/flaky").respond_with_data("slow down", 429)
    httpserver.expect_request("/flaky").respond_with_data(IMAGE)
    assert _fetcher(allow_private=True, retries=2).fetch(httpserver.url_for("/flaky")) == IMAGE
    assert len(httpserver.log) == 3


def test_retries_are_bounded(httpserver):
    httpserver.expect_request("/down").respond_with_data("busy", 503)
    error = _fetch_error(_fetcher(allow_private=True, retries=2), httpserver.url_for("/down"))
    assert "HTTP 503" in error.message
    assert len(httpserver.log) == 3


def test_declared_oversize_body_is_refused_before_reading(httpserver):
    httpserver.expect_request("/big").respond_with_data(b"x" * 200_000)
    error = _fetch_error(_fetcher(allow_private=True), httpserver.url_for("/big"))
    assert (error.code, "200000 bytes declared" in error.message) == ("too_large", True)


def test_undeclared_oversize_body_is_cut_at_the_limit(httpserver):
    def endless(_request):
        return Response((b"x" * 65536 for _ in range(100)), content_type="image/png")

    httpserver.expect_request("/stream").respond_with_handler(endless)
    error = _fetch_error(_fetcher(allow_private=True), httpserver.url_for("/stream"))
    assert error.code == "too_large"


def test_a_dripping_server_is_cut_at_the_total_deadline(httpserver):
    def drip(_request):
        def body():
            for _ in range(30):
                time.sleep(0.2)
                yield b"x"

        return Response(body(), content_type="image/png")

    httpserver.expect_request("/drip").respond_with_handler(drip)
    started = time.monotonic()
    error = _fetch_error(_fetcher(allow_private=True, timeout_s=1.0), httpserver.url_for("/drip"))
    assert error.code == "fetch_failed"
    assert "deadline" in error.message or "timed out" in error.message
    assert time.monotonic() - started < 2.5


def test_connection_refused_is_fetch_failed():
    error = _fetch_error(_fetcher(allow_private=True, retries=0), "http://127.0.0.1:9/x.png")
    assert error.code == "fetch_failed"


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_forbidden(address):
    assert is_private_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert not is_private_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://2130706433/x.png",  # decimal 127.0.0.1
        "http://0177.0.0.1/x.png",  # octal 127.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost/x.png",
    ],
)
def test_private_targets_are_forbidden_with_the_real_resolver(url):
    error = _fetch_error(_fetcher(retries=0), url)
    assert error.code == "forbidden_url", error.message


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "http://user:pass@example.com/a.png",
        "http://example.com@127.0.0.1/a.png",
        "http:///a.png",
    ],
)
def test_other_schemes_credentials_and_hostless_urls_are_forbidden(url):
    assert _fetch_error(_fetcher(), url).code == "forbidden_url"


def test_names_resolving_to_private_addresses_are_forbidden(httpserver):
    resolver = _names(
        {
            "intranet.test": ["10.1.2.3"],
            "metadata.test": ["169.254.169.254"],
            "ula.test": ["fd12::1"],
        }
    )
    fetcher = _fetcher(resolver)
    for host in ("intranet.test", "metadata.test", "ula.test"):
        error = _fetch_error(fetcher, f"http://{host}:{httpserver.port}/x.png")
        assert error.code == "forbidden_url"
        assert "non-public address" in error.message
    assert len(httpserver.log) == 0


def test_a_public_url_redirecting_to_a_private_address_is_forbidden(httpserver):
    target = "http://metadata.test/latest/meta-data/"
    httpserver.expect_request("/img").respond_with_data("", 302, {"Location": target})
    resolver = _names({"cdn.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"]})
    error = _fetch_error(_fetcher(resolver), f"http://cdn.test:{httpserver.port}/img")
    assert error.code == "forbidden_url"
    assert "169.254.169.254" in error.message


def test_a_redirect_to_file_scheme_is_forbidden(httpserver):
    httpserver.expect_request("/img").respond_with_data("", 302, {"Location": "file:///etc/passwd"})
    resolver = _names({"cdn.test": ["127.0.0.1"]})
    error = _fetch_error(_fetcher(resolver), f"http://cdn.test:{httpserver.port}/img")
    assert error.code == "forbidden_url"


def test_dns_rebinding_connects_to_the_address_that_was_checked(httpserver):
    httpserver.expect_request("/x.png").respond_with_data(IMAGE)
    # First answer public, every later answer private: a resolve-twice design would connect
    # to 10.0.0.9 after checking 127.0.0.1.
    resolver = _names({"rebind.test": ["127.0.0.1", "10.0.0.9"]})
    assert _fetcher(resolver).fetch(f"http://rebind.test:{httpserver.port}/x.png") == IMAGE
    assert resolver.calls == ["rebind.test"]


def test_url_errors_reach_the_job_as_per_image_results(make_worker, httpserver):
    httpserver.expect_request("/ok.png").respond_with_data(IMAGE)
    httpserver.expect_request("/gone.png").respond_with_data("", 404)
    worker = make_worker("resnet", ALLOW_PRIVATE_URLS=True, URL_RETRIES=0)
    output = run_job(
        worker, {"images": [httpserver.url_for("/ok.png"), httpserver.url_for("/gone.png")]}
    )
    assert "labels" in output["results"][0]
    assert output["results"][1]["error"]["code"] == "fetch_failed"
    assert "HTTP 404" in output["results"][1]["error"]["message"]


def test_private_urls_are_refused_by_default_in_the_worker(make_worker, httpserver):
    httpserver.expect_request("/ok.png").respond_with_data(IMAGE)
    output = run_job(make_worker("resnet"), {"image": httpserver.url_for("/ok.png")})
    assert output["results"][0]["error"]["code"] == "forbidden_url"
    assert len(httpserver.log) == 0


def test_a_name_with_one_private_answer_among_public_ones_is_forbidden(httpserver):
    fetcher = _fetcher(lambda host, port: ["127.0.0.1", "192.168.0.7"])
    error = _fetch_error(fetcher, f"http://mixed.test:{httpserver.port}/x.png")
    assert error.code == "forbidden_url"
    assert "192.168.0.7" in error.message


def test_a_download_breaking_off_mid_stream_is_fetch_failed(httpserver):
    def broken(_request):
        # Promises 50,000 bytes, sends 100, then the connection ends.
        return Response(iter([b"x" * 100]), headers={"Content-Length": "50000"})

    httpserver.expect_request("/broken.png").respond_with_handler(broken)
    error = _fetch_error(_fetcher(allow_private=True, retries=0), httpserver.url_for("/broken.png"))
    assert error.code == "fetch_failed"
    assert "broke off" in error.message


def test_the_urls_of_one_job_are_downloaded_concurrently(make_worker):
    import threading

    from pytest_httpserver import HTTPServer

    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()
    arrived = threading.Barrier(3, timeout=10)

    def slow_image(_request):
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            arrived.wait()  # returns only once three downloads are open at the same time
        finally:
            with lock:
                in_flight["now"] -= 1
        return Response(IMAGE, content_type="image/png")

    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.expect_request("/slow.png").respond_with_handler(slow_image)
    server.start()
    try:
        worker = make_worker("resnet", ALLOW_PRIVATE_URLS=True, URL_RETRIES=0)
        output = run_job(worker, {"images": [server.url_for("/slow.png")] * 3})
    finally:
        server.stop()
    assert all("labels" in result for result in output["results"]), output["results"]
    assert in_flight["most"] == 3
