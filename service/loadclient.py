"""What the load test and the attack script share on the client side: prompts and request
bodies, loopback checks, CPU time, the server's own totals, and a server of our own.

Loopback only: these tools never send traffic to another machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import ipaddress
import json
import os
import resource
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
import soundfile
import torch
from prometheus_client.parser import text_string_to_metric_families

from models.audio import normalize_loudness
from models.bundle import Bundle

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio" / "asterisk"


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_signal(bundle: Bundle, seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like signal at the training loudness: a gliding harmonic tone in noise."""
    rate = bundle.sample_rate
    t = torch.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t + seed)
    phase = 2 * torch.pi * torch.cumsum(pitch, 0) / rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
    noise = 0.05 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(seed))
    convention = bundle.audio
    signal, _ = normalize_loudness(
        voiced + noise, rate, convention.loudness_lufs, convention.peak_limit
    )
    return signal.numpy()


def prompts(bundle: Bundle, folder: Path | None) -> list[np.ndarray]:
    """Mono prompts at the bundle's rate, 1-2.5 s: the folder's clips and pairs of them
    joined (or synthetic ones)."""
    import soxr

    rate = bundle.sample_rate
    folder = folder if folder is not None else FIXTURES
    clips = []
    for path in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
        audio, source_rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if source_rate != rate:
            mono = soxr.resample(mono, source_rate, rate, "HQ").astype(np.float32)
        clips.append(mono)
    if not clips:
        return [test_signal(bundle, seconds, i) for i, seconds in enumerate((1.0, 1.5, 2.0, 2.5))]
    shortest = sorted(clips, key=len)
    joined = [np.concatenate([a, b]) for a, b in zip(shortest[:2], shortest[2:4], strict=True)]
    return [c for c in clips + joined if 1.0 * rate <= len(c) <= 2.5 * rate] or clips


def wav_bytes(waveform: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def multipart(data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``file`` and ``fields`` (built once, sent many times)."""
    boundary = "distilwave-loadtest-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def requests_for(
    bundle: Bundle, route: str, clips: list[np.ndarray], clip_s: float
) -> list[tuple[str, bytes, str, float]]:
    """(path, body, content type, audio seconds) of the requests the clients cycle through."""
    rate = bundle.sample_rate
    speaker = {"speaker": "0"} if bundle.config.n_speakers else {}
    if not bundle.config.conditional:
        body = json.dumps({"duration_s": clip_s, "response_format": "pcm", **speaker}).encode()
        return [("/v1/audio/generate", body, "application/json", clip_s)]
    if route == "resynthesize":
        out = []
        for clip in clips:
            body, kind = multipart(wav_bytes(clip, rate), {"response_format": "pcm", **speaker})
            out.append(("/v1/audio/resynthesize", body, kind, len(clip) / rate))
        return out
    with torch.inference_mode():
        signal = torch.from_numpy(test_signal(bundle, clip_s))
        mel = bundle.student.front_end(signal)[0].T[:-1]  # (M, n_mels): M hops of audio
    buffer = io.BytesIO()
    np.save(buffer, mel.numpy().astype(np.float32))
    payload: dict[str, Any] = {
        "mel": base64.b64encode(buffer.getvalue()).decode(),
        "response_format": "pcm",
    }
    if bundle.config.n_speakers:
        payload["speaker"] = 0
    hops = mel.shape[0] * bundle.hop_length / rate
    return [("/v1/audio/vocode", json.dumps(payload).encode(), "application/json", hops)]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of another by pid (Linux /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_TOTALS = (
    "distilwave_batch_size_sum",
    "distilwave_batch_size_count",
    "distilwave_inference_seconds_sum",
    "distilwave_queue_wait_seconds_sum",
    "distilwave_queue_wait_seconds_count",
)


async def server_totals(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's cumulative batch and queue figures, from /metrics."""
    totals = dict.fromkeys(SERVER_TOTALS, 0.0)
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_server(bundle: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``distilwave serve`` (one worker) on a free loopback port, ready, and always stopped;
    yields its URL and pid."""
    port = free_port()
    environment = {**os.environ, **env}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        sys.executable, "-m", "distilwave.cli", "serve", "--bundle", str(bundle),
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
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"DISTILWAVE_EXACT": str(args.exact), "DISTILWAVE_TORCH_THREADS": str(args.threads)}
    if args.max_batch is not None:
        env["DISTILWAVE_MAX_BATCH"] = str(args.max_batch)
    if args.inference_threads is not None:
        env["DISTILWAVE_INFERENCE_THREADS"] = str(args.inference_threads)
    return env
