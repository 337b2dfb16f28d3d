"""Load test: throughput and latency percentiles at several concurrencies, next to the model's
raw batch-1 speed measured in the same run.

    python -m service.loadtest --bundle DIR [--concurrency 1 4 16] [--requests 200]
        [--max-seconds 30] [--clip-s 1.0] [--out results.json]

Without ``--url`` it starts its own server (uvicorn, one worker) on a free loopback port and
stops it at the end; with ``--url`` the server must be on this machine (loopback only). Each
concurrency level stops after ``--requests`` requests or ``--max-seconds``, whichever first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from models.audio import normalize_loudness
from models.bundle import Bundle, load_bundle
from models.vocoder import Vocoder

logger = logging.getLogger("distilwave.loadtest")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _test_signal(bundle: Bundle, seconds: float) -> torch.Tensor:
    """A speech-like test signal at the training loudness: a gliding harmonic tone in noise."""
    rate = bundle.sample_rate
    t = torch.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t)
    phase = 2 * torch.pi * torch.cumsum(pitch, 0) / rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
    noise = 0.05 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(0))
    convention = bundle.audio
    signal, _ = normalize_loudness(
        voiced + noise, rate, convention.loudness_lufs, convention.peak_limit
    )
    return signal


def request_for(bundle: Bundle, seconds: float) -> tuple[str, bytes]:
    """The route and JSON body of one request for ``seconds`` of audio (pcm out)."""
    if not bundle.config.conditional:
        body: dict[str, Any] = {"duration_s": seconds, "response_format": "pcm"}
        route = "/v1/audio/generate"
    else:
        with torch.inference_mode():
            mel = bundle.student.front_end(_test_signal(bundle, seconds))[0].T  # (M, n_mels)
        buffer = io.BytesIO()
        np.save(buffer, mel[:-1].numpy().astype(np.float32))  # M frames -> M hop samples
        body = {"mel": base64.b64encode(buffer.getvalue()).decode(), "response_format": "pcm"}
        route = "/v1/audio/vocode"
    if bundle.config.n_speakers:
        body["speaker"] = 0
    return route, json.dumps(body).encode()


def raw_speed(
    bundle: Bundle, seconds: float, threads: int, exact: bool, repeats: int = 20
) -> dict[str, float]:
    """The model alone, batch 1, on the server's path (fast, or exact with oneDNN off) and
    threads: the median of N timed generations (and the best), after two untimed ones."""
    previous = torch.get_num_threads(), bool(torch.backends.mkldnn.enabled)
    torch.set_num_threads(threads)
    if exact:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # as the service
    vocoder = Vocoder(bundle, exact=exact)
    try:
        with torch.inference_mode():
            signal = _test_signal(bundle, seconds)
            started = time.perf_counter()
            if vocoder.conditional:
                request = vocoder.request(waveform=signal.numpy(), temperature=1.0, seed=0)
            else:
                samples = int(seconds * bundle.sample_rate)
                request = vocoder.request(num_samples=samples, temperature=1.0, seed=0)
            context_s = time.perf_counter() - started  # front end, upsampler, LPC, pitch (once)
            for _ in range(2):
                vocoder.run([request])
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                vocoder.run([request])
                times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.mkldnn.enabled = previous[1]  # type: ignore[assignment]
    context = request.context
    audio_s = context.num_samples / bundle.sample_rate
    median = float(np.median(times))
    return {
        "audio_seconds": audio_s,
        "generate_seconds": median,
        "generate_seconds_best": min(times),
        "real_time_factor": median / audio_s,
        "times_real_time": audio_s / median,
        "times_real_time_best": audio_s / min(times),
        "context_seconds": context_s,
        "threads": threads,
    }


async def run_level(
    url: str,
    route: str,
    body: bytes,
    concurrency: int,
    requests: int,
    max_seconds: float,
    sample_rate: int,
    api_key: str | None = None,
) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop until ``requests`` are done or time is up."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    audio_bytes = 0
    issued = 0
    deadline = time.monotonic() + max_seconds
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued, audio_bytes
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                response = await client.post(route, content=body, headers=headers)
                key = str(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                    audio_bytes += len(response.content)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        before = await _server_totals(client)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = await _server_totals(client)
    server = {k: after[k] - before[k] for k in after}
    batches = max(server["distilwave_batch_size_count"], 1.0)
    waits = max(server["distilwave_queue_wait_seconds_count"], 1.0)
    ok = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "concurrency": concurrency,
        "requests": issued,
        "statuses": statuses,
        "seconds": elapsed,
        "throughput_rps": len(latencies) / elapsed,
        "audio_seconds_per_second": audio_bytes / 2 / sample_rate / elapsed,
        "latency_p50_s": float(np.percentile(ok, 50)),
        "latency_p95_s": float(np.percentile(ok, 95)),
        "latency_p99_s": float(np.percentile(ok, 99)),
        "server_mean_batch_size": server["distilwave_batch_size_sum"] / batches,
        "server_mean_inference_s": server["distilwave_inference_seconds_sum"] / batches,
        "server_mean_queue_wait_s": server["distilwave_queue_wait_seconds_sum"] / waits,
    }


SERVER_TOTALS = (
    "distilwave_batch_size_sum",
    "distilwave_batch_size_count",
    "distilwave_inference_seconds_sum",
    "distilwave_queue_wait_seconds_sum",
    "distilwave_queue_wait_seconds_count",
)


async def _server_totals(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's cumulative batch and queue figures, from /metrics."""
    totals = dict.fromkeys(SERVER_TOTALS, 0.0)
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_server(bundle: Path, threads: int, env: dict[str, str]) -> Iterator[str]:
    """A one-worker uvicorn on a free loopback port, ready, and always stopped."""
    port = _free_port()
    environment = {**os.environ, **env, "DISTILWAVE_BUNDLE": str(bundle)}
    environment["DISTILWAVE_TORCH_THREADS"] = str(threads)
    command = [
        sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 180 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def measure(
    url: str, route: str, body: bytes, sample_rate: int, args: argparse.Namespace
) -> list[Any]:
    key = args.api_key
    await run_level(url, route, body, 2, 4, 30, sample_rate, key)  # warm the server up
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(
            url, route, body, concurrency, args.requests, args.max_seconds, sample_rate, key
        )
        logger.info(
            "c=%-3d %6.2f req/s  %6.1f audio-s/s  p50 %.3f  p95 %.3f  p99 %.3f s  %s  "
            "(server: batch %.1f, %.3f s per batch, queue wait %.3f s)",
            concurrency,
            level["throughput_rps"],
            level["audio_seconds_per_second"],
            level["latency_p50_s"],
            level["latency_p95_s"],
            level["latency_p99_s"],
            level["statuses"],
            level["server_mean_batch_size"],
            level["server_mean_inference_s"],
            level["server_mean_queue_wait_s"],
        )
        levels.append(level)
    return levels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200, help="per level, at most")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per level, at most")
    parser.add_argument("--clip-s", type=float, default=1.0, help="audio per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--exact", action="store_true", help="serve (and time) the exact path")
    parser.add_argument("--api-key", default=os.environ.get("DISTILWAVE_API_KEY"))
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.url and not _loopback(args.url):
        parser.error("--url must be a loopback address (127.0.0.0/8, ::1, localhost)")
    if min(args.concurrency) < 1 or args.requests < 1 or not 0 < args.max_seconds <= 600:
        parser.error("concurrency and requests must be positive, max-seconds in (0, 600]")
    bundle = load_bundle(args.bundle)
    route, body = request_for(bundle, args.clip_s)
    raw = raw_speed(bundle, args.clip_s, args.threads, args.exact)
    logger.info(
        "raw batch-1 generation: %.2f s audio in %.4f s median, %.4f s best "
        "(%.1fx real time, best %.1fx; %d threads)",
        raw["audio_seconds"],
        raw["generate_seconds"],
        raw["generate_seconds_best"],
        raw["times_real_time"],
        raw["times_real_time_best"],
        args.threads,
    )
    env = {"DISTILWAVE_MAX_BATCH": str(args.max_batch), "DISTILWAVE_EXACT": str(args.exact)}
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(own_server(args.bundle, args.threads, env))
        levels = asyncio.run(measure(url, route, body, bundle.sample_rate, args))
    report = {
        "bundle": str(args.bundle),
        "route": route,
        "clip_seconds": args.clip_s,
        "threads": args.threads,
        "exact": args.exact,
        "max_batch": args.max_batch if not args.url else None,
        "cpu_count": os.cpu_count(),
        "raw_batch1": raw,
        "levels": levels,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
