"""The FastAPI app: ``create_app`` is the factory both ``uvicorn`` and ``distilwave serve`` use.

    DISTILWAVE_BUNDLE=artifacts/bundle uvicorn service.app:create_app --factory

A demo page for people is at ``/`` (``service/static/``, open without the API key; it asks
for the key and calls only the public ``/v1`` API).

Start-up (``lifespan``): load the bundle (weight norm is folded in the bundle), set torch's
thread counts, start the inference threads, which run a real warm-up generation each and only
then make ``/readyz`` answer 200 (with several workers, once every worker is ready: each marks
itself in ``ready_dir``). Shut-down on SIGTERM: readiness goes 503 and new generation requests
are refused with 503 while in-flight and queued ones finish (bounded by ``drain_timeout_s``);
then the server's own graceful exit runs (``distilwave serve`` bounds it by
``shutdown_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from models.vocoder import load
from service.engine import Engine
from service.errors import install_error_handlers
from service.metrics import HTTPMetricsMiddleware, ServiceMetrics, mark_process_dead
from service.middleware import APIKeyMiddleware, BodyLimitMiddleware, GateMiddleware
from service.routes import router
from service.schemas import body_schemas
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger(__name__)

# The demo page (plain HTML, CSS and JS, no build step); it calls only the public API.
STATIC_DIR = Path(__file__).resolve().parent / "static"

DESCRIPTION = """Fast neural audio generation: a distilled parallel (IAF) student, served.

Errors always come as `{"error": {"message", "type", "param", "code"}}`. Generation routes
need `Authorization: Bearer <key>` when the server has a key; probes and metrics stay open.
"""


def _configure_torch(settings: Settings) -> tuple[int, bool]:
    """Thread counts (each inference thread sets its own again), and oneDNN off for
    exactness; returns what to restore."""
    previous = torch.get_num_threads(), bool(torch.backends.mkldnn.enabled)
    torch.set_num_threads(settings.threads())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable once per process, before any inter-op work
        pass
    if settings.exact:
        # oneDNN picks its convolution algorithm by tensor size (vs the native one), which
        # changes a clip's samples with its batch or stream chunk; the native path does not.
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    return previous


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: ServiceState = app.state.service
    settings = service.settings
    threads, onednn = _configure_torch(settings)
    try:
        vocoder = await asyncio.to_thread(load, settings.bundle, settings.device, settings.exact)
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"cannot load the bundle at {settings.bundle}: {exc}") from exc
    bundle = vocoder.bundle
    service.vocoder = vocoder
    service.card()  # read once: /v1/models describes the model loaded, whatever the disk holds
    service.limiter = anyio.CapacityLimiter(settings.engine_threads())
    service.engine = Engine(vocoder, settings, service.metrics, on_ready=service.mark_ready)
    service.engine.start()
    logger.info(
        "serving %s (%d Hz, hop %d; %d inference threads x %d torch threads)",
        settings.bundle,
        bundle.sample_rate,
        bundle.hop_length,
        settings.engine_threads(),
        settings.threads(),
    )
    previous = _install_drain(service, asyncio.get_running_loop())
    try:
        yield
    finally:
        service.begin_drain()
        await asyncio.to_thread(service.engine.stop, settings.drain_timeout_s)
        service.unmark_ready()
        service.parser.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]
        mark_process_dead(os.getpid())


def _install_drain(service: ServiceState, loop: asyncio.AbstractEventLoop) -> Any:
    """Put a drain in front of the server's own SIGTERM handler.

    Only when a server installed one (uvicorn, gunicorn): a bare process (tests, scripts)
    keeps its signals. Returns the handler replaced, to restore it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return None
    server_exit: Callable[[int, FrameType | None], Any] = previous

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if service.draining:  # a second SIGTERM: stop waiting
            server_exit(signum, frame)
            return
        logger.info("SIGTERM: draining (in flight: %d)", service.in_flight)
        service.begin_drain()
        loop.call_soon_threadsafe(_start_drain, service, loop, server_exit, signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return previous


def _start_drain(
    service: ServiceState,
    loop: asyncio.AbstractEventLoop,
    server_exit: Callable[[int, FrameType | None], Any],
    signum: int,
) -> None:
    task = loop.create_task(_drain(service, server_exit, signum))
    service.background.add(task)
    task.add_done_callback(service.background.discard)


async def _drain(
    service: ServiceState, server_exit: Callable[[int, FrameType | None], Any], signum: int
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.settings.drain_timeout_s
    engine = service.engine
    while loop.time() < deadline:
        if service.in_flight == 0 and (engine is None or engine.idle):
            break
        await asyncio.sleep(0.05)
    else:
        logger.warning("drain timed out with %d requests in flight", service.in_flight)
    logger.info("drained; shutting down")
    server_exit(signum, None)


async def demo_page() -> FileResponse:
    """The demo page: listen to, compare and look at the model's audio in a browser."""
    return FileResponse(STATIC_DIR / "index.html")


def _document_json_bodies(app: FastAPI) -> None:
    """Put the schemas of the bodies the JSON routes parse themselves into the OpenAPI
    components (their operations refer to them, ``service.schemas.json_body``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, body in body_schemas().items():
            schemas.setdefault(name, body)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (settings from the environment unless given). Nothing loads until the
    ASGI lifespan starts."""
    settings = settings or Settings()
    if not logging.getLogger().handlers:  # a bare uvicorn worker: make our logs visible
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    registry = CollectorRegistry(auto_describe=True)
    metrics = ServiceMetrics(registry)
    service = ServiceState(settings=settings, registry=registry, metrics=metrics)
    app = FastAPI(
        title="distilwave",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    _document_json_bodies(app)
    install_error_handlers(app)
    app.include_router(router)
    # Open without the API key (the page holds no secrets; it asks for the key itself).
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_api_route("/", demo_page, include_in_schema=False)
    # Added innermost first: the body limit wraps the app, the gate wraps that, the key
    # check wraps the gate, and the HTTP metrics see every answer, refusals included.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        timeout=settings.body_timeout_s,
        on_reject=metrics.reject,
    )
    app.add_middleware(GateMiddleware, check=service.refusal, in_flight=service.requests)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(
        APIKeyMiddleware, api_key=api_key, on_reject=lambda: metrics.reject("unauthorized")
    )
    app.add_middleware(HTTPMetricsMiddleware, registry=registry)
    return app
