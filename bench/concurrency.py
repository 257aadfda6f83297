"""Concurrency sweep through the pod-mode HTTP server: c = 1, 8, 16, 64 clients on 127.0.0.1.

The server runs as its own process (`python handler.py --serve`), exactly as on a pod; the load
generator is a bounded asyncio httpx client. Reports requests/s, p50/p95/p99 latency and the
batch sizes the dynamic batcher formed at each level. Writes concurrency.json and .png.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx

from common import (
    RESULTS,
    ROOT,
    best_batch_size,
    full_model,
    images_b64,
    percentile,
    report,
    save,
)

LEVELS = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,16,64").split(",")]
ARCH = os.environ.get("BENCH_CONCURRENCY_MODEL", "resnet")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    settings = {
        "MODEL_NAME": str(full_model(ARCH)),
        "MAX_BATCH_SIZE": str(best_batch_size(ARCH)),
        "BATCH_WAIT_MS": "10",
        "MAX_CONCURRENCY": "64",
        "LOG_LEVEL": "WARNING",
    }
    environment = {**os.environ, **settings}
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            # The server listens at once; /ping turns 200 when the model is ready.
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("pod server did not start")


async def sweep_level(url: str, concurrency: int, images: list[str]) -> dict:
    requests_total = max(32, 4 * concurrency)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests_total):
        queue.put_nowait(index)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            body = {"input": {"image": images[index % len(images)]}}
            started = time.perf_counter()
            response = await http.post(f"{url}/runsync", json=body)
            latencies.append(time.perf_counter() - started)
            assert response.json()["status"] == "COMPLETED", response.text[:300]

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        before = (await http.get(f"{url}/health")).json()["batches_by_size"]
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = (await http.get(f"{url}/health")).json()["batches_by_size"]
    formed = {
        size: after[size] - before.get(size, 0)
        for size in after
        if after[size] - before.get(size, 0)
    }
    batches = sum(formed.values())
    return {
        "concurrency": concurrency,
        "requests": requests_total,
        "requests_per_s": requests_total / elapsed,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
        "mean_batch_size": requests_total / batches if batches else 0.0,
        "batches_by_size": formed,
    }


def plot(levels: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [level["concurrency"] for level in levels]
    rate.plot(xs, [level["requests_per_s"] for level in levels], marker="o")
    rate.set_title(f"requests/s ({ARCH}, pod server)")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        latency.plot(xs, [level[key] for level in levels], marker="o", label=key[:3])
    latency.set_title("latency (ms)")
    latency.legend()
    for axis in (rate, latency):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(RESULTS / "concurrency.png", dpi=110)


def main() -> dict:
    port = _free_port()
    server = start_server(port)
    try:
        images = images_b64(16)
        levels = [asyncio.run(sweep_level(f"http://127.0.0.1:{port}", c, images)) for c in LEVELS]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"concurrency sweep, {ARCH} (full size) through the pod server:")
    for level in levels:
        report(
            f"c={level['concurrency']:<3} requests/s (p50 {level['p50_ms']:.0f} ms, "
            f"p99 {level['p99_ms']:.0f} ms, mean batch {level['mean_batch_size']:.1f})",
            level["requests_per_s"],
            unit="",
        )
    report(
        "requests/s at c=64 / at c=1", levels[-1]["requests_per_s"] / levels[0]["requests_per_s"]
    )
    save("concurrency", {"model": ARCH, "levels": levels})
    plot(levels)
    return {"levels": levels}


if __name__ == "__main__":
    main()
