"""Spectral losses: multi-resolution STFT (Parallel WaveGAN), log-mel L1 (HiFi-GAN) and
anti-wrapped phase losses (APNet)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.mel import MelFrontEnd


def complex_stft(x: Tensor, n_fft: int) -> Tensor:
    """``(B, T)`` -> ``(B, n_fft // 2 + 1, frames)`` complex, Hann window, hop ``n_fft / 4``."""
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    return torch.stft(
        x, n_fft, hop_length=n_fft // 4, window=window, center=True, return_complex=True
    )


def stft_magnitude(x: Tensor, n_fft: int) -> Tensor:
    """``(B, T)`` -> ``(B, n_fft // 2 + 1, frames)`` magnitude, Hann window, hop ``n_fft / 4``."""
    return complex_stft(x, n_fft).abs()


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


def dc_distance(prediction: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """The DC offsets' mean absolute difference over the batch, relative to the target's RMS.

    Each segment's offset is its Hann-weighted mean (the segment-long DFT's bin 0, whose main
    lobe is a few hertz wide, so speech barely reaches it): what the STFT losses cannot see
    because at their window lengths the lowest bin holds the speech's leakage.
    """
    window = torch.hann_window(prediction.shape[-1], periodic=False, dtype=prediction.dtype,
                               device=prediction.device)  # fmt: skip
    window = window / window.sum()
    offset = (prediction - target) @ window  # (B,)
    return offset.abs().mean() / (target.square().mean().sqrt() + eps)


def consistency_distance(spectrum: Tensor, reanalysed: Tensor, eps: float = 1e-5) -> Tensor:
    """APNet's STFT consistency: how far a predicted complex spectrum is from the STFT of the
    waveform its inverse STFT makes, ``||STFT(iSTFT(S)) - S|| / ||S||`` (0 exactly when ``S``
    is the STFT of some signal). Frames whose re-analysis sees the padding must be left out by
    the caller."""
    return torch.linalg.vector_norm(reanalysed - spectrum) / (
        torch.linalg.vector_norm(spectrum) + eps
    )


def log_mel_distance(prediction: Tensor, target: Tensor, front_end: MelFrontEnd) -> Tensor:
    """Mean absolute difference of the natural-log mels (HiFi-GAN's mel loss), the model's own
    front end for both."""
    scale = front_end.config.norm_scale  # the features are (ln mel + offset) / scale
    return (front_end(prediction) - front_end(target)).abs().mean() * scale


def anti_wrapped(angle: Tensor) -> Tensor:
    """``|angle - 2 pi round(angle / 2 pi)|``: the distance of an angle to 0 on the circle."""
    return (angle - 2 * math.pi * torch.round(angle / (2 * math.pi))).abs()


PHASE_TERMS = ("instantaneous", "group_delay", "angular_frequency")


def _angle_size(z: Tensor) -> Tensor:
    """``|arg z|`` in ``[0, pi]``: the anti-wrapped size of a rotation."""
    return torch.atan2(z.imag, z.real).abs()


def phase_losses(
    predicted: Tensor,
    target: Tensor,
    terms: tuple[str, ...] = PHASE_TERMS,
    magnitude_weighted: bool = False,
) -> Tensor:
    """APNet's anti-wrapped phase losses between complex spectra ``(B, F, M)`` (Ai and Ling,
    2023): the instantaneous phase error, its difference across frequency (group delay) and
    across time (instantaneous angular frequency), each the size of a rotation in ``[0, pi]``
    (computed as products of unit phasors, so no ``2 pi`` wrap ever counts). With
    ``magnitude_weighted`` every bin counts in proportion to the target's magnitude (the phase
    of silence is noise)."""
    unknown = set(terms) - set(PHASE_TERMS)
    if unknown:
        raise ValueError(f"unknown phase terms {sorted(unknown)}; choose from {PHASE_TERMS}")
    magnitude = target.abs()
    p = predicted / predicted.abs().clamp_min(1e-8)
    t = target / magnitude.clamp_min(1e-8)
    weight = magnitude / magnitude.mean(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    if not magnitude_weighted:
        weight = torch.ones_like(weight)
    total = predicted.real.new_zeros(())
    if "instantaneous" in terms:
        total = total + (_angle_size(p * t.conj()) * weight).mean()
    if "group_delay" in terms:
        along = (p[:, 1:] * p[:, :-1].conj()) * (t[:, 1:] * t[:, :-1].conj()).conj()
        total = total + (_angle_size(along) * weight[:, 1:]).mean()
    if "angular_frequency" in terms:
        along = (p[..., 1:] * p[..., :-1].conj()) * (t[..., 1:] * t[..., :-1].conj()).conj()
        total = total + (_angle_size(along) * weight[..., 1:]).mean()
    return total
