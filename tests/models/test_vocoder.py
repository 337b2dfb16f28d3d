"""The vocoder entry point (``distilwave.load``): what users, the CLI and the service call."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from models.bundle import save_bundle
from models.config import (
    AudioConvention,
    MelConfig,
    PitchConfig,
    SourceFilterConfig,
    StudentConfig,
    UpsamplerConfig,
    WaveNetConfig,
)
from models.student import IAFStudent
from models.vocoder import Vocoder, load
from tests.models.helpers import randomise
from tests.service.conftest import FIXTURES

SPEECH, RATE = soundfile.read(FIXTURES / "hello-world.wav", dtype="float32")
SMALL = WaveNetConfig(layers=2, cycle=2, residual_channels=4, gate_channels=8, skip_channels=4)


def _vocoder(tmp_path, exact=False, audio=None, **overrides) -> Vocoder:
    config = StudentConfig(
        flows=1, wavenet=SMALL, upsampler=UpsamplerConfig(channels=4), **overrides
    )
    student = randomise(IAFStudent(config, MelConfig()), seed=3, std=0.1)
    speakers = ["ann", "bo"] if config.n_speakers else None
    bundle = save_bundle(tmp_path / "bundle", student, speakers=speakers, audio=audio,
                         default_temperature=0.6)  # fmt: skip
    return load(bundle, exact=exact)


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory):
    pitch = PitchConfig(enabled=True, lag_taps=3)
    return _vocoder(tmp_path_factory.mktemp("v"), pitch=pitch, mixed_excitation=True)


def test_resynthesis_keeps_length_and_level(vocoder):
    clip = SPEECH[:3333]
    out = vocoder.resynthesize(clip, RATE, seed=1)
    assert out.dtype == np.float32 and out.shape == clip.shape
    level = 20 * np.log10(np.abs(out).max() / np.abs(clip).max())
    assert abs(level) < 12  # at the input's level, not the convention's


def test_resynthesis_resamples_and_mixes_to_mono(vocoder):
    import soxr

    stereo = np.stack([SPEECH, 0.5 * SPEECH])
    up = np.stack([soxr.resample(c, 8000, 16000, "HQ") for c in stereo])
    out = vocoder.resynthesize(up, 16000, seed=1)
    assert abs(out.shape[0] - SPEECH.shape[0]) <= 1


def test_vocode_gives_hop_samples_per_frame_and_is_seeded(vocoder):
    mel = vocoder.mel(SPEECH, RATE)
    assert mel.shape[0] == 80
    first = vocoder.vocode(mel, seed=4)
    assert first.shape == (mel.shape[1] * 100,)
    assert np.array_equal(first, vocoder.vocode(mel, seed=4))
    assert not np.array_equal(first, vocoder.vocode(mel, seed=5))
    assert np.array_equal(vocoder.vocode(mel, temperature=0.0, seed=4),
                          vocoder.vocode(mel, temperature=0.0, seed=9))  # fmt: skip


def test_a_batch_of_prepared_requests_gives_each_its_audio_alone(vocoder):
    requests = [
        vocoder.request(waveform=SPEECH[:2000], seed=1),
        vocoder.request(mel=vocoder.mel(SPEECH[:5000], 8000), seed=2, temperature=1.0),
        vocoder.request(waveform=SPEECH[:777], seed=3),
    ]
    together = vocoder.run(requests)
    for request, audio in zip(requests, together, strict=True):
        assert audio.shape == (request.length,)
        np.testing.assert_allclose(audio, vocoder.run([request])[0], rtol=0, atol=3.1e-5)


def test_a_stream_concatenates_to_the_whole_clip(vocoder):
    request = vocoder.request(waveform=SPEECH[:4321], seed=8)
    chunks = list(vocoder.stream(request, 400))
    assert all(c.shape[0] == 400 for c in chunks[:-1])
    assert np.array_equal(np.concatenate(chunks), vocoder.run([request])[0])


def test_the_exact_mode_runs_the_module_and_agrees_with_the_fast_path(vocoder, tmp_path):
    exact = Vocoder(vocoder.bundle, exact=True)
    request = vocoder.request(waveform=SPEECH[:3000], seed=2)
    assert exact.fast is None
    np.testing.assert_allclose(exact.run([request])[0], vocoder.run([request])[0], rtol=0,
                               atol=3.1e-5)  # fmt: skip


def test_the_audio_convention_travels_in_the_bundle(tmp_path):
    quiet = _vocoder(tmp_path, audio=AudioConvention(loudness_lufs=-30.0, peak_limit=0.5))
    assert quiet.audio.loudness_lufs == -30.0
    loud_mel = _vocoder(tmp_path / "b").mel(SPEECH, RATE)
    quiet_mel = quiet.mel(SPEECH, RATE)
    # 7 dB quieter before the front end: the log-mel moves by about log(10^(-7/20)) / 2.5
    shift = float(np.median(quiet_mel - loud_mel))
    assert shift == pytest.approx(np.log(10 ** (-7 / 20)) / 2.5, abs=0.05)


def test_unconditional_generation_and_speakers(tmp_path):
    vocoder = _vocoder(tmp_path, conditional=False, n_speakers=2,
                       source_filter=SourceFilterConfig(enabled=False))  # fmt: skip
    assert vocoder.generate(0.123, speaker="bo", seed=1).shape == (984,)
    assert np.array_equal(vocoder.generate(0.1, speaker=1, seed=1),
                          vocoder.generate(0.1, speaker="bo", seed=1))  # fmt: skip
    with pytest.raises(ValueError, match="unknown speaker"):
        vocoder.generate(0.1, speaker="²")  # a digit to str.isdigit, not to int()
    with pytest.raises(ValueError, match="out of range"):
        vocoder.generate(0.1, speaker=2)
    with pytest.raises(ValueError, match="unconditional"):
        vocoder.vocode(np.zeros((80, 3)), speaker=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"mel": np.zeros((80, 4)), "num_samples": 100}, "exactly one"),
        ({"mel": np.zeros((4, 80))}, r"mel must be \(80, frames\)"),
        ({"mel": np.zeros((80, 0))}, "no frames"),
        ({"num_samples": 100}, "conditioned on a mel"),
        ({"waveform": np.zeros(0)}, "no samples"),
        ({"waveform": np.full(900, np.nan)}, "NaN"),
        ({"waveform": np.zeros((2, 2, 900))}, "channels"),
        ({"waveform": np.zeros(900), "temperature": -1.0}, "temperature"),
        ({"waveform": np.zeros(900), "temperature": float("inf")}, "temperature"),
        ({"waveform": np.zeros(900), "seed": -1}, "seed"),
        ({"waveform": np.zeros(900), "speaker": 0}, "single speaker"),
    ],
)
def test_bad_requests_are_value_errors_that_say_what_is_wrong(vocoder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vocoder.request(**kwargs)


def test_resynthesize_refuses_a_non_positive_sample_rate(vocoder):
    with pytest.raises(ValueError, match="sample rate"):
        vocoder.resynthesize(SPEECH, 0)


def test_a_short_clip_still_resynthesizes(vocoder):
    with torch.inference_mode():
        assert vocoder.resynthesize(SPEECH[:10], RATE, seed=0).shape == (10,)
