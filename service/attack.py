"""Attack and soak: the service under hostile traffic, bounded, on loopback only.

    python -m service.attack --bundle DIR --out benchmarks/results/attack-NAME.json
        [--soak 10000] [--overload-seconds 30] [--url http://127.0.0.1:PORT]

It starts its own server (``distilwave serve``, one worker, the service's defaults except a 2 s
body and header timeout so the slow-client attacks end quickly) unless ``--url`` names one on
this machine, then runs, each bounded:

1. attacks: the probes of issue 14 (a ``.npy`` header claiming 10^12 frames, a WAV of rate 0,
   an int8 mel of -128, the card's paths, 2,000 made-up HTTP methods, three 11 MB JSON bodies,
   six 10 KB FLACs that decode to 29 s x 8 channels x 48 kHz, 192 streams that never read,
   48 malformed requests, a body and headers that never finish, clients that leave);
2. overload: twice the capacity (``queue_size`` + inference threads x ``max_batch``) of
   closed-loop clients uploading real prompts for ``--overload-seconds`` (they wait
   ``Retry-After`` after a 503, as a client should): only 200 and 503 are expected, the 200s
   within the deadline;
3. soak: ``--soak`` requests (short vocodes, some uploads, one in ten malformed) at a
   concurrency under capacity, with the server's RSS before and after.

Throughout, ``/livez`` is probed every 50 ms; the report has every status count, p50/p99,
RSS before/after and the worst ``/livez`` latency. Exit status 1 if an expectation failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.bundle import Bundle, load_bundle
from service.hostile import Prober, attacks, npy, rss_mb
from service.loadclient import loopback, multipart, own_server, prompts, wav_bytes
from service.settings import Settings

logger = logging.getLogger("distilwave.attack")
ATTACK_ENV = {"DISTILWAVE_BODY_TIMEOUT_S": "2", "DISTILWAVE_KEEP_ALIVE_S": "2"}


async def closed_loop(
    url: str,
    requests: list[tuple[str, bytes, str]],
    clients: int,
    stop: Callable[[int], bool],
    wait_retry_after: bool,
) -> dict[str, Any]:
    """``clients`` clients cycling through ``requests`` until ``stop(issued)``."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal issued
        while not stop(issued):
            path, body, kind = requests[(issued + index) % len(requests)]
            issued += 1
            started = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers={"content-type": kind})
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status_code == 503 and wait_retry_after:
                    await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(loop(client, i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    ok = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": issued,
        "seconds": round(elapsed, 2),
        "statuses": dict(statuses),
        "latency_p50_s": round(float(np.percentile(ok, 50)), 4),
        "latency_p99_s": round(float(np.percentile(ok, 99)), 4),
    }


def upload_requests(bundle: Bundle, folder: Path | None) -> list[tuple[str, bytes, str]]:
    out = []
    for clip in prompts(bundle, folder):
        body, kind = multipart(wav_bytes(clip, bundle.sample_rate), {"response_format": "pcm"})
        out.append(("/v1/audio/resynthesize", body, kind))
    return out


def soak_requests(
    bundle: Bundle, uploads: list[tuple[str, bytes, str]]
) -> list[tuple[str, bytes, str]]:
    """Ten requests: short vocodes (0.25 s), an upload and a malformed body, repeated."""
    frames = max(2, round(0.25 * bundle.sample_rate / bundle.hop_length))
    mel = np.zeros((frames, bundle.mel.n_mels), np.float32)
    vocode = json.dumps({"mel": npy(mel), "response_format": "pcm"}).encode()
    bad = json.dumps({"mel": [[0.0] * (bundle.mel.n_mels - 1)] * 3}).encode()
    short = ("/v1/audio/vocode", vocode, "application/json")
    return [short] * 8 + [uploads[0], ("/v1/audio/vocode", bad, "application/json")]


def run(args: argparse.Namespace, url: str, pid: int | None, settings: Settings) -> dict[str, Any]:
    bundle = load_bundle(args.bundle)
    uploads = upload_requests(bundle, args.prompts)
    report: dict[str, Any] = {"rss_mb_start": rss_mb(pid)}
    if bundle.config.conditional:
        logger.info("attacks ...")
        report["attacks"] = attacks(url, bundle, uploads[0][1], pid)
    capacity = settings.queue_size + settings.engine_threads() * settings.max_batch
    logger.info("overload: %d clients for %g s ...", 2 * capacity, args.overload_seconds)
    before = rss_mb(pid)
    end = time.monotonic() + args.overload_seconds
    with Prober(url).running() as prober:
        overload = asyncio.run(
            closed_loop(url, uploads, 2 * capacity, lambda _: time.monotonic() > end, True)
        )
    overload.update(capacity=capacity, deadline_s=settings.request_timeout_s,
                    rss_mb=[before, rss_mb(pid)], livez_worst_s=prober.worst)  # fmt: skip
    report["overload"] = overload
    logger.info("soak: %d requests ...", args.soak)
    requests = soak_requests(bundle, uploads)
    asyncio.run(closed_loop(url, requests, 8, lambda n: n >= 200, False))  # settle allocations
    before = rss_mb(pid)
    with Prober(url).running() as prober:
        soak = asyncio.run(closed_loop(url, requests, 8, lambda n: n >= args.soak, False))
    after = rss_mb(pid)
    soak.update(rss_mb=[before, after], livez_worst_s=prober.worst)
    if before and after:
        soak["rss_change"] = round(after / before - 1, 4)
    report["soak"] = soak
    report["rss_mb_end"] = rss_mb(pid)
    report["checks"] = checks(report)
    return report


def checks(report: dict[str, Any]) -> dict[str, bool]:
    """The expectations, each true or false."""
    out: dict[str, bool] = {}
    attacked = report.get("attacks")
    if attacked:
        out["npy_huge_header_4xx"] = all(400 <= s < 500 for s in attacked["npy_huge_header"])
        out["wav_rate_zero_4xx"] = all(400 <= s < 500 for s in attacked["wav_rate_zero"])
        out["int8_mel_refused"] = attacked["int8_mel_minus_128"] == [422]
        out["card_without_paths"] = not attacked["card_paths"]["absolute_paths_found"]
        out["metric_labels_bounded"] = attacked["made_up_methods"]["metrics_lines_grown"] <= 20
        out["livez_under_1s_during_json"] = attacked["huge_json_bodies"]["livez_worst_s"] < 1.0
        out["flac_bomb_413"] = set(attacked["flac_bomb"]["statuses"]) == {413}
        streams = attacked["never_read_streams"]["statuses"]
        out["streams_capped"] = set(streams) <= {"200", "503"} and streams.get("200", 0) <= 16
        out["malformed_all_4xx_enveloped"] = (
            not attacked["malformed"]["not_4xx"] and not (attacked["malformed"]["without_envelope"])
        )
        out["slow_body_408"] = attacked["slow_body"]["answer"].startswith("HTTP/1.1 408")
        out["slow_headers_closed"] = attacked["slow_headers"]["answer"] == "closed"
    overload = report["overload"]
    out["overload_only_200_503"] = set(overload["statuses"]) <= {"200", "503"}
    out["overload_p99_within_deadline"] = overload["latency_p99_s"] <= overload["deadline_s"]
    out["livez_under_1s_under_overload"] = overload["livez_worst_s"] < 1.0
    soak = report["soak"]
    out["soak_no_5xx"] = not any(k.startswith("5") for k in soak["statuses"] if k != "503")
    if "rss_change" in soak:
        out["soak_rss_flat_10pct"] = abs(soak["rss_change"]) <= 0.10
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument("--prompts", type=Path, help="folder of speech WAVs (1-2.5 s)")
    parser.add_argument("--soak", type=int, default=10_000, help="requests in the soak")
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.url and not loopback(args.url):
        parser.error("--url must be a loopback address (127.0.0.0/8, ::1, localhost)")
    if not 1 <= args.soak <= 100_000 or not 0 < args.overload_seconds <= 600:
        parser.error("--soak in 1..100000, --overload-seconds in (0, 600]")
    settings = _settings(args.bundle, {} if args.url else ATTACK_ENV)
    started = time.time()
    loads = [list(os.getloadavg())]
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, None
        else:
            url, pid = stack.enter_context(own_server(args.bundle, ATTACK_ENV))
        report = run(args, url, pid, settings)
    loads.append(list(os.getloadavg()))
    report = {
        "bundle": str(args.bundle),
        "server_env": None if args.url else ATTACK_ENV,
        "load_average": loads,
        "seconds": round(time.time() - started, 1),
        **report,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
    failed = [name for name, ok in report["checks"].items() if not ok]
    logger.info("checks failed: %s", failed or "none")
    return 1 if failed else 0


def _settings(bundle: Path, extra: dict[str, str]) -> Settings:
    """The settings the server runs with: this environment and ``extra`` (its own server's)."""
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        return Settings(bundle=bundle)
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    sys.exit(main())
