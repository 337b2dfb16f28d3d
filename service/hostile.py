"""The hostile requests of issue 14, each bounded, against a server on this machine
(``service.attack`` runs them, with an overload and a soak; see there).

Each function sends one kind of attack and returns what came back: status counts, the
server's RSS before and after (Linux ``/proc``), the worst ``/livez`` latency meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import pickle
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from models.bundle import Bundle
from service.loadclient import multipart, wav_bytes


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class Prober:
    """``/livez`` every 50 ms in a thread; the worst latency (a failure counts as 60 s)."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.failures = url, 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/livez").status_code == 200
                except httpx.HTTPError:
                    ok = False
                latency = time.perf_counter() - started if ok else 60.0
                self.failures += not ok
                self.worst = max(self.worst, latency)
                self.stop.wait(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator[Prober]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.thread.join(60)


def npy(array: np.ndarray, allow_pickle: bool = False) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return base64.b64encode(buffer.getvalue()).decode()


def flac(frames: int, channels: int, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((frames, channels), np.int16), rate, format="FLAC")
    return buffer.getvalue()


def raw(url: str, data: bytes, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.sendall(data)
    return sock


def head(method: str, path: str, length: int, kind: str = "application/json") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: attack\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def malformed(bundle: Bundle, clip: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """48 hostile requests: (method, path, httpx keyword arguments)."""
    n = bundle.mel.n_mels
    good = [[0.0] * n] * 3
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(800, np.int16), 8000, format="WAV")
    lying = bytearray(wav.getvalue())
    lying[24:28] = struct.pack("<I", 4_000_000)  # a sample rate no recording has
    v, r = "/v1/audio/vocode", "/v1/audio/resynthesize"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", v, {"content": b'{"mel": [[0.0, 1.0]'}),
        ("POST", v, {"content": b"[1, 2]"}),
        ("POST", v, {"content": b"", "headers": {"content-type": "application/json"}}),
        ("POST", v, {"content": b"mel=1", "headers": {"content-type": "text/plain"}}),
        ("POST", v, {"content": b'{"mel": [[NaN' + b", 0.0" * (n - 1) + b"]]}"}),
        ("POST", v, {"content": b'{"mel": [[Infinity' + b", 0.0" * (n - 1) + b"]]}"}),
        ("POST", v, {"content": b'{"mel": ' + b"[" * 5000 + b"]" * 5000 + b"}"}),
        ("POST", v, {"json": {"mel": [[0.0] * (n - 1)] * 3}}),
        ("POST", v, {"json": {"mel": [[0.0] * n, [0.0] * (n - 1)]}}),
        ("POST", v, {"json": {"mel": [["x"] * n] * 3}}),
        ("POST", v, {"json": {"mel": "not base64!"}}),
        ("POST", v, {"json": {"mel": base64.b64encode(b"plain bytes").decode()}}),
        ("POST", v, {"json": {"mel": npy(np.array([{"a": 1}], dtype=object), True)}}),
        ("POST", v, {"json": {"mel": base64.b64encode(pickle.dumps([1, 2])).decode()}}),
        ("POST", v, {"json": {"mel": npy(np.full((3, n), 1e30, np.float32))}}),
        ("POST", v, {"json": {"mel": npy(np.full((3, n), -1e30, np.float64))}}),
        ("POST", v, {"json": {"mel": npy(np.full((3, n), -128, np.int8))}}),
        ("POST", v, {"json": {"mel": npy(np.zeros((n, 3), np.float32))}}),
        ("POST", v, {"json": {"mel": npy(np.zeros((3, n), np.complex64))}}),
        ("POST", v, {"json": {"mel": [[1e300] * n] * 3}}),
        ("POST", v, {"json": {"mel": []}}),
        ("POST", v, {"json": {"mel": [[0.0] * n] * 100_000}}),
        ("POST", v, {"json": {"mel": good, "temperature": -1}}),
        ("POST", v, {"json": {"mel": good, "temperature": 1e9}}),
        ("POST", v, {"json": {"mel": good, "seed": -5}}),
        ("POST", v, {"json": {"mel": good, "seed": 2**40}}),
        ("POST", v, {"json": {"mel": good, "volume": 3}}),
        ("POST", v, {"json": {"mel": good, "response_format": "mp3"}}),
        ("POST", v, {"json": {"mel": good, "stream": True, "response_format": "flac"}}),
        ("POST", v, {"json": {"mel": good, "speaker": "²"}}),
        ("POST", v, {"json": {"mel": good, "speaker": 10**6}}),
        ("POST", v, {"json": {"mel": good, "stream": "yes please"}}),
        (
            "POST",
            v,
            {"content": b"0" * (40 * 2**20), "headers": {"content-type": "application/json"}},
        ),
        ("POST", r, {"files": {"file": ("a.wav", b"")}}),
        ("POST", r, {"files": {"file": ("a.wav", b"RIFF....WAVEfmt ")}}),
        ("POST", r, {"files": {"file": ("a.wav", bytes(lying))}}),
        ("POST", r, {"files": {"file": ("a.wav", b"not audio at all" * 100)}}),
        ("POST", r, {"files": {"file": ("hour.flac", flac(3600 * 8000, 1, 8000))}}),
        ("POST", r, {"files": {"file": ("a.wav", clip)}, "data": {"temperature": "nan"}}),
        ("POST", r, {"files": {"file": ("a.wav", clip)}, "data": {"seed": "-1"}}),
        ("POST", r, {"files": {"file": ("a.wav", clip)}, "data": {"response_format": "ogg"}}),
        ("POST", r, {"data": {"seed": "1"}}),
        ("POST", "/v1/audio/generate", {"json": {"duration_s": 1.0}}),
        ("GET", "/static/../../../../etc/passwd", {}),
        ("GET", "/static/%2e%2e/%2e%2e/etc/passwd", {}),
        ("GET", "/v1/../../etc/passwd", {}),
        ("DELETE", "/v1/models", {}),
        ("GET", "/v2/nothing", {}),
    ]
    return cases


def attacks(url: str, bundle: Bundle, clip: bytes, pid: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def post(path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(url + path, timeout=120, **kwargs)

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, bundle.mel.n_mels)}
    )
    lying = base64.b64encode(header.getvalue() + b"\0" * 64).decode()
    out["npy_huge_header"] = [post("/v1/audio/vocode", json={"mel": lying}).status_code]
    wav = bytearray(wav_bytes(np.zeros(8000, np.float32), 8000))
    wav[24:32] = struct.pack("<II", 0, 0)
    out["wav_rate_zero"] = [
        post("/v1/audio/resynthesize", files={"file": ("z.wav", bytes(wav))}).status_code
    ]
    mel = npy(np.full((5, bundle.mel.n_mels), -128, np.int8))
    out["int8_mel_minus_128"] = [post("/v1/audio/vocode", json={"mel": mel}).status_code]
    card = httpx.get(url + "/v1/models", timeout=30).text
    leaks = [p for p in ("/home/", "/root/", "/Users/", "C:\\\\", "/tmp/") if p in card]
    out["card_paths"] = {"absolute_paths_found": leaks}
    with httpx.Client(base_url=url, timeout=30) as client:
        lines = len(client.get("/metrics").text.splitlines())
        statuses = [client.request(f"X{i}", "/livez").status_code for i in range(2000)]
        grown = len(client.get("/metrics").text.splitlines()) - lines
    out["made_up_methods"] = {"statuses": dict(Counter(statuses)), "metrics_lines_grown": grown}
    n = bundle.mel.n_mels
    bodies = [json.dumps({"mel": [[v] * n] * (11 * 2**20 // (n * 6))}) for v in ("x", 0.123, "y")]

    def send_json(body: str) -> Callable[[], int]:
        kind = {"content-type": "application/json"}
        return lambda: post("/v1/audio/vocode", content=body, headers=kind).status_code

    with Prober(url).running() as prober:
        statuses = parallel([send_json(body) for body in bodies])
    out["huge_json_bodies"] = {"statuses": statuses, "livez_worst_s": prober.worst}
    bomb = flac(29 * 48_000, 8, 48_000)
    before = rss_mb(pid)
    codes = parallel(
        [lambda: post("/v1/audio/resynthesize", files={"file": ("b.flac", bomb)}).status_code] * 6
    )
    after = rss_mb(pid)
    out["flac_bomb"] = {"bytes": len(bomb), "statuses": codes, "rss_mb": [before, after]}
    out["never_read_streams"] = never_read(url, pid)
    cases = malformed(bundle, clip)
    answers: list[tuple[str, int, bool]] = []
    for method, path, kwargs in cases:
        response = httpx.request(method, url + path, timeout=60, **kwargs)
        enveloped = response.text.startswith('{"error"')
        answers.append((f"{method} {path}", response.status_code, enveloped))
    out["malformed"] = {
        "count": len(answers),
        "statuses": dict(Counter(status for _, status, _ in answers)),
        "without_envelope": [name for name, _, enveloped in answers if not enveloped],
        "not_4xx": [f"{name}: {status}" for name, status, _ in answers if not 400 <= status < 500],
    }
    out["slow_body"] = slow(url, head("POST", "/v1/audio/vocode", 1000) + b'{"mel": [')
    out["slow_headers"] = slow(url, b"GET /livez HTTP/1.1\r\nHo")
    return out


def parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def never_read(url: str, pid: int | None) -> dict[str, Any]:
    """192 streams of 30 s that read nothing after their status line."""
    silence = flac(30 * 8000, 1, 8000)
    body, kind = multipart(silence, {"stream": "true", "response_format": "pcm"})
    request = head("POST", "/v1/audio/resynthesize", len(body), kind) + body
    before = rss_mb(pid)
    sockets = [raw(url, request, rcvbuf=4096) for _ in range(192)]
    statuses: Counter[str] = Counter()
    try:
        for sock in sockets:
            sock.settimeout(60)
            line = sock.recv(12)
            statuses[line[9:12].decode() or "closed"] += 1
        time.sleep(3.0)  # let the admitted streams run into their backpressure
        after = rss_mb(pid)
    finally:
        for sock in sockets:
            sock.close()
    return {"statuses": dict(statuses), "rss_mb": [before, after]}


def slow(url: str, data: bytes) -> dict[str, Any]:
    sock = raw(url, data)
    sock.settimeout(30)
    started, answer = time.perf_counter(), b""
    with contextlib.suppress(OSError):
        while part := sock.recv(4096):
            answer += part
    sock.close()
    return {"answer": answer[:12].decode(errors="replace") or "closed",
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
