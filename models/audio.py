"""Waveform utilities shared by data preparation and the service (one loudness convention)."""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import Tensor

from models.mel import check_finite

GATE_SECONDS = 0.4  # ITU-R BS.1770 gating block


def loudness_lufs(waveform: Tensor, sample_rate: int) -> float:
    """Integrated loudness of a mono ``(T,)`` waveform in LUFS (ITU-R BS.1770-4).

    Clips shorter than one 400 ms gating block fall back to the K-weighting-free RMS level
    in dBFS (``20 log10 rms - 0.691``, the BS.1770 offset). Digital silence is ``-inf``.
    """
    if waveform.dim() != 1:
        raise ValueError(f"loudness expects a mono (T,) waveform, got {tuple(waveform.shape)}")
    check_finite("waveform", waveform)
    peak = float(waveform.abs().max()) if waveform.numel() else 0.0
    if peak <= 0.0:
        return -math.inf
    # loudness is scale-covariant: measure at full scale so quiet input never falls under
    # BS.1770's absolute -70 LUFS gate, then shift back by the scale
    unit = waveform.double() / peak
    offset = 20.0 * math.log10(peak)
    if waveform.numel() >= int(GATE_SECONDS * sample_rate) + 1:
        value = float(AF.loudness(unit[None].float(), sample_rate))
        if math.isfinite(value):
            return value + offset
    return 10.0 * math.log10(float(unit.square().mean())) - 0.691 + offset


def normalize_loudness(
    waveform: Tensor, sample_rate: int, target_lufs: float, peak_limit: float
) -> tuple[Tensor, float]:
    """Scale ``(T,)`` to ``target_lufs``, never letting the peak exceed ``peak_limit``.

    Returns:
        The scaled waveform and the linear gain applied (1.0 for digital silence).
    """
    level = loudness_lufs(waveform, sample_rate)
    if not math.isfinite(level):
        return waveform, 1.0
    gain = 10.0 ** ((target_lufs - level) / 20.0)
    peak = float(waveform.abs().max())
    if peak * gain > peak_limit:
        gain = peak_limit / peak
    return waveform * gain, gain


def to_int16(waveform: Tensor) -> Tensor:
    """``[-1, 1]`` float -> int16 with rounding and clipping."""
    return torch.clamp(torch.round(waveform * 32768.0), -32768, 32767).to(torch.int16)


def from_int16(samples: Tensor) -> Tensor:
    """int16 -> float32 on ``[-1, 1)``."""
    return samples.to(torch.float32) / 32768.0
