"""``distilwave serve`` in-process, uvicorn replaced by a recorder: a loud warning when serving
on a public interface without a key, an empty key refused in one line, and the server's own
bounds (connections, late headers, graceful shutdown, a readiness directory for workers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from distilwave.cli import main

SERVE_ENV = ("DISTILWAVE_BUNDLE", "DISTILWAVE_HOST", "DISTILWAVE_PORT", "DISTILWAVE_WORKERS")
SETTINGS_ENV = (
    "DISTILWAVE_API_KEY",
    "DISTILWAVE_MAX_CONNECTIONS",
    "DISTILWAVE_SHUTDOWN_TIMEOUT_S",
    "DISTILWAVE_KEEP_ALIVE_S",
    "DISTILWAVE_READY_DIR",
    "PROMETHEUS_MULTIPROC_DIR",
)


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run records its arguments (and the ready directory it was given) instead."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def run(app: str, **kwargs: Any) -> None:
        ready = os.environ.get("DISTILWAVE_READY_DIR")
        calls.append({"app": app, **kwargs, "ready_dir": ready and Path(ready).is_dir()})

    monkeypatch.setattr(uvicorn, "run", run)
    for name in SERVE_ENV + SETTINGS_ENV:
        monkeypatch.setenv(name, "")  # recorded, so whatever serve sets is undone after
        monkeypatch.delenv(name)
    return calls


def serve(bundle: Path, *args: str) -> int:
    try:
        main(["serve", "--bundle", str(bundle), *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_serving_on_every_interface_without_a_key_warns_loudly(
    bundles, uvicorn_calls, caplog, monkeypatch
):
    with caplog.at_level(logging.WARNING):
        assert serve(bundles["cond"], "--host", "0.0.0.0") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("WITHOUT AN API KEY" in w and "0.0.0.0" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert serve(bundles["cond"], "--host", "127.0.0.1") == 0
        monkeypatch.setenv("DISTILWAVE_API_KEY", "k")
        assert serve(bundles["cond"], "--host", "0.0.0.0") == 0
    assert not [r for r in caplog.records if "API KEY" in r.getMessage()]
    assert len(uvicorn_calls) == 3


def test_an_empty_api_key_is_an_error_not_an_open_server(
    bundles, uvicorn_calls, monkeypatch, capsys
):
    monkeypatch.setenv("DISTILWAVE_API_KEY", "")
    assert serve(bundles["cond"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("distilwave: error:")
    assert "DISTILWAVE_API_KEY" in errors[0] and "empty" in errors[0]
    assert uvicorn_calls == []


def test_serve_bounds_connections_late_headers_and_shutdown(bundles, uvicorn_calls, monkeypatch):
    assert serve(bundles["cond"]) == 0
    (defaults,) = uvicorn_calls
    assert defaults["limit_concurrency"] == 256
    assert defaults["timeout_keep_alive"] == 5
    assert defaults["timeout_graceful_shutdown"] == 5
    assert defaults["http"] == "service.protocol:GuardedH11Protocol"
    assert defaults["ready_dir"] is None
    monkeypatch.setenv("DISTILWAVE_MAX_CONNECTIONS", "12")
    monkeypatch.setenv("DISTILWAVE_SHUTDOWN_TIMEOUT_S", "2")
    assert serve(bundles["cond"], "--root-path", "/vocoder") == 0
    assert uvicorn_calls[1]["limit_concurrency"] == 12
    assert uvicorn_calls[1]["timeout_graceful_shutdown"] == 2
    assert uvicorn_calls[1]["root_path"] == "/vocoder"


def test_several_workers_get_a_ready_directory_removed_afterwards(bundles, uvicorn_calls):
    assert serve(bundles["cond"], "--workers", "2") == 0
    assert uvicorn_calls[0]["ready_dir"] is True
    directory = os.environ["DISTILWAVE_READY_DIR"]
    assert not Path(directory).exists()
