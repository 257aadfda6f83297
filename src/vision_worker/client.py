"""Send local images, folders or URLs to a vision-worker endpoint; print one JSON line per image.

    export RUNPOD_API_KEY=...
    vision-worker-client --endpoint https://api.runpod.ai/v2/<endpoint_id> photos/ cat.jpg
    vision-worker-client --endpoint http://<pod>:8000 --sync https://example.com/dog.png

Serverless endpoints and pods speak the same API, so one client serves both. Jobs go out in
groups of --images-per-job (the worker batches them on the GPU), several jobs at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util import Retry

from .inputs import ImageSource, InputError, collect_sources, parse_options

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class EndpointError(RuntimeError):
    """The endpoint failed a whole job (invalid job, timeout, cancelled)."""


class EndpointClient:
    """/runsync or /run + /status polling against a RunPod endpoint or a pod, with retries."""

    def __init__(
        self, endpoint: str, api_key: str | None, *, timeout_s: float = 600.0, poll_s: float = 0.5
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        # 429 and gateway errors are transient on RunPod; connection errors are retried too.
        retry = Retry(
            total=5,
            backoff_factor=0.5,
            status_forcelist={429, 502, 503, 504},
            allowed_methods={"GET", "POST"},
            raise_on_status=False,
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def check_reachable(self) -> None:
        """One quick GET /health without retries: a wrong URL or a server that is down fails in
        seconds with one line, instead of after every job's retries."""
        try:
            response = requests.get(
                f"{self.endpoint}/health", timeout=5, headers=dict(self.session.headers)
            )
        except requests.RequestException as error:
            reason = type(error).__name__.replace("Error", " error").strip()
            raise EndpointError(f"cannot reach {self.endpoint} ({reason})") from None
        if response.status_code == 401:
            raise EndpointError("unauthorized: set RUNPOD_API_KEY (or the pod's POD_API_KEY)")

    def run_sync(self, job_input: dict[str, Any]) -> dict[str, Any]:
        state = self._post("runsync", {"input": job_input})
        # RunPod answers IN_PROGRESS when a job outlives its runsync wait; keep polling then.
        return self._wait(state)

    def run_async(self, job_input: dict[str, Any]) -> dict[str, Any]:
        return self._wait(self._post("run", {"input": job_input}))

    def _wait(self, state: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while state.get("status") not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise EndpointError(f"job {state.get('id')} not finished after {self.timeout_s}s")
            time.sleep(self.poll_s)
            state = self._get(f"status/{state['id']}")
        if state["status"] != "COMPLETED":
            raise EndpointError(f"job {state.get('id')} {state['status']}: {state.get('error')}")
        output = state["output"]
        # An endpoint with STREAM_RESULTS=true answers with its stream's chunks.
        return merge_stream(output) if isinstance(output, list) else output

    def _post(self, path: str, body: dict) -> dict[str, Any]:
        return self._check(self.session.post(f"{self.endpoint}/{path}", json=body, timeout=120))

    def _get(self, path: str) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.endpoint}/{path}", timeout=60))

    @staticmethod
    def _check(response: requests.Response) -> dict[str, Any]:
        if response.status_code == 401:
            raise EndpointError("unauthorized: set RUNPOD_API_KEY (or the pod's POD_API_KEY)")
        response.raise_for_status()
        return response.json()


def merge_stream(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A streamed job's chunks (RunPod's aggregated /run output, or the "output" of each
    /stream item) as the one output a non-streaming job gives: results back in image order."""
    output: dict[str, Any] = {}
    by_index: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if "error" in chunk:
            return {key: chunk[key] for key in ("error", "error_code") if key in chunk}
        for result in chunk.get("results", []):
            index, rest = result["index"], {k: v for k, v in result.items() if k != "index"}
            by_index[index] = rest
        # "text" chunks are answers as they grew; each result holds its whole answer.
        output |= {k: v for k, v in chunk.items() if k not in ("results", "text")}
    return {"results": [by_index[i] for i in sorted(by_index)], **output}


def _chunks(sources: list[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for start in range(0, len(sources), size):
        yield sources[start : start + size]


def run_images(
    client: EndpointClient,
    sources: list[ImageSource],
    options: dict[str, Any],
    *,
    images_per_job: int = 16,
    concurrency: int = 4,
    sync: bool = False,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one record per image, in input order: {"source": ..., **result} or an error."""
    send = client.run_sync if sync else client.run_async

    def one_job(group: list[ImageSource]) -> list[dict[str, Any]]:
        try:
            output = send({"images": [s.value for s in group], **options})
        except (EndpointError, requests.RequestException) as error:
            return [
                {"source": s.label, "error": {"code": "job_failed", "message": str(error)}}
                for s in group
            ]
        return [{"source": s.label, **r} for s, r in zip(group, output["results"], strict=True)]

    with (
        ThreadPoolExecutor(concurrency) as pool,
        tqdm(total=len(sources), unit="img", disable=not progress, file=sys.stderr) as bar,
    ):
        for records in pool.map(one_job, _chunks(sources, images_per_job)):
            bar.update(len(records))
            yield from records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or http(s) URLs")
    parser.add_argument(
        "--endpoint", required=True, help="https://api.runpod.ai/v2/<id> or http://<pod>:8000"
    )
    parser.add_argument(
        "--sync", action="store_true", help="use /runsync instead of /run + polling"
    )
    parser.add_argument("--images-per-job", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option, VALUE read as JSON when it parses: -o top_k=3, "
        '-o \'labels=["cat", "dog"]\', -o encoding=base64 (repeatable; see the README)',
    )
    parser.add_argument("--top-k", type=int, help="classify: labels per image (= -o top_k=N)")
    parser.add_argument("--max-new-tokens", type=int, help="caption: length bound")
    parser.add_argument("--num-beams", type=int, help="caption: beam width")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one job")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    options = {
        k: v
        for k, v in {
            "top_k": args.top_k,
            "max_new_tokens": args.max_new_tokens,
            "num_beams": args.num_beams,
        }.items()
        if v is not None
    }
    try:
        options |= parse_options(args.option)
        sources = collect_sources(args.inputs)
    except InputError as error:
        print(f"vision-worker-client: {error}", file=sys.stderr)
        return 2
    client = EndpointClient(args.endpoint, os.environ.get("RUNPOD_API_KEY"), timeout_s=args.timeout)
    failures = 0
    try:
        client.check_reachable()
    except EndpointError as error:
        print(f"vision-worker-client: {error}", file=sys.stderr)
        return 2
    records = run_images(
        client,
        sources,
        options,
        images_per_job=args.images_per_job,
        concurrency=args.concurrency,
        sync=args.sync,
        progress=not args.no_progress,
    )
    for record in records:
        failures += "error" in record
        print(json.dumps(record), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
