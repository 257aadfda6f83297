"""The pod process: it listens before the model has loaded, as RunPod's load balancer expects,
serves, and drains on SIGTERM (`serve`).

`StartingApp` answers at once: `GET /ping` 204 while the model loads (200 once ready, 503 if it
failed), `GET /health` {"status": "initializing" | "broken"}, everything else 503 with one
sentence. When the model is ready every request goes to the real app (server.create_app).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from .config import Settings
from .errors import refusal
from .server import DrainingServer, create_app, server_config
from .worker import Worker

log = logging.getLogger(__name__)


class StartingApp:
    """ASGI app in front of the pod server: serves probes while the model loads, then delegates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Any = None  # the FastAPI app, once the model is ready
        self.error: str | None = None  # why the model could not load: the worker is broken

    @property
    def pod(self) -> Any:
        return None if self.app is None else self.app.state.pod

    def load_in_background(self, start: Callable[[], Worker]) -> threading.Thread:
        """Cold start on a thread, so the HTTP server answers probes meanwhile."""

        def load() -> None:
            try:
                self.app = create_app(start(), self.settings)
            except Exception as error:  # reported by /ping and /health; the pod stays up
                self.error = " ".join(str(error).split())[:500] or type(error).__name__
                log.error("vision-worker cannot start: %s", self.error)

        thread = threading.Thread(target=load, name="cold-start", daemon=True)
        thread.start()
        return thread

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self._not_ready(scope["path"], send)

    async def _not_ready(self, path: str, send: Any) -> None:
        state = "broken" if self.error else "initializing"
        if path.rstrip("/") == "/ping":
            # RunPod's load balancer: 204 = still starting, 503 = unhealthy.
            await _respond(send, 503 if self.error else 204, None)
        elif path.rstrip("/").endswith("/health"):
            body = {"status": state, "model": self.settings.MODEL_NAME}
            if self.error:
                body["error"] = self.error
            await _respond(send, 503 if self.error else 200, body)
        else:
            message = (
                f"the model failed to load: {self.error}"
                if self.error
                else "the model is still loading; retry in a few seconds"
            )
            await _respond(send, 503, refusal(message, 503))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pod is not None:
                    await self.pod.shutdown()  # finish jobs in flight, as the real app would
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Any, status: int, body: dict | None) -> None:
    payload = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-length", str(len(payload)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def serve(settings: Settings, host: str, port: int, start: Callable[[], Worker]) -> None:
    """Listen at once (on PORT, and PORT_HEALTH when it differs), load the model on a thread,
    serve until SIGTERM/SIGINT, then drain (see DrainingServer) and exit 0."""
    app = StartingApp(settings)
    config = server_config(app, settings, host, port)  # type: ignore[arg-type]
    sockets = [config.bind_socket()]
    health_port = settings.PORT_HEALTH or port
    if health_port != port:
        sockets.append(_listening_socket(host, health_port))
    log.info(
        "pod mode: listening on http://%s:%d (health probes on %d); loading the model",
        host,
        port,
        health_port,
    )
    app.load_in_background(start)
    DrainingServer(config, lambda: app.pod, settings.SHUTDOWN_GRACE_S).run(sockets=sockets)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
