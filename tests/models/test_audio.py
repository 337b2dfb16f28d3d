"""Loudness normalisation and 16-bit conversion shared by data preparation and the service."""

from __future__ import annotations

import math

import pytest
import torch

from models.audio import from_int16, loudness_lufs, normalize_loudness, to_int16

RATE = 8000


def _tone(seconds, amplitude=0.1, frequency=440.0):
    t = torch.arange(int(seconds * RATE), dtype=torch.float32) / RATE
    return amplitude * torch.sin(2 * math.pi * frequency * t)


@pytest.mark.parametrize("seconds", [1.0, 0.2], ids=["gated", "short-rms"])
@pytest.mark.parametrize("target", [-30.0, -23.0, -16.0])
def test_normalised_loudness_reaches_the_target(seconds, target):
    out, _ = normalize_loudness(_tone(seconds), RATE, target, peak_limit=1.0)
    assert loudness_lufs(out, RATE) == pytest.approx(target, abs=0.01)


@pytest.mark.parametrize("seconds", [1.0, 0.2], ids=["gated", "short-rms"])
def test_normalisation_returns_the_gain_it_applied(seconds):
    tone = _tone(seconds)
    out, gain = normalize_loudness(tone, RATE, -20.0, peak_limit=1.0)
    torch.testing.assert_close(out, tone * gain)


def test_peak_limit_wins_over_the_loudness_target():
    tone = _tone(1.0)
    out, _ = normalize_loudness(tone, RATE, target_lufs=0.0, peak_limit=0.5)
    assert float(out.abs().max()) == pytest.approx(0.5, rel=1e-6)
    assert loudness_lufs(out, RATE) < 0.0


@pytest.mark.parametrize("overshoot", [1.001, 1.5, 100.0])
def test_peak_never_exceeds_the_limit(overshoot):
    # Aim the loudness target so that the unlimited gain would overshoot the limit by a factor.
    tone, limit = _tone(1.0), 0.5
    level = loudness_lufs(tone, RATE)
    target = level + 20 * math.log10(overshoot * limit / float(tone.abs().max()))
    out, _ = normalize_loudness(tone, RATE, target, peak_limit=limit)
    assert float(out.abs().max()) <= limit * (1 + 1e-6)


def test_quiet_target_is_not_touched_by_the_peak_limit():
    out, _ = normalize_loudness(_tone(1.0, amplitude=0.9), RATE, -40.0, peak_limit=0.5)
    assert float(out.abs().max()) < 0.5


@pytest.mark.parametrize("samples", [0, 100, 8000])
def test_digital_silence_is_returned_untouched(samples):
    silence = torch.zeros(samples)
    out, gain = normalize_loudness(silence, RATE, -23.0, peak_limit=1.0)
    assert gain == 1.0 and torch.equal(out, silence)


def test_loudness_of_silence_is_minus_infinity():
    assert loudness_lufs(torch.zeros(RATE), RATE) == -math.inf


def test_loudness_scales_by_20_log10_of_the_gain():
    tone = _tone(1.0)
    difference = loudness_lufs(2.0 * tone, RATE) - loudness_lufs(tone, RATE)
    assert difference == pytest.approx(20 * math.log10(2.0), abs=1e-3)


def test_loudness_rejects_a_multichannel_waveform():
    with pytest.raises(ValueError, match="mono"):
        loudness_lufs(torch.zeros(2, RATE), RATE)


def test_loudness_rejects_nan():
    tone = _tone(1.0)
    tone[10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        normalize_loudness(tone, RATE, -23.0, peak_limit=1.0)


def test_int16_round_trip_is_exact_for_16_bit_values():
    samples = torch.arange(-32768, 32768, 97, dtype=torch.int16)
    assert torch.equal(to_int16(from_int16(samples)), samples)


def test_to_int16_clips_out_of_range_values():
    clipped = to_int16(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    assert clipped.tolist() == [-32768, -32768, 0, 32767, 32767]


def test_from_int16_stays_in_minus_one_to_one():
    out = from_int16(torch.tensor([-32768, 32767], dtype=torch.int16))
    assert out.dtype == torch.float32 and float(out.min()) == -1.0 and float(out.max()) < 1.0
