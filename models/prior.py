"""The mel-inversion prior: a deterministic waveform ``h(c)`` from the mel, inside the flows.

A frame-rate network reads the normalised log-mel and predicts, per frame, a log-magnitude
and a phase of a short-time spectrum; an inverse STFT (the mel's hop) makes the waveform. This
is the design of Vocos (Siuzdak, 2023: a ConvNeXt backbone at frame rate and an iSTFT head) with
FreeV's magnitude base (Lv et al., 2024: the mel's pseudo-inverse gives a linear magnitude the
network only corrects, so training starts from a sensible spectrum) and APNet's phase
estimation (Ai and Ling, 2023: two outputs R, I and the phase of R + iI, no wrapping issue).

``h`` enters the student as an exact IAF step, ``x_t = h_t + u_t`` (log-determinant 0, its mean
a function of the conditioning only), and the teacher models ``x - h``: see
docs/architecture.md. It is computed from the whole mel of a request (non-causal over the mel,
which is conditioning), so streaming stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from models.config import MelConfig, PriorConfig


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm, pointwise MLP (GELU), layer scale, residual (Liu et al. 2022)."""

    def __init__(self, channels: int, expansion: int, kernel_size: int, scale: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.expand = nn.Linear(channels, channels * expansion)
        self.project = nn.Linear(channels * expansion, channels)
        self.scale = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, M) -> (B, C, M)``."""
        y = self.norm(self.depthwise(x).transpose(1, 2))  # (B, M, C)
        y = self.project(F.gelu(self.expand(y))) * self.scale
        return x + y.transpose(1, 2)


def mel_pseudo_inverse(mel: MelConfig, n_fft: int) -> Tensor:
    """``(F, n_mels)``: linear mel magnitudes -> a linear magnitude on an ``n_fft`` grid.

    The Moore-Penrose pseudo-inverse of the front end's slaney filterbank laid on the ``n_fft``
    grid; a sinusoid's STFT magnitude grows with the window's sum, hence the ratio of windows.
    """
    filterbank = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1,
        mel.f_min,
        mel.upper_frequency,
        mel.n_mels,
        mel.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )  # (F, n_mels): mel = filterbank^T |X|
    inverse = torch.linalg.pinv(filterbank.T.double()).float()
    return inverse * (n_fft / mel.window)


class MelInversionPrior(nn.Module):
    """Normalised log-mel ``(B, n_mels, M)`` -> waveform ``(B, (M - 1) hop)``.

    Args:
        config: the network and its iSTFT head.
        mel: the front end whose features it reads (its hop is the iSTFT's).
    """

    inverse: Tensor
    window: Tensor

    def __init__(self, config: PriorConfig, mel: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_config = mel
        bins = config.n_fft // 2 + 1
        channels = config.channels
        self.register_buffer("inverse", mel_pseudo_inverse(mel, config.n_fft), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.embed = nn.Conv1d(mel.n_mels, channels, 7, padding=3)
        self.embed_norm = nn.LayerNorm(channels, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(channels, config.expansion, config.kernel_size, 1.0 / config.layers)
            for _ in range(config.layers)
        )
        self.out_norm = nn.LayerNorm(channels, eps=1e-6)
        self.magnitude = nn.Linear(channels, bins)
        self.phase = nn.Linear(channels, 2 * bins)
        if config.magnitude_base == "pinv":  # start at the pseudo-inverse magnitude
            nn.init.zeros_(self.magnitude.weight)
            nn.init.zeros_(self.magnitude.bias)

    def base_log_magnitude(self, features: Tensor) -> Tensor:
        """log of the pseudo-inverse magnitude ``(B, F, M)`` of the mel."""
        cfg = self.mel_config
        mel = torch.exp(features * cfg.norm_scale - cfg.norm_offset)  # linear mel magnitudes
        return torch.log((self.inverse.to(features.dtype) @ mel).abs().clamp_min(1e-5))

    def spectrum(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The predicted STFT ``(B, F, M)`` (complex) and its log-magnitude."""
        hidden = self.embed_norm(self.embed(features).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            hidden = block(hidden)
        hidden = self.out_norm(hidden.transpose(1, 2))  # (B, M, C)
        log_magnitude = self.magnitude(hidden).transpose(1, 2)  # (B, F, M)
        if self.config.magnitude_base == "pinv":
            log_magnitude = log_magnitude + self.base_log_magnitude(features)
        log_magnitude = log_magnitude.clamp(max=self.config.max_log_magnitude)
        real, imag = self.phase(hidden).transpose(1, 2).chunk(2, dim=1)  # 2 x (B, F, M)
        norm = torch.sqrt(real.square() + imag.square() + 1e-9)
        unit = torch.complex(real / norm, imag / norm)
        return torch.exp(log_magnitude) * unit, log_magnitude

    def waveform(self, spectrum: Tensor) -> Tensor:
        """Inverse STFT of ``(B, F, M)`` frames centred ``hop`` apart: ``(B, (M - 1) hop)``."""
        hop = self.mel_config.hop_length
        return torch.istft(
            spectrum,
            self.config.n_fft,
            hop,
            window=self.window.to(spectrum.real.dtype),
            center=True,
            length=(spectrum.shape[-1] - 1) * hop,
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.waveform(self.spectrum(features)[0])

    def flops_per_sample(self) -> float:
        """Multiply-adds x 2 per output sample (the network at frame rate, the iSTFT's FFT)."""
        cfg, hop = self.config, self.mel_config.hop_length
        channels, bins = cfg.channels, cfg.n_fft // 2 + 1
        per_frame = (
            self.mel_config.n_mels * channels * 7
            + cfg.layers * (channels * cfg.kernel_size + 2 * channels * channels * cfg.expansion)
            + channels * 3 * bins
        )
        fft = 5 * cfg.n_fft * max(1, cfg.n_fft.bit_length() - 1)  # a real FFT, about
        return (2.0 * per_frame + fft) / hop
