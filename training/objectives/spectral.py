"""Spectral losses: multi-resolution STFT (Parallel WaveGAN), log-mel L1 (HiFi-GAN) and
anti-wrapped phase losses (APNet)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.mel import MelFrontEnd


def stft_magnitude(x: Tensor, n_fft: int) -> Tensor:
    """``(B, T)`` -> ``(B, n_fft // 2 + 1, frames)`` magnitude, Hann window, hop ``n_fft / 4``."""
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    spec = torch.stft(
        x, n_fft, hop_length=n_fft // 4, window=window, center=True, return_complex=True
    )
    return spec.abs()


def multi_resolution_stft(
    prediction: Tensor, target: Tensor, ffts: tuple[int, ...], eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Multi-resolution STFT distance (Yamamoto et al., Parallel WaveGAN, 2020).

    Spectral convergence ``||S - S'||_F / ||S||_F`` is pooled over the whole batch (per-example
    normalisation explodes on silent segments), plus the mean absolute log-magnitude error.

    Returns:
        (spectral convergence, log-magnitude distance), each averaged over resolutions.
    """
    convergence = prediction.new_zeros(())
    log_distance = prediction.new_zeros(())
    for n_fft in ffts:
        predicted = stft_magnitude(prediction, n_fft)
        real = stft_magnitude(target, n_fft)
        convergence = convergence + torch.linalg.vector_norm(real - predicted) / (
            torch.linalg.vector_norm(real) + eps
        )
        log_distance = (
            log_distance
            + (torch.log(real.clamp_min(eps)) - torch.log(predicted.clamp_min(eps))).abs().mean()
        )
    return convergence / len(ffts), log_distance / len(ffts)


def log_mel_distance(prediction: Tensor, target: Tensor, front_end: MelFrontEnd) -> Tensor:
    """Mean absolute difference of the natural-log mels (HiFi-GAN's mel loss), the model's own
    front end for both."""
    scale = front_end.config.norm_scale  # the features are (ln mel + offset) / scale
    return (front_end(prediction) - front_end(target)).abs().mean() * scale


def anti_wrapped(angle: Tensor) -> Tensor:
    """``|angle - 2 pi round(angle / 2 pi)|``: the distance of an angle to 0 on the circle."""
    return (angle - 2 * math.pi * torch.round(angle / (2 * math.pi))).abs()


def phase_losses(predicted: Tensor, target: Tensor) -> Tensor:
    """APNet's instantaneous phase, group delay and instantaneous angular frequency losses
    between two complex spectra ``(B, F, M)``, anti-wrapped (Ai and Ling, 2023)."""
    error = torch.angle(predicted) - torch.angle(target)
    instantaneous = anti_wrapped(error).mean()
    group_delay = anti_wrapped(torch.diff(error, dim=1)).mean()
    angular_frequency = anti_wrapped(torch.diff(error, dim=2)).mean()
    return instantaneous + group_delay + angular_frequency
