"""Quality metrics: how close a resynthesis is to the real audio.

Distances compare a resynthesis with the real audio sample by sample in time (same mel,
same length, no alignment). PESQ (ITU-T P.862, ``pesq`` package) is narrowband at 8 kHz and
wideband at 16 kHz (other rates are resampled to 16 kHz); STOI is ``pystoi``.
"""

from __future__ import annotations

import logging
import math
import warnings

import librosa
import numpy as np
import torch
from pesq import pesq
from pystoi import stoi

from training.objectives.spectral import multi_resolution_stft

log = logging.getLogger(__name__)

EPS = 1e-10


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, n_fft: int = 512) -> float:
    """Mean over frames of the RMS difference of the dB power spectra (dB).

    Both spectra are floored at 80 dB below the reference's peak so digital silence in one
    signal does not dominate; Hann window, hop n_fft / 4.
    """
    diff = _db_difference(reference, estimate, n_fft)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=0))))


def band_errors(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, edges_hz: list[float],
    n_fft: int = 512,
) -> list[float]:  # fmt: skip
    """The RMS dB difference (LSD's, same floor) within each band ``[edges[i], edges[i+1])``,
    over all frames: where in frequency a resynthesis loses its LSD."""
    diff = _db_difference(reference, estimate, n_fft)  # (F, frames)
    hz = np.arange(diff.shape[0]) * sample_rate / n_fft
    return [
        float(np.sqrt(np.mean(diff[(hz >= low) & (hz < high)] ** 2)))
        for low, high in zip(edges_hz[:-1], edges_hz[1:], strict=True)
    ]


def _db_difference(reference: np.ndarray, estimate: np.ndarray, n_fft: int) -> np.ndarray:
    """``(F, frames)`` dB power differences, both floored 80 dB below the reference's peak."""
    ref = _power(reference, n_fft)
    est = _power(estimate, n_fft)
    floor = ref.max() * 1e-8 + EPS
    return 10.0 * np.log10(np.maximum(ref, floor)) - 10.0 * np.log10(np.maximum(est, floor))


def _power(signal: np.ndarray, n_fft: int) -> np.ndarray:
    spec = librosa.stft(
        signal.astype(np.float32), n_fft=n_fft, hop_length=n_fft // 4, window="hann"
    )
    return np.abs(spec) ** 2


def mel_cepstrum(signal: np.ndarray, sample_rate: int, coefficients: int) -> np.ndarray:
    """Real cepstrum of the log-amplitude mel spectrum: ``(coefficients + 1, frames)``.

    ``c_k = (1 / N) sum_n ln|X_mel(n)| cos(pi k (n + 1/2) / N)`` (c_0 halved), the discrete
    form of ``(1 / pi) integral ln|X(w)| cos(k w) dw`` over a 40-band slaney mel axis; 512-point
    FFT, hop 128.
    """
    bands = 40
    power = librosa.feature.melspectrogram(
        y=signal.astype(np.float32), sr=sample_rate, n_fft=512, hop_length=128, n_mels=bands
    )
    log_amplitude = 0.5 * np.log(np.maximum(power, 1e-10))  # (bands, frames)
    n = np.arange(bands) + 0.5
    k = np.arange(coefficients + 1)[:, None]
    basis = np.cos(np.pi * k * n[None, :] / bands) / bands  # (K + 1, bands)
    basis[0] *= 0.5
    return np.asarray(basis @ log_amplitude)


def mel_cepstral_distortion(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, n_coefficients: int = 24
) -> float:
    """MCD in dB (Kubichek, 1993) over mel cepstra c_1..c_24, c_0 (level) excluded.

    ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` per frame, averaged over frames where the
    reference is within 60 dB of its peak (silence carries no spectral envelope). No time
    alignment: a resynthesis has the reference's length. Figures are comparable within
    distilwave's reports; SPTK's all-pass mel-cepstra give somewhat different absolute values.
    """
    ref = mel_cepstrum(reference, sample_rate, n_coefficients)
    est = mel_cepstrum(estimate, sample_rate, n_coefficients)
    frames = min(ref.shape[1], est.shape[1])
    ref, est = ref[:, :frames], est[:, :frames]
    energy = librosa.feature.rms(y=reference.astype(np.float32), frame_length=512, hop_length=128)
    active = 20 * np.log10(energy[0, :frames] + EPS) > 20 * np.log10(energy.max() + EPS) - 60
    diff = ref[1:, active] - est[1:, active]
    per_frame = (10.0 / math.log(10)) * np.sqrt(2.0 * np.sum(diff**2, axis=0))
    return float(np.mean(per_frame)) if per_frame.size else float("nan")


def mr_stft_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Multi-resolution STFT distance (spectral convergence + log magnitude, FFT 512/256/128)."""
    ref = torch.from_numpy(reference.astype(np.float32))[None]
    est = torch.from_numpy(estimate.astype(np.float32))[None]
    convergence, magnitude = multi_resolution_stft(est, ref, (512, 256, 128))
    return float(convergence + magnitude)


def pesq_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """PESQ MOS-LQO: narrowband at 8 kHz, wideband at 16 kHz (other rates resampled to 16 kHz)."""
    if sample_rate not in (8000, 16000):
        reference = librosa.resample(reference, orig_sr=sample_rate, target_sr=16000)
        estimate = librosa.resample(estimate, orig_sr=sample_rate, target_sr=16000)
        sample_rate = 16000
    mode = "nb" if sample_rate == 8000 else "wb"
    try:
        return float(
            pesq(sample_rate, reference.astype(np.float64), estimate.astype(np.float64), mode)
        )
    except Exception as exc:  # noqa: BLE001 - pesq raises its own types for silent input
        log.warning("PESQ failed (%s): scored NaN", exc)
        return float("nan")


def stoi_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stoi(reference, estimate, sample_rate, extended=False))


def all_metrics(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
    length = min(len(reference), len(estimate))
    reference, estimate = reference[:length], estimate[:length]
    return {
        "lsd_db": log_spectral_distance(reference, estimate),
        "mr_stft": mr_stft_distance(reference, estimate),
        "mcd_db": mel_cepstral_distortion(reference, estimate, sample_rate),
        "pesq": pesq_score(reference, estimate, sample_rate),
        "stoi": stoi_score(reference, estimate, sample_rate),
    }
