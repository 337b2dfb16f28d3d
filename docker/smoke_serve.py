"""In-container check of the serve image: start the service on a bundle and talk to it.

    python3 smoke_serve.py BUNDLE_DIR

Runs inside the serve image (``docker/smoke.sh`` pipes it in with a bundle): starts the
image's entrypoint (``distilwave serve``) on a free loopback port, checks the image's
HEALTHCHECK fails until ``/readyz`` is 200, then sends a JSON vocode request and a multipart
resynthesis, reads ``/metrics``, and sends SIGTERM with a request in flight: ``/readyz`` must
turn 503, the request must still succeed and the server must exit (0, or by the SIGTERM
uvicorn re-raises after its graceful shutdown, as ``docker stop`` expects). Standard library
only. Exits non-zero on the first failed check.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from email.message import Message
from pathlib import Path
from typing import Any

HEALTHCHECK = Path("/app/docker/healthcheck.py")


def log(message: str) -> None:
    sys.stdout.write(f"serve-smoke: {message}\n")
    sys.stdout.flush()


def fail(message: str) -> None:
    log(f"FAILED: {message}")
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def healthcheck(port: int) -> int:
    env = {**os.environ, "DISTILWAVE_PORT": str(port)}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, check=False).returncode


def wav_frames(data: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(data)) as clip:
        return clip.getnframes(), clip.getframerate()


def sine_wav(seconds: float, rate: int) -> bytes:
    samples = [
        int(8000 * math.sin(2 * math.pi * 220 * t / rate)) for t in range(int(seconds * rate))
    ]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return buffer.getvalue()


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, str]:
    boundary = "distilwave-smoke-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
        "\r\nContent-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), boundary


def mel_request(frames: int, n_mels: int) -> bytes:
    mel = [
        [round(0.5 * math.sin(0.1 * t + 0.05 * b), 4) for b in range(n_mels)] for t in range(frames)
    ]
    return json.dumps({"mel": mel, "seed": 7}).encode()


def main(argv: list[str]) -> int:
    bundle = Path(argv[1])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DISTILWAVE_HOST": "127.0.0.1", "DISTILWAVE_PORT": str(port)}
    started = time.monotonic()
    server = subprocess.Popen(["distilwave", "serve", "--bundle", str(bundle)], env=env)
    try:
        return check(server, base, port, started)
    finally:
        if server.poll() is None:
            server.kill()


def check(server: subprocess.Popen[bytes], base: str, port: int, started: float) -> int:
    if healthcheck(port) == 0:
        fail("the healthcheck passed before the service was up")
    log("healthcheck before start-up: unhealthy (as it should be)")
    while True:
        if server.poll() is not None:
            fail(f"the server exited with {server.returncode} during start-up")
        try:
            status, _, _ = request(f"{base}/readyz")
        except (urllib.error.URLError, OSError):
            status = 0
        if status == 200:
            break
        if time.monotonic() - started > 180:
            fail("/readyz not 200 within 180 s")
        time.sleep(0.2)
    log(f"/readyz 200 after {time.monotonic() - started:.1f} s (load + warm-up)")
    if healthcheck(port) != 0:
        fail("the healthcheck fails although /readyz is 200")
    log("healthcheck: healthy")

    _, _, body = request(f"{base}/v1/models")
    card: dict[str, Any] = json.loads(body)["data"][0]
    rate, hop, n_mels = card["sample_rate"], card["hop_length"], card["n_mels"]
    log(f"/v1/models: {card['id']} ({rate} Hz, hop {hop}, {n_mels} mels)")

    frames = 40
    status, headers, audio = request(
        f"{base}/v1/audio/vocode", mel_request(frames, n_mels), {"Content-Type": "application/json"}
    )
    if status != 200 or not audio.startswith(b"RIFF"):
        fail(f"vocode answered {status}: {audio[:300]!r}")
    samples, wav_rate = wav_frames(audio)
    log(
        f"POST /v1/audio/vocode ({frames} mel frames): 200 {headers.get('Content-Type')}, "
        f"{samples} samples at {wav_rate} Hz ({samples / wav_rate:.2f} s), "
        f"X-Seed {headers.get('X-Seed')}"
    )
    if wav_rate != rate or samples != frames * hop:
        fail(f"vocode returned {samples} samples at {wav_rate} Hz, not {frames * hop} at {rate}")

    body, boundary = multipart("file", "sine.wav", sine_wav(0.5, 16000))
    status, headers, audio = request(
        f"{base}/v1/audio/resynthesize",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if status != 200:
        fail(f"resynthesize answered {status}: {audio[:300]!r}")
    samples, wav_rate = wav_frames(audio)
    log(f"POST /v1/audio/resynthesize (0.5 s at 16 kHz): 200, {samples} samples at {wav_rate} Hz")

    _, _, metrics = request(f"{base}/metrics")
    lines = metrics.decode().splitlines()
    counted = [
        line for line in lines if line.startswith("http_requests_total") and "vocode" in line
    ]
    if not counted:
        fail("/metrics does not count the vocode request")
    log(f"/metrics: {len(lines)} lines, e.g. {counted[0]}")
    return drain(server, base, rate, hop, n_mels)


def drain(server: subprocess.Popen[bytes], base: str, rate: int, hop: int, n_mels: int) -> int:
    """SIGTERM with a long request in flight: readiness 503, the request completes, and the
    server exits (0, or by the SIGTERM that uvicorn re-raises once it has shut down)."""
    frames = int(20 * rate / hop)  # 20 s of audio
    body = mel_request(frames, n_mels)
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    # request() returns once the body is sent: the server has the request in hand.
    connection.request("POST", "/v1/audio/vocode", body, {"Content-Type": "application/json"})
    time.sleep(0.2)
    server.send_signal(signal.SIGTERM)
    result: dict[str, Any] = {}

    def read_response() -> None:
        response = connection.getresponse()
        result["status"], result["audio"] = response.status, response.read()

    reader = threading.Thread(target=read_response)
    reader.start()
    seen = []
    while reader.is_alive() and len(seen) < 500:
        try:
            seen.append(request(f"{base}/readyz")[0])
        except (urllib.error.URLError, OSError):
            seen.append(0)
        time.sleep(0.02)
    reader.join()
    code = server.wait(timeout=60)
    samples = wav_frames(result["audio"])[0] if result.get("status") == 200 else 0
    log(
        f"SIGTERM with a 20 s vocode request in flight: /readyz answered {sorted(set(seen))} "
        f"meanwhile, the request {result.get('status')} ({samples / rate:.1f} s of audio), "
        f"server exit code {code}"
    )
    if result.get("status") != 200 or samples != frames * hop:
        fail("the in-flight request did not complete during the drain")
    if seen and 200 in seen:
        fail("/readyz still answered 200 while draining")
    if code not in (0, -signal.SIGTERM):
        fail(f"the server exited with {code} after SIGTERM")
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
