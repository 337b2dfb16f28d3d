"""``distilwave serve``: run the generation service on a bundle with uvicorn.

The service package is not imported here: uvicorn gets the app factory's import string and
the service reads its settings (``DISTILWAVE_*``) from the environment this sets, so
``distilwave serve --bundle DIR`` and ``DISTILWAVE_BUNDLE=DIR uvicorn service.app:create_app
--factory`` start the same thing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from models.errors import UserError

logger = logging.getLogger(__name__)

APP = "service.app:create_app"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a bundle over HTTP: POST /v1/audio/{vocode,resynthesize,generate}, GET /v1/models,
    /livez, /readyz, /metrics (OpenAPI at /docs). Every other setting comes from DISTILWAVE_*
    environment variables (limits, batching, DISTILWAVE_API_KEY)."""
    import uvicorn

    if not (bundle / "config.json").is_file() or not (bundle / "model.safetensors").is_file():
        raise UserError(f"{bundle} is not a model bundle (config.json and model.safetensors)")
    os.environ["DISTILWAVE_BUNDLE"] = str(bundle.resolve())
    os.environ["DISTILWAVE_HOST"] = host
    os.environ["DISTILWAVE_PORT"] = str(port)
    os.environ["DISTILWAVE_WORKERS"] = str(workers)
    metrics_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Every worker writes its metrics here; /metrics in any worker sums them all.
        metrics_dir = tempfile.mkdtemp(prefix="distilwave-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            timeout_graceful_shutdown=None,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
