"""Training losses: teacher likelihood and the student's distillation objective."""

from __future__ import annotations

import torch
from torch import Tensor


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
