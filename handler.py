"""RunPod entry point: the model loads once, here at import (cold start); jobs then reuse it.

python handler.py                          # run test_input.json, print the output as JSON
python handler.py --image cat.jpg photos/  # your own images (files, folders, URLs), -o KEY=VALUE
python handler.py --test_input '{"input": {"image": "https://..."}}'
python handler.py --serve --port 8000      # pod mode: HTTP server (or SERVE_MODE=pod)
(on RunPod serverless, the same command serves the endpoint's queue)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: they otherwise steal the cores that decode
# images and serve HTTP between batches (+37% requests/s at 8 clients on a 2-core CPU, bench/).
# Must be set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if {"-h", "--help"} & set(sys.argv[1:]):
    # At once: before torch, transformers and the model load (or fail to, offline).
    from vision_worker.local import help_text

    print(help_text())
    sys.exit(0)

import runpod

from vision_worker.config import ConfigError
from vision_worker.serverless import Serverless
from vision_worker.settings import settings_from_env
from vision_worker.tasks import ModelLoadError
from vision_worker.worker import Worker

try:
    settings = settings_from_env()
except ConfigError as error:
    # One line in the worker's log says what to fix; a traceback would bury it.
    sys.exit(f"vision-worker cannot start: {error}")
# force: the runpod SDK configures logging on import, and basicConfig alone would then do
# nothing. One format, on stderr, so stdout carries only results in local runs.
logging.basicConfig(
    level=settings.LOG_LEVEL,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    stream=sys.stderr,
    force=True,
)


def _pod_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, rest = parser.parse_known_args()
    serving = args.serve or settings.SERVE_MODE == "pod"
    if not serving and (args.host is not None or args.port is not None):
        sys.exit("python handler.py: --host and --port are for pod mode: add --serve")
    args.host = settings.HOST if args.host is None else args.host
    args.port = settings.PORT if args.port is None else args.port
    sys.argv = [sys.argv[0], *rest]  # what is left is runpod's (--test_input, --rp_log_level)
    return args


if __name__ == "__main__" and ((pod := _pod_args()).serve or settings.SERVE_MODE == "pod"):
    # Pod mode (and RunPod load-balancing endpoints): listen first, load the model on a thread,
    # so /ping says "initializing" instead of the port refusing connections for a minute.
    from vision_worker.starting import serve

    serve(settings, pod.host, pod.port, start=lambda: Worker.start(settings))
    sys.exit(0)

try:
    worker = Worker.start(settings)  # cold start: once, before the first job
except (ConfigError, ModelLoadError) as error:  # a task's limits are checked as it loads
    sys.exit(f"vision-worker cannot start: {error}")


serverless = Serverless(worker, settings)
# What tests and the SDK call: the job handlers and the config runpod.serverless.start takes.
handler, streaming_handler, runpod_config = (
    serverless.handler,
    serverless.streaming_handler,
    serverless.config,
)


def _on_runpod() -> bool:
    """RunPod's queue sets this; without it (and without the SDK's own --rp_serve_api test
    server) the run is local: one job, output as JSON on stdout."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) or "--rp_serve_api" in sys.argv


if __name__ == "__main__":
    if _on_runpod():
        # Registered only here: the SDK logs the registration on stdout, which local runs keep
        # for the job's JSON output.
        runpod.serverless.register_fitness_check(serverless.fitness_check)
        if settings.METRICS_PORT:
            worker.metrics.serve(settings.METRICS_PORT)
        runpod.serverless.start(runpod_config)
    else:
        from vision_worker.local import run_locally

        sys.exit(run_locally(worker, sys.argv[1:]))
