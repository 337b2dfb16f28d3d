"""The service as real processes on a loopback port: uvicorn, ``distilwave serve`` with two
workers, streaming over the wire, and a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import mel_of

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RATE, HOP = 8000, 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(
    command: list[str], env: dict[str, str], log: Path, port: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a server process, wait for /readyz, and always stop it."""
    environment = {**os.environ, "DISTILWAVE_TORCH_THREADS": "1", "DISTILWAVE_WARMUP_S": "0.2"}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(env)
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # slow when the cores are shared
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited early:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def uvicorn_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def long_mel(speech: list[Path], seconds: float) -> str:
    """Real speech mels end to end, as base64 .npy, ``seconds`` long."""
    frames = np.concatenate([np.asarray(mel_of(path), dtype=np.float32) for path in speech])
    count = int(seconds * RATE / HOP)
    mel = np.concatenate([frames] * (count // len(frames) + 1))[:count]
    buffer = io.BytesIO()
    np.save(buffer, mel)
    return base64.b64encode(buffer.getvalue()).decode()


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def uvicorn_process(
    bundles, tmp_path_factory
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """One uvicorn process for this module; the last test (the SIGTERM drain) ends it."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {
        "DISTILWAVE_BUNDLE": str(bundles["cond"]),
        "DISTILWAVE_MAX_DURATION_S": "60",
        "DISTILWAVE_MAX_BATCH": "1",
        "DISTILWAVE_REQUEST_TIMEOUT_S": "60",
        "DISTILWAVE_EXACT": "true",  # the stream test compares bytes
    }
    with server(uvicorn_command(port), env, log, port) as (process, url):
        yield process, url, log


@pytest.fixture
def uvicorn_server(uvicorn_process) -> str:
    return uvicorn_process[1]


def test_uvicorn_process_serves_every_endpoint(uvicorn_server, speech):
    with httpx.Client(base_url=uvicorn_server, timeout=30) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["sample_rate"] == RATE
        vocoded = client.post("/v1/audio/vocode", json={"mel": mel_of(speech[0]), "seed": 1})
        assert vocoded.status_code == 200 and vocoded.headers["content-type"] == "audio/wav"
        upload = {"file": ("clip.wav", speech[1].read_bytes())}
        assert client.post("/v1/audio/resynthesize", files=upload).status_code == 200
        assert client.post("/v1/audio/generate", json={"duration_s": 1}).status_code == 400
        bad = client.post(
            "/v1/audio/vocode", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        text = client.get("/metrics").text
        assert metric(text, "http_requests_total", handler="/v1/audio/vocode", status="2xx") == 1
        assert metric(text, "distilwave_generated_audio_seconds_total") > 0


def test_stream_sends_first_bytes_before_generation_ends(uvicorn_server, speech):
    body = {"mel": long_mel(speech, 30.0), "seed": 5, "response_format": "pcm"}
    with httpx.Client(base_url=uvicorn_server, timeout=60) as client:
        whole = client.post("/v1/audio/vocode", json=body)
        assert whole.status_code == 200
        started = time.perf_counter()
        arrivals: list[float] = []
        parts: list[bytes] = []
        with client.stream("POST", "/v1/audio/vocode", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers.get("transfer-encoding") == "chunked"
            for part in response.iter_raw():
                arrivals.append(time.perf_counter() - started)
                parts.append(part)
    assert b"".join(parts) == whole.content  # the stream is the same audio, sample for sample
    assert len(whole.content) == 30 * RATE * 2
    assert len(arrivals) > 10
    # The last bytes leave when generation ends; the first left long before.
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


def test_cli_serve_with_two_workers_aggregates_metrics(bundles, speech, tmp_path):
    port = free_port()
    command = [
        sys.executable, "-m", "distilwave.cli", "serve", "--bundle", str(bundles["cond"]),
        "--port", str(port), "--workers", "2", "--log-level", "warning",
    ]  # fmt: skip
    mel = mel_of(speech[0], 20)
    with server(command, {}, tmp_path / "server.log", port) as (_, url):
        for _ in range(6):  # a new connection each time: both workers answer some
            with httpx.Client(base_url=url, timeout=30) as client:
                assert client.post("/v1/audio/vocode", json={"mel": mel}).status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "distilwave_generated_audio_seconds_total") == pytest.approx(
            6 * 20 * HOP / RATE
        )
        assert metric(text, "http_requests_total", handler="/v1/audio/vocode", status="2xx") == 6
        assert metric(text, "distilwave_model_ready") == 1


def test_loadtest_reports_levels_and_raw_speed(uvicorn_server, bundles, tmp_path):
    from service import loadtest

    out = tmp_path / "load.json"
    loadtest.main(
        [
            "--bundle", str(bundles["cond"]), "--url", uvicorn_server, "--route", "vocode",
            "--concurrency", "1", "3", "--requests", "6", "--max-seconds", "20", "--clip-s",
            "0.5", "--threads", "1", "--exact", "--raw-seconds", "0.3", "--out", str(out),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["raw_batch1"]["times_real_time"] > 0
    raw, flows = report["raw_batched"], report["raw_flows_only"]
    assert raw["before"]["threads"]["from_mel"] and not flows["before"]["threads"]["from_mel"]
    assert raw["audio_seconds_per_second"] > 0 and flows["audio_seconds_per_second"] > 0
    assert {"mel", "pitch_and_source", "generate_batch1"} <= set(
        report["stage_cpu_ms_per_audio_second"]
    ) or "lpc" in report["stage_cpu_ms_per_audio_second"]
    assert [level["concurrency"] for level in report["levels"]] == [1, 3]
    for level in report["levels"]:
        assert level["statuses"] == {"200": 6}
        assert 0 < level["latency_p50_s"] <= level["latency_p95_s"] <= level["latency_p99_s"]
        assert level["audio_seconds_per_second"] == pytest.approx(level["throughput_rps"] * 0.5)
        assert level["client_cpu_seconds"] > 0
        assert level["audio_seconds_per_second_adjusted"] >= level["audio_seconds_per_second"]
        assert level["ratio_to_raw_batched"] > 0 and level["ratio_to_flows_only"] > 0
    assert report["targets"]["rising_1_to_4"] is None  # no 4-client level here
    with pytest.raises(SystemExit):
        loadtest.main(["--bundle", str(bundles["cond"]), "--url", "http://192.0.2.1:8000"])


async def test_sigterm_drains_in_flight_and_queued_requests(uvicorn_process, speech):
    process, url, log = uvicorn_process
    body = {"mel": long_mel(speech, 8.0), "response_format": "pcm"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        work = [asyncio.ensure_future(client.post("/v1/audio/vocode", json=body)) for _ in range(6)]
        for _ in range(500):  # wait until work is queued behind the request being generated
            if metric((await client.get("/metrics")).text, "distilwave_queue_depth") >= 2:
                break
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:
            ready = await fresh.get("/readyz")
            refused = await fresh.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 3})
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
        assert refused.status_code == 503 and "retry-after" in refused.headers
        finished = await asyncio.gather(*work)
    assert [r.status_code for r in finished] == [200] * 6
    assert all(len(r.content) == 8 * RATE * 2 for r in finished)
    process.wait(30)
    assert process.returncode in (0, -signal.SIGTERM)
    assert "drained; shutting down" in log.read_text()


def serve_command(bundle: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "distilwave.cli", "serve", "--bundle", str(bundle),
        "--port", str(port), "--log-level", "warning", *extra,
    ]  # fmt: skip


def test_cli_serve_limits_connections_and_closes_late_headers(bundles, tmp_path):
    port = free_port()
    env = {"DISTILWAVE_MAX_CONNECTIONS": "3", "DISTILWAVE_KEEP_ALIVE_S": "1"}
    command = serve_command(bundles["cond"], port)
    with server(command, env, tmp_path / "server.log", port) as (_, url):
        slow = []
        for _ in range(3):  # headers trickling in, never finished
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /livez HTTP/1.1\r\nHo")
            slow.append(sock)
        try:
            time.sleep(0.2)
            refused = httpx.get(f"{url}/livez", timeout=10)
            assert refused.status_code == 503  # the server's own limit, before the app
            for sock in slow:  # closed by the server once their headers are late
                sock.settimeout(15)
                assert sock.recv(1024) == b""
        finally:
            for sock in slow:
                sock.close()
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200


def test_cli_serve_shutdown_is_bounded_with_a_slow_client(bundles, tmp_path):
    port = free_port()
    env = {
        "DISTILWAVE_DRAIN_TIMEOUT_S": "1",
        "DISTILWAVE_SHUTDOWN_TIMEOUT_S": "1",
        "DISTILWAVE_BODY_TIMEOUT_S": "600",
    }
    command = serve_command(bundles["cond"], port)
    with server(command, env, tmp_path / "server.log", port) as (process, _):
        sock = socket.create_connection(("127.0.0.1", port))
        try:  # a body that trickles for ever
            sock.sendall(
                b"POST /v1/audio/vocode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"mel": ['
            )
            time.sleep(0.5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            assert time.monotonic() - started < 15
        finally:
            sock.close()
    assert "drained; shutting down" in (tmp_path / "server.log").read_text()
