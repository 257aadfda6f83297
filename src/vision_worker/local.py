"""Local runs: `python handler.py` without RunPod prints the job's output as JSON on stdout.

    python handler.py                                  # the job in test_input.json
    python handler.py --test_input '{"input": {...}}'  # a job given inline
    python handler.py --image cat.jpg photos/ -o top_k=3
Logs go to stderr, so `python handler.py --image cat.jpg | jq .` works. Exit status 0 when the
job completed (single images may still carry errors), 1 when it failed as a whole, 2 for a
command line that names no usable input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inputs import ImageSource, InputError, collect_sources, parse_options

if TYPE_CHECKING:  # the worker imports torch: --help answers without it
    from .worker import Worker

# Pod mode's flags, parsed by handler.py before the model loads.
POD_FLAGS = """pod mode (an HTTP server instead of one job; or SERVE_MODE=pod):
  --serve               serve HTTP: RunPod's /run, /runsync, /status, /stream, /predict,
                        the OpenAI routes under /v1, the demo page at /
  --host HOST           address to listen on (default HOST, 0.0.0.0)
  --port PORT           port to listen on (default PORT, 8000)

Settings are environment variables (MODEL_NAME, TASK, MAX_BATCH_SIZE, ...): see the README's
Configuration table. With RUNPOD_WEBHOOK_GET_JOB set (on RunPod) the same command serves the
endpoint's queue."""


def local_arguments(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


def help_text() -> str:
    """`python handler.py --help`: every mode and flag, printed before anything heavy loads."""
    return _parser().format_help() + "\n" + POD_FLAGS + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python handler.py",
        description=__doc__.split("\n")[0],
        epilog="Per-task options (-o KEY=VALUE) are listed in the README's task reference.",
    )
    parser.add_argument("--image", nargs="+", metavar="PATH", help="image files, folders or URLs")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option, VALUE read as JSON when it parses (repeatable)",
    )
    parser.add_argument("--top-k", type=int, help="classify / zero_shot: labels per image")
    parser.add_argument("--test_input", help='a whole job as JSON: {"input": {...}}')
    parser.add_argument("--test_input_file", default="test_input.json", help=argparse.SUPPRESS)
    return parser


def job_input(args: argparse.Namespace) -> tuple[Any, list[ImageSource]]:
    """The job's "input" from --image (+ options), --test_input, or test_input.json, and the
    sources --image named (read and encoded once: the results are labelled with them)."""
    if args.image:
        options = parse_options(args.option)
        if args.top_k is not None:
            options["top_k"] = args.top_k
        sources = collect_sources(args.image)
        return {"images": [source.value for source in sources], **options}, sources
    text = args.test_input or _read(Path(args.test_input_file))
    try:
        job = json.loads(text)
    except ValueError as error:
        raise InputError(f"the test job is not valid JSON: {error}") from None
    if not isinstance(job, dict) or "input" not in job:
        raise InputError('the test job must be a JSON object with an "input" key')
    return job["input"], []


def _read(path: Path) -> str:
    if not path.exists():
        raise InputError(f"no {path}: pass --image PATH or --test_input JSON")
    return path.read_text()


def run_locally(worker: Worker, argv: list[str]) -> int:
    """Run one job through the worker and print its output as JSON; returns the exit status."""
    args = local_arguments(argv)
    try:
        job, sources = job_input(args)
    except InputError as error:
        print(f"python handler.py: {error}", file=sys.stderr)
        return 2
    output = asyncio.run(worker.run(job))
    if sources and "results" in output:
        # Which file or URL each result is (folders are walked in sorted order), as the client
        # says it; an error's "image 3" is then named too.
        output["results"] = [
            {"source": source.label, **result}
            for source, result in zip(sources, output["results"], strict=True)
        ]
    print(json.dumps(output, indent=2, ensure_ascii=False))
    return 1 if "error" in output else 0  # a failed job; per-image errors sit in "results"
