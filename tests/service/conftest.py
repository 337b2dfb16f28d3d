"""Fixtures for the service suite: tiny but real bundles, settings, an in-process client,
and real speech clips.

The bundles hold a small random student (fresh heads are zero-initialised, which would make
every flow the identity), saved and loaded through the real bundle format. Five kinds:
conditional source-filter, conditional with three named speakers, the default product's
(the mel-inversion prior and source filter, served at temperature 0), conditional with
pitch (source channels, three pitch-lagged inputs and the mixed-excitation flow: cpu-8k's
teacher reads the pitch, its student no longer does, the smoke preset's does), and
unconditional (plain, no source filter).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from models.bundle import save_bundle
from models.config import (
    MelConfig,
    PitchConfig,
    PriorConfig,
    SourceFilterConfig,
    StudentConfig,
    WaveNetConfig,
)
from models.student import IAFStudent
from service.app import create_app
from service.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "asterisk"
SPEAKERS = ["alice", "bob", "carol"]
CARD = {
    "name": "tiny-test",
    "training": {"corpus": "random weights", "hours": 0},
    "metrics": {"lsd_db": 99.0},
    "license": "Apache-2.0",
}


def tiny_student(seed: int, **overrides: Any) -> IAFStudent:
    """A two-flow student with random weights (heads included), 8 kHz, hop 100, 80 mels."""
    config = StudentConfig(
        flows=2,
        wavenet=WaveNetConfig(
            layers=3, cycle=3, residual_channels=8, gate_channels=16, skip_channels=8
        ),
        **overrides,
    )
    student = IAFStudent(config, MelConfig())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return student.eval()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "cond": save_bundle(root / "cond", tiny_student(0), card=CARD, default_temperature=0.8),
        "multi": save_bundle(
            root / "multi", tiny_student(1, n_speakers=3), speakers=SPEAKERS, card=CARD
        ),
        "pitch": save_bundle(
            root / "pitch",
            tiny_student(3, pitch=PitchConfig(enabled=True, lag_taps=3), mixed_excitation=True),
            card=CARD,
        ),
        "prior": save_bundle(  # cpu-8k's student: the prior h(mel), source filter, no pitch
            root / "prior",
            tiny_student(4, prior=PriorConfig(enabled=True, n_fft=400, channels=8, layers=1)),
            card=CARD,
            default_temperature=0.0,
        ),
        "uncond": save_bundle(
            root / "uncond",
            tiny_student(2, conditional=False, source_filter=SourceFilterConfig(enabled=False)),
            card={"name": "tiny-unconditional"},
        ),
    }


@pytest.fixture(scope="package", autouse=True)
def torch_settings() -> Iterator[None]:
    """One intra-op thread for tiny models; whatever the apps changed is put back after."""
    threads, onednn = torch.get_num_threads(), bool(torch.backends.mkldnn.enabled)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_for(bundle: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bundle": bundle,
        "torch_threads": 1,
        "inference_threads": 1,  # one thread takes every batch: batching tests count them
        "warmup_s": 0.2,
        "max_delay_ms": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_ready(client: httpx.AsyncClient, timeout: float = 20.0) -> None:
    import anyio

    with anyio.fail_after(timeout):
        while (await client.get("/readyz")).status_code != 200:
            await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app in-process (lifespan included) behind an httpx client."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service", timeout=30
        ) as client:
            if ready:
                await wait_ready(client)
            yield client, app


@pytest.fixture(scope="session")
def speech() -> list[Path]:
    """Real speech (8 kHz mono 16-bit WAV, CC-BY-SA-3.0, see ATTRIBUTION.md there)."""
    clips = sorted(FIXTURES.glob("*.wav"))
    assert clips, f"no speech fixtures under {FIXTURES}"
    return clips


@pytest.fixture(scope="session")
def speech_variants(
    tmp_path_factory: pytest.TempPathFactory, speech: list[Path]
) -> dict[str, Path]:
    """The same real clip as 8 kHz WAV, 16 kHz stereo FLAC and 22.05 kHz OGG."""
    import librosa

    audio, rate = soundfile.read(speech[0], dtype="float32")
    root = tmp_path_factory.mktemp("uploads")
    up = librosa.resample(audio, orig_sr=rate, target_sr=16000)
    stereo = np.stack([up, 0.5 * up], axis=1)
    soundfile.write(root / "stereo16k.flac", stereo, 16000, format="FLAC")
    ogg = librosa.resample(audio, orig_sr=rate, target_sr=22050)
    soundfile.write(root / "clip22k.ogg", ogg, 22050, format="OGG", subtype="VORBIS")
    return {"wav": speech[0], "flac": root / "stereo16k.flac", "ogg": root / "clip22k.ogg"}


def mel_of(path: Path, frames: int | None = None) -> list[list[float]]:
    """A real clip's normalised log-mel through the default front end, frames x bands."""
    from models.mel import MelFrontEnd

    audio, _ = soundfile.read(path, dtype="float32")
    with torch.inference_mode():
        mel = MelFrontEnd(MelConfig())(torch.from_numpy(audio))[0].T  # (M, n_mels)
    if frames is not None:
        mel = mel[:frames]
    return mel.tolist()


def assert_same_audio(first: bytes, second: bytes, exact: bool) -> None:
    """Two wav or pcm bodies carry the same 16-bit samples: bit for bit when ``exact``,
    else within one step (the fast path's float rounding changes with batch and chunk
    shapes by ~1e-7, which flips the rounding of an occasional sample)."""
    if exact:
        assert first == second
        return
    offset = 44 if first[:4] == b"RIFF" else 0
    a, b = (np.frombuffer(x[offset:], dtype="<i2").astype(np.int32) for x in (first, second))
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1
