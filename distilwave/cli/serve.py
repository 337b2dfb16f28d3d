"""``distilwave serve``: run the generation service on a bundle with uvicorn.

uvicorn gets the app factory's import string and the service reads its settings
(``DISTILWAVE_*``) from the environment this sets, so ``distilwave serve --bundle DIR`` and
``DISTILWAVE_BUNDLE=DIR uvicorn service.app:create_app --factory`` serve the same app. This
command also bounds what the app cannot: open connections (``DISTILWAVE_MAX_CONNECTIONS``,
503 beyond), idle connections and slow request headers (``DISTILWAVE_KEEP_ALIVE_S``), and the
graceful shutdown after the drain (``DISTILWAVE_SHUTDOWN_TIMEOUT_S``); with several workers it
gives them a shared directory to say they are ready in, so ``/readyz`` means every worker is.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from models.errors import UserError

logger = logging.getLogger(__name__)

APP = "service.app:create_app"
PROTOCOL = "service.protocol:GuardedH11Protocol"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY_ENV = "DISTILWAVE_READY_DIR"


def serve(
    bundle: Annotated[
        Path,
        typer.Option(
            "--bundle", envvar="DISTILWAVE_BUNDLE", help="Model bundle directory (export output)."
        ),
    ],
    host: Annotated[
        str, typer.Option(envvar="DISTILWAVE_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="DISTILWAVE_PORT", help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, envvar="DISTILWAVE_WORKERS", help="Worker processes (one model each)."
        ),
    ] = 1,
    root_path: Annotated[
        str, typer.Option(help="The path prefix a proxy serves the API under (e.g. /vocoder).")
    ] = "",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a bundle over HTTP: POST /v1/audio/{vocode,resynthesize,generate}, GET /v1/models,
    /livez, /readyz, /metrics (OpenAPI at /docs). Every other setting comes from DISTILWAVE_*
    environment variables (limits, batching, DISTILWAVE_API_KEY)."""
    import uvicorn

    from service.settings import Settings

    if not (bundle / "config.json").is_file() or not (bundle / "model.safetensors").is_file():
        raise UserError(f"{bundle} is not a model bundle (config.json and model.safetensors)")
    os.environ["DISTILWAVE_BUNDLE"] = str(bundle.resolve())
    os.environ["DISTILWAVE_HOST"] = host
    os.environ["DISTILWAVE_PORT"] = str(port)
    os.environ["DISTILWAVE_WORKERS"] = str(workers)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DISTILWAVE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid settings: {problems}") from None
    if settings.exposed_without_key():
        logger.warning(
            "SERVING WITHOUT AN API KEY ON %s: anyone who can reach port %d can use this "
            "model. Set DISTILWAVE_API_KEY, or listen on 127.0.0.1 only.",
            host or "every interface",
            port,
        )
    made: list[str] = []
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Every worker writes its metrics here; /metrics in any worker sums them all.
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="distilwave-metrics-")
        made.append(os.environ[MULTIPROC_ENV])
    if workers > 1:
        # Every worker marks itself ready here; /readyz in any worker counts them.
        os.environ[READY_ENV] = tempfile.mkdtemp(prefix="distilwave-ready-")
        made.append(os.environ[READY_ENV])
    try:
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            root_path=root_path,
            log_level=log_level,
            http=PROTOCOL,
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=max(1, round(settings.keep_alive_s)),
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        )
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)
