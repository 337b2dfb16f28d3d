"""Bounded work, unit by unit (issue 14): uploads decode in bounded blocks (mixed to mono and
resampled as they go) after their header's frames, channels and rate are checked, and are cut
while decoding when the length is unknown; a stream whose client stops reading is ended."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import anyio
import numpy as np
import pytest
import soundfile
import soxr

from service.audio import BLOCK_SAMPLES, UploadLimits, decode_upload
from service.errors import APIError
from service.jobs import Admission, Job
from service.routes import JobStreamingResponse


def _flac(frames: int, channels: int, rate: int) -> bytes:
    time_axis = np.arange(frames) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * time_axis)[:, None] * np.linspace(1, 0.5, channels)
    buffer = io.BytesIO()
    soundfile.write(buffer, tone.astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


LIMITS = UploadLimits(seconds=30, samples=30 * 48_000 * 2, rate=192_000)


def test_uploads_decode_in_blocks_mixed_and_resampled_as_one_pass_would(monkeypatch):
    data = _flac(3 * 44_100 + 17, 2, 44_100)
    sizes: list[int] = []
    original = soundfile.SoundFile.read

    def read(self: soundfile.SoundFile, frames: int = -1, *args: Any, **kwargs: Any) -> Any:
        sizes.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", read)
    decoded = decode_upload(data, 8000, LIMITS)
    assert sizes and max(sizes) == BLOCK_SAMPLES // 2 and -1 not in sizes
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    whole = soxr.resample(audio.mean(axis=1), rate, 8000, "HQ")
    assert abs(decoded.waveform.shape[0] - whole.shape[0]) <= 1
    common = min(decoded.waveform.shape[0], whole.shape[0])
    assert np.abs(decoded.waveform[:common] - whole[:common]).max() < 1e-4
    assert (decoded.source_rate, decoded.source_channels) == (44_100, 2)


@pytest.mark.parametrize(
    ("frames", "channels", "rate", "code"),
    [
        (29 * 48_000, 8, 48_000, "upload_too_large"),  # frames x channels, from the header
        (31 * 8000, 1, 8000, "audio_too_long"),
    ],
)
def test_uploads_are_bounded_by_their_header_before_decoding(
    monkeypatch, frames, channels, rate, code
):
    data = _flac(frames, channels, rate)
    monkeypatch.setattr(soundfile.SoundFile, "read", _never)
    with pytest.raises(APIError) as refused:
        decode_upload(data, 8000, LIMITS)
    assert (refused.value.status, refused.value.code) == (413, code)


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("decoded although the header says it is too large")


def test_an_upload_of_unknown_length_is_cut_while_decoding(monkeypatch):
    data = _flac(20 * 8000, 4, 8000)  # 640,000 samples
    unknown = property(lambda self: 2**63 - 1)  # libsndfile's count for an unknown length
    monkeypatch.setattr(soundfile.SoundFile, "frames", unknown)
    limits = UploadLimits(seconds=30, samples=100_000, rate=192_000)
    with pytest.raises(APIError) as refused:
        decode_upload(data, 8000, limits)
    assert (refused.value.status, refused.value.code) == (413, "upload_too_large")


def test_an_upload_sample_rate_above_the_limit_is_a_422():
    data = _flac(1000, 1, 96_000)
    with pytest.raises(APIError) as refused:
        decode_upload(data, 8000, UploadLimits(seconds=30, samples=10**6, rate=48_000))
    assert (refused.value.status, refused.value.code) == (422, "invalid_sample_rate")


@pytest.mark.anyio
async def test_a_stream_whose_client_stops_reading_is_ended():
    job = Job(source={}, samples=0, ticket=Admission(1, 1).admit(stream=True))

    async def chunks() -> Any:
        while True:
            yield b"\0" * 100

    sent: list[dict[str, Any]] = []

    async def stuck_send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) > 3:
            await asyncio.sleep(3600)  # the client's window stays shut

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    response = JobStreamingResponse(job, 0.2, chunks(), media_type="audio/pcm")
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    with anyio.fail_after(10):
        await response(scope, receive, stuck_send)
    assert job.cancelled.is_set() and len(sent) == 4


def test_jobs_are_told_apart_by_identity_not_by_their_arrays():
    """The inference thread removes ended streams from a list: comparing two jobs field by
    field compared their mels (an error for equal shapes: 16 live streams crashed a turn)."""
    admission = Admission(4, 4)
    mel = np.zeros((80, 10), np.float32)
    first, second = (
        Job(source={"mel": mel.copy()}, samples=1000, ticket=admission.admit(stream=True))
        for _ in range(2)
    )
    live = [first, second]
    live.remove(second)
    assert live == [first] and first != second
