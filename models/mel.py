"""The one log-mel front end used for training, evaluation and serving."""

from __future__ import annotations

import copy

import torch
import torchaudio
from torch import Tensor, nn

from models.config import MelConfig


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinity."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


class MelFrontEnd(nn.Module):
    """Waveform ``(B, T)`` or ``(T,)`` -> normalised log-mel ``(B, n_mels, T // hop + 1)``.

    Centred frames: frame ``i`` is centred on sample ``i * hop_length``, so a clip of
    ``N * hop`` samples has ``N + 1`` frames and sample ``t`` lies between frames
    ``t // hop`` and ``t // hop + 1``. Magnitude (power 1) slaney mel, slaney-normalised
    filters, ``(log(max(mel, floor)) + offset) / scale``.
    """

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.spectrogram = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.window,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.upper_frequency,
            n_mels=config.n_mels,
            power=1.0,
            norm="slaney",
            mel_scale="slaney",
            center=True,
            pad_mode="reflect",
        )

    @property
    def filterbank(self) -> Tensor:
        """Mel filterbank ``(n_fft // 2 + 1, n_mels)``."""
        fb: Tensor = self.spectrogram.mel_scale.fb
        return fb

    @property
    def window(self) -> Tensor:
        """The analysis window ``(win_length,)``."""
        win: Tensor = self.spectrogram.spectrogram.window
        return win

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (B, T) or (T,), got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] <= self.config.n_fft // 2:
            raise ValueError(
                f"waveform of {waveform.shape[-1]} samples is too short for n_fft "
                f"{self.config.n_fft} (needs more than {self.config.n_fft // 2})"
            )
        check_finite("waveform", waveform)
        spectrogram = self.spectrogram
        if self.window.dtype != waveform.dtype:  # compute in the input's precision, unmodified
            spectrogram = copy.deepcopy(spectrogram).to(waveform.dtype)
        mel = spectrogram(waveform)
        return self.normalise(mel)

    def normalise(self, mel: Tensor) -> Tensor:
        """Linear mel magnitudes -> normalised log-mel features."""
        cfg = self.config
        return (torch.log(mel.clamp_min(cfg.log_floor)) + cfg.norm_offset) / cfg.norm_scale

    def denormalise(self, features: Tensor) -> Tensor:
        """Normalised log-mel features -> linear mel magnitudes."""
        cfg = self.config
        return torch.exp(features * cfg.norm_scale - cfg.norm_offset)

    def check_features(self, mel: Tensor) -> Tensor:
        """Validate a ``(B, n_mels, M)`` or ``(n_mels, M)`` feature tensor and return it batched."""
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"mel must be (B, {self.config.n_mels}, frames), got shape {tuple(mel.shape)}"
            )
        if mel.shape[-1] < 2:
            raise ValueError("mel needs at least 2 frames (one hop of audio)")
        check_finite("mel", mel)
        return mel
