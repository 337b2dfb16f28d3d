"""Quality metrics and the baselines every model is compared with.

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
from numpy.lib.stride_tricks import sliding_window_view
from pesq import pesq
from pystoi import stoi

from models.config import MelConfig, SourceFilterConfig
from models.lpc import linear_prediction, per_sample, time_varying_fir
from models.mel import MelFrontEnd
from training.losses import multi_resolution_stft

log = logging.getLogger(__name__)

EPS = 1e-10


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, n_fft: int = 512) -> float:
    """Mean over frames of the RMS difference of the dB power spectra (dB).

    Both spectra are floored at 80 dB below the reference's peak so digital silence in one
    signal does not dominate; Hann window, hop n_fft / 4.
    """
    ref = _power(reference, n_fft)
    est = _power(estimate, n_fft)
    floor = ref.max() * 1e-8 + EPS
    diff = 10.0 * np.log10(np.maximum(ref, floor)) - 10.0 * np.log10(np.maximum(est, floor))
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=0))))


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


def griffin_lim(
    features: torch.Tensor, mel: MelConfig, iterations: int, seed: int = 0
) -> np.ndarray:
    """Griffin-Lim from the same normalised log-mel ``(n_mels, M)``: ``(M - 1) hop`` samples.

    The mel is inverted to a linear magnitude (non-negative least squares), then ``iterations``
    of fast Griffin-Lim from a random phase drawn with ``seed``: the same input and seed give
    the same audio, so evaluations and benchmarks are reproducible.
    """
    front_end = MelFrontEnd(mel)
    magnitude = front_end.denormalise(features).double().numpy()
    linear = librosa.feature.inverse.mel_to_stft(
        magnitude,
        sr=mel.sample_rate,
        n_fft=mel.n_fft,
        power=1.0,
        fmin=mel.f_min,
        fmax=mel.upper_frequency,
        htk=False,
        norm="slaney",
    )
    audio = librosa.griffinlim(
        linear,
        n_iter=iterations,
        hop_length=mel.hop_length,
        win_length=mel.window,
        n_fft=mel.n_fft,
        window="hann",
        center=True,
        length=(features.shape[-1] - 1) * mel.hop_length,
        random_state=seed,
    )
    return np.asarray(audio, dtype=np.float32)


def lpc_noise_vocoder(
    features: torch.Tensor,
    mel: MelConfig,
    source_filter: SourceFilterConfig,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """White Gaussian excitation through the mel-derived gain and synthesis filter (no network).

    The floor the networks must clearly beat: it is the student with every flow the identity.
    """
    front_end = MelFrontEnd(mel)
    batch = features[None].double()
    lpc = linear_prediction(
        batch, mel, source_filter, front_end.filterbank, front_end.window, with_impulse=True
    )
    assert lpc.impulse is not None
    steps = (features.shape[-1] - 1) * mel.hop_length
    noise = torch.randn(1, steps, generator=generator, dtype=torch.float64)
    excitation = noise * per_sample(lpc.gain, 0, steps, mel.hop_length)
    history = excitation.new_zeros(1, lpc.impulse.shape[-1])
    audio = excitation + time_varying_fir(excitation, lpc.impulse, mel.hop_length, 0, history)
    return audio[0].float().numpy()


class LinearPredictionBaseline:
    """A global AR(p) Gaussian predictor fitted by least squares on the training split."""

    def __init__(self, order: int = 32) -> None:
        self.order = order
        self.coefficients: np.ndarray = np.zeros(order)
        self.variance = 1.0

    def fit(self, signals: list[np.ndarray]) -> LinearPredictionBaseline:
        p = self.order
        gram = np.zeros((p, p))
        cross = np.zeros(p)
        total = 0.0
        count = 0
        for signal in signals:
            x = signal.astype(np.float64)
            if len(x) <= p:
                continue
            past = sliding_window_view(x[:-1], p)[:, ::-1]  # rows: x_{t-1} .. x_{t-p}
            target = x[p:]
            gram += past.T @ past
            cross += past.T @ target
            total += float(target @ target)
            count += len(target)
        if count == 0:
            raise ValueError("no training signal longer than the AR order")
        self.coefficients = np.asarray(np.linalg.solve(gram + 1e-9 * np.eye(p), cross))
        residual = (
            total - 2 * self.coefficients @ cross + self.coefficients @ gram @ self.coefficients
        )
        self.variance = max(float(residual) / count, 1e-12)
        return self

    def nll(self, signal: np.ndarray) -> tuple[float, int]:
        """Total NLL in nats and the number of samples scored (the first p are context)."""
        p = self.order
        x = signal.astype(np.float64)
        past = sliding_window_view(x[:-1], p)[:, ::-1]
        error = x[p:] - past @ self.coefficients
        nll = 0.5 * np.log(2 * np.pi * self.variance) * len(error) + float(error @ error) / (
            2 * self.variance
        )
        return float(nll), len(error)
