"""The baselines every model is compared with: Griffin-Lim and a noise-excited LPC vocoder from
the same mel, and a global AR(p) predictor for the teacher's bits per sample."""

from __future__ import annotations

import librosa
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from models.config import MelConfig, SourceFilterConfig
from models.lpc import linear_prediction, per_sample, time_varying_fir
from models.mel import MelFrontEnd


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
    history = excitation.new_zeros(1, lpc.impulse.shape[-1] - 1)
    delayed = torch.nn.functional.pad(excitation[:, :-1], (1, 0))  # e_{t-1}
    audio = excitation + time_varying_fir(delayed, lpc.impulse, mel.hop_length, 0, history)
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
