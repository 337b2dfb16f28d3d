"""Load test: throughput and latency at several concurrencies, next to the model's own speed
measured in the same run, and where a request's time goes.

    python -m service.loadtest --bundle DIR --out benchmarks/results/loadtest-NAME.json
        [--route resynthesize|vocode] [--concurrency 1 4 16 64] [--requests 200]
        [--max-seconds 30] [--prompts DIR] [--url http://127.0.0.1:PORT]

By default it starts its own server (``distilwave serve``, one worker, the service's default
layout) on a free loopback port and stops it at the end; with ``--url`` the server must be on
this machine (loopback only). The clients run in this process, on the same cores as the
server: their CPU time is measured and taken out (``audio_seconds_per_second_adjusted`` =
audio / (elapsed - client CPU / cores)), and compared with ``raw_batched``, the model alone
generating batches of the same prompts from their mels (each request's context prepared as the
service does, the student as ``make bench`` times it) with every core, measured just before
and after the levels in the same run; ``raw_flows_only`` (requests prepared beforehand, the
flows' batched pass alone) is reported beside it. ``resynthesize`` (the default) uploads real
speech prompts of 1-2.5 s (``--prompts``, default the test fixtures; a synthetic voice if
absent); ``vocode`` sends ``--clip-s`` of mel as base64 ``.npy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from models.bundle import Bundle, load_bundle
from models.vocoder import Prepared, Vocoder
from service.loadclient import (
    cpu_seconds,
    loopback,
    own_server,
    prompts,
    requests_for,
    server_env,
    server_totals,
    wav_bytes,
)
from service.settings import Settings

logger = logging.getLogger("distilwave.loadtest")


# --------------------------------------------------------------------- the model alone


def sources(vocoder: Vocoder, clips: list[np.ndarray], clip_s: float) -> list[dict[str, Any]]:
    """What each prompt gives the model: its mel (computed beforehand at the bundle's loudness,
    the service's decode / resample / loudness / mel are not the model's), or a length."""
    if vocoder.conditional:
        return [{"mel": vocoder.features(c)[0][0, :, :-1]} for c in clips]
    return [{"num_samples": int(clip_s * vocoder.sample_rate)}]


def raw_speed(
    vocoder: Vocoder,
    inputs: list[dict[str, Any]],
    batch: int,
    threads: int,
    per_thread: int,
    budget_s: float,
    from_mel: bool = True,
) -> dict[str, float]:
    """Audio seconds per second of the model alone: ``threads`` threads (``per_thread`` torch
    threads each) generating batches of ``batch`` requests of one prompt (no padding), going
    through the prompts until ``budget_s`` has passed.

    ``from_mel``: each request is prepared from its mel inside the timing, one by one as the
    service does (context: pitch, linear prediction, the prior h; noise) and the batch generated
    in one pass, the student as ``make bench`` times it. Otherwise requests are prepared
    beforehand and only the flows' batched pass is timed."""
    generated = [0] * threads
    ready = [] if from_mel else [vocoder.request(**s, temperature=1.0, seed=0) for s in inputs]

    def one_batch(turn: int) -> int:
        if not from_mel:
            request = ready[turn % len(ready)]
            vocoder.run([request] * batch)
            return batch * request.length
        source = inputs[turn % len(inputs)]
        requests = [
            vocoder.request(**source, temperature=1.0, seed=turn * batch + k) for k in range(batch)
        ]
        vocoder.run(requests)
        return sum(r.length for r in requests)

    def work(index: int) -> None:
        torch.set_num_threads(per_thread)
        with torch.inference_mode():
            turn = index
            while time.perf_counter() < stop:
                generated[index] += one_batch(turn)
                turn += 1

    torch.set_num_threads(per_thread)
    with torch.inference_mode():
        one_batch(0)  # first-call allocations
    started, cpu = time.perf_counter(), cpu_seconds()
    stop = started + budget_s
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    audio = sum(generated) / vocoder.sample_rate
    return {
        "audio_seconds_per_second": audio / elapsed,
        "cpu_seconds_per_audio_second": cpu / audio,
        "batch": batch,
        "threads": threads,
        "torch_threads": per_thread,
        "from_mel": from_mel,
        "seconds": elapsed,
    }


def raw_batch1(vocoder: Vocoder, request: Prepared, repeats: int = 10) -> dict[str, float]:
    """One thread, batch 1: the median of timed generations (after one untimed)."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        vocoder.run([request])
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            vocoder.run([request])
            times.append(time.perf_counter() - started)
    audio_s = request.length / vocoder.sample_rate
    median = float(np.median(times))
    return {
        "audio_seconds": audio_s,
        "generate_seconds": median,
        "times_real_time": audio_s / median,
        "times_real_time_best": audio_s / min(times),
        "threads": 1,
    }


def stage_costs(bundle: Bundle, vocoder: Vocoder, clips: list[np.ndarray]) -> dict[str, float]:
    """Where a resynthesis request's CPU goes: milliseconds of CPU per second of audio for
    each stage, one thread (the service's default), over the prompts."""
    import soxr

    from models.audio import loudness_lufs
    from models.lpc import linear_prediction
    from models.pitch import estimate_pitch, periodic_source
    from service.audio import UploadLimits, decode_upload, encode

    torch.set_num_threads(1)
    rate, student = bundle.sample_rate, vocoder.student
    front, config = student.front_end, student.config
    limits = UploadLimits(30, 10**7, 192_000)
    audio_s = sum(len(c) for c in clips) / rate
    costs: dict[str, float] = {}

    def timed(name: str, run: Any, repeats: int = 3) -> None:
        run()
        started = time.process_time()
        for _ in range(repeats):
            run()
        costs[name] = 1000 * (time.process_time() - started) / repeats / audio_s

    wavs = [wav_bytes(c, rate) for c in clips]
    at_48k = [wav_bytes(soxr.resample(c, rate, 48_000).astype(np.float32), 48_000) for c in clips]
    tensors = [torch.from_numpy(c) for c in clips]
    with torch.inference_mode():
        mels = [vocoder.features(c)[0] for c in clips]
        timed("decode_wav", lambda: [decode_upload(w, rate, limits) for w in wavs])
        timed("decode_resample_48k", lambda: [decode_upload(w, rate, limits) for w in at_48k])
        timed("loudness", lambda: [loudness_lufs(t, rate) for t in tensors])
        timed("mel", lambda: [front(t[None]) for t in tensors])
        timed("upsampler", lambda: [student.upsampler(m, None, m.shape[-1]) for m in mels])
        if config.source_filter.enabled:
            sf = config.source_filter
            timed(
                "lpc",
                lambda: [
                    linear_prediction(m, front.config, sf, front.filterbank, front.window)
                    for m in mels
                ],
            )
        if config.pitch.enabled:
            pitch = config.pitch

            def pitch_and_source() -> None:
                for m in mels:
                    track = estimate_pitch(m, front.config, pitch, front.filterbank)
                    steps = (m.shape[-1] - 1) * bundle.hop_length
                    periodic_source(track, bundle.hop_length, steps, rate, pitch)

            timed("pitch_and_source", pitch_and_source)
        timed("request_total", lambda: [vocoder.request(waveform=c, seed=0) for c in clips])
        requests = [vocoder.request(waveform=c, seed=0) for c in clips]
        timed("generate_batch1", lambda: [vocoder.run([r]) for r in requests], 1)
        outputs = [vocoder.run([r])[0] for r in requests]
        timed("encode_wav", lambda: [encode(o, rate, "wav") for o in outputs])
        timed("encode_flac", lambda: [encode(o, rate, "flac") for o in outputs])
    return {name: round(value, 2) for name, value in costs.items()}


def best_raw(
    vocoder: Vocoder,
    inputs: list[dict[str, Any]],
    settings: Settings,
    budget_s: float,
    from_mel: bool = True,
) -> dict[str, Any]:
    """The model's batched speed on this machine: the service's layout (inference threads of
    one torch thread) and one thread with every core intra-op, the better of the two."""
    cores, batch = settings.cores(), settings.max_batch
    layouts = {
        "threads": raw_speed(vocoder, inputs, batch, cores, 1, budget_s, from_mel),
        "intra_op": raw_speed(vocoder, inputs, batch, 1, cores, budget_s, from_mel),
    }
    best = max(layouts.values(), key=lambda x: x["audio_seconds_per_second"])
    return {"best_audio_seconds_per_second": best["audio_seconds_per_second"], **layouts}


# --------------------------------------------------------------------- the service


async def run_level(
    url: str,
    requests: list[tuple[str, bytes, str, float]],
    concurrency: int,
    count: int,
    max_seconds: float,
    server_pid: int | None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop until ``count`` requests or time is up."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    audio = 0.0
    issued = 0
    deadline = time.monotonic() + max_seconds
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal issued, audio
        while issued < count and time.monotonic() < deadline:
            path, body, kind, _ = requests[(issued + index) % len(requests)]
            issued += 1
            started = time.perf_counter()
            try:
                response = await client.post(
                    path, content=body, headers={"content-type": kind, **auth}
                )
                key = str(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                    audio += float(response.headers.get("x-audio-seconds", 0.0)) or (
                        len(response.content) / 2 / int(response.headers["x-sample-rate"])
                    )
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = await server_totals(client)
        client_before = cpu_seconds()
        server_before = cpu_seconds(server_pid) if server_pid else None
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = cpu_seconds() - client_before
        server_cpu = cpu_seconds(server_pid) - server_before if server_before is not None else None
        after = await server_totals(client)
    server = {k: after[k] - before[k] for k in after}
    batches = max(server["distilwave_batch_size_count"], 1.0)
    waits = max(server["distilwave_queue_wait_seconds_count"], 1.0)
    ok = np.asarray(latencies) if latencies else np.zeros(1)
    cores = os.cpu_count() or 1
    return {
        "concurrency": concurrency,
        "requests": issued,
        "statuses": statuses,
        "seconds": elapsed,
        "throughput_rps": len(latencies) / elapsed,
        "audio_seconds_per_second": audio / elapsed,
        "client_cpu_seconds": client_cpu,
        "server_cpu_seconds": server_cpu,
        "audio_seconds_per_second_adjusted": audio / max(elapsed - client_cpu / cores, 1e-9),
        "server_cpu_seconds_per_audio_second": server_cpu / audio if server_cpu and audio else None,
        "latency_p50_s": float(np.percentile(ok, 50)),
        "latency_p95_s": float(np.percentile(ok, 95)),
        "latency_p99_s": float(np.percentile(ok, 99)),
        "server_mean_batch_size": server["distilwave_batch_size_sum"] / batches,
        "server_mean_inference_s": server["distilwave_inference_seconds_sum"] / batches,
        "server_mean_queue_wait_s": server["distilwave_queue_wait_seconds_sum"] / waits,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument("--route", choices=["resynthesize", "vocode"], default="resynthesize")
    parser.add_argument("--prompts", type=Path, help="folder of speech WAVs (1-2.5 s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="per level, at most")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per level, at most")
    parser.add_argument("--clip-s", type=float, default=1.0, help="audio per vocode request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per inference thread")
    parser.add_argument("--inference-threads", type=int, help="server default: cores")
    parser.add_argument("--max-batch", type=int, help="server default: 8")
    parser.add_argument("--exact", action="store_true", help="serve (and time) the exact path")
    parser.add_argument("--raw-seconds", type=float, default=8.0, help="per raw measurement")
    parser.add_argument("--api-key", default=os.environ.get("DISTILWAVE_API_KEY"))
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.url and not loopback(args.url):
        parser.error("--url must be a loopback address (127.0.0.0/8, ::1, localhost)")
    if min(args.concurrency) < 1 or args.requests < 1 or not 0 < args.max_seconds <= 600:
        parser.error("concurrency and requests must be positive, max-seconds in (0, 600]")
    report = measure(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    bundle = load_bundle(args.bundle)
    settings = Settings(
        bundle=args.bundle,
        torch_threads=args.threads,
        **({"max_batch": args.max_batch} if args.max_batch else {}),
        **({"inference_threads": args.inference_threads} if args.inference_threads else {}),
    )
    if args.exact:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # as the service
    vocoder = Vocoder(bundle, exact=args.exact)
    clips = prompts(bundle, args.prompts)
    requests = requests_for(bundle, args.route, clips, args.clip_s)
    model_inputs = sources(vocoder, clips, args.clip_s)
    raw1 = raw_batch1(vocoder, vocoder.request(**model_inputs[0], temperature=1.0, seed=0))
    stages = stage_costs(bundle, vocoder, clips) if bundle.config.conditional else {}
    loads = [list(os.getloadavg())]
    before = best_raw(vocoder, model_inputs, settings, args.raw_seconds)
    flows_before = best_raw(vocoder, model_inputs, settings, args.raw_seconds, from_mel=False)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, None
        else:
            url, pid = stack.enter_context(own_server(args.bundle, server_env(args)))
        levels = asyncio.run(levels_of(url, requests, pid, args))
    after = best_raw(vocoder, model_inputs, settings, args.raw_seconds)
    flows_after = best_raw(vocoder, model_inputs, settings, args.raw_seconds, from_mel=False)
    loads.append(list(os.getloadavg()))
    raw = (before["best_audio_seconds_per_second"] + after["best_audio_seconds_per_second"]) / 2
    flows = (
        flows_before["best_audio_seconds_per_second"] + flows_after["best_audio_seconds_per_second"]
    ) / 2
    for level in levels:
        level["ratio_to_raw_batched"] = level["audio_seconds_per_second_adjusted"] / raw
        level["ratio_to_flows_only"] = level["audio_seconds_per_second_adjusted"] / flows
    by_clients = {level["concurrency"]: level for level in levels}
    adjusted = {c: level["audio_seconds_per_second_adjusted"] for c, level in by_clients.items()}
    return {
        "bundle": str(args.bundle),
        "route": requests[0][0],
        "clip_seconds": float(np.mean([r[3] for r in requests])),
        "prompt_seconds": [round(r[3], 3) for r in requests],
        "exact": args.exact,
        "cpu_count": os.cpu_count(),
        "load_average": loads,
        "server": None if args.url else server_env(args),
        "raw_batch1": raw1,
        "stage_cpu_ms_per_audio_second": stages,
        # the target's reference: the student from the mel, as `make bench` times it
        "raw_batched": {"before": before, "after": after, "audio_seconds_per_second": raw},
        # the flows' batched pass alone, requests prepared beforehand (no pitch, LPC, prior)
        "raw_flows_only": {
            "before": flows_before,
            "after": flows_after,
            "audio_seconds_per_second": flows,
        },
        "levels": levels,
        "targets": {
            "ratio_at_16": by_clients[16]["ratio_to_raw_batched"] if 16 in by_clients else None,
            "rising_1_to_4": adjusted[4] >= adjusted[1] if {1, 4} <= set(adjusted) else None,
        },
    }


async def levels_of(
    url: str, requests: list[tuple[str, bytes, str, float]], pid: int | None, args: Any
) -> list[dict[str, Any]]:
    key = args.api_key
    await run_level(url, requests, 2, 4, 30, pid, key)  # warm the server up
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(
            url, requests, concurrency, args.requests, args.max_seconds, pid, key
        )
        logger.info(
            "c=%-3d %6.2f req/s %6.2f audio-s/s (%.2f without the client's CPU) p50 %.3f "
            "p99 %.3f s %s (server: batch %.1f, %.3f s per batch, queue wait %.3f s)",
            concurrency,
            level["throughput_rps"],
            level["audio_seconds_per_second"],
            level["audio_seconds_per_second_adjusted"],
            level["latency_p50_s"],
            level["latency_p99_s"],
            level["statuses"],
            level["server_mean_batch_size"],
            level["server_mean_inference_s"],
            level["server_mean_queue_wait_s"],
        )
        levels.append(level)
    return levels


if __name__ == "__main__":
    main()
