"""`nmt serve`: load the models, bind the socket, run uvicorn until SIGTERM or Ctrl-C.

Stopping: on SIGTERM uvicorn closes the listening socket (new connections are refused), lets every request in
progress finish and answer, then the app's lifespan lets each model's worker finish what is queued; the
process exits 0. uvicorn re-raises the signal it caught once it is done, so a handler of ours must be in
place for SIGTERM to end with 0 rather than with the signal.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Sequence

import uvicorn

from nmt.errors import NMTError
from nmt.glossary import Glossary
from nmt.serve.app import ENDPOINTS, create_app
from nmt.serve.metrics import Metrics
from nmt.serve.service import Service, load_models
from nmt.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts so that a port in use is a one-line user error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say so, and
    # with it on, each answer waited ~40 ms for the client's delayed ACK between its head and its body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as err:
        sock.close()
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise NMTError(f"cannot listen on {host}:{port} ({reason})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(checkpoints: Sequence[str], settings: ServeSettings, device: str = "auto", dtype: str = "auto",
          glossaries: dict[str, Glossary] | None = None) -> int:
    """Serve until stopped; 0 after a SIGTERM or Ctrl-C that let the requests in progress finish."""
    settings.check()
    metrics = Metrics(ENDPOINTS)
    sock = bind(settings.host, settings.port)  # first: a port in use fails before minutes of loading
    try:
        models = load_models(checkpoints, settings, device, dtype, metrics)
        return _run(sock, Service(models, settings, glossaries), metrics)
    finally:
        sock.close()


def _run(sock: socket.socket, service: Service, metrics: Metrics) -> int:
    settings = service.settings
    names = ", ".join(f"{m.name} ({m.info().dtype}, {m.info().device})" for m in service.models.values())
    app = create_app(service, metrics, ready_message=f"serving {names} on {url_of(sock)}")
    # HTTP parsing and the event loop in C (httptools, uvloop: uvicorn picks them when installed): the event
    # loop's Python shares the CPU, and the interpreter lock, with the searches. At 32 clients on the demo model
    # (AVX2-only CPU) it took 0.074 of a core against 0.10 with h11 and asyncio, and the two searches got 0.91
    # of a core each against 0.88 (docs/BENCHMARKS.md).
    config = uvicorn.Config(
        app, log_config=None, access_log=settings.access_log, server_header=False, lifespan="on",
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=settings.timeout + 10)
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _: stopped.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        log.info("stopped by %s after answering the requests in progress", signal.Signals(stopped[0]).name)
    return 0
